//! The husk-vmm backend: one `husk-vmm` process per VM, given its [`VmmConfig`] as a JSON file.
//!
//! Spawning the binary (rather than calling the VMM in-process) keeps one VM per process, as
//! the design wants: a crashing VMM takes down one container, and the runtime can be restarted
//! without touching running VMs.

use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::child::{self, Leftovers};
use super::confined;
use super::process_vm::ProcessVm;
use super::{virtiofsd, Error, VmBackend, VmHandle, VmSpec};
use crate::confine::jail::JailConfig;
use crate::confine::launch;
use crate::util::fs::{is_executable, which};
use crate::util::timings;
use crate::vmm::config::{
    ConsoleConfig, DiskConfig, FsConfig, LayerDiskConfig, MacAddr, NetConfig, SeccompMode,
    VmmConfig, VsockConfig,
};

/// Overrides the husk-vmm binary.
pub const BINARY_ENV: &str = "HUSK_VMM_BIN";

/// Finds husk-vmm ([`find_husk_binary`] with `$HUSK_VMM_BIN`).
pub fn find_binary() -> Result<PathBuf, Error> {
    find_husk_binary("husk-vmm", BINARY_ENV)
}

/// Finds one of husk's own binaries, `name`: `$env`, then beside the running executable (and
/// one level up, for test binaries in `target/*/deps`), then `PATH`.
pub fn find_husk_binary(name: &str, env: &str) -> Result<PathBuf, Error> {
    if let Some(p) = child::executable_from_env(env) {
        return p;
    }
    if let Ok(exe) = std::env::current_exe() {
        let dirs = exe
            .parent()
            .into_iter()
            .chain(exe.parent().and_then(|d| d.parent()));
        for d in dirs {
            let p = d.join(name);
            if is_executable(&p) {
                return Ok(p);
            }
        }
    }
    which(name).ok_or_else(|| Error::MissingProgram {
        program: name.into(),
        hint: format!("build it (cargo build --bin {name}), put it on PATH or set {env}"),
    })
}

/// Starts VMs as `husk-vmm` processes.
#[derive(Debug, Clone)]
pub struct HuskVmmBackend {
    pub binary: PathBuf,
    /// Found when the first VM with a shared directory starts.
    pub virtiofsd: Option<PathBuf>,
    /// Start husk-vmm jailed and filtered (`confine`, docs/security.md); off only with
    /// `HUSK_JAIL=off`.
    pub confine: bool,
}

impl HuskVmmBackend {
    pub fn from_env() -> Result<Self, Error> {
        Ok(HuskVmmBackend {
            binary: find_binary()?,
            virtiofsd: None,
            confine: launch::enabled(),
        })
    }
}

/// husk-vmm's [`VmmConfig`] for `spec`, handed over as JSON (`--config`, see [`config_file_for`]):
/// the console appended to `spec.console_log`, one virtio-fs device per share on the socket
/// its virtiofsd listens on ([`virtiofsd::socket_for`]), `append` after husk-vmm's own default
/// command line (which already carries `console=ttyS0 reboot=k panic=1` and the i8042
/// settings), and each TAP by name, with its pre-opened fd when it has one (inherited under the
/// same number: see [`inherit_fds`]).
pub fn config(spec: &VmSpec) -> VmmConfig {
    let mut cfg = VmmConfig::new(&spec.kernel);
    cfg.initramfs = spec.initramfs.clone();
    cfg.append = (!spec.cmdline.is_empty()).then(|| spec.cmdline.join(" "));
    cfg.vcpus = spec.vcpus;
    cfg.memory_mib = spec.memory_mib;
    cfg.console = ConsoleConfig::File(spec.console_log.clone());
    cfg.layer_disk = spec.layer_disk.as_ref().map(|l| LayerDiskConfig {
        layers: l.layers.clone(),
        serial: Some(l.serial.clone()),
    });
    cfg.disks = spec
        .disks
        .iter()
        .map(|d| DiskConfig {
            path: d.path.clone(),
            read_only: d.read_only,
            serial: d.serial.clone(),
        })
        .collect();
    cfg.vsock = spec.vsock.as_ref().map(|v| VsockConfig {
        cid: v.cid,
        uds: v.uds_path.clone(),
    });
    cfg.fs = spec
        .shared_dirs
        .iter()
        .enumerate()
        .map(|(i, d)| FsConfig {
            tag: d.tag.clone(),
            socket: virtiofsd::socket_for(&spec.console_log, i),
        })
        .collect();
    cfg.net = spec
        .taps
        .iter()
        .map(|t| NetConfig {
            tap: Some(t.tap_name.clone()),
            fd: t.fd.as_ref().map(|f| f.0.as_raw_fd()),
            mac: Some(MacAddr(t.mac)),
        })
        .collect();
    cfg
}

/// Where the VM's husk-vmm config is written: beside its console log
/// (`console.log.husk-vmm.json`), for the VM's lifetime; it goes with the VM's other files.
/// It names inherited TAPs by fd number, so only a VM without a NIC can be re-run from it by
/// hand (`husk-vmm --config FILE`).
pub fn config_file_for(console_log: &Path) -> PathBuf {
    let mut s = console_log.as_os_str().to_owned();
    s.push(".husk-vmm.json");
    PathBuf::from(s)
}

/// Writes `spec`'s config where [`config_file_for`] says, owner-only from its creation (it
/// names every file and socket of the VM), after checking it as husk-vmm will, so that a VM
/// husk-vmm would refuse fails here with the reason rather than as a VMM that exited. On an
/// error nothing is left behind.
pub(super) fn write_config(spec: &VmSpec, jail: Option<JailConfig>) -> Result<PathBuf, Error> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut cfg = config(spec);
    match jail {
        Some(j) => {
            cfg.jail = Some(j);
            cfg.seccomp = launch::seccomp_mode();
        }
        // Unconfined on request (`HUSK_JAIL=off`): no filters either.
        None => cfg.seccomp = SeccompMode::Off,
    }
    cfg.validate().map_err(Error::VmmConfig)?;
    let path = config_file_for(&spec.console_log);
    let fail = |source| Error::File {
        path: path.clone(),
        source,
    };
    // A path that is not UTF-8 cannot be written as JSON.
    let json = serde_json::to_vec_pretty(&cfg).map_err(|e| fail(std::io::Error::other(e)))?;
    // A stale file of a crashed run would keep its old mode: start afresh.
    child::remove_if_exists(&path);
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .and_then(|mut f| f.write_all(&json));
    if let Err(e) = written {
        child::remove_if_exists(&path);
        return Err(fail(e));
    }
    Ok(path)
}

/// What husk-vmm's cgroup allows beyond guest memory: its own heap, stacks and device
/// buffers (measured idle: a few MiB), with room; one pid per thread it may run.
fn overhead(spec: &VmSpec) -> confined::Overhead {
    confined::Overhead {
        memory_mib: 64,
        pids: max_threads(spec) + 2,
    }
}

/// husk-vmm's threads: main, the spawner, the vCPUs, one worker per device, the fast-exit
/// helper, and slack for a device reset racing its old worker's exit.
fn max_threads(spec: &VmSpec) -> u64 {
    let devices = spec.disks.len()
        + usize::from(spec.layer_disk.is_some())
        + spec.taps.len()
        + spec.shared_dirs.len()
        + usize::from(spec.vsock.is_some());
    (3 + usize::from(spec.vcpus) + 2 * devices) as u64 + 4
}

/// Open files husk-vmm may hold: its devices' fds and the vsock connections of the host
/// and guest.
const MAX_OPEN_FILES: u64 = 4096;

/// The console log may grow to this much (RLIMIT_FSIZE, unless a writable disk is larger).
pub const CONSOLE_LOG_LIMIT: u64 = 64 << 20;

/// husk-vmm's jail for `spec`, as `ids`: its root on husk's empty directory, the vsock
/// socket's directory inside (for guest-initiated connections), rlimits from the VM.
fn jail_for(spec: &VmSpec, ids: crate::confine::launch::Ids) -> Result<JailConfig, Error> {
    let root = launch::empty_dir().map_err(|source| Error::File {
        path: launch::EMPTY_DIR.into(),
        source,
    })?;
    let largest_writable_disk = spec
        .disks
        .iter()
        .filter(|d| !d.read_only)
        .filter_map(|d| std::fs::metadata(&d.path).ok())
        .map(|m| m.len())
        .max()
        .unwrap_or(0);
    Ok(JailConfig {
        root,
        uid: ids.uid,
        gid: ids.gid,
        binds: spec
            .vsock
            .as_ref()
            .and_then(|v| v.uds_path.parent())
            .map(Path::to_path_buf)
            .into_iter()
            .collect(),
        max_open_files: MAX_OPEN_FILES,
        max_file_bytes: largest_writable_disk.max(CONSOLE_LOG_LIMIT),
        max_threads: max_threads(spec),
    })
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
        let log = child::open_console_log(&spec.console_log)?;
        let mut leftovers = Leftovers::default();
        let confinement = confined::for_vm(spec, overhead(spec), self.confine)?;
        let jail = match &confinement {
            Some(c) => Some(jail_for(spec, c.ids())?),
            None => None,
        };
        let config = write_config(spec, jail)?;
        leftovers.files.push(config.clone());
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
        timings::mark("helper daemons");
        let mut cmd = Command::new(&self.binary);
        cmd.arg("--config").arg(&config);
        inherit_fds(
            &mut cmd,
            spec.taps
                .iter()
                .filter_map(|t| t.fd.as_ref().map(|f| f.0.as_raw_fd()))
                .collect(),
        );
        child::quiet_stdio(&mut cmd, &log, &spec.console_log)?;
        // husk-vmm enters its other namespaces and drops its capabilities itself, once the
        // VM is built.
        let vmm = confined::spawn("husk-vmm", &mut cmd, confinement.as_ref(), 0, None)?;
        leftovers.confinement = confinement;
        timings::mark("VMM spawn");
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
