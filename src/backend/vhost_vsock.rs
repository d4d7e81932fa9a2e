//! `vhost-device-vsock`: the vhost-user backend that gives QEMU's `vhost-user-vsock-device` a
//! host side speaking Firecracker's hybrid unix-socket protocol, the same one husk-vmm serves.
//!
//! It must be listening on its vhost-user socket before QEMU starts (QEMU connects as a client
//! and fails otherwise), and it outlives a QEMU that exits, so the handle kills it by pid.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use super::child::{self, Guarded};
use super::{Error, VsockSpec};

/// The version `scripts/install-vhost-device-vsock.sh` installs.
pub const VERSION: &str = "0.3.0";

/// Overrides where the binary is looked for.
pub const BINARY_ENV: &str = "HUSK_VHOST_DEVICE_VSOCK";

/// How long the daemon may take to create its vhost-user socket.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// Finds the binary: `$HUSK_VHOST_DEVICE_VSOCK`, then the install script's location under the
/// husk cache, then `PATH`.
pub fn find_binary() -> Result<PathBuf, Error> {
    let cached = cache_dir().join(format!(
        "tools/vhost-device-vsock-{VERSION}/bin/vhost-device-vsock"
    ));
    child::find_helper(
        BINARY_ENV,
        &cached,
        "vhost-device-vsock",
        &[],
        format!(
            "the QEMU backend needs it for vsock; run scripts/install-vhost-device-vsock.sh \
             (cargo install vhost-device-vsock@{VERSION}) or set {BINARY_ENV}"
        ),
    )
}

pub(super) fn cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("HUSK_CACHE") {
        return PathBuf::from(d);
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
    Path::new(&home).join(".cache/husk")
}

/// The vhost-user socket QEMU connects to, beside the hybrid socket so it shares its
/// lifetime and directory.
pub fn vhost_socket_for(vsock: &VsockSpec) -> PathBuf {
    let mut s = vsock.uds_path.clone().into_os_string();
    s.push(".vhost");
    PathBuf::from(s)
}

/// The daemon's arguments for one VM.
pub fn args(vsock: &VsockSpec, vhost_socket: &Path) -> Vec<String> {
    vec![
        "--vm".into(),
        format!(
            "guest-cid={},socket={},uds-path={}",
            vsock.cid,
            vhost_socket.display(),
            vsock.uds_path.display()
        ),
    ]
}

/// Whether a unix socket is bound at `path` and listening, from `/proc/net/unix` (probing with
/// connect() would make us the daemon's vhost-user frontend).
pub fn is_listening(path: &Path) -> bool {
    const SO_ACCEPTCON: u32 = 0x0001_0000;
    let Ok(table) = std::fs::read_to_string("/proc/net/unix") else {
        return false;
    };
    let want = path.as_os_str().to_string_lossy();
    table.lines().skip(1).any(|line| {
        // Num RefCount Protocol Flags Type St Inode Path
        let f: Vec<&str> = line.split_whitespace().collect();
        f.len() >= 8
            && f[7..].join(" ") == want
            && u32::from_str_radix(f[3], 16).is_ok_and(|flags| flags & SO_ACCEPTCON != 0)
    })
}

/// Starts the daemon and waits until it listens on its vhost-user socket. Stale sockets from a
/// previous run are removed first: the daemon refuses to bind over them.
pub(super) fn start(
    binary: &Path,
    vsock: &VsockSpec,
    vhost_socket: &Path,
    log: &File,
    log_path: &Path,
) -> Result<Guarded, Error> {
    child::remove_if_exists(vhost_socket);
    child::remove_if_exists(&vsock.uds_path);
    let mut cmd = Command::new(binary);
    cmd.args(args(vsock, vhost_socket));
    child::quiet_stdio(&mut cmd, log, log_path)?;
    let daemon = Guarded::spawn("vhost-device-vsock", &mut cmd)?;
    let deadline = Instant::now() + READY_TIMEOUT;
    let mut pause = Duration::from_millis(1);
    loop {
        // The file appears at bind(), before listen(): QEMU connecting in between is
        // refused and exits, so wait for the listening state itself.
        if is_listening(vhost_socket) {
            return Ok(daemon);
        }
        let status = daemon.try_wait().map_err(|source| Error::Process {
            op: "wait",
            pid: daemon.pid(),
            source,
        })?;
        if let Some(status) = status {
            return Err(Error::HelperDied {
                program: "vhost-device-vsock".into(),
                status,
                log: log_path.to_path_buf(),
            });
        }
        if Instant::now() >= deadline {
            return Err(Error::HelperTimeout {
                program: "vhost-device-vsock".into(),
                path: vhost_socket.to_path_buf(),
                secs: READY_TIMEOUT.as_secs(),
                log: log_path.to_path_buf(),
            });
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(20));
    }
}
