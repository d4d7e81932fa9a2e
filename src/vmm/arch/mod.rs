//! Architecture-specific boot code. x86_64 only for now; aarch64 would sit beside it.

#[cfg(target_arch = "x86_64")]
pub mod x86_64;
