//! The muxer: every vsock stream of one device, keyed by (local port, peer port), plus
//! the host listener on `<uds>` and host programs that have not sent `CONNECT` yet.
//!
//! It owns a private epoll set (listener, timer, host sockets) whose fd the device's
//! event loop watches, so it can be driven and tested without the event loop: the guest
//! side calls [`Muxer::send_pkt`] for each tx packet and [`Muxer::recv_pkt`] for each rx
//! buffer; the host side calls [`Muxer::process_host_events`] when the epoll fd fires.
//!
//! Everything is bounded: connections (including half-open host programs), queued RSTs,
//! parked tx bytes per connection (see `connection.rs`), and the time a REQUEST or a
//! CONNECT line may take.

use std::collections::{HashMap, VecDeque};
use std::io::{self, Read};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::timerfd::TimerFd;

use super::connection::{Connection, State, Verdict};
use super::packet::{Header, HOST_CID, OP_REQUEST, OP_RST, TYPE_STREAM};
use super::unix::{connect_nonblocking, guest_target, parse_connect, MAX_CONNECT_LINE};

/// Most streams (established, connecting, or host programs yet to send CONNECT).
pub const MAX_CONNECTIONS: usize = 1024;
/// How long the guest may take to answer a REQUEST, and a host program to send CONNECT.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a stream the guest closed may wait for the host to take its last bytes.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
/// Most RSTs waiting for an rx buffer; beyond that a flood of bad packets is just dropped.
pub const MAX_QUEUED_RST: usize = 1024;
/// Host-initiated streams get local ports from here up (as Firecracker does).
const LOCAL_PORT_BASE: u32 = 1 << 30;
const TIMER_TICK: Duration = Duration::from_millis(250);

const KIND_LISTENER: u64 = 1;
const KIND_TIMER: u64 = 2;
const KIND_PENDING: u64 = 3;
const KIND_CONN: u64 = 4;

fn token(kind: u64, fd: RawFd) -> u64 {
    (kind << 32) | u64::from(fd as u32)
}

type Key = (u32, u32);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Setting up the muxer's epoll set or timer failed.
    #[error("vsock: cannot set up the event set: {0}")]
    Setup(#[source] io::Error),
}

/// A host program that connected to `<uds>` and has not finished its CONNECT line.
struct PendingHost {
    stream: UnixStream,
    buf: Vec<u8>,
    deadline: Instant,
}

pub struct Muxer {
    guest_cid: u64,
    uds: PathBuf,
    listener: UnixListener,
    epoll: Epoll,
    timer: TimerFd,
    timer_armed: bool,
    conns: HashMap<Key, Connection>,
    by_fd: HashMap<RawFd, Key>,
    pending: HashMap<RawFd, PendingHost>,
    rxq: VecDeque<Key>,
    rsts: VecDeque<Header>,
    next_port: u32,
}

impl Muxer {
    /// Takes over `listener` (bound to `uds`) for a guest with CID `guest_cid`.
    pub fn new(guest_cid: u64, uds: PathBuf, listener: UnixListener) -> Result<Self, Error> {
        listener.set_nonblocking(true).map_err(Error::Setup)?;
        let epoll = Epoll::new().map_err(Error::Setup)?;
        let timer =
            TimerFd::new().map_err(|e| Error::Setup(io::Error::from_raw_os_error(e.errno())))?;
        for (kind, fd) in [
            (KIND_LISTENER, listener.as_raw_fd()),
            (KIND_TIMER, timer.as_raw_fd()),
        ] {
            epoll
                .ctl(
                    ControlOperation::Add,
                    fd,
                    EpollEvent::new(EventSet::IN, token(kind, fd)),
                )
                .map_err(Error::Setup)?;
        }
        Ok(Muxer {
            guest_cid,
            uds,
            listener,
            epoll,
            timer,
            timer_armed: false,
            conns: HashMap::new(),
            by_fd: HashMap::new(),
            pending: HashMap::new(),
            rxq: VecDeque::new(),
            rsts: VecDeque::new(),
            next_port: LOCAL_PORT_BASE,
        })
    }

    /// The fd the device's event loop watches for host-side activity.
    pub fn epoll_fd(&self) -> RawFd {
        self.epoll.as_raw_fd()
    }

    /// Live streams, including host programs that have not sent CONNECT yet.
    pub fn connection_count(&self) -> usize {
        self.conns.len() + self.pending.len()
    }

    /// Guest bytes parked for host sockets, over all streams (for memory-bound checks).
    pub fn tx_buffered(&self) -> usize {
        self.conns.values().map(Connection::tx_buffered).sum()
    }

    /// Whether a packet may be waiting for the guest (it may turn out there is none).
    pub fn has_rx(&self) -> bool {
        !self.rsts.is_empty() || !self.rxq.is_empty()
    }

    // ---- guest -> host ----

    /// Handles one packet the guest sent. Bad packets are answered with an RST or
    /// dropped; nothing the guest sends is an error for the device.
    pub fn send_pkt(&mut self, hdr: &Header, data: &[u8]) {
        if hdr.src_cid != self.guest_cid {
            tracing::debug!(
                "vsock: dropping packet from cid {} (guest is {})",
                hdr.src_cid,
                self.guest_cid
            );
            return;
        }
        if hdr.dst_cid != HOST_CID || hdr.type_ != TYPE_STREAM {
            self.rst_for(hdr);
            return;
        }
        let key = (hdr.dst_port, hdr.src_port);
        if let Some(conn) = self.conns.get_mut(&key) {
            match conn.on_guest_packet(hdr, data) {
                Ok(Verdict::Keep) => self.after_change(key),
                Ok(Verdict::Reset) => self.reset(key),
                Ok(Verdict::Drop) => self.remove(key),
                Err(e) => {
                    tracing::debug!("{e}; resetting");
                    self.reset(key);
                }
            }
            return;
        }
        if hdr.op != OP_REQUEST {
            self.rst_for(hdr);
            return;
        }
        if self.connection_count() >= MAX_CONNECTIONS {
            tracing::warn!(
                "vsock: {MAX_CONNECTIONS} connections open; refusing guest connect to port {}",
                hdr.dst_port
            );
            self.rst_for(hdr);
            return;
        }
        let path = guest_target(&self.uds, hdr.dst_port);
        match connect_nonblocking(&path) {
            Ok(stream) => {
                let conn = Connection::new_peer_init(stream, self.guest_cid, hdr.dst_port, hdr);
                self.insert(key, conn);
            }
            Err(e) => {
                tracing::debug!("vsock: guest connect to {}: {e}", path.display());
                self.rst_for(hdr);
            }
        }
    }

    /// A tx packet whose header was readable but whose body was not (data length beyond
    /// the chain, memory outside the guest): its stream cannot continue intact.
    pub fn reject(&mut self, hdr: &Header) {
        if hdr.src_cid != self.guest_cid {
            return;
        }
        let key = (hdr.dst_port, hdr.src_port);
        if self.conns.contains_key(&key) {
            self.reset(key);
        } else {
            self.rst_for(hdr);
        }
    }

    /// Queues an RST answering `hdr` (unless it is an RST itself).
    fn rst_for(&mut self, hdr: &Header) {
        if hdr.op == OP_RST || self.rsts.len() >= MAX_QUEUED_RST {
            return;
        }
        self.rsts.push_back(Header {
            src_cid: HOST_CID,
            dst_cid: self.guest_cid,
            src_port: hdr.dst_port,
            dst_port: hdr.src_port,
            type_: TYPE_STREAM,
            op: OP_RST,
            ..Header::default()
        });
    }

    // ---- host -> guest ----

    /// Produces the next packet for the guest, its data (at most `cap` bytes) in `data`.
    pub fn recv_pkt(&mut self, cap: usize, data: &mut Vec<u8>) -> Option<Header> {
        data.clear();
        if let Some(h) = self.rsts.pop_front() {
            return Some(h);
        }
        // Each queued stream gets one try per call, so a stream that turns out to have
        // nothing cannot spin here.
        for _ in 0..self.rxq.len() {
            let key = self.rxq.pop_front()?;
            let Some(conn) = self.conns.get_mut(&key) else {
                continue;
            };
            conn.queued = false;
            match conn.next_rx(cap, data) {
                Ok(Some(h)) => {
                    self.after_change(key);
                    return Some(h);
                }
                Ok(None) => self.after_change(key),
                Err(e) => {
                    tracing::debug!("{e}; resetting");
                    self.reset(key);
                    return self.rsts.pop_front();
                }
            }
        }
        self.rsts.pop_front()
    }

    // ---- host side events ----

    /// Handles whatever is ready on the host side. Never blocks.
    pub fn process_host_events(&mut self) {
        let mut events = vec![EpollEvent::default(); 64];
        loop {
            let n = match self.epoll.wait(0, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::error!("vsock: epoll_wait: {e}");
                    return;
                }
            };
            for ev in &events[..n] {
                let (kind, fd) = (ev.data() >> 32, ev.data() as u32 as RawFd);
                let set = ev.event_set();
                match kind {
                    KIND_LISTENER => self.accept_all(),
                    KIND_TIMER => self.on_timer(),
                    KIND_PENDING => self.on_pending(fd),
                    KIND_CONN => self.on_conn_event(fd, set),
                    _ => {}
                }
            }
            if n < events.len() {
                return;
            }
        }
    }

    fn accept_all(&mut self) {
        loop {
            let stream = match self.listener.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    if e.kind() != io::ErrorKind::WouldBlock {
                        tracing::warn!("vsock: accept on {}: {e}", self.uds.display());
                    }
                    return;
                }
            };
            if self.connection_count() >= MAX_CONNECTIONS {
                tracing::warn!(
                    "vsock: {MAX_CONNECTIONS} connections open; closing new host connection"
                );
                continue;
            }
            let fd = stream.as_raw_fd();
            let ev = EpollEvent::new(EventSet::IN, token(KIND_PENDING, fd));
            if stream.set_nonblocking(true).is_err()
                || self.epoll.ctl(ControlOperation::Add, fd, ev).is_err()
            {
                continue;
            }
            let deadline = Instant::now() + CONNECT_TIMEOUT;
            self.pending.insert(
                fd,
                PendingHost {
                    stream,
                    buf: Vec::new(),
                    deadline,
                },
            );
            self.arm_timer();
        }
    }

    fn on_pending(&mut self, fd: RawFd) {
        let Some(p) = self.pending.get_mut(&fd) else {
            return;
        };
        let mut chunk = [0u8; MAX_CONNECT_LINE];
        let room = MAX_CONNECT_LINE - p.buf.len();
        let n = match p.stream.read(&mut chunk[..room]) {
            Ok(0) => return self.drop_pending(fd),
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) =>
            {
                return
            }
            Err(_) => return self.drop_pending(fd),
        };
        p.buf.extend_from_slice(&chunk[..n]);
        let (port, used) = match parse_connect(&p.buf) {
            Ok(Some(v)) => v,
            Ok(None) => return,
            Err(e) => {
                tracing::debug!("{e}");
                return self.drop_pending(fd);
            }
        };
        let Some(p) = self.pending.remove(&fd) else {
            return;
        };
        let _ = self
            .epoll
            .ctl(ControlOperation::Delete, fd, EpollEvent::default());
        let Some(local) = self.alloc_local_port(port) else {
            tracing::warn!("vsock: no free local port for host connection to guest port {port}");
            return;
        };
        let preread = p.buf[used..].to_vec();
        let mut conn = Connection::new_local_init(p.stream, self.guest_cid, local, port, preread);
        conn.deadline = Some(Instant::now() + CONNECT_TIMEOUT);
        self.insert((local, port), conn);
        self.arm_timer();
    }

    fn drop_pending(&mut self, fd: RawFd) {
        if self.pending.remove(&fd).is_some() {
            let _ = self
                .epoll
                .ctl(ControlOperation::Delete, fd, EpollEvent::default());
        }
    }

    fn alloc_local_port(&mut self, peer_port: u32) -> Option<u32> {
        for _ in 0..=MAX_CONNECTIONS {
            let p = self.next_port;
            self.next_port = if p == u32::MAX {
                LOCAL_PORT_BASE
            } else {
                p + 1
            };
            if !self.conns.contains_key(&(p, peer_port)) {
                return Some(p);
            }
        }
        None
    }

    fn on_conn_event(&mut self, fd: RawFd, set: EventSet) {
        let Some(&key) = self.by_fd.get(&fd) else {
            return;
        };
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        if set.intersects(EventSet::HANG_UP | EventSet::ERROR) {
            // Level-triggered HUP would fire forever: leave the set and drain what is left.
            let _ = self
                .epoll
                .ctl(ControlOperation::Delete, fd, EpollEvent::default());
            conn.registered = None;
            conn.on_host_hup();
        }
        if set.contains(EventSet::IN) {
            conn.on_host_readable();
        }
        if set.contains(EventSet::OUT) || conn.hung_up() {
            if let Err(e) = conn.flush_tx() {
                tracing::debug!("{e}; resetting");
                return self.reset(key);
            }
        }
        self.after_change(key);
    }

    fn on_timer(&mut self) {
        let _ = self.timer.wait();
        let now = Instant::now();
        let late: Vec<RawFd> = self
            .pending
            .iter()
            .filter(|(_, p)| p.deadline <= now)
            .map(|(&fd, _)| fd)
            .collect();
        for fd in late {
            self.drop_pending(fd);
        }
        let late: Vec<Key> = self
            .conns
            .iter()
            .filter(|(_, c)| c.deadline.is_some_and(|d| d <= now))
            .map(|(&k, _)| k)
            .collect();
        for key in late {
            tracing::debug!("vsock: stream {key:?} timed out");
            self.reset(key);
        }
        let any = !self.pending.is_empty() || self.conns.values().any(|c| c.deadline.is_some());
        if !any && self.timer_armed {
            self.timer_armed = false;
            let _ = self.timer.clear();
        }
    }

    fn arm_timer(&mut self) {
        if !self.timer_armed && self.timer.reset(TIMER_TICK, Some(TIMER_TICK)).is_ok() {
            self.timer_armed = true;
        }
    }

    // ---- bookkeeping ----

    fn insert(&mut self, key: Key, conn: Connection) {
        let fd = conn.stream().as_raw_fd();
        self.by_fd.insert(fd, key);
        self.conns.insert(key, conn);
        self.after_change(key);
    }

    /// Re-syncs a stream's epoll interest, deadline and rx-queue slot after anything
    /// happened to it.
    fn after_change(&mut self, key: Key) {
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        if conn.is_finished() {
            return self.reset(key);
        }
        if conn.closing() && conn.tx_buffered() > 0 && conn.deadline.is_none() {
            conn.deadline = Some(Instant::now() + CLOSE_TIMEOUT);
            self.arm_timer();
        }
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        if !conn.hung_up() {
            let want = conn.interest();
            let fd = conn.stream().as_raw_fd();
            let ev = EpollEvent::new(want, token(KIND_CONN, fd));
            let res = match conn.registered {
                None => self.epoll.ctl(ControlOperation::Add, fd, ev),
                Some(have) if have != want => self.epoll.ctl(ControlOperation::Modify, fd, ev),
                Some(_) => Ok(()),
            };
            match res {
                Ok(()) => conn.registered = Some(want),
                Err(e) => {
                    tracing::warn!("vsock: epoll for stream {key:?}: {e}");
                    return self.reset(key);
                }
            }
        }
        if conn.has_rx() && !conn.queued {
            conn.queued = true;
            self.rxq.push_back(key);
        }
    }

    /// Removes a stream and tells the guest with an RST.
    fn reset(&mut self, key: Key) {
        if let Some(mut conn) = self.take(key) {
            // A host-initiated stream the guest never saw needs no RST, but one is harmless.
            let rst = conn.rst_header();
            if self.rsts.len() < MAX_QUEUED_RST {
                self.rsts.push_back(rst);
            }
            if conn.state() == State::LocalInit {
                tracing::debug!(
                    "vsock: host connection to guest port {} refused or timed out",
                    key.1
                );
            }
        }
    }

    /// Removes a stream silently (the guest reset it); dropping it closes the host socket.
    fn remove(&mut self, key: Key) {
        self.take(key);
    }

    fn take(&mut self, key: Key) -> Option<Connection> {
        let conn = self.conns.remove(&key)?;
        let fd = conn.stream().as_raw_fd();
        self.by_fd.remove(&fd);
        if conn.registered.is_some() {
            let _ = self
                .epoll
                .ctl(ControlOperation::Delete, fd, EpollEvent::default());
        }
        Some(conn)
    }
}
