//! The virtio-net device (type 1): an rx and a tx queue, config space = MAC + link status
//! (+ `max_virtqueue_pairs` = 1), offloads offered as the TAP allows.
//!
//! The TAP, opened by the caller (by name or from an inherited fd), lives as long as the
//! device. Each activation gets a duplicate of its fd, set to the offloads the guest accepted, and its
//! own worker thread; reset stops the worker and drops that session's queues and any frame
//! it held.

use crate::confine::seccomp::ThreadKind;
use std::sync::Arc;

use super::handler::NetHandler;
pub use super::handler::NetStats;
use super::{features as f, Tap};
use crate::devices::virtio::common;
use crate::devices::virtio::worker::Worker;
use crate::devices::virtio::{
    ActivateContext, ActivateError, VirtioDevice, TYPE_NET, VIRTIO_F_VERSION_1,
};

/// Queue size offered for rx and tx.
pub const QUEUE_SIZE: u16 = 256;
const QUEUE_SIZES: [u16; 2] = [QUEUE_SIZE; 2];

/// `VIRTIO_NET_S_LINK_UP`.
const LINK_UP: u16 = 1;

/// Virtio features for the TUN_F_* offloads a TAP accepts. Each guest-side offload needs
/// the TAP to hand over such frames (TUNSETOFFLOAD); the host-side one is paired with it so
/// the device offers both directions or neither.
pub fn offload_features(tun_offloads: u32) -> u64 {
    let mut v = 0;
    if tun_offloads & libc::TUN_F_CSUM != 0 {
        v |= f::CSUM | f::GUEST_CSUM;
        if tun_offloads & libc::TUN_F_TSO4 != 0 {
            v |= f::HOST_TSO4 | f::GUEST_TSO4;
        }
        if tun_offloads & libc::TUN_F_TSO6 != 0 {
            v |= f::HOST_TSO6 | f::GUEST_TSO6;
        }
    }
    v
}

/// TUN_F_* flags for what the guest accepted on rx: the kernel then hands over only frames
/// the guest can take. A guest TSO without GUEST_CSUM is invalid and ignored.
pub fn tun_offloads_for(acked: u64) -> u32 {
    let mut t = 0;
    if acked & f::GUEST_CSUM != 0 {
        t |= libc::TUN_F_CSUM;
        if acked & f::GUEST_TSO4 != 0 {
            t |= libc::TUN_F_TSO4;
        }
        if acked & f::GUEST_TSO6 != 0 {
            t |= libc::TUN_F_TSO6;
        }
    }
    t
}

pub struct Net {
    tap: Tap,
    mac: [u8; 6],
    avail_features: u64,
    acked_features: u64,
    stats: Arc<NetStats>,
    worker: Option<Worker>,
    /// Worker thread name (≤ 15 bytes).
    thread_name: String,
}

impl Net {
    /// A device on `tap` with guest MAC `mac`; `index` only names the worker thread.
    pub fn new(tap: Tap, mac: [u8; 6], index: usize) -> Net {
        let avail_features = VIRTIO_F_VERSION_1
            | f::MAC
            | f::STATUS
            | f::RING_EVENT_IDX
            | offload_features(tap.supported_offloads());
        Net {
            tap,
            mac,
            avail_features,
            acked_features: 0,
            stats: Arc::new(NetStats::default()),
            worker: None,
            thread_name: format!("husk-net{index}"),
        }
    }

    /// The device's counters (live across activations).
    pub fn stats(&self) -> Arc<NetStats> {
        self.stats.clone()
    }

    pub fn tap_name(&self) -> &str {
        self.tap.name()
    }

    pub fn is_active(&self) -> bool {
        self.worker.is_some()
    }

    fn config(&self) -> [u8; 10] {
        let mut c = [0u8; 10];
        c[..6].copy_from_slice(&self.mac);
        c[6..8].copy_from_slice(&LINK_UP.to_le_bytes());
        c[8..10].copy_from_slice(&1u16.to_le_bytes());
        c
    }
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        TYPE_NET
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn avail_features(&self) -> u64 {
        self.avail_features
    }

    fn set_acked_features(&mut self, features: u64) {
        self.acked_features = features & self.avail_features;
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        common::read_config(&self.config(), offset, data);
    }

    fn write_config(&mut self, _offset: u64, _data: &[u8]) {
        // The MAC is writable only with VIRTIO_NET_F_CTRL_MAC_ADDR (legacy), not offered.
    }

    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        let n = QUEUE_SIZES.len();
        common::check_activate(&self.worker, &ctx, n)?;
        let tap = self.tap.try_clone()?;
        tap.set_offload(tun_offloads_for(self.acked_features))
            .map_err(|e| ActivateError::BackendSetup(Box::new(e)))?;
        let mut queues = ctx.queues.into_iter();
        let mut evts = ctx.queue_evts.into_iter();
        let (Some(rxq), Some(txq), Some(rx_evt), Some(tx_evt)) =
            (queues.next(), queues.next(), evts.next(), evts.next())
        else {
            return Err(ActivateError::QueueCount {
                expected: n,
                got: 0,
            });
        };
        let handler = NetHandler::new(
            ctx.mem,
            rxq,
            txq,
            rx_evt,
            tx_evt,
            ctx.interrupt,
            tap,
            self.acked_features,
            self.stats.clone(),
        );
        self.worker = Some(Worker::spawn(
            &self.thread_name,
            ThreadKind::Net,
            vec![Box::new(handler)],
        )?);
        Ok(())
    }

    fn reset(&mut self) -> bool {
        tracing::debug!("virtio-net {}: reset; {}", self.tap.name(), self.stats);
        if !common::stop_worker(&mut self.worker, &format!("virtio-net {}", self.tap.name())) {
            return false;
        }
        self.acked_features = 0;
        // Back to complete frames only until the next driver negotiates.
        if let Err(e) = self.tap.set_offload(0) {
            tracing::warn!("virtio-net: {e}");
        }
        true
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        self.worker.take();
        tracing::debug!("virtio-net {}: {}", self.tap.name(), self.stats);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offloads_map_both_ways() {
        let all = libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6;
        let feats = offload_features(all);
        assert_eq!(tun_offloads_for(feats), all);
        assert_eq!(offload_features(0), 0);
        // TSO without checksum offload is not something a TAP can do.
        assert_eq!(offload_features(libc::TUN_F_TSO4), 0);
        assert_eq!(offload_features(libc::TUN_F_CSUM), f::CSUM | f::GUEST_CSUM);
        // A guest that took GUEST_TSO4 without GUEST_CSUM gets neither.
        assert_eq!(tun_offloads_for(f::GUEST_TSO4), 0);
        assert_eq!(
            tun_offloads_for(f::GUEST_CSUM | f::GUEST_TSO6),
            libc::TUN_F_CSUM | libc::TUN_F_TSO6
        );
    }
}
