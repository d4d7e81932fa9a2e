//! husk: containers in KVM microVMs.
//!
//! - [`vmm`]: builds and runs one microVM (KVM, x86_64).
//! - [`devices`]: the buses and the devices husk-vmm emulates.
//! - [`agent`]: the host client of the guest agent, over the VM's vsock socket.
//! - [`sandbox`]: the VM-backend seam (husk-vmm or QEMU) the runtime starts VMs through.

pub mod agent;
pub mod devices;
pub mod image;
pub mod sandbox;
pub mod vmm;
