//! Test support: a driver-side virtio harness (plays the guest driver against a real
//! transport over real guest memory). Not used by husk-vmm itself.
