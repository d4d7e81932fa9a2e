//! What this host can run: KVM able to boot a stock Linux guest (husk-vmm, QEMU `-accel kvm`)
//! or only TCG.
//!
//! `/dev/kvm` existing is not enough: on PVM hosts (`kvm_pvm`, nested clouds without
//! hardware virtualisation) KVM only runs PVM-patched guests, and a stock kernel dies early.
//! This is the one place that decides. For husk-vmm it asks `husk-vmm --probe` (husk-vmm's
//! own judgement, `husk::vmm::probe`); for QEMU's accelerator it applies its own rule to the
//! facts `husk::vmm::probe` gathers.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use crate::vmm::probe::HostFacts;

/// A yes/no answer with the reason, for debug logs and `husk system check`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    pub usable: bool,
    pub reason: String,
}

impl Probe {
    fn yes(reason: impl Into<String>) -> Self {
        Probe {
            usable: true,
            reason: reason.into(),
        }
    }
    fn no(reason: impl Into<String>) -> Self {
        Probe {
            usable: false,
            reason: reason.into(),
        }
    }
}

/// The facts the decision rests on, gathered apart from the rule so the rule is testable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvmFacts {
    /// `/dev/kvm` opened read-write, or why not.
    pub dev_kvm: Result<(), String>,
    /// `/sys/module/kvm_pvm` exists.
    pub pvm: bool,
    /// `kvm_intel` or `kvm_amd` is loaded, or the CPU flags show vmx/svm.
    pub hw_virt: bool,
}

impl KvmFacts {
    pub fn gather() -> Self {
        Self::from(&HostFacts::gather())
    }

    /// Whether KVM here can run a stock Linux guest.
    pub fn decide(&self) -> Probe {
        if let Err(e) = &self.dev_kvm {
            return Probe::no(e.clone());
        }
        if self.pvm && !self.hw_virt {
            return Probe::no(
                "/dev/kvm is PVM (kvm_pvm loaded, no vmx/svm): it cannot run a stock Linux guest",
            );
        }
        if !self.hw_virt {
            return Probe::no("no kvm_intel/kvm_amd and no vmx/svm CPU flag");
        }
        Probe::yes("/dev/kvm with hardware virtualisation")
    }
}

impl From<&HostFacts> for KvmFacts {
    fn from(f: &HostFacts) -> Self {
        KvmFacts {
            dev_kvm: f
                .kvm_open()
                .map_err(|e| format!("cannot open /dev/kvm: {e}")),
            pvm: f.pvm,
            hw_virt: f.hw_virt(),
        }
    }
}

/// Whether KVM here can run a stock Linux guest (QEMU `-accel kvm`, husk-vmm).
pub fn kvm_runs_stock_guests() -> Probe {
    KvmFacts::gather().decide()
}

/// Whether husk-vmm can run guests on this host: husk-vmm is found and its own
/// `--probe` says yes (exit 0; 2 means no). Asked once per process.
pub fn husk_vmm_usable() -> Probe {
    static ANSWER: OnceLock<Probe> = OnceLock::new();
    ANSWER.get_or_init(probe_husk_vmm).clone()
}

fn probe_husk_vmm() -> Probe {
    match super::husk_vmm::find_binary() {
        Ok(bin) => probe_binary(&bin),
        Err(e) => Probe::no(e.to_string()),
    }
}

/// Runs `bin --probe --json` and reads its verdict from the exit status, with husk-vmm's
/// own reason (the JSON's `reason`) when it gives one.
pub fn probe_binary(bin: &Path) -> Probe {
    let mut cmd = Command::new(bin);
    cmd.args(["--probe", "--json"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let out = super::child::spawn_retrying(&mut cmd).and_then(|c| c.wait_with_output());
    match out {
        Ok(o) if o.status.success() => Probe::yes(format!(
            "{} --probe: {}",
            bin.display(),
            probe_reason(&o.stdout).unwrap_or_else(|| "this host can run Linux guests".into())
        )),
        Ok(o) if o.status.code() == Some(2) => Probe::no(format!(
            "{} --probe: this host cannot run Linux guests: {}",
            bin.display(),
            probe_reason(&o.stdout).unwrap_or_else(|| "run it for the reason".into())
        )),
        Ok(o) => Probe::no(format!("{} --probe failed ({})", bin.display(), o.status)),
        Err(e) => Probe::no(format!("cannot run {} --probe: {e}", bin.display())),
    }
}

/// The `reason` of a `husk-vmm --probe --json` report (bounded: it ends up in one line).
fn probe_reason(json: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(json).ok()?;
    let r = v.get("reason")?.as_str()?.trim();
    (!r.is_empty()).then(|| r.chars().take(400).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pvm_without_hardware_virt_is_not_usable() {
        let f = KvmFacts {
            dev_kvm: Ok(()),
            pvm: true,
            hw_virt: false,
        };
        let p = f.decide();
        assert!(!p.usable);
        assert!(p.reason.contains("PVM"), "{}", p.reason);
    }

    #[test]
    fn hardware_virt_is_usable() {
        assert!(
            KvmFacts {
                dev_kvm: Ok(()),
                pvm: false,
                hw_virt: true
            }
            .decide()
            .usable
        );
    }

    #[test]
    fn husk_vmm_probe_verdict_comes_from_its_exit_status() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let fake = |code: i32| {
            let p = dir.path().join(format!("husk-vmm-{code}"));
            std::fs::write(
                &p,
                format!("#!/bin/sh\n[ \"$1\" = --probe ] || exit 9\nexit {code}\n"),
            )
            .unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
            p
        };
        assert!(probe_binary(&fake(0)).usable);
        let no = probe_binary(&fake(2));
        assert!(
            !no.usable
                && no
                    .reason
                    .contains("cannot run Linux guests: run it for the reason"),
            "{}",
            no.reason
        );
        // husk-vmm's own reason, from its JSON report, is carried into ours.
        let p = dir.path().join("husk-vmm-json");
        std::fs::write(
            &p,
            "#!/bin/sh\n[ \"$1 $2\" = \"--probe --json\" ] || exit 9\n\
             echo '{\"can_run_linux_guests\": false, \"reason\": \"PVM detected (test)\"}'\n\
             exit 2\n",
        )
        .unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        let no = probe_binary(&p);
        assert!(
            !no.usable
                && no
                    .reason
                    .ends_with("cannot run Linux guests: PVM detected (test)"),
            "{}",
            no.reason
        );
        let broken = probe_binary(&fake(1));
        assert!(
            !broken.usable && broken.reason.contains("failed"),
            "{}",
            broken.reason
        );
    }

    #[test]
    fn facts_come_from_the_host_probe() {
        let f = KvmFacts::from(&HostFacts {
            kvm_device_present: false,
            pvm: true,
            kvm_modules: vec!["kvm_pvm".into()],
            ..Default::default()
        });
        assert_eq!(
            f.dev_kvm,
            Err("cannot open /dev/kvm: No such file or directory (os error 2)".into())
        );
        assert!(f.pvm && !f.hw_virt);
        let f = KvmFacts::from(&HostFacts {
            kvm_device_present: true,
            kvm_api_version: Some(12),
            cpu_virt_flag: Some("vmx".into()),
            ..Default::default()
        });
        assert!(f.dev_kvm.is_ok() && f.hw_virt && f.decide().usable);
    }

    #[test]
    fn no_dev_kvm_says_why() {
        let f = KvmFacts {
            dev_kvm: Err("cannot open /dev/kvm: ENOENT".into()),
            pvm: false,
            hw_virt: true,
        };
        let p = f.decide();
        assert!(!p.usable);
        assert!(p.reason.contains("/dev/kvm"));
    }
}
