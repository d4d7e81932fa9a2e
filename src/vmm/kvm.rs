//! Opening /dev/kvm with errors that say what to do, and checking the capabilities the boot
//! path relies on before anything is built.

use kvm_ioctls::{Cap, Kvm};

use super::probe::KVM_API_VERSION;

#[derive(Debug, thiserror::Error)]
pub enum KvmError {
    /// /dev/kvm does not exist.
    #[error(
        "/dev/kvm not found: KVM is not available on this host (load kvm_intel or \
             kvm_amd, or enable nested virtualisation); `husk-vmm --probe` explains"
    )]
    Missing,
    /// /dev/kvm exists but this process may not open it.
    #[error("/dev/kvm: permission denied: add this user to the kvm group or run as root")]
    PermissionDenied,
    /// Any other failure opening /dev/kvm.
    #[error("cannot open /dev/kvm: {0}")]
    Open(std::io::Error),
    /// The KVM API version is not the stable one.
    #[error("KVM API version {0}, husk-vmm needs {KVM_API_VERSION}")]
    ApiVersion(i32),
    /// A capability the boot path needs is missing.
    #[error("KVM lacks capability {0}, which husk-vmm needs")]
    MissingCap(&'static str),
}

/// What the boot path uses, with the name printed when one is missing.
const REQUIRED_CAPS: &[(Cap, &str)] = &[
    (Cap::Irqchip, "KVM_CAP_IRQCHIP"),
    (Cap::UserMemory, "KVM_CAP_USER_MEMORY"),
    (Cap::SetTssAddr, "KVM_CAP_SET_TSS_ADDR"),
    (Cap::Pit2, "KVM_CAP_PIT2"),
    (Cap::Irqfd, "KVM_CAP_IRQFD"),
    (Cap::Ioeventfd, "KVM_CAP_IOEVENTFD"),
    (Cap::ExtCpuid, "KVM_CAP_EXT_CPUID"),
    // The vCPU kick relies on it: without it a signal can be lost just before KVM_RUN.
    (Cap::ImmediateExit, "KVM_CAP_IMMEDIATE_EXIT"),
];

/// Opens /dev/kvm and checks its API version and capabilities.
pub fn open() -> Result<Kvm, KvmError> {
    let kvm = Kvm::new().map_err(|e| match e.errno() {
        libc::ENOENT | libc::ENODEV | libc::ENXIO => KvmError::Missing,
        libc::EACCES | libc::EPERM => KvmError::PermissionDenied,
        _ => KvmError::Open(e.into()),
    })?;
    let version = kvm.get_api_version();
    if version != KVM_API_VERSION {
        return Err(KvmError::ApiVersion(version));
    }
    for (cap, name) in REQUIRED_CAPS {
        if !kvm.check_extension(*cap) {
            return Err(KvmError::MissingCap(name));
        }
    }
    Ok(kvm)
}
