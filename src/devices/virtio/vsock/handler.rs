//! The vsock event subscriber that runs on the device's worker thread: it moves packets
//! between the virtqueues and the muxer.
//!
//! Events: the rx, tx and event queue notifications, and the muxer's epoll fd (host
//! sockets, listener, timer). After any of them, pending packets for the guest are
//! written into rx buffers for as long as both exist, so neither side waits on the other.

use std::sync::Arc;

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vmm_sys_util::eventfd::EventFd;

use super::muxer::Muxer;
use super::packet::{Chain, HDR_SIZE, MAX_PKT_DATA};
use crate::devices::virtio::{GuestMemory, VirtioInterrupt};

pub const RXQ: usize = 0;
pub const TXQ: usize = 1;
pub const EVQ: usize = 2;
const BACKEND: u32 = 3;

pub struct VsockHandler {
    mem: GuestMemory,
    queues: Vec<Queue>,
    queue_evts: Vec<EventFd>,
    interrupt: Arc<VirtioInterrupt>,
    muxer: Muxer,
    /// Reused bounce buffer for one packet's data (at most [`MAX_PKT_DATA`]).
    buf: Vec<u8>,
}

impl VsockHandler {
    /// `queues` and `queue_evts` are rx, tx, event in that order.
    pub fn new(
        mem: GuestMemory,
        queues: Vec<Queue>,
        queue_evts: Vec<EventFd>,
        interrupt: Arc<VirtioInterrupt>,
        muxer: Muxer,
    ) -> Self {
        VsockHandler {
            mem,
            queues,
            queue_evts,
            interrupt,
            muxer,
            buf: Vec::with_capacity(MAX_PKT_DATA),
        }
    }

    fn signal(&mut self, q: usize) {
        match self.queues[q].needs_notification(&self.mem) {
            Ok(false) => {}
            _ => {
                if let Err(e) = self.interrupt.signal_used_queue() {
                    tracing::error!("vsock: raising interrupt: {e}");
                }
            }
        }
    }

    /// Every tx chain goes back to the used ring, whatever it held.
    fn process_tx(&mut self) {
        let mut used = false;
        while let Some(chain) = self.queues[TXQ].pop_descriptor_chain(&self.mem) {
            let head = chain.head_index();
            match Chain::walk(chain, false) {
                Ok(c) => match c.read_header(&self.mem) {
                    Ok(hdr) => match c.read_packet(&self.mem, &mut self.buf) {
                        Ok(hdr) => self.muxer.send_pkt(&hdr, &self.buf),
                        Err(e) => {
                            tracing::debug!("{e}; rejecting packet");
                            self.muxer.reject(&hdr);
                        }
                    },
                    Err(e) => tracing::debug!("{e}; dropping tx chain"),
                },
                Err(e) => tracing::debug!("{e}; dropping tx chain"),
            }
            if let Err(e) = self.queues[TXQ].add_used(&self.mem, head, 0) {
                tracing::error!("vsock: tx used ring: {e}");
            }
            used = true;
        }
        if used {
            self.signal(TXQ);
        }
    }

    /// Fills rx buffers with what the muxer has for the guest.
    fn process_rx(&mut self) {
        let mut used = false;
        while self.muxer.has_rx() {
            let Some(chain) = self.queues[RXQ].pop_descriptor_chain(&self.mem) else {
                break;
            };
            let head = chain.head_index();
            let chain = Chain::walk(chain, true)
                .and_then(|c| c.check_memory(&self.mem).map(|()| c))
                .ok()
                .filter(|c| c.len() >= HDR_SIZE as u64);
            let Some(chain) = chain else {
                // A buffer we cannot write a packet into: hand it back empty.
                tracing::debug!("vsock: unusable rx buffer {head}");
                let _ = self.queues[RXQ].add_used(&self.mem, head, 0);
                used = true;
                continue;
            };
            let Some(hdr) = self.muxer.recv_pkt(chain.data_capacity(), &mut self.buf) else {
                // Nothing after all: keep the buffer for next time.
                self.queues[RXQ].go_to_previous_position();
                break;
            };
            let len = match chain.write_packet(&self.mem, &hdr, &self.buf) {
                Ok(n) => n,
                Err(e) => {
                    tracing::error!("vsock: writing rx packet: {e}");
                    0
                }
            };
            if let Err(e) = self.queues[RXQ].add_used(&self.mem, head, len) {
                tracing::error!("vsock: rx used ring: {e}");
            }
            used = true;
        }
        if used {
            self.signal(RXQ);
        }
    }
}

impl MutEventSubscriber for VsockHandler {
    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        match events.data() {
            d if (d as usize) < self.queue_evts.len() => {
                let _ = self.queue_evts[d as usize].read();
                if d as usize == TXQ {
                    self.process_tx();
                }
            }
            BACKEND => self.muxer.process_host_events(),
            _ => {}
        }
        self.process_rx();
    }

    fn init(&mut self, ops: &mut EventOps) {
        for (i, evt) in self.queue_evts.iter().enumerate() {
            if let Err(e) = ops.add(Events::with_data(evt, i as u32, EventSet::IN)) {
                tracing::error!("vsock: cannot watch queue {i}: {e:?}");
            }
        }
        if let Err(e) = ops.add(Events::with_data_raw(
            self.muxer.epoll_fd(),
            BACKEND,
            EventSet::IN,
        )) {
            tracing::error!("vsock: cannot watch host sockets: {e:?}");
        }
        // Chains the driver queued before activation, and host programs already waiting.
        self.process_tx();
        self.muxer.process_host_events();
        self.process_rx();
    }
}
