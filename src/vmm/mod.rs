//! husk-vmm: builds and runs one KVM microVM.

pub mod arch;
pub mod cli;
pub mod config;
pub mod probe;
pub mod exit;
pub mod kvm;
pub mod memory;
pub mod vcpu;
