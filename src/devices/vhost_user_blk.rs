//! A vhost-user-blk backend over any [`DiskBackend`]: how QEMU's `vhost-user-blk` device
//! reaches a disk that only husk can serve, the composite layer disk
//! ([`CompositeDisk`](super::virtio::block::CompositeDisk)). Requests go through the same
//! [`request::process`] as husk-vmm's own virtio-blk device, and the device offers the same
//! features and config space ([`device::features`], [`device::config_space`]), so a guest sees
//! the same disk on both backends.
//!
//! One queue, served on the daemon's vring thread; guest memory arrives from the frontend
//! (`VHOST_USER_SET_MEM_TABLE`) and every descriptor is checked against it by
//! [`request::process`] as for husk-vmm's own device.

use std::io;
use std::sync::{Arc, RwLock};

use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost::vhost_user::Listener;
use vhost_user_backend::{VhostUserBackend, VhostUserDaemon, VringRwLock, VringT};
use virtio_queue::QueueT;
use vm_memory::{GuestAddressSpace, GuestMemoryAtomic};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{
    new_event_consumer_and_notifier, EventConsumer, EventFlag, EventNotifier,
};

use super::virtio::block::device::{self, CONFIG_LEN};
use super::virtio::block::{request, DiskBackend};
use super::virtio::GuestMemory;

/// Why serving ended badly. vhost-user-backend's error is no `std::error::Error`, so its text
/// is what is kept.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("starting the vhost-user-blk daemon: {0}")]
    Start(String),
    #[error("serving the vhost-user frontend: {0}")]
    Serve(String),
}

/// Serves `disk` to the first frontend that connects to `listener` until it hangs up (a
/// QEMU that exits): one VM, one connection, as QEMU's vhost-user-blk device expects.
pub fn serve(listener: &mut Listener, disk: Arc<dyn DiskBackend>) -> Result<(), Error> {
    let backend = Arc::new(VhostUserBlk::new(disk));
    let mut daemon = VhostUserDaemon::new(
        "husk-vhost-blk".into(),
        backend,
        GuestMemoryAtomic::new(GuestMemory::default()),
    )
    .map_err(|e| Error::Start(e.to_string()))?;
    daemon
        .start(listener)
        .map_err(|e| Error::Start(e.to_string()))?;
    match daemon.wait() {
        Ok(()) => Ok(()),
        // The frontend going away is how a VM ends.
        Err(vhost_user_backend::Error::HandleRequest(
            vhost::vhost_user::Error::Disconnected | vhost::vhost_user::Error::PartialMessage,
        )) => Ok(()),
        Err(e) => Err(Error::Serve(e.to_string())),
    }
}

/// The largest queue a frontend may set up.
const MAX_QUEUE_SIZE: usize = 1024;

/// The memory the frontend hands over.
type Mem = GuestMemoryAtomic<GuestMemory>;

/// The backend: one disk, one queue.
pub struct VhostUserBlk {
    disk: Arc<dyn DiskBackend>,
    features: u64,
    config: [u8; CONFIG_LEN],
    mem: RwLock<Option<Mem>>,
}

impl VhostUserBlk {
    pub fn new(disk: Arc<dyn DiskBackend>) -> Self {
        Self {
            features: device::features(disk.as_ref()),
            config: device::config_space(disk.as_ref()),
            disk,
            mem: RwLock::new(None),
        }
    }

    /// Serves every available request of `vring`; returns how many were completed.
    fn process_queue(&self, vring: &VringRwLock<Mem>) -> io::Result<usize> {
        let Some(mem) = self
            .mem
            .read()
            .map_err(|_| io::Error::other("memory lock poisoned"))?
            .clone()
        else {
            return Err(io::Error::other("a queue kick before the memory table"));
        };
        let mut done = 0usize;
        loop {
            vring.disable_notification().map_err(io::Error::other)?;
            let mut progressed = false;
            loop {
                let guard = mem.memory();
                let chain = vring
                    .get_mut()
                    .get_queue_mut()
                    .pop_descriptor_chain(guard.clone());
                let Some(chain) = chain else { break };
                progressed = true;
                let head = chain.head_index();
                let out = request::process(&guard, chain, self.disk.as_ref());
                vring
                    .add_used(head, out.used_len)
                    .map_err(io::Error::other)?;
                done += 1;
            }
            // true: more arrived while notifications were off.
            match vring.enable_notification().map_err(io::Error::other)? {
                true if progressed => continue,
                _ => break,
            }
        }
        if done > 0 && vring.needs_notification().unwrap_or(true) {
            vring.signal_used_queue()?;
        }
        Ok(done)
    }
}

impl VhostUserBackend for VhostUserBlk {
    type Bitmap = ();
    type Vring = VringRwLock<Mem>;

    fn num_queues(&self) -> usize {
        1
    }

    /// QEMU's vhost-user-blk sets up 1024 entries whatever its `queue-size` (measured with
    /// QEMU 7.2 on virtio-mmio); the guest's requests stay bounded by the config's seg_max.
    fn max_queue_size(&self) -> usize {
        MAX_QUEUE_SIZE
    }

    fn features(&self) -> u64 {
        self.features | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()
    }

    /// CONFIG: QEMU's vhost-user-blk reads capacity and limits from the backend.
    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::CONFIG | VhostUserProtocolFeatures::MQ
    }

    fn set_event_idx(&self, _enabled: bool) {}

    /// Bytes of the config space; out-of-range parts read as zeros (never a panic on what
    /// the frontend asks).
    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        let mut out = vec![0u8; (size as usize).min(4096)];
        crate::devices::virtio::common::read_config(&self.config, u64::from(offset), &mut out);
        out
    }

    /// How the vring thread is told to end once the frontend hung up (without one, the
    /// daemon's drop would wait for it forever).
    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        new_event_consumer_and_notifier(EventFlag::NONBLOCK | EventFlag::CLOEXEC).ok()
    }

    fn update_memory(&self, mem: Mem) -> io::Result<()> {
        *self
            .mem
            .write()
            .map_err(|_| io::Error::other("memory lock poisoned"))? = Some(mem);
        Ok(())
    }

    fn handle_event(
        &self,
        device_event: u16,
        evset: EventSet,
        vrings: &[Self::Vring],
        _thread_id: usize,
    ) -> io::Result<()> {
        if evset != EventSet::IN {
            return Err(io::Error::other(format!("unexpected event set {evset:?}")));
        }
        let vring = vrings
            .get(usize::from(device_event))
            .ok_or_else(|| io::Error::other(format!("no queue {device_event}")))?;
        self.process_queue(vring).map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::block::composite::{self, CompositeDisk};
    use virtio_bindings::virtio_blk::VIRTIO_BLK_F_RO;

    #[test]
    fn features_and_config_are_husk_vmm_devices_and_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let paths: Vec<_> = (0..3)
            .map(|i| {
                let p = dir.path().join(format!("l{i}"));
                std::fs::write(&p, vec![i as u8 + 1; 4096 * (i + 1)]).unwrap();
                p
            })
            .collect();
        let disk = Arc::new(CompositeDisk::open(&composite::indexed_layers(&paths)).unwrap());
        let b = VhostUserBlk::new(disk.clone());
        assert_eq!(
            b.features() & !VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits(),
            device::features(disk.as_ref())
        );
        assert_ne!(b.features() & (1 << VIRTIO_BLK_F_RO), 0, "read-only");
        let cfg = b.get_config(0, CONFIG_LEN as u32);
        assert_eq!(cfg, device::config_space(disk.as_ref()));
        assert_eq!(
            u64::from_le_bytes(cfg[..8].try_into().unwrap()) * 512,
            disk.capacity()
        );
        // Whatever a frontend asks, a bounded answer and no panic.
        assert_eq!(b.get_config(u32::MAX, 8), vec![0; 8]);
        assert_eq!(b.get_config(0, u32::MAX).len(), 4096);
        assert!(b.handle_event(5, EventSet::IN, &[], 0).is_err());
    }
}
