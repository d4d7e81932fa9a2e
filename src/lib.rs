//! husk: containers in KVM microVMs.
//!
//! - [`vmm`]: builds and runs one microVM (KVM, x86_64).
//! - [`devices`]: the buses and the devices husk-vmm emulates.

pub mod devices;
pub mod vmm;
