//! The virtio-blk device: features, config space, activate/reset.

use crate::confine::seccomp::ThreadKind;
use std::path::Path;
use std::sync::Arc;

use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX,
};
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};

use super::backend::{BackendError, DiskBackend, RawFile, SECTOR_SIZE};
use super::handler::BlockHandler;
use crate::devices::virtio::common;
use crate::devices::virtio::worker::Worker;
use crate::devices::virtio::{
    ActivateContext, ActivateError, VirtioDevice, TYPE_BLOCK, VIRTIO_F_VERSION_1,
};

/// Descriptors per request queue.
pub const QUEUE_SIZE: u16 = 256;
/// Data segments per request (two descriptors go to header and status).
pub const SEG_MAX: u32 = QUEUE_SIZE as u32 - 2;
/// Bytes of `struct virtio_blk_config` we expose (capacity … blk_size).
const CONFIG_LEN: usize = 24;

/// A virtio-blk device with one request queue.
pub struct Block {
    name: String,
    disk: Arc<dyn DiskBackend>,
    avail_features: u64,
    acked_features: u64,
    config: [u8; CONFIG_LEN],
    worker: Option<Worker>,
}

/// The virtio features husk-vmm's virtio-blk device over `disk` offers.
fn features(disk: &dyn DiskBackend) -> u64 {
    let mut f = VIRTIO_F_VERSION_1
        | 1 << VIRTIO_RING_F_EVENT_IDX
        | 1 << VIRTIO_RING_F_INDIRECT_DESC
        | 1 << VIRTIO_BLK_F_FLUSH
        | 1 << VIRTIO_BLK_F_SEG_MAX
        | 1 << VIRTIO_BLK_F_BLK_SIZE;
    if disk.read_only() {
        f |= 1 << VIRTIO_BLK_F_RO;
    }
    f
}

/// `struct virtio_blk_config` up to `blk_size` for `disk`.
fn config_space(disk: &dyn DiskBackend) -> [u8; CONFIG_LEN] {
    let mut config = [0u8; CONFIG_LEN];
    config[0..8].copy_from_slice(&(disk.capacity() / SECTOR_SIZE).to_le_bytes());
    // size_max (8..12) stays 0: not offered.
    config[12..16].copy_from_slice(&SEG_MAX.to_le_bytes());
    // geometry (16..20) stays 0: not offered.
    config[20..24].copy_from_slice(&(SECTOR_SIZE as u32).to_le_bytes());
    config
}

impl Block {
    /// A device over `disk`; `name` names the worker thread (keep it ≤ 15 bytes).
    pub fn new(name: &str, disk: Arc<dyn DiskBackend>) -> Self {
        Self {
            name: name.to_string(),
            avail_features: features(disk.as_ref()),
            config: config_space(disk.as_ref()),
            disk,
            acked_features: 0,
            worker: None,
        }
    }

    /// A device over the raw image at `path` (opened O_RDONLY when `read_only`).
    pub fn open(name: &str, path: &Path, read_only: bool) -> Result<Self, BackendError> {
        Ok(Self::new(name, Arc::new(RawFile::open(path, read_only)?)))
    }

    pub fn disk(&self) -> &Arc<dyn DiskBackend> {
        &self.disk
    }

    pub fn acked_features(&self) -> u64 {
        self.acked_features
    }
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        TYPE_BLOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn avail_features(&self) -> u64 {
        self.avail_features
    }

    fn set_acked_features(&mut self, features: u64) {
        self.acked_features = features & self.avail_features;
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        common::read_config(&self.config, offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        tracing::debug!(
            "virtio-blk: ignoring {}-byte config write at {offset:#x}",
            data.len()
        );
    }

    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        common::check_activate(&self.worker, &ctx, 1)?;
        let ActivateContext {
            mem,
            queues,
            queue_evts,
            interrupt,
        } = ctx;
        let (Some(queue), Some(evt)) = (queues.into_iter().next(), queue_evts.into_iter().next())
        else {
            return Err(ActivateError::QueueCount {
                expected: 1,
                got: 0,
            });
        };
        let handler = BlockHandler::new(mem, queue, evt, interrupt, self.disk.clone());
        self.worker = Some(Worker::spawn(
            &self.name,
            ThreadKind::Block,
            vec![Box::new(handler)],
        )?);
        Ok(())
    }

    fn reset(&mut self) -> bool {
        if !common::stop_worker(&mut self.worker, &self.name) {
            return false;
        }
        self.acked_features = 0;
        true
    }
}
