//! The husk-vmm backend: one `husk-vmm` process per VM, driven by its command-line flags.
//!
//! Spawning the binary (rather than calling the VMM in-process) keeps one VM per process, as
//! the design wants: a crashing VMM takes down one container, and the runtime can be restarted
//! without touching running VMs.

use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Command;

use super::child::{self, Guarded, Leftovers};
use super::process_vm::ProcessVm;
use super::{virtiofsd, Error, VmBackend, VmHandle, VmSpec};
use crate::util::fs::{is_executable, which};

/// Overrides the husk-vmm binary.
pub const BINARY_ENV: &str = "HUSK_VMM_BIN";

/// Finds husk-vmm: `$HUSK_VMM_BIN`, then beside the running executable (and one level up, for
/// test binaries in `target/*/deps`), then `PATH`.
pub fn find_binary() -> Result<PathBuf, Error> {
    if let Some(p) = child::executable_from_env(BINARY_ENV) {
        return p;
    }
    if let Ok(exe) = std::env::current_exe() {
        let dirs = exe
            .parent()
            .into_iter()
            .chain(exe.parent().and_then(|d| d.parent()));
        for d in dirs {
            let p = d.join("husk-vmm");
            if is_executable(&p) {
                return Ok(p);
            }
        }
    }
    which("husk-vmm").ok_or_else(|| Error::MissingProgram {
        program: "husk-vmm".into(),
        hint: format!("build it (cargo build --bin husk-vmm), put it on PATH or set {BINARY_ENV}"),
    })
}

/// Starts VMs as `husk-vmm` processes.
#[derive(Debug, Clone)]
pub struct HuskVmmBackend {
    pub binary: PathBuf,
    /// Found when the first VM with a shared directory starts.
    pub virtiofsd: Option<PathBuf>,
}

impl HuskVmmBackend {
    pub fn from_env() -> Result<Self, Error> {
        Ok(HuskVmmBackend {
            binary: find_binary()?,
            virtiofsd: None,
        })
    }
}

/// husk-vmm's flags for `spec` (its CLI: `--console file:PATH`,
/// `--disk PATH[,ro][,serial=ID]`, `--vsock CID,UDS`, `--fs TAG,SOCKET` per share (the virtiofsd sockets
/// [`virtiofsd::socket_for`] names), `--append` after its own default command line, which
/// already carries `console=ttyS0 reboot=k panic=1` and the i8042 settings).
///
/// `--net tap=NAME,mac=MAC[,fd=N]` per TAP (the fd, when given, is inherited: see
/// [`inherit_fds`]).
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
    if !spec.cmdline.is_empty() {
        flag("--append", spec.cmdline.join(" "));
    }
    flag("--vcpus", spec.vcpus.to_string());
    flag("--memory", spec.memory_mib.to_string());
    flag("--console", format!("file:{}", spec.console_log.display()));
    for d in &spec.disks {
        let mut v = d.path.display().to_string();
        if d.read_only {
            v.push_str(",ro");
        }
        // VmSpec::validate keeps serials to [A-Za-z0-9_-], a subset of what husk-vmm takes.
        if let Some(s) = &d.serial {
            v.push_str(&format!(",serial={s}"));
        }
        flag("--disk", v);
    }
    if let Some(v) = &spec.vsock {
        flag("--vsock", format!("{},{}", v.cid, v.uds_path.display()));
    }
    for (i, d) in spec.shared_dirs.iter().enumerate() {
        let sock = virtiofsd::socket_for(&spec.console_log, i);
        flag("--fs", format!("{},{}", d.tag, sock.display()));
    }
    for t in &spec.taps {
        let m = t.mac;
        let mut v = format!(
            "tap={},mac={:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            t.tap_name, m[0], m[1], m[2], m[3], m[4], m[5]
        );
        if let Some(fd) = &t.fd {
            v.push_str(&format!(",fd={}", fd.0.as_raw_fd()));
        }
        flag("--net", v);
    }
    a
}

/// Lets the VMM inherit `fds` (pre-opened TAPs) under the same numbers: they are cleared of
/// close-on-exec in the child only, so the parent's copies stay private to it.
pub(super) fn inherit_fds(cmd: &mut Command, fds: Vec<RawFd>) {
    if fds.is_empty() {
        return;
    }
    // SAFETY: the closure runs between fork and exec and only calls fcntl, which is
    // async-signal-safe; it allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            for &fd in &fds {
                if libc::fcntl(fd, libc::F_SETFD, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
}

impl VmBackend for HuskVmmBackend {
    fn name(&self) -> &'static str {
        "husk-vmm"
    }

    fn start(&self, spec: &VmSpec) -> Result<Box<dyn VmHandle>, Error> {
        spec.validate()?;
        let args = args(spec);
        let log = child::open_console_log(&spec.console_log)?;
        let mut leftovers = Leftovers::default();
        if let Some(v) = &spec.vsock {
            // husk-vmm binds it; a stale one from a crashed run would make that fail.
            child::remove_if_exists(&v.uds_path);
            leftovers.files.push(v.uds_path.clone());
        }
        // The same daemons, flags and sockets as the QEMU backend, so both present one guest.
        if !spec.shared_dirs.is_empty() {
            let bin = match &self.virtiofsd {
                Some(b) => b.clone(),
                None => virtiofsd::find_binary()?,
            };
            for (i, share) in spec.shared_dirs.iter().enumerate() {
                let sock = virtiofsd::socket_for(&spec.console_log, i);
                leftovers.files.push(sock.clone());
                let daemon = virtiofsd::start(&bin, share, &sock, &log, &spec.console_log)?;
                leftovers.add_helper(daemon);
            }
        }
        let mut cmd = Command::new(&self.binary);
        cmd.args(args);
        inherit_fds(
            &mut cmd,
            spec.taps
                .iter()
                .filter_map(|t| t.fd.as_ref().map(|f| f.0.as_raw_fd()))
                .collect(),
        );
        child::quiet_stdio(&mut cmd, &log, &spec.console_log)?;
        let vmm = Guarded::spawn("husk-vmm", &mut cmd)?;
        tracing::debug!(pid = vmm.pid(), "husk-vmm started");
        Ok(Box::new(ProcessVm::new(
            vmm,
            leftovers,
            spec.console_log.clone(),
            spec.vsock.as_ref().map(|v| v.uds_path.clone()),
            // Its vsock takes connections at any time, but waiting for the agent's line
            // notices a VMM that died (bad flag, KVM refusing the guest) at once, with its
            // status and last words, rather than as an agent that never answers.
            spec.vsock
                .as_ref()
                .map(|_| husk_protocol::GUEST_READY_MARKER),
        )))
    }
}
