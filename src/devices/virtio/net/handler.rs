//! The virtio-net event subscriber on the device's worker thread: frames from the TAP into
//! rx buffers, tx chains onto the TAP.
//!
//! Fairness: one event moves at most [`FRAME_BUDGET`] frames each way. When tx stops on the
//! budget, the handler re-arms by writing its own tx queue eventfd, and when rx does, by
//! writing its rx eventfd; either way the event loop gets to every other ready fd (the stop
//! event included) before this queue runs again, so a guest or a host that floods does not
//! hold the thread.
//!
//! Deferral: when the guest has no rx buffer, nothing more is read from the TAP (frames wait
//! in the TAP's own queue, where the host stack sees the backpressure) and the TAP is taken
//! out of the epoll set, so a readable TAP does not spin the loop. The guest's next rx kick
//! puts it back. Frames are read straight into a validated chain (readv) and tx frames
//! written straight from one (writev, with a checked private copy of the vnet header), so
//! no frame is copied by the VMM.

use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vmm_sys_util::eventfd::EventFd;

use super::frame::{self, GuestSlice, TxFrame, MAX_TX_CHAIN};
use super::{Tap, ETH_HLEN, HDR_LEN, HDR_NUM_BUFFERS};
use crate::devices::virtio::{GuestMemory, VirtioInterrupt};

pub const RXQ: usize = 0;
pub const TXQ: usize = 1;
const TAP_EVENT: u32 = 2;

/// Frames one event may move in one direction before yielding to the rest of the loop.
pub const FRAME_BUDGET: usize = 64;

/// The host side as the handler uses it; [`Tap`] in production, an in-memory double in the
/// unit tests.
pub trait NetBackend: AsRawFd + Send {
    /// One frame, vnet header first, read straight into guest buffers `parts`, anything
    /// beyond them into `spill`; returns the bytes read. `WouldBlock` when none is waiting.
    fn read_frame_into(&mut self, parts: &[GuestSlice<'_>], spill: &mut [u8]) -> io::Result<usize>;
    /// One frame from a validated tx chain (header copy + guest slices).
    fn write_frame(&mut self, frame: &TxFrame<'_>) -> io::Result<usize>;
}

impl NetBackend for Tap {
    fn read_frame_into(&mut self, parts: &[GuestSlice<'_>], spill: &mut [u8]) -> io::Result<usize> {
        Tap::read_frame_parts(self, parts, spill)
    }
    fn write_frame(&mut self, frame: &TxFrame<'_>) -> io::Result<usize> {
        Tap::write_frame_parts(self, &frame.hdr, &frame.frame)
    }
}

/// Counters of one device, shared with whoever created it (tests, logs).
#[derive(Debug, Default)]
pub struct NetStats {
    pub rx_frames: AtomicU64,
    pub rx_bytes: AtomicU64,
    /// Frames from the host that fit no guest buffer (or were runts), dropped.
    pub rx_dropped: AtomicU64,
    /// Guest rx chains refused as malformed (returned with length 0).
    pub rx_bad_chains: AtomicU64,
    /// Times rx stopped reading the TAP because the guest had no buffer.
    pub rx_deferred: AtomicU64,
    pub tx_frames: AtomicU64,
    pub tx_bytes: AtomicU64,
    /// Guest tx chains refused as malformed or asking for unnegotiated offloads.
    pub tx_rejected: AtomicU64,
    /// Frames the TAP would not take.
    pub tx_dropped: AtomicU64,
    /// Times a queue stopped on [`FRAME_BUDGET`] and re-armed.
    pub budget_yields: AtomicU64,
}

impl NetStats {
    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }
    fn inc(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }
}

impl std::fmt::Display for NetStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let g = Self::get;
        write!(
            f,
            "rx {} frames {} bytes ({} dropped, {} bad chains, {} deferrals), \
             tx {} frames {} bytes ({} rejected, {} dropped), {} budget yields",
            g(&self.rx_frames),
            g(&self.rx_bytes),
            g(&self.rx_dropped),
            g(&self.rx_bad_chains),
            g(&self.rx_deferred),
            g(&self.tx_frames),
            g(&self.tx_bytes),
            g(&self.tx_rejected),
            g(&self.tx_dropped),
            g(&self.budget_yields),
        )
    }
}

/// Why an rx pass ended.
#[derive(Debug, PartialEq, Eq)]
pub enum RxStop {
    /// The TAP has nothing more.
    Drained,
    /// The guest has no buffer: TAP reading deferred until its next kick.
    NoBuffers,
    /// [`FRAME_BUDGET`] frames moved; re-armed.
    Budget,
    /// The available ring is corrupt; the queue is left alone.
    Broken,
}

pub struct NetHandler<B: NetBackend> {
    mem: GuestMemory,
    rxq: Queue,
    txq: Queue,
    rx_evt: EventFd,
    tx_evt: EventFd,
    interrupt: Arc<VirtioInterrupt>,
    backend: B,
    acked: u64,
    stats: Arc<NetStats>,
    /// Where the part of a frame that does not fit the guest's buffers goes: the TAP
    /// reports only what it copied, so a frame that reaches into here was too big.
    rx_spill: Vec<u8>,
    /// Whether the TAP fd is in the epoll set.
    tap_armed: bool,
    rx_broken: bool,
    tx_broken: bool,
}

impl<B: NetBackend> NetHandler<B> {
    /// `queues` and `evts` are rx, tx in that order.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        mem: GuestMemory,
        rxq: Queue,
        txq: Queue,
        rx_evt: EventFd,
        tx_evt: EventFd,
        interrupt: Arc<VirtioInterrupt>,
        backend: B,
        acked: u64,
        stats: Arc<NetStats>,
    ) -> Self {
        NetHandler {
            mem,
            rxq,
            txq,
            rx_evt,
            tx_evt,
            interrupt,
            backend,
            acked,
            stats,
            rx_spill: vec![0; MAX_TX_CHAIN],
            tap_armed: false,
            rx_broken: false,
            tx_broken: false,
        }
    }

    /// Moves up to [`FRAME_BUDGET`] tx chains onto the TAP; returns how many were consumed.
    pub fn process_tx(&mut self) -> usize {
        if self.tx_broken {
            return 0;
        }
        let mut done = 0usize;
        'outer: loop {
            if let Err(e) = self.txq.disable_notification(&self.mem) {
                tracing::warn!("virtio-net: tx: disabling notifications: {e}");
            }
            let mut progressed = false;
            while let Some(chain) = self.txq.pop_descriptor_chain(&self.mem) {
                progressed = true;
                let head = chain.head_index();
                match frame::parse_tx_frame(&self.mem, chain, self.acked) {
                    Ok(f) => match self.backend.write_frame(&f) {
                        Ok(_) => {
                            NetStats::inc(&self.stats.tx_frames, 1);
                            NetStats::inc(&self.stats.tx_bytes, (f.len - HDR_LEN) as u64);
                        }
                        Err(e) => {
                            tracing::debug!("virtio-net: TAP refused a {}-byte frame: {e}", f.len);
                            NetStats::inc(&self.stats.tx_dropped, 1);
                        }
                    },
                    Err(e) => {
                        tracing::debug!("virtio-net: rejecting tx chain {head}: {e}");
                        NetStats::inc(&self.stats.tx_rejected, 1);
                    }
                }
                if let Err(e) = self.txq.add_used(&self.mem, head, 0) {
                    tracing::debug!("virtio-net: tx add_used({head}): {e}");
                }
                done += 1;
                if done >= FRAME_BUDGET {
                    // Leave notifications off: the re-armed eventfd brings us back.
                    NetStats::inc(&self.stats.budget_yields, 1);
                    if let Err(e) = self.tx_evt.write(1) {
                        tracing::error!("virtio-net: re-arming tx: {e}");
                    }
                    break 'outer;
                }
            }
            match self.txq.enable_notification(&self.mem) {
                Ok(true) if progressed => continue,
                Ok(true) => {
                    if self.txq.iter(&self.mem).is_err() {
                        tracing::error!("virtio-net: invalid tx available index; queue stopped");
                        self.tx_broken = true;
                    }
                    break;
                }
                Ok(false) => break,
                Err(e) => {
                    tracing::warn!("virtio-net: tx: enabling notifications: {e}");
                    break;
                }
            }
        }
        if done > 0 {
            signal(&mut self.txq, &self.mem, &self.interrupt);
        }
        done
    }

    /// Moves up to [`FRAME_BUDGET`] frames from the backend into rx buffers.
    pub fn process_rx(&mut self) -> RxStop {
        if self.rx_broken {
            return RxStop::Broken;
        }
        let mut moved = 0usize;
        let mut used = false;
        let stop = loop {
            if moved >= FRAME_BUDGET {
                NetStats::inc(&self.stats.budget_yields, 1);
                if let Err(e) = self.rx_evt.write(1) {
                    tracing::error!("virtio-net: re-arming rx: {e}");
                }
                break RxStop::Budget;
            }
            let Some(chain) = self.rxq.pop_descriptor_chain(&self.mem) else {
                // Out of buffers; ask for a kick, then look again (the guest may have added
                // some in between).
                match self.rxq.enable_notification(&self.mem) {
                    Ok(true) if self.rxq.iter(&self.mem).is_err() => {
                        tracing::error!("virtio-net: invalid rx available index; queue stopped");
                        self.rx_broken = true;
                        break RxStop::Broken;
                    }
                    Ok(true) => continue,
                    _ => {
                        NetStats::inc(&self.stats.rx_deferred, 1);
                        break RxStop::NoBuffers;
                    }
                }
            };
            moved += 1;
            let head = chain.head_index();
            // The chain is checked before anything is read, so a bad one costs no frame.
            let parts = match frame::parse_rx_chain(&self.mem, chain) {
                Ok(p) => p,
                Err(e) => {
                    tracing::debug!("virtio-net: refusing rx chain {head}: {e}");
                    NetStats::inc(&self.stats.rx_bad_chains, 1);
                    if let Err(e) = self.rxq.add_used(&self.mem, head, 0) {
                        tracing::debug!("virtio-net: rx add_used({head}): {e}");
                    }
                    used = true;
                    continue;
                }
            };
            let n = match self.backend.read_frame_into(&parts, &mut self.rx_spill) {
                Ok(n) => n,
                Err(e) => {
                    self.rxq.go_to_previous_position();
                    match e.kind() {
                        io::ErrorKind::Interrupted => continue,
                        io::ErrorKind::WouldBlock => {}
                        _ => tracing::warn!("virtio-net: reading the TAP: {e}"),
                    }
                    break RxStop::Drained;
                }
            };
            let cap = frame::capacity(&parts);
            if n > cap || n < HDR_LEN + ETH_HLEN {
                // Too big for the guest's buffers (smaller than its features promise) or a
                // runt: the frame is lost, the buffer is kept for the next one.
                tracing::debug!("virtio-net: dropping a {n}-byte rx frame ({cap}-byte buffer)");
                NetStats::inc(&self.stats.rx_dropped, 1);
                self.rxq.go_to_previous_position();
                continue;
            }
            // No MRG_RXBUF: every frame is one buffer (the TAP leaves the field unwritten).
            frame::write_at(&parts, HDR_NUM_BUFFERS, &1u16.to_le_bytes());
            NetStats::inc(&self.stats.rx_frames, 1);
            NetStats::inc(&self.stats.rx_bytes, (n - HDR_LEN) as u64);
            // n ≤ MAX_TX_CHAIN (the buffers were cut there), far below u32::MAX.
            if let Err(e) = self.rxq.add_used(&self.mem, head, n as u32) {
                tracing::debug!("virtio-net: rx add_used({head}): {e}");
            }
            used = true;
        };
        if used {
            signal(&mut self.rxq, &self.mem, &self.interrupt);
        }
        stop
    }

    /// Runs rx and keeps the TAP in the epoll set exactly while rx can take frames.
    fn rx_and_rearm(&mut self, ops: &mut EventOps) {
        let stop = self.process_rx();
        let want = matches!(stop, RxStop::Drained | RxStop::Budget);
        if want != self.tap_armed {
            let ev = Events::with_data_raw(self.backend.as_raw_fd(), TAP_EVENT, EventSet::IN);
            let r = if want { ops.add(ev) } else { ops.remove(ev) };
            match r {
                Ok(()) => self.tap_armed = want,
                Err(e) => tracing::error!("virtio-net: updating TAP interest: {e:?}"),
            }
        }
    }
}

fn signal(q: &mut Queue, mem: &GuestMemory, interrupt: &VirtioInterrupt) {
    if q.needs_notification(mem).unwrap_or(true) {
        if let Err(e) = interrupt.signal_used_queue() {
            tracing::error!("virtio-net: raising interrupt: {e}");
        }
    }
}

impl<B: NetBackend> MutEventSubscriber for NetHandler<B> {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        match events.data() {
            d if d as usize == RXQ => {
                let _ = self.rx_evt.read();
                self.rx_and_rearm(ops);
            }
            d if d as usize == TXQ => {
                let _ = self.tx_evt.read();
                self.process_tx();
            }
            TAP_EVENT => self.rx_and_rearm(ops),
            _ => {}
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        for (i, evt) in [(RXQ, &self.rx_evt), (TXQ, &self.tx_evt)] {
            if let Err(e) = ops.add(Events::with_data(evt, i as u32, EventSet::IN)) {
                tracing::error!("virtio-net: cannot watch queue {i}: {e:?}");
            }
        }
        // Chains queued before activation, and frames already waiting on the TAP.
        self.process_tx();
        self.rx_and_rearm(ops);
    }
}

#[cfg(test)]
#[path = "handler_tests.rs"]
mod tests;
