//! `husk-layer-disk` for QEMU: the read-only NBD export of a VM's layer disk
//! ([`LayerDiskSpec`]), the same composite GPT disk husk-vmm serves in-process, so an image of
//! any layer count takes one of microvm's eight virtio-mmio slots.
//!
//! husk binds the NBD socket and opens the layer files itself and hands both to the daemon as
//! inherited descriptors: the socket listens before QEMU starts (QEMU connects as a client
//! and fails otherwise) with nothing to wait for, and a confined daemon (the VM's own
//! uid, no capabilities, its own namespaces, the VM's cgroup) needs no path into the
//! root-only image store.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::child::{self, Guarded};
use super::{confined, husk_vmm, Error, LayerDiskSpec, VmSpec};
use crate::confine::launch::{self, Confinement};
use crate::devices::virtio::block::composite;

/// Overrides where the binary is looked for.
pub const BINARY_ENV: &str = "HUSK_LAYER_DISK_BIN";

const PROGRAM: &str = "husk-layer-disk";

/// Finds husk-layer-disk: `$HUSK_LAYER_DISK_BIN`, then beside the running executable (and one
/// level up, for test binaries), then `PATH` — where husk-vmm is looked for.
pub fn find_binary() -> Result<PathBuf, Error> {
    husk_vmm::find_husk_binary(PROGRAM, BINARY_ENV)
}

/// The NBD socket of `spec`'s layer disk: beside the vsock socket (whose path leaves
/// room for a suffix in a unix socket address), else beside the console log.
pub fn socket_for(spec: &VmSpec) -> PathBuf {
    let base = match &spec.vsock {
        Some(v) => v.uds_path.as_os_str().to_owned(),
        None => spec.console_log.as_os_str().to_owned(),
    };
    let mut s = base;
    s.push(".blk");
    PathBuf::from(s)
}

/// The capacity QEMU's guest sees the layer disk of `layers` at: the composite disk padded to
/// its size class ([`composite::capacity_class`]), so images whose layers fit one class give
/// disks of one size, and a VM template booted with one serves containers of all of them.
pub fn capacity(layers: &LayerDiskSpec) -> Result<u64, Error> {
    let sizes = layers
        .layers
        .iter()
        .map(|p| {
            std::fs::metadata(p)
                .map(|m| m.len())
                .map_err(|source| Error::File {
                    path: p.clone(),
                    source,
                })
        })
        .collect::<Result<Vec<u64>, Error>>()?;
    Ok(composite::capacity_class(&sizes))
}

/// Starts the daemon for `layers` on `socket` (replacing a stale socket file). With `conf` it
/// runs as the VM's id, in new IPC, UTS and network namespaces, with no capability and
/// `no_new_privs`, in the VM's cgroup.
pub(super) fn start(
    binary: &Path,
    layers: &LayerDiskSpec,
    socket: &Path,
    log: &File,
    log_path: &Path,
    conf: Option<&Confinement>,
) -> Result<Guarded, Error> {
    let file_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| Error::File { path, source }
    };
    child::remove_if_exists(socket);
    let listener = UnixListener::bind(socket).map_err(file_err(socket))?;
    let files = layers
        .layers
        .iter()
        .map(|p| File::open(p).map_err(file_err(p)))
        .collect::<Result<Vec<File>, Error>>()?;
    let mut args = vec!["--socket-fd".to_string(), listener.as_raw_fd().to_string()];
    args.push("--capacity".into());
    args.push(capacity(layers)?.to_string());
    for f in &files {
        args.push("--layer-fd".into());
        args.push(f.as_raw_fd().to_string());
    }
    let mut fds: Vec<_> = files.iter().map(AsRawFd::as_raw_fd).collect();
    fds.push(listener.as_raw_fd());

    let (exe, _exe_fd) = launch::exec_path(binary).map_err(file_err(binary))?;
    let mut cmd = Command::new(exe);
    // Named after the VM's socket: a runtime that sweeps a dead VM's processes finds its
    // helpers by the VM's directory in their command line.
    cmd.arg0(format!("{PROGRAM}@{}", socket.display()))
        .args(&args);
    child::quiet_stdio(&mut cmd, log, log_path)?;
    husk_vmm::inherit_fds(&mut cmd, fds);
    if let Some(conf) = conf {
        confined::as_helper(&mut cmd, conf)?;
    }
    // The parent's copies of the socket and files close when this returns; the daemon's stay.
    Guarded::spawn(PROGRAM, &mut cmd)
}

#[cfg(test)]
mod tests {
    use super::super::tests::{pair, spec_in};
    use super::super::{husk_vmm, qemu, Error, LayerDiskSpec, VsockSpec, MAX_LAYERS};
    use super::*;
    use qemu::Accel;

    /// The layer disk is one virtio-blk device reading the NBD socket beside the vsock socket,
    /// with the spec's serial; husk-vmm gets the layers in its config, as one disk.
    #[test]
    fn the_layer_disk_is_one_device_on_both_backends() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = spec_in(dir.path());
        s.vsock = Some(VsockSpec {
            cid: 7,
            uds_path: "/run/c/vsock".into(),
        });
        s.layer_disk = Some(LayerDiskSpec {
            layers: (0..127)
                .map(|i| PathBuf::from(format!("/l/{i}.erofs")))
                .collect(),
            serial: "husk-layers".into(),
        });
        let sock = socket_for(&s);
        assert_eq!(sock, Path::new("/run/c/vsock.blk"));
        let a = qemu::args(
            &s,
            Accel::Tcg,
            None,
            None,
            &[],
            Some(&sock),
            qemu::Boot::Cold,
        );
        assert_eq!(
            pair(&a, "-blockdev"),
            ["driver=nbd,node-name=layers,server.type=unix,server.path=/run/c/vsock.blk,read-only=on"]
        );
        let devices = pair(&a, "-device");
        assert_eq!(
            devices
                .iter()
                .filter(|d| d.starts_with("virtio-blk-device,drive=layers,serial=husk-layers"))
                .count(),
            1,
            "{devices:?}"
        );
        assert!(
            !a.iter().any(|x| x.contains("/l/0.erofs")),
            "QEMU never opens a layer: {a:?}"
        );
        let cfg = husk_vmm::config(&s);
        let l = cfg.layer_disk.as_ref().unwrap();
        assert_eq!(l.layers.len(), 127);
        assert_eq!(l.serial.as_deref(), Some("husk-layers"));
    }

    #[test]
    fn layer_disk_specs_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let ok = spec_in(dir.path());
        ok.validate().unwrap();
        let layer = dir.path().join("layer.erofs");
        std::fs::write(&layer, b"x").unwrap();
        for (n, serial, what) in [
            (0, "husk-layers", "0 layers"),
            (MAX_LAYERS + 1, "husk-layers", "128 layers"),
            (1, "bad serial", "serial"),
        ] {
            let mut s = ok.clone();
            s.layer_disk = Some(LayerDiskSpec {
                layers: vec![layer.clone(); n],
                serial: serial.into(),
            });
            let err = s.validate().unwrap_err().to_string();
            assert!(err.contains(what), "{err}");
        }
        let mut s = ok.clone();
        s.layer_disk = Some(LayerDiskSpec {
            layers: vec![layer.clone(), dir.path().join("missing")],
            serial: "husk-layers".into(),
        });
        assert!(matches!(
            s.validate(),
            Err(Error::MissingFile {
                what: "layer image",
                ..
            })
        ));
        s.layer_disk.as_mut().unwrap().layers = vec![layer; MAX_LAYERS];
        s.validate().unwrap();
    }
}
