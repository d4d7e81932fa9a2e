//! Can this host run husk-vmm Linux guests? Gathers the facts (/dev/kvm, KVM API version,
//! PVM, CPU virtualisation flags, KVM modules) and decides, with the reason in words.
//!
//! The one place these facts are read: `husk-vmm --probe` decides with [`HostProbe`],
//! `husk system check` reports them, and the backend seam (`backend::host`) derives QEMU's
//! KVM-or-TCG choice from the same [`HostFacts`]. The decision is a pure function of
//! [`HostFacts`] so it is unit-tested.

use std::fs::OpenOptions;
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use serde::Serialize;

/// The KVM API version every kernel since 2.6.22 reports; anything else is not KVM as we
/// know it.
pub const KVM_API_VERSION: i32 = 12;

/// What was found on the host, before any decision.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct HostFacts {
    pub kvm_device_present: bool,
    /// Error text when /dev/kvm exists but cannot be opened read-write.
    pub kvm_open_error: Option<String>,
    pub kvm_api_version: Option<i32>,
    /// `/sys/module/kvm_pvm` exists: KVM runs guests as PVM (paravirtualised, no hardware
    /// virtualisation), where a stock Linux guest crawls through the instruction emulator.
    pub pvm: bool,
    /// `vmx` or `svm` in /proc/cpuinfo.
    pub cpu_virt_flag: Option<String>,
    /// Loaded among kvm_intel, kvm_amd, kvm_pvm.
    pub kvm_modules: Vec<String>,
}

/// The verdict plus the facts behind it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HostProbe {
    #[serde(flatten)]
    pub facts: HostFacts,
    pub can_run_linux_guests: bool,
    /// Why not (or a one-line summary of why yes).
    pub reason: String,
}

impl HostFacts {
    /// Reads the facts from the live system.
    pub fn gather() -> Self {
        Self::gather_at(Path::new("/"))
    }

    /// Reads the facts under `root` (tests point this at a fake tree; the /dev/kvm open and
    /// API query only happen for the real root).
    pub fn gather_at(root: &Path) -> Self {
        let dev = root.join("dev/kvm");
        let mut facts = HostFacts {
            kvm_device_present: dev.exists(),
            ..Default::default()
        };
        if facts.kvm_device_present && root == Path::new("/") {
            match OpenOptions::new().read(true).write(true).open(&dev) {
                Ok(f) => facts.kvm_api_version = Some(api_version(&f)),
                Err(e) => facts.kvm_open_error = Some(e.to_string()),
            }
        }
        let modules = root.join("sys/module");
        facts.pvm = modules.join("kvm_pvm").exists();
        facts.kvm_modules = ["kvm_intel", "kvm_amd", "kvm_pvm"]
            .into_iter()
            .filter(|m| modules.join(m).exists())
            .map(String::from)
            .collect();
        facts.cpu_virt_flag = cpu_virt_flag(&root.join("proc/cpuinfo")).ok().flatten();
        facts
    }

    /// Whether /dev/kvm opened read-write, or the error text of the attempt (a missing
    /// device reads as the open's own "No such file or directory").
    pub fn kvm_open(&self) -> Result<(), String> {
        if !self.kvm_device_present {
            return Err(io::Error::from_raw_os_error(libc::ENOENT).to_string());
        }
        match &self.kvm_open_error {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    }

    /// `kvm_intel` or `kvm_amd` loaded, or a vmx/svm CPU flag: KVM backed by hardware
    /// virtualisation.
    pub fn hw_virt(&self) -> bool {
        self.cpu_virt_flag.is_some()
            || self
                .kvm_modules
                .iter()
                .any(|m| m == "kvm_intel" || m == "kvm_amd")
    }
}

fn api_version(kvm: &std::fs::File) -> i32 {
    // KVM_GET_API_VERSION = _IO(KVMIO, 0x00); it takes no argument and touches no memory.
    const KVM_GET_API_VERSION: libc::c_ulong = 0xae00;
    // SAFETY: an argument-less ioctl on a file descriptor we own.
    unsafe { libc::ioctl(kvm.as_raw_fd(), KVM_GET_API_VERSION as _, 0) }
}

/// The first of `vmx`/`svm` in the `flags` line of a cpuinfo file.
fn cpu_virt_flag(cpuinfo: &PathBuf) -> io::Result<Option<String>> {
    let text = std::fs::read_to_string(cpuinfo)?;
    Ok(text
        .lines()
        .filter(|l| l.starts_with("flags"))
        .flat_map(|l| l.split_whitespace())
        .find(|f| *f == "vmx" || *f == "svm")
        .map(String::from))
}

impl HostProbe {
    pub fn run() -> Self {
        Self::decide(HostFacts::gather())
    }

    /// The decision. Order matters: the first blocking fact is the reason given.
    pub fn decide(facts: HostFacts) -> Self {
        let no = |reason: String| (false, reason);
        let (can, reason) = if !facts.kvm_device_present {
            no(
                "/dev/kvm is missing: load kvm_intel or kvm_amd, or enable virtualisation \
                (nested virtualisation on a cloud VM)"
                    .into(),
            )
        } else if let Some(e) = &facts.kvm_open_error {
            no(format!(
                "/dev/kvm cannot be opened read-write ({e}): add this user to the \
                        kvm group or fix its permissions"
            ))
        } else if facts.kvm_api_version != Some(KVM_API_VERSION) {
            no(format!(
                "KVM API version {:?}, husk-vmm needs {KVM_API_VERSION}",
                facts.kvm_api_version
            ))
        } else if facts.pvm {
            no(
                "PVM detected (/sys/module/kvm_pvm): KVM ioctls work, but a stock Linux guest \
                runs only through KVM's instruction emulator (minutes to boot); use the QEMU \
                backend on this host"
                    .into(),
            )
        } else if !facts.hw_virt() {
            no(
                "no vmx/svm CPU flag and neither kvm_intel nor kvm_amd loaded: this /dev/kvm \
                is not backed by hardware virtualisation"
                    .into(),
            )
        } else {
            let how = facts
                .cpu_virt_flag
                .clone()
                .unwrap_or_else(|| facts.kvm_modules.join(","));
            (
                true,
                format!("KVM API {KVM_API_VERSION} with hardware virtualisation ({how})"),
            )
        };
        Self {
            facts,
            can_run_linux_guests: can,
            reason,
        }
    }

    /// Human-readable report, one fact a line, verdict last.
    pub fn report(&self) -> String {
        let f = &self.facts;
        let yn = |b: bool| if b { "yes" } else { "no" };
        let mut s = String::new();
        s.push_str(&format!(
            "/dev/kvm present:     {}\n",
            yn(f.kvm_device_present)
        ));
        let access = match &f.kvm_open_error {
            Some(e) => format!("no ({e})"),
            None => yn(f.kvm_api_version.is_some()).to_string(),
        };
        s.push_str(&format!("/dev/kvm accessible:  {access}\n"));
        let api = f.kvm_api_version.map_or("-".to_string(), |v| v.to_string());
        s.push_str(&format!("KVM API version:      {api}\n"));
        s.push_str(&format!("PVM (kvm_pvm):        {}\n", yn(f.pvm)));
        s.push_str(&format!(
            "CPU virt flag:        {}\n",
            f.cpu_virt_flag.as_deref().unwrap_or("none")
        ));
        let mods = if f.kvm_modules.is_empty() {
            "none".into()
        } else {
            f.kvm_modules.join(" ")
        };
        s.push_str(&format!("KVM modules:          {mods}\n"));
        let verdict = if self.can_run_linux_guests {
            "yes"
        } else {
            "no"
        };
        s.push_str(&format!(
            "can run Linux guests: {verdict}: {}\n",
            self.reason
        ));
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn good() -> HostFacts {
        HostFacts {
            kvm_device_present: true,
            kvm_open_error: None,
            kvm_api_version: Some(KVM_API_VERSION),
            pvm: false,
            cpu_virt_flag: Some("vmx".into()),
            kvm_modules: vec!["kvm_intel".into()],
        }
    }

    #[test]
    fn hardware_kvm_can_run() {
        let p = HostProbe::decide(good());
        assert!(p.can_run_linux_guests, "{}", p.reason);
        assert!(p.reason.contains("vmx"));
    }

    #[test]
    fn each_blocker_is_named() {
        type Spoil = fn(&mut HostFacts);
        let cases: Vec<(Spoil, &str)> = vec![
            (|f| f.kvm_device_present = false, "missing"),
            (
                |f| f.kvm_open_error = Some("Permission denied".into()),
                "Permission denied",
            ),
            (|f| f.kvm_api_version = Some(11), "API version"),
            (|f| f.pvm = true, "PVM detected"),
            (
                |f| {
                    f.cpu_virt_flag = None;
                    f.kvm_modules.clear()
                },
                "no vmx/svm",
            ),
        ];
        for (spoil, word) in cases {
            let mut f = good();
            spoil(&mut f);
            let p = HostProbe::decide(f);
            assert!(!p.can_run_linux_guests);
            assert!(p.reason.contains(word), "{} lacks {word}", p.reason);
        }
    }

    #[test]
    fn gathers_from_a_fake_root() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("sys/module/kvm_pvm")).unwrap();
        std::fs::create_dir_all(dir.path().join("proc")).unwrap();
        std::fs::write(dir.path().join("proc/cpuinfo"), "flags\t: fpu svm sse\n").unwrap();
        let f = HostFacts::gather_at(dir.path());
        assert!(f.pvm && !f.kvm_device_present);
        assert_eq!(f.cpu_virt_flag.as_deref(), Some("svm"));
        assert_eq!(f.kvm_modules, vec!["kvm_pvm".to_string()]);
    }

    #[test]
    fn report_and_json_carry_the_verdict() {
        let p = HostProbe::decide(HostFacts {
            pvm: true,
            ..good()
        });
        assert!(p
            .report()
            .contains("can run Linux guests: no: PVM detected"));
        let j = serde_json::to_value(&p).unwrap();
        assert_eq!(j["can_run_linux_guests"], false);
        assert_eq!(j["pvm"], true);
    }
}
