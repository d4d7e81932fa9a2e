//! The virtio-vsock device (type 19): three queues (rx, tx, event), `VIRTIO_F_VERSION_1`
//! only (stream sockets; no SEQPACKET), config space = the guest's CID as a le64.
//!
//! The host listener on `<uds>` is bound once in [`Vsock::new`] and lives as long as the
//! device, so host programs may connect before the guest driver is up (they wait in the
//! backlog). Each activation gets its own muxer and worker thread; reset drops them and
//! with them every stream of that driver session.

use crate::confine::seccomp::ThreadKind;
use std::io::ErrorKind;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use super::handler::VsockHandler;
use super::muxer::Muxer;
use crate::devices::virtio::common;
use crate::devices::virtio::worker::Worker;
use crate::devices::virtio::{
    ActivateContext, ActivateError, VirtioDevice, TYPE_VSOCK, VIRTIO_F_VERSION_1,
};

/// Queue size offered for each of rx, tx and event.
pub const QUEUE_SIZE: u16 = 256;
const QUEUE_SIZES: [u16; 3] = [QUEUE_SIZE; 3];

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// CIDs 0–2 are reserved and 2^32-1 means "any"; Linux keeps guest CIDs in 32 bits.
    #[error("vsock: guest CID {0} is invalid; use a value from 3 to 4294967294")]
    InvalidCid(u64),
    /// Something that is not a socket sits where the listener should go.
    #[error("vsock: {0} exists and is not a unix socket; remove it or pick another path")]
    NotASocket(PathBuf),
    /// Another process is listening on the path.
    #[error("vsock: {0} is in use by a live listener (another VM?); pick another path")]
    InUse(PathBuf),
    /// Removing the stale socket or binding failed.
    #[error("vsock: cannot bind {path}: {source}")]
    Bind {
        path: PathBuf,
        source: std::io::Error,
    },
}

pub struct Vsock {
    guest_cid: u64,
    uds_path: PathBuf,
    listener: UnixListener,
    acked_features: u64,
    worker: Option<Worker>,
}

impl Vsock {
    /// Creates the device for a guest with CID `guest_cid`, listening for host programs on
    /// `uds_path` (a stale socket file left by a dead VMM is replaced).
    pub fn new(guest_cid: u64, uds_path: PathBuf) -> Result<Vsock, Error> {
        if !(3..u64::from(u32::MAX)).contains(&guest_cid) {
            return Err(Error::InvalidCid(guest_cid));
        }
        remove_stale_socket(&uds_path)?;
        let listener = UnixListener::bind(&uds_path).map_err(|source| Error::Bind {
            path: uds_path.clone(),
            source,
        })?;
        Ok(Vsock {
            guest_cid,
            uds_path,
            listener,
            acked_features: 0,
            worker: None,
        })
    }

    pub fn guest_cid(&self) -> u64 {
        self.guest_cid
    }

    pub fn uds_path(&self) -> &Path {
        &self.uds_path
    }

    pub fn is_active(&self) -> bool {
        self.worker.is_some()
    }
}

fn remove_stale_socket(path: &Path) -> Result<(), Error> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(Error::Bind {
                path: path.to_owned(),
                source,
            })
        }
    };
    if !meta.file_type().is_socket() {
        return Err(Error::NotASocket(path.to_owned()));
    }
    if UnixStream::connect(path).is_ok() {
        return Err(Error::InUse(path.to_owned()));
    }
    std::fs::remove_file(path).map_err(|source| Error::Bind {
        path: path.to_owned(),
        source,
    })
}

impl VirtioDevice for Vsock {
    fn device_type(&self) -> u32 {
        TYPE_VSOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn avail_features(&self) -> u64 {
        VIRTIO_F_VERSION_1
    }

    fn set_acked_features(&mut self, features: u64) {
        self.acked_features = features & self.avail_features();
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // struct virtio_vsock_config { le64 guest_cid; }
        common::read_config(&self.guest_cid.to_le_bytes(), offset, data);
    }

    fn write_config(&mut self, _offset: u64, _data: &[u8]) {
        // guest_cid is read-only for the driver.
    }

    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        common::check_activate(&self.worker, &ctx, QUEUE_SIZES.len())?;
        let listener = self.listener.try_clone()?;
        let muxer = Muxer::new(self.guest_cid, self.uds_path.clone(), listener)
            .map_err(|e| ActivateError::BackendSetup(Box::new(e)))?;
        let handler = VsockHandler::new(ctx.mem, ctx.queues, ctx.queue_evts, ctx.interrupt, muxer);
        self.worker = Some(Worker::spawn(
            &format!("husk-vsock-{}", self.guest_cid),
            ThreadKind::Vsock,
            vec![Box::new(handler)],
        )?);
        Ok(())
    }

    fn reset(&mut self) -> bool {
        if !common::stop_worker(&mut self.worker, "vsock") {
            return false;
        }
        self.acked_features = 0;
        true
    }
}

impl Drop for Vsock {
    fn drop(&mut self) {
        self.worker.take();
        // Host programs must not find a socket nobody serves. Under seccomp filters no thread
        // may unlink (paths are beyond a filter's reach): whoever started the confined VMM
        // removes it, as husk's backends do.
        if !crate::confine::seccomp::active() {
            let _ = std::fs::remove_file(&self.uds_path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_validates_and_replaces_stale_socket() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("v.sock");
        assert!(matches!(
            Vsock::new(2, p.clone()),
            Err(Error::InvalidCid(2))
        ));
        assert!(matches!(
            Vsock::new(u64::from(u32::MAX), p.clone()),
            Err(Error::InvalidCid(_))
        ));
        // A stale socket (bound, listener gone) is replaced.
        drop(UnixListener::bind(&p).unwrap());
        let v = Vsock::new(3, p.clone()).unwrap();
        assert!(matches!(Vsock::new(4, p.clone()), Err(Error::InUse(_))));
        let mut cfg = [0xaau8; 8];
        v.read_config(0, &mut cfg);
        assert_eq!(cfg, 3u64.to_le_bytes());
        let mut hi = [0xaau8; 4];
        v.read_config(6, &mut hi);
        assert_eq!(hi, [0, 0, 0xaa, 0xaa]);
        assert_eq!((v.device_type(), v.queue_max_sizes().len()), (19, 3));
        drop(v);
        assert!(!p.exists(), "the socket file goes with the device");
        std::fs::write(&p, b"not a socket").unwrap();
        assert!(matches!(Vsock::new(3, p), Err(Error::NotASocket(_))));
    }
}
