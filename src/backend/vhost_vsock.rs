//! `vhost-device-vsock`: the vhost-user backend that gives QEMU's `vhost-user-vsock-device` a
//! host side speaking Firecracker's hybrid unix-socket protocol, the same one husk-vmm serves.
//!
//! It must be listening on its vhost-user socket before QEMU starts (QEMU connects as a client
//! and fails otherwise), and it outlives a QEMU that exits, so the handle kills it by pid.

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::child::{self, Guarded};
use super::confined;
use super::listening::{ListenTable, Starting};
use super::{Error, VsockSpec};
use crate::confine::launch::{self, Confinement};

/// The version `scripts/install-vhost-device-vsock.sh` installs.
pub const VERSION: &str = "0.3.0";

/// Overrides where the binary is looked for.
pub const BINARY_ENV: &str = "HUSK_VHOST_DEVICE_VSOCK";

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

/// Spawns the daemon; it will listen on `vhost_socket` ([`Starting::ready`] waits for that).
/// Stale sockets from a previous run are removed first: the daemon refuses to bind over them.
///
/// With `conf` the daemon runs as the VM's own id, in new IPC, UTS and network namespaces,
/// with no capability and `no_new_privs`, in the VM's cgroup: it binds its two sockets in a
/// directory that id owns ([`launch::socket_dir`]), and `vhost_socket` and the VM's vsock
/// socket are symlinks to them (a unix-socket connect follows them; root connects to both).
pub(super) fn launch(
    binary: &Path,
    vsock: &VsockSpec,
    vhost_socket: &Path,
    log: &File,
    log_path: &Path,
    conf: Option<&mut Confinement>,
) -> Result<Starting, Error> {
    child::remove_if_exists(vhost_socket);
    child::remove_if_exists(&vsock.uds_path);
    let Some(conf) = conf else {
        let mut cmd = Command::new(binary);
        cmd.args(args(vsock, vhost_socket));
        child::quiet_stdio(&mut cmd, log, log_path)?;
        return Ok(Starting {
            daemon: Guarded::spawn("vhost-device-vsock", &mut cmd)?,
            socket: vhost_socket.to_path_buf(),
            table: ListenTable::Host,
        });
    };
    let file_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| Error::File { path, source }
    };
    let dir = launch::socket_dir(conf.ids()).map_err(file_err(Path::new(launch::ID_LEASE_DIR)))?;
    let own = VsockSpec {
        cid: vsock.cid,
        uds_path: dir.path().join("vsock"),
    };
    let own_vhost = vhost_socket_for(&own);
    for (link, target) in [
        (&vsock.uds_path, &own.uds_path),
        (&vhost_socket.to_path_buf(), &own_vhost),
    ] {
        std::os::unix::fs::symlink(target, link).map_err(file_err(link))?;
    }
    conf.helper_sockets = Some(dir);
    let (exe, _exe_fd) = launch::exec_path(binary).map_err(file_err(binary))?;
    let mut cmd = Command::new(exe);
    // Named after the VM's socket path: a runtime that sweeps a dead VM's processes finds
    // its helpers by the VM's directory in their command line.
    cmd.arg0(format!("vhost-device-vsock@{}", vsock.uds_path.display()))
        .args(args(&own, &own_vhost));
    child::quiet_stdio(&mut cmd, log, log_path)?;
    confined::as_helper(&mut cmd, conf)?;
    Ok(Starting {
        daemon: Guarded::spawn("vhost-device-vsock", &mut cmd)?,
        socket: own_vhost,
        table: ListenTable::OfDaemon,
    })
}
