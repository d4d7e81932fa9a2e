//! The husk-vmm backend: one `husk-vmm` process per VM, driven by its command-line flags.
//!
//! Spawning the binary (rather than calling the VMM in-process) keeps one VM per process, as
//! the design wants: a crashing VMM takes down one container, and the runtime can be restarted
//! without touching running VMs.

use std::path::PathBuf;
use std::process::Command;

use super::child::{self, Guarded, Leftovers, ProcessVm};
use super::{Error, VmBackend, VmHandle, VmSpec};

/// Overrides the husk-vmm binary.
pub const BINARY_ENV: &str = "HUSK_VMM_BIN";

/// Finds husk-vmm: `$HUSK_VMM_BIN`, then beside the running executable (and one level up, for
/// test binaries in `target/*/deps`), then `PATH`.
pub fn find_binary() -> Result<PathBuf, Error> {
    if let Some(p) = std::env::var_os(BINARY_ENV) {
        let p = PathBuf::from(p);
        return if child::is_executable(&p) {
            Ok(p)
        } else {
            Err(Error::MissingProgram {
                program: p.display().to_string(),
                hint: format!("{BINARY_ENV} does not name an executable"),
            })
        };
    }
    if let Ok(exe) = std::env::current_exe() {
        let dirs = exe
            .parent()
            .into_iter()
            .chain(exe.parent().and_then(|d| d.parent()));
        for d in dirs {
            let p = d.join("husk-vmm");
            if child::is_executable(&p) {
                return Ok(p);
            }
        }
    }
    child::which("husk-vmm").ok_or_else(|| Error::MissingProgram {
        program: "husk-vmm".into(),
        hint: format!("build it (cargo build --bin husk-vmm), put it on PATH or set {BINARY_ENV}"),
    })
}

/// Kernel arguments every guest of this backend gets. `reboot=k`: husk-vmm emulates the
/// i8042 reset line and ends the VM (status 0) when the agent's reboot(2) pulses it;
/// `panic=-1` turns a guest panic into the same reset.
pub const BOOT_ARGS: &[&str] = &["console=ttyS0", "reboot=k", "panic=-1"];

/// Starts VMs as `husk-vmm` processes.
#[derive(Debug, Clone)]
pub struct HuskVmmBackend {
    pub binary: PathBuf,
}

impl HuskVmmBackend {
    pub fn from_env() -> Result<Self, Error> {
        Ok(HuskVmmBackend {
            binary: find_binary()?,
        })
    }
}

/// husk-vmm's flags for `spec`.
pub fn args(spec: &VmSpec) -> Vec<String> {
    let mut a: Vec<String> = Vec::new();
    let mut flag = |k: &str, v: String| {
        a.push(k.to_string());
        a.push(v);
    };
    flag("--kernel", spec.kernel.display().to_string());
    if let Some(i) = &spec.initramfs {
        flag("--initramfs", i.display().to_string());
    }
    let cmdline: Vec<&str> = BOOT_ARGS
        .iter()
        .copied()
        .chain(spec.cmdline.iter().map(String::as_str))
        .collect();
    flag("--cmdline", cmdline.join(" "));
    flag("--vcpus", spec.vcpus.to_string());
    flag("--memory", spec.memory_mib.to_string());
    flag("--console", spec.console_log.display().to_string());
    for d in &spec.disks {
        let mut v = d.path.display().to_string();
        if d.read_only {
            v.push_str(",ro");
        }
        if let Some(s) = &d.serial {
            v.push_str(&format!(",serial={s}"));
        }
        flag("--disk", v);
    }
    if let Some(v) = &spec.vsock {
        flag("--vsock", format!("{},{}", v.cid, v.uds_path.display()));
    }
    a
}

impl VmBackend for HuskVmmBackend {
    fn name(&self) -> &'static str {
        "husk-vmm"
    }

    fn start(&self, spec: &VmSpec) -> Result<Box<dyn VmHandle>, Error> {
        spec.validate()?;
        let log = child::open_console_log(&spec.console_log)?;
        let mut leftovers = Leftovers::default();
        if let Some(v) = &spec.vsock {
            // husk-vmm binds it; a stale one from a crashed run would make that fail.
            child::remove_if_exists(&v.uds_path);
            leftovers.files.push(v.uds_path.clone());
        }
        let mut cmd = Command::new(&self.binary);
        cmd.args(args(spec));
        child::quiet_stdio(&mut cmd, &log, &spec.console_log)?;
        let vmm = Guarded::spawn("husk-vmm", &mut cmd)?;
        tracing::debug!(pid = vmm.pid(), "husk-vmm started");
        Ok(Box::new(ProcessVm::new(
            vmm,
            leftovers,
            spec.console_log.clone(),
            spec.vsock.as_ref().map(|v| v.uds_path.clone()),
        )))
    }
}
