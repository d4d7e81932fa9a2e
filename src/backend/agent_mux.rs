//! `husk-agent-mux` for QEMU: the agent's channel. QEMU gives the guest a virtio-serial port
//! (`husk.agent`) whose chardev connects to the daemon's link socket; the daemon serves
//! Firecracker's hybrid vsock protocol on the VM's vsock socket path and carries each
//! connection over the port, so clients reach the agent as through husk-vmm's vsock device.
//! (QEMU 7.2 cannot migrate a vhost-user vsock device; a serial port migrates.)
//!
//! husk binds both sockets itself and hands them to the daemon as inherited descriptors, as
//! for husk-layer-disk: they listen before QEMU starts, with nothing to wait for, and a
//! confined daemon (the VM's own uid, no capabilities, its own namespaces, the VM's cgroup)
//! needs no path of its own.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::child::{self, Guarded};
use super::{confined, husk_vmm, Error, VsockSpec};
use crate::confine::launch::{self, Confinement};

/// Overrides where the binary is looked for.
pub const BINARY_ENV: &str = "HUSK_AGENT_MUX_BIN";

pub const PROGRAM: &str = "husk-agent-mux";

/// The name the guest finds its port by.
pub const PORT_NAME: &str = "husk.agent";

/// Finds husk-agent-mux: `$HUSK_AGENT_MUX_BIN`, then beside the running executable (and one
/// level up, for test binaries), then `PATH`.
pub fn find_binary() -> Result<PathBuf, Error> {
    husk_vmm::find_husk_binary(PROGRAM, BINARY_ENV)
}

/// The socket QEMU's chardev connects to, beside the vsock socket (whose path leaves room
/// for a suffix in a unix socket address).
pub fn link_socket_for(vsock: &VsockSpec) -> PathBuf {
    let mut s = vsock.uds_path.clone().into_os_string();
    s.push(".serial");
    PathBuf::from(s)
}

/// Binds the VM's vsock socket and `link` (replacing stale socket files) and starts the
/// daemon on them. With `conf` it runs as the VM's id, in new IPC, UTS and network
/// namespaces, with no capability and `no_new_privs`, in the VM's cgroup.
pub(super) fn start(
    binary: &Path,
    vsock: &VsockSpec,
    link: &Path,
    log: &File,
    log_path: &Path,
    conf: Option<&Confinement>,
) -> Result<Guarded, Error> {
    let bind = |path: &Path| {
        child::remove_if_exists(path);
        UnixListener::bind(path).map_err(|source| Error::File {
            path: path.to_path_buf(),
            source,
        })
    };
    let clients = bind(&vsock.uds_path)?;
    let qemu_side = bind(link)?;
    // A confined daemon's uid may not walk to the binary (husk's tools can live under root's
    // home): it execs it through a descriptor opened here.
    let mut _exe_fd = None;
    let exe = match conf {
        Some(_) => {
            let (path, fd) = launch::exec_path(binary).map_err(|source| Error::File {
                path: binary.to_path_buf(),
                source,
            })?;
            _exe_fd = Some(fd);
            path
        }
        None => binary.to_path_buf(),
    };
    let mut cmd = Command::new(exe);
    // Named after the VM's socket: a runtime that sweeps a dead VM's processes finds its
    // helpers by the VM's directory in their command line.
    cmd.arg0(format!("{PROGRAM}@{}", vsock.uds_path.display()))
        .args(args(clients.as_raw_fd(), qemu_side.as_raw_fd()));
    child::quiet_stdio(&mut cmd, log, log_path)?;
    husk_vmm::inherit_fds(&mut cmd, vec![clients.as_raw_fd(), qemu_side.as_raw_fd()]);
    if let Some(conf) = conf {
        confined::as_helper(&mut cmd, conf)?;
    }
    // The parent's copies of the sockets close when this returns; the daemon's stay.
    Guarded::spawn(PROGRAM, &mut cmd)
}

fn args(clients: i32, qemu_side: i32) -> Vec<String> {
    vec![
        "--listen-fd".into(),
        clients.to_string(),
        "--link-fd".into(),
        qemu_side.to_string(),
    ]
}

/// QEMU's arguments for the port: a virtio-serial bus with the one port on the link socket.
pub fn qemu_args(link: &Path) -> [String; 6] {
    [
        "-device".into(),
        // Port 0 stays the (unused) console's; the agent's is port 1.
        "virtio-serial-device,max_ports=2".into(),
        "-chardev".into(),
        format!("socket,id=agent,path={}", link.display()),
        "-device".into(),
        format!("virtserialport,chardev=agent,name={PORT_NAME},nr=1"),
    ]
}
