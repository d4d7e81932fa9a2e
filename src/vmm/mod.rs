//! husk-vmm: builds and runs one KVM microVM.
//!
//! [`builder::Vmm`] reads top to bottom: open KVM, guest memory, irqchip + PIT, devices
//! ([`attach`] — the hook point for virtio devices), kernel + initramfs + cmdline, boot
//! structures ([`arch`]), vCPUs; then [`builder::Vmm::run`] until the guest resets.

pub mod arch;
pub mod attach;
pub mod builder;
pub mod cli;
pub mod config;
pub mod console;
pub mod device_manager;
pub mod exit;
pub mod kvm;
pub mod loader;
pub mod memory;
pub mod net_config;
pub mod probe;
pub mod teardown;
pub mod vcpu;

pub use builder::{Vmm, VmmError};
pub use config::VmmConfig;
pub use exit::ExitReason;
