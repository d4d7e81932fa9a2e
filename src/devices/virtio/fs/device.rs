//! The vhost-user-fs device: config space, features, and the handover to the backend.

use crate::confine::seccomp::ThreadKind;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use virtio_queue::QueueT;
use vm_memory::{GuestAddress, GuestMemoryBackend};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::handler::{OnBackendGone, Relay};
use crate::devices::virtio::common;
use crate::devices::virtio::worker::Worker;
use crate::devices::virtio::{ActivateContext, ActivateError, VirtioDevice, VIRTIO_F_VERSION_1};

/// Virtio device id of virtio-fs (virtio 1.2, 5.11).
pub const TYPE_FS: u32 = 26;
/// Bytes of the tag field in config space; a shorter tag is NUL-padded.
pub const TAG_LEN: usize = 36;
/// One high-priority queue and one request queue.
pub const NUM_QUEUES: usize = 2;
/// What QEMU's vhost-user-fs-device offers by default is 128; virtiofsd takes up to 1024.
pub const QUEUE_SIZE: u16 = 1024;
const QUEUE_SIZES: [u16; NUM_QUEUES] = [QUEUE_SIZE; NUM_QUEUES];

/// Ring features passed through from the backend to the driver, besides VERSION_1.
const RING_FEATURES: u64 = (1 << virtio_bindings::virtio_ring::VIRTIO_RING_F_INDIRECT_DESC)
    | (1 << virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("virtio-fs tag {0:?}: use 1 to {TAG_LEN} bytes, no NUL")]
    Tag(String),
    #[error("virtio-fs {tag}: cannot connect to the vhost-user backend at {socket}: {reason}; is virtiofsd running there?")]
    Connect {
        tag: String,
        socket: PathBuf,
        #[source]
        reason: vhost::Error,
    },
    #[error("virtio-fs {tag}: vhost-user {op} with the backend at {socket} failed: {reason}")]
    Handshake {
        tag: String,
        socket: PathBuf,
        op: &'static str,
        #[source]
        reason: vhost::Error,
    },
    #[error("virtio-fs {tag}: the backend at {socket} does not offer VIRTIO_F_VERSION_1")]
    NotModern { tag: String, socket: PathBuf },
}

pub struct VhostUserFs {
    tag: String,
    socket: PathBuf,
    frontend: Frontend,
    backend_features: u64,
    protocol_features: bool,
    acked_features: u64,
    on_gone: OnBackendGone,
    worker: Option<Worker>,
}

impl VhostUserFs {
    /// Connects to the backend listening on `socket` and negotiates what can be negotiated
    /// before a driver shows up. `on_gone` is called (once, from the worker thread) with a
    /// one-line reason if the backend hangs up while the device is active.
    pub fn connect(tag: &str, socket: &Path, on_gone: OnBackendGone) -> Result<Self, Error> {
        if tag.is_empty() || tag.len() > TAG_LEN || tag.contains('\0') {
            return Err(Error::Tag(tag.into()));
        }
        let mut frontend =
            Frontend::connect(socket, NUM_QUEUES as u64).map_err(|e| Error::Connect {
                tag: tag.into(),
                socket: socket.into(),
                reason: e,
            })?;
        fn hs<'a>(
            tag: &'a str,
            socket: &'a Path,
            op: &'static str,
        ) -> impl FnOnce(vhost::Error) -> Error + 'a {
            move |reason| Error::Handshake {
                tag: tag.into(),
                socket: socket.into(),
                op,
                reason,
            }
        }
        let hs = |op| hs(tag, socket, op);
        frontend.set_owner().map_err(hs("SET_OWNER"))?;
        let backend_features = frontend.get_features().map_err(hs("GET_FEATURES"))?;
        if backend_features & VIRTIO_F_VERSION_1 == 0 {
            return Err(Error::NotModern {
                tag: tag.into(),
                socket: socket.into(),
            });
        }
        let protocol_features =
            backend_features & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits() != 0;
        if protocol_features {
            let offered = frontend
                .get_protocol_features()
                .map_err(hs("GET_PROTOCOL_FEATURES"))?;
            // REPLY_ACK turns every request into a round trip that reports failure; nothing
            // else is needed for a static memory table and no DAX window.
            let want = offered & VhostUserProtocolFeatures::REPLY_ACK;
            frontend
                .set_protocol_features(want)
                .map_err(hs("SET_PROTOCOL_FEATURES"))?;
        }
        Ok(VhostUserFs {
            tag: tag.into(),
            socket: socket.into(),
            frontend,
            backend_features,
            protocol_features,
            acked_features: 0,
            on_gone,
            worker: None,
        })
    }

    pub fn tag(&self) -> &str {
        &self.tag
    }

    pub fn is_active(&self) -> bool {
        self.worker.is_some()
    }

    fn what(&self) -> String {
        format!("virtio-fs {} ({})", self.tag, self.socket.display())
    }

    fn hand_over(&mut self, ctx: &ActivateContext) -> Result<Vec<EventFd>, String> {
        fn fail<E: std::fmt::Display>(op: &'static str) -> impl FnOnce(E) -> String {
            move |e| format!("{op}: {e}")
        }
        let mut features = self.acked_features;
        if self.protocol_features {
            features |= VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
        }
        self.frontend
            .set_features(features)
            .map_err(fail("SET_FEATURES"))?;
        let mut regions = Vec::new();
        for r in ctx.mem.iter() {
            regions.push(
                VhostUserMemoryRegionInfo::from_guest_region(r).map_err(|_| {
                    "guest memory is not shareable (no memfd behind it): husk-vmm backs it with \
                 a memfd whenever a --fs share is configured"
                        .to_string()
                })?,
            );
        }
        self.frontend
            .set_mem_table(&regions)
            .map_err(fail("SET_MEM_TABLE"))?;
        let hva = |gpa: u64| -> Result<u64, String> {
            ctx.mem
                .get_host_address(GuestAddress(gpa))
                .map(|p| p as u64)
                .map_err(|e| format!("ring address {gpa:#x}: {e}"))
        };
        let mut calls = Vec::new();
        for (i, q) in ctx.queues.iter().enumerate() {
            self.frontend
                .set_vring_num(i, q.size())
                .map_err(fail("SET_VRING_NUM"))?;
            let cfg = VringConfigData {
                queue_max_size: q.max_size(),
                queue_size: q.size(),
                flags: 0,
                desc_table_addr: hva(q.desc_table())?,
                used_ring_addr: hva(q.used_ring())?,
                avail_ring_addr: hva(q.avail_ring())?,
                log_addr: None,
            };
            self.frontend
                .set_vring_addr(i, &cfg)
                .map_err(fail("SET_VRING_ADDR"))?;
            self.frontend
                .set_vring_base(i, 0)
                .map_err(fail("SET_VRING_BASE"))?;
            let call = EventFd::new(EFD_NONBLOCK).map_err(|e| format!("eventfd: {e}"))?;
            self.frontend
                .set_vring_call(i, &call)
                .map_err(fail("SET_VRING_CALL"))?;
            self.frontend
                .set_vring_kick(i, &ctx.queue_evts[i])
                .map_err(fail("SET_VRING_KICK"))?;
            calls.push(call);
        }
        if self.protocol_features {
            // With protocol features the rings start disabled.
            for i in 0..ctx.queues.len() {
                self.frontend
                    .set_vring_enable(i, true)
                    .map_err(fail("SET_VRING_ENABLE"))?;
            }
        }
        Ok(calls)
    }
}

impl VirtioDevice for VhostUserFs {
    fn device_type(&self) -> u32 {
        TYPE_FS
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn avail_features(&self) -> u64 {
        VIRTIO_F_VERSION_1 | (self.backend_features & RING_FEATURES)
    }

    fn set_acked_features(&mut self, features: u64) {
        self.acked_features = features;
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // struct virtio_fs_config { u8 tag[36]; le32 num_request_queues; }
        let mut cfg = [0u8; TAG_LEN + 4];
        cfg[..self.tag.len()].copy_from_slice(self.tag.as_bytes());
        cfg[TAG_LEN..].copy_from_slice(&((NUM_QUEUES - 1) as u32).to_le_bytes());
        common::read_config(&cfg, offset, data);
    }

    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}

    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        common::check_activate(&self.worker, &ctx, NUM_QUEUES)?;
        let calls = self
            .hand_over(&ctx)
            .map_err(|e| ActivateError::Backend(format!("{}: {e}", self.what())))?;
        let relay = Relay::new(
            calls,
            ctx.interrupt.clone(),
            self.frontend.as_raw_fd(),
            self.what(),
            self.on_gone.clone(),
        );
        // Thread names are capped at 15 bytes.
        self.worker = Some(Worker::spawn(
            "husk-fs",
            ThreadKind::Fs,
            vec![Box::new(relay)],
        )?);
        Ok(())
    }

    fn reset(&mut self) -> bool {
        // A worker that will not stop is logged; the vrings are stopped all the same.
        let who = self.what();
        let _ = common::stop_worker(&mut self.worker, &who);
        // virtiofsd has no way back to a pristine session on the same connection without
        // RESET_DEVICE; stopping the rings lets a new driver session set them up again.
        for i in 0..NUM_QUEUES {
            if self.protocol_features {
                let _ = self.frontend.set_vring_enable(i, false);
            }
            let _ = self.frontend.get_vring_base(i);
        }
        true
    }
}
