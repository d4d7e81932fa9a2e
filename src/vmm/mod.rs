//! husk-vmm: builds and runs one KVM microVM.

pub mod arch;
