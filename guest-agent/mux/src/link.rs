//! The engine both sides run: one thread, one `poll` over the link, the host's listening
//! socket and every stream's local end, with per-stream credit so no stream blocks another.

use std::collections::BTreeMap;
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use crate::frame::{self, Frame, Kind, HEADER, MAX_PAYLOAD, WINDOW};
use crate::queue::Queue;
use crate::role::Role;
use crate::stream::Stream;
use crate::{sys, Error};

/// Streams open at once, per side.
pub const MAX_STREAMS: usize = 256;
/// Local ends are not read while this much waits to go out on the link.
pub(crate) const OUT_HIGH: usize = 256 << 10;
/// The link is not read while this much waits to be decoded (one whole frame always fits).
const IN_MAX: usize = 2 * (HEADER + MAX_PAYLOAD);
/// Nor while this much waits to go out: a peer that sends frames needing an answer (opens to
/// be refused, data to be credited) and never reads the answers gets no more of our memory.
const OUT_MAX: usize = 1 << 20;
/// Credit is granted back in batches of this much: a request and its answer, far smaller,
/// cost no frame beyond their own (and no wake-up of the other side), and the sender, with a
/// window four batches wide, never waits on a grant while its bytes are being taken.
const CREDIT_BATCH: u32 = WINDOW / 4;
/// How often a guest whose host side is gone looks again.
const DOWN_PAUSE: Duration = Duration::from_millis(20);

pub(crate) struct Link {
    pub fd: OwnedFd,
    pub role: Role,
    pub streams: BTreeMap<u32, Stream>,
    pub out: Queue,
    inbuf: Vec<u8>,
    scratch: Vec<u8>,
    /// Guest only: the host side is not connected (the port reads EOF); every stream was
    /// dropped and the link is looked at again every [`DOWN_PAUSE`].
    down: bool,
    /// Whether the link's input is known to start at a frame boundary.
    pub sync: Sync,
}

/// Where the link's input stands. A new host side cannot know what a guest (restored from a
/// snapshot, or one that lost its host mid-frame) still has half-written or half-read, so the
/// two meet at a `Hello`: the host sends one with a nonce and skips its input up to the
/// guest's echo of it; a guest that reads something no frame can be skips up to the next
/// `Hello`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Sync {
    InStep,
    /// Host: waiting for the guest's echo of this nonce.
    AwaitingEcho(u32),
    /// Guest: skipping to the host's next `Hello`.
    AwaitingHello,
}

#[derive(Clone, Copy)]
enum Slot {
    Link,
    Listener,
    Pending(usize),
    Stream(u32),
    /// Guest only: the agent asks for a flush.
    Wake,
}

/// What ended a read of the link.
enum LinkRead {
    More,
    Eof,
}

impl Link {
    pub fn new(fd: OwnedFd, role: Role) -> Result<Link, Error> {
        sys::set_nonblocking(fd.as_raw_fd()).map_err(|source| Error::Io {
            what: "making the link non-blocking",
            source,
        })?;
        Ok(Link {
            fd,
            role,
            streams: BTreeMap::new(),
            out: Queue::default(),
            inbuf: Vec::with_capacity(IN_MAX),
            scratch: vec![0; MAX_PAYLOAD],
            down: false,
            sync: Sync::InStep,
        })
    }

    /// Runs until the host side's link ends (`Ok`) or fails; the guest side never returns
    /// but on an error of its own.
    pub fn run(&mut self) -> Result<(), Error> {
        let mut fds = Vec::new();
        let mut slots = Vec::new();
        loop {
            if self.down {
                std::thread::sleep(DOWN_PAUSE);
            }
            self.poll_set(&mut fds, &mut slots);
            sys::poll(&mut fds, -1).map_err(|source| Error::Io {
                what: "poll",
                source,
            })?;
            for (pfd, slot) in fds.iter().zip(slots.iter()) {
                let ev = pfd.revents;
                if ev == 0 {
                    continue;
                }
                match *slot {
                    Slot::Link => {
                        if ev & libc::POLLOUT != 0 {
                            self.write_link()?;
                        }
                        if ev & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0 {
                            match self.read_link()? {
                                LinkRead::More => {}
                                LinkRead::Eof => {
                                    if matches!(self.role, Role::Host(_)) {
                                        return Ok(());
                                    }
                                    self.link_down();
                                }
                            }
                        }
                    }
                    Slot::Listener => self.accept_clients(),
                    Slot::Pending(i) => self.read_pending(i),
                    Slot::Stream(id) => self.stream_ready(id, ev),
                    Slot::Wake => self.flush_requested(),
                }
            }
            self.prune_pending();
            if !self.out.is_empty() && !self.down {
                self.write_link()?;
            }
        }
    }

    fn poll_set(&self, fds: &mut Vec<libc::pollfd>, slots: &mut Vec<Slot>) {
        fds.clear();
        slots.clear();
        let mut push = |fd: i32, events: i16, slot: Slot| {
            fds.push(libc::pollfd {
                fd,
                events,
                revents: 0,
            });
            slots.push(slot);
        };
        let mut link_ev = 0;
        if self.inbuf.len() < IN_MAX && self.out.len() < OUT_MAX {
            link_ev |= libc::POLLIN;
        }
        if !self.out.is_empty() && !self.down {
            link_ev |= libc::POLLOUT;
        }
        push(self.fd.as_raw_fd(), link_ev, Slot::Link);
        if let Role::Guest(g) = &self.role {
            push(g.wake.as_raw_fd(), libc::POLLIN, Slot::Wake);
        }
        if let Role::Host(h) = &self.role {
            if !self.down && h.pending.len() + self.streams.len() < MAX_STREAMS {
                push(h.listener.as_raw_fd(), libc::POLLIN, Slot::Listener);
            }
            for (i, p) in h.pending.iter().enumerate() {
                // (A pending client's descriptor is only taken in a round that prunes it.)
                let fd = p.fd.as_ref().map_or(-1, |fd| fd.as_raw_fd());
                push(fd, libc::POLLIN, Slot::Pending(i));
            }
        }
        for (&id, s) in &self.streams {
            let mut ev = 0;
            if self.wants_read(s) {
                ev |= libc::POLLIN;
            }
            if !s.to_local.is_empty() {
                ev |= libc::POLLOUT;
            }
            // With no events asked for, a hang-up or error is still reported, once; after
            // that the slot is left out (a negative fd) until something is wanted again.
            let fd = if ev == 0 && s.hup {
                -1
            } else {
                s.fd.as_raw_fd()
            };
            push(fd, ev, Slot::Stream(id));
        }
    }

    fn wants_read(&self, s: &Stream) -> bool {
        s.open && !s.local_eof && s.send_credit > 0 && self.out.len() < OUT_HIGH
    }

    fn write_link(&mut self) -> Result<(), Error> {
        while !self.out.is_empty() {
            match sys::write(self.fd.as_raw_fd(), self.out.bytes()) {
                Ok(Some(0)) | Ok(None) => break,
                Ok(Some(n)) => self.out.consume(n),
                Err(source) => {
                    if matches!(self.role, Role::Guest(_)) {
                        self.link_down();
                        return Ok(());
                    }
                    if matches!(
                        source.kind(),
                        std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
                    ) {
                        // QEMU is gone; the read that follows sees its end.
                        self.out.clear();
                        return Ok(());
                    }
                    return Err(Error::Io {
                        what: "writing the link",
                        source,
                    });
                }
            }
        }
        Ok(())
    }

    fn read_link(&mut self) -> Result<LinkRead, Error> {
        let have = self.inbuf.len();
        if have >= IN_MAX {
            return Ok(LinkRead::More);
        }
        self.inbuf.resize(IN_MAX, 0);
        let r = sys::read(self.fd.as_raw_fd(), &mut self.inbuf[have..]);
        let n = match r {
            Ok(Some(0)) => {
                self.inbuf.truncate(have);
                return Ok(LinkRead::Eof);
            }
            Ok(Some(n)) => n,
            Ok(None) => 0,
            Err(source) => {
                self.inbuf.truncate(have);
                // A QEMU that exits with bytes of ours unread resets the connection: its end.
                if matches!(self.role, Role::Guest(_))
                    || source.kind() == std::io::ErrorKind::ConnectionReset
                {
                    return Ok(LinkRead::Eof);
                }
                return Err(Error::Io {
                    what: "reading the link",
                    source,
                });
            }
        };
        self.inbuf.truncate(have + n);
        if n > 0 && self.down {
            self.down = false;
        }
        self.decode_frames()?;
        Ok(LinkRead::More)
    }

    fn decode_frames(&mut self) -> Result<(), Error> {
        let mut buf = std::mem::take(&mut self.inbuf);
        let mut pos = 0;
        let result = loop {
            if self.sync != Sync::InStep {
                let echo_of = match self.sync {
                    Sync::AwaitingEcho(nonce) => Some(nonce),
                    _ => None,
                };
                let (skip, found) = frame::find_hello(&buf[pos..], echo_of);
                pos += skip;
                if !found {
                    break Ok(());
                }
                if let Sync::AwaitingEcho(_) = self.sync {
                    // The echo itself is consumed: the guest's next byte starts a frame.
                    pos += frame::HELLO_LEN;
                }
                self.sync = Sync::InStep;
                continue;
            }
            match frame::decode(&buf[pos..]) {
                Ok(None) => break Ok(()),
                Ok(Some((f, n))) => {
                    pos += n;
                    if let Err(e) = self.on_frame(f) {
                        break Err(e);
                    }
                }
                Err(e) => {
                    if matches!(self.role, Role::Host(_)) {
                        break Err(e);
                    }
                    // The host's frames never go wrong; a guest that reads one that did lost
                    // its place (a snapshot taken mid-frame): start again at the next Hello.
                    self.drop_all();
                    self.sync = Sync::AwaitingHello;
                }
            }
        };
        buf.drain(..pos);
        self.inbuf = buf;
        result
    }

    fn on_frame(&mut self, f: Frame<'_>) -> Result<(), Error> {
        let id = f.stream;
        match f.kind {
            Kind::Hello => match self.role {
                Role::Guest(_) => {
                    // A new host side: the old one's streams, and whatever was still queued
                    // for it, are gone. The echo tells the host where our frames start.
                    self.drop_all();
                    frame::encode_word(self.out.back(), 0, Kind::Hello, f.word());
                }
                Role::Host(_) => {
                    return Err(Error::Protocol {
                        stream: id,
                        what: "sent a host's hello",
                    })
                }
            },
            Kind::Open => {
                if matches!(self.role, Role::Guest(_)) {
                    self.guest_open(id, f.word());
                } else {
                    // Nothing on the host listens for the guest.
                    frame::encode(self.out.back(), id, Kind::Refuse, &[]);
                }
            }
            Kind::Accept => {
                if matches!(self.role, Role::Host(_)) {
                    self.host_accepted(id);
                }
            }
            Kind::Refuse => {
                if let Some(s) = self.streams.get(&id) {
                    if !s.open {
                        self.streams.remove(&id);
                    }
                }
            }
            Kind::Data => {
                let Some(s) = self.streams.get_mut(&id) else {
                    // A stream reset here while the peer was still sending.
                    return Ok(());
                };
                let len = f.payload.len() as u32;
                if !s.open || s.peer_shut || s.recv_outstanding.saturating_add(len) > WINDOW {
                    self.reset(id);
                    return Ok(());
                }
                s.to_local.back().extend_from_slice(f.payload);
                s.recv_outstanding += len;
                self.flush_local(id);
            }
            Kind::Credit => {
                let Some(s) = self.streams.get_mut(&id) else {
                    return Ok(());
                };
                match s.send_credit.checked_add(f.word()) {
                    Some(c) if c <= WINDOW => s.send_credit = c,
                    _ => self.reset(id),
                }
            }
            Kind::Shut => {
                if let Some(s) = self.streams.get_mut(&id) {
                    s.peer_shut = true;
                    self.flush_local(id);
                }
            }
            Kind::Reset => {
                self.streams.remove(&id);
            }
        }
        Ok(())
    }

    /// A stream's local end is readable, writable or hung up.
    fn stream_ready(&mut self, id: u32, ev: i16) {
        let Some(s) = self.streams.get_mut(&id) else {
            return;
        };
        if ev & (libc::POLLHUP | libc::POLLERR) != 0 {
            s.hup = true;
        }
        if !s.open {
            // A host client that gave up before the guest answered.
            if ev & (libc::POLLHUP | libc::POLLERR) != 0 {
                self.reset(id);
            }
            return;
        }
        if ev & (libc::POLLOUT | libc::POLLERR | libc::POLLHUP) != 0 && !s.to_local.is_empty() {
            self.flush_local(id);
        }
        let Some(s) = self.streams.get(&id) else {
            return;
        };
        if ev & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0 && self.wants_read(s) {
            self.read_local(id);
        }
    }

    /// Moves the peer's queued bytes to the local end, grants credit for them, and passes on
    /// the peer's EOF once they are all out.
    pub(crate) fn flush_local(&mut self, id: u32) {
        let Some(s) = self.streams.get_mut(&id) else {
            return;
        };
        while !s.to_local.is_empty() {
            match sys::write(s.fd.as_raw_fd(), s.to_local.bytes()) {
                Ok(Some(0)) | Ok(None) => break,
                Ok(Some(n)) => {
                    s.to_local.consume(n);
                    s.owed += n as u32;
                }
                Err(_) => {
                    self.reset(id);
                    return;
                }
            }
        }
        if s.owed >= CREDIT_BATCH {
            let grant = s.owed;
            s.recv_outstanding -= grant;
            s.owed = 0;
            if !s.peer_shut {
                frame::encode_word(self.out.back(), id, Kind::Credit, grant);
            }
        }
        if s.peer_shut && s.to_local.is_empty() && !s.local_shut {
            // A local end already gone takes its EOF as given.
            let _ = sys::shutdown_write(&s.fd);
            s.local_shut = true;
        }
        if s.finished() {
            self.streams.remove(&id);
        }
    }

    /// One read of a stream's local end, framed for the link: whether it took anything (bytes
    /// or the end), so a caller that must drain it can read again.
    pub(crate) fn read_local(&mut self, id: u32) -> bool {
        let Some(s) = self.streams.get_mut(&id) else {
            return false;
        };
        if !s.open || s.local_eof || s.send_credit == 0 {
            return false;
        }
        let want = (s.send_credit as usize).min(MAX_PAYLOAD);
        match sys::read(s.fd.as_raw_fd(), &mut self.scratch[..want]) {
            Ok(Some(0)) => {
                s.local_eof = true;
                frame::encode(self.out.back(), id, Kind::Shut, &[]);
                if s.finished() {
                    self.streams.remove(&id);
                }
                false
            }
            Ok(Some(n)) => {
                s.send_credit -= n as u32;
                frame::encode(self.out.back(), id, Kind::Data, &self.scratch[..n]);
                true
            }
            Ok(None) => false,
            Err(_) => {
                self.reset(id);
                false
            }
        }
    }

    /// Writes the link until everything queued is out or `deadline` passes (guest only: a
    /// failed write takes the link down).
    pub(crate) fn write_link_until(&mut self, deadline: Instant) {
        while !self.out.is_empty() && !self.down {
            if self.write_link().is_err() || self.out.is_empty() || self.down {
                return;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            let mut pfd = [libc::pollfd {
                fd: self.fd.as_raw_fd(),
                events: libc::POLLOUT,
                revents: 0,
            }];
            let ms = left.as_millis().min(i32::MAX as u128) as i32;
            if sys::poll(&mut pfd, ms.max(1)).is_err() {
                return;
            }
        }
    }

    /// Drops a stream and tells the peer.
    pub(crate) fn reset(&mut self, id: u32) {
        if self.streams.remove(&id).is_some() && !self.down {
            frame::encode(self.out.back(), id, Kind::Reset, &[]);
        }
    }

    /// Drops every stream without a word: they belonged to a host side that is gone.
    fn drop_all(&mut self) {
        self.streams.clear();
        self.out.clear();
    }

    fn link_down(&mut self) {
        self.drop_all();
        self.inbuf.clear();
        self.down = true;
    }
}
