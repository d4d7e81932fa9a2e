//! `--vmm auto|husk|qemu`: which backend runs the VMs.

use std::fmt;
use std::str::FromStr;

use super::host;

/// The environment variable that sets the default backend (`auto`, `husk` or `qemu`).
pub const VMM_ENV: &str = "HUSK_VMM";

/// Which VM backend to use.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum BackendKind {
    /// husk-vmm where the host's KVM can run it, QEMU otherwise.
    #[default]
    Auto,
    /// husk's own VMM (needs KVM that runs a stock Linux guest).
    Husk,
    /// QEMU microvm, with KVM when usable, TCG otherwise.
    Qemu,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown VM backend {0:?}: expected auto, husk or qemu")]
pub struct ParseBackendKindError(pub String);

impl FromStr for BackendKind {
    type Err = ParseBackendKindError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" | "" => Ok(BackendKind::Auto),
            "husk" | "husk-vmm" => Ok(BackendKind::Husk),
            "qemu" => Ok(BackendKind::Qemu),
            _ => Err(ParseBackendKindError(s.to_string())),
        }
    }
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BackendKind::Auto => "auto",
            BackendKind::Husk => "husk",
            BackendKind::Qemu => "qemu",
        })
    }
}

impl BackendKind {
    /// The default from `HUSK_VMM`, `Auto` when unset. A flag (`--vmm`) overrides it.
    pub fn from_env() -> Result<Self, ParseBackendKindError> {
        match std::env::var(VMM_ENV) {
            Ok(v) => v.parse(),
            Err(_) => Ok(BackendKind::Auto),
        }
    }

    /// The flag if given, else the environment's default.
    pub fn from_flag_or_env(flag: Option<&str>) -> Result<Self, ParseBackendKindError> {
        match flag {
            Some(f) => f.parse(),
            None => Self::from_env(),
        }
    }

    /// Starts the host probe that [`resolve`](Self::resolve) and the husk-vmm backend wait
    /// for (`husk-vmm --probe`, once per process) on a thread of its own, so that it runs
    /// beside the caller's other work before the VM starts (1.5 ms on this project's
    /// machine, ~110 ms in the nested-KVM rig's L1). Nothing for QEMU, which asks no probe.
    /// A process that ends first leaves the probe to finish and be reaped alone. The thread
    /// takes no signal (it starts with all of them blocked), so a caller's signal handling,
    /// `pod::attach::forward_signals` included, is as it would be without it.
    pub fn probe_ahead(self) {
        use nix::sys::signal::{SigSet, SigmaskHow};
        if self == BackendKind::Qemu {
            return;
        }
        let Ok(mask) = SigSet::all().thread_swap_mask(SigmaskHow::SIG_BLOCK) else {
            return;
        };
        let _ = std::thread::Builder::new()
            .name("husk-probe".into())
            .spawn(host::husk_vmm_usable);
        let _ = mask.thread_set_mask();
    }

    /// Turns `Auto` into a concrete backend by probing the host; others stay as they are.
    pub fn resolve(self) -> BackendKind {
        match self {
            BackendKind::Auto => {
                let kvm = host::husk_vmm_usable();
                let picked = if kvm.usable {
                    BackendKind::Husk
                } else {
                    BackendKind::Qemu
                };
                tracing::debug!(backend = %picked, reason = %kvm.reason, "vmm=auto picked a VM backend");
                picked
            }
            other => other,
        }
    }
}
