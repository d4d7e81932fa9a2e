//! Devices emulated by husk-vmm: the PIO/MMIO buses, legacy devices (serial, i8042)
//! and virtio devices on the virtio-mmio transport.

pub mod bus;
pub mod legacy;
pub mod virtio;
