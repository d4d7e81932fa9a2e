//! One vsock stream: the host unix socket on one side, a guest (port pair) on the other,
//! with credit accounting both ways and a bounded buffer for guest data the host socket
//! cannot take yet.
//!
//! Memory bounds, both directions:
//! - guest → host: we advertise `buf_alloc = TX_BUF_SIZE` and count in `fwd_cnt` only the
//!   bytes the host socket actually took, so a guest that respects credit never has more
//!   than `TX_BUF_SIZE` bytes parked here; one that does not is reset.
//! - host → guest: we read the host socket only into a guest rx buffer and only as much as
//!   the guest's credit allows, so nothing is buffered on this side at all.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::num::Wrapping;
use std::os::unix::net::UnixStream;
use std::time::Instant;

use vmm_sys_util::epoll::EventSet;

use super::packet::{
    Header, HOST_CID, OP_CREDIT_REQUEST, OP_CREDIT_UPDATE, OP_REQUEST, OP_RESPONSE, OP_RST, OP_RW,
    OP_SHUTDOWN, SHUTDOWN_RCV, SHUTDOWN_SEND, TYPE_STREAM,
};

/// Cap on guest data parked per connection, and the `buf_alloc` we advertise.
pub const TX_BUF_SIZE: usize = 256 * 1024;
/// Tell the guest about freed buffer space once this much has been forwarded unreported.
pub const CREDIT_UPDATE_THRESHOLD: u32 = (TX_BUF_SIZE / 4) as u32;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The guest sent more than the credit we granted it.
    #[error("vsock port {local}<->{peer}: guest overran its credit ({have} buffered + {add} > {TX_BUF_SIZE})")]
    CreditExceeded {
        local: u32,
        peer: u32,
        have: usize,
        add: usize,
    },
    /// The guest sent data after shutting down its send side, or before the connection
    /// was established.
    #[error("vsock port {local}<->{peer}: guest sent data in a state that forbids it")]
    UnexpectedData { local: u32, peer: u32 },
    /// The host side of the connection failed or went away.
    #[error("vsock port {local}<->{peer}: host socket: {source}")]
    Host {
        local: u32,
        peer: u32,
        source: io::Error,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Host-initiated: REQUEST queued or sent to the guest, waiting for its RESPONSE.
    LocalInit,
    /// Data flows.
    Established,
}

/// Control packets owed to the guest (a connection owes at most one of each).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Owed {
    request: bool,
    response: bool,
    credit_update: bool,
    shutdown: bool,
}

/// What the muxer should do with a connection after feeding it a guest packet.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Keep,
    /// Remove it and send the guest an RST.
    Reset,
    /// Remove it silently (the guest already reset it).
    Drop,
}

pub struct Connection {
    stream: UnixStream,
    guest_cid: u64,
    pub local_port: u32,
    pub peer_port: u32,
    state: State,
    owed: Owed,
    /// We sent CREDIT_REQUEST and wait for the guest's next header.
    credit_requested: bool,
    /// Set once the host socket reported readable and not yet drained by a read.
    readable: bool,
    /// The host socket hung up: it is out of the epoll set and only drained.
    hup: bool,
    /// The host socket reached EOF (we owe or sent SHUTDOWN(SEND)).
    host_eof: bool,
    /// SHUTDOWN flags received from the guest.
    peer_shut: u32,
    /// The write half of the host socket was shut after the guest's SHUTDOWN(SEND).
    host_write_shut: bool,
    /// Bytes for the host program that are not stream data (the `OK <port>\n` reply).
    reply: Vec<u8>,
    /// Stream data the host program sent right behind its CONNECT line.
    preread: Vec<u8>,
    tx_buf: VecDeque<u8>,
    fwd_cnt: Wrapping<u32>,
    last_fwd_cnt_sent: Wrapping<u32>,
    rx_cnt: Wrapping<u32>,
    peer_buf_alloc: u32,
    peer_fwd_cnt: Wrapping<u32>,
    /// When a connection in a waiting state gives up (REQUEST unanswered, close unflushed).
    pub deadline: Option<Instant>,
    /// Interest last registered in epoll (`None`: not registered).
    pub registered: Option<EventSet>,
    /// Already in the muxer's rx queue.
    pub queued: bool,
}

impl Connection {
    /// A guest-initiated connection, accepted: it owes the guest a RESPONSE.
    pub fn new_peer_init(
        stream: UnixStream,
        guest_cid: u64,
        local_port: u32,
        hdr: &Header,
    ) -> Self {
        let mut c = Self::new(
            stream,
            guest_cid,
            local_port,
            hdr.src_port,
            State::Established,
        );
        c.update_peer_credit(hdr);
        c.owed.response = true;
        c
    }

    /// A host-initiated connection: it owes the guest a REQUEST. `preread` is stream data
    /// that arrived behind the CONNECT line.
    pub fn new_local_init(
        stream: UnixStream,
        guest_cid: u64,
        local_port: u32,
        peer_port: u32,
        preread: Vec<u8>,
    ) -> Self {
        let mut c = Self::new(stream, guest_cid, local_port, peer_port, State::LocalInit);
        c.owed.request = true;
        c.preread = preread;
        c
    }

    fn new(
        stream: UnixStream,
        guest_cid: u64,
        local_port: u32,
        peer_port: u32,
        state: State,
    ) -> Self {
        Connection {
            stream,
            guest_cid,
            local_port,
            peer_port,
            state,
            owed: Owed::default(),
            credit_requested: false,
            readable: false,
            hup: false,
            host_eof: false,
            peer_shut: 0,
            host_write_shut: false,
            reply: Vec::new(),
            preread: Vec::new(),
            tx_buf: VecDeque::new(),
            fwd_cnt: Wrapping(0),
            last_fwd_cnt_sent: Wrapping(0),
            rx_cnt: Wrapping(0),
            peer_buf_alloc: 0,
            peer_fwd_cnt: Wrapping(0),
            deadline: None,
            registered: None,
            queued: false,
        }
    }

    pub fn stream(&self) -> &UnixStream {
        &self.stream
    }

    pub fn state(&self) -> State {
        self.state
    }

    /// Bytes of guest data parked for the host socket.
    pub fn tx_buffered(&self) -> usize {
        self.tx_buf.len()
    }

    /// How many more bytes the guest can take from us right now.
    pub fn peer_credit(&self) -> u32 {
        let in_flight = (self.rx_cnt - self.peer_fwd_cnt).0;
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    fn update_peer_credit(&mut self, hdr: &Header) {
        self.peer_buf_alloc = hdr.buf_alloc;
        self.peer_fwd_cnt = Wrapping(hdr.fwd_cnt);
        // Only fresh credit re-arms the request: a guest that answers "still full" must
        // not start a CREDIT_REQUEST/CREDIT_UPDATE ping-pong.
        if self.peer_credit() > 0 {
            self.credit_requested = false;
        }
    }

    fn err_host(&self, source: io::Error) -> Error {
        Error::Host {
            local: self.local_port,
            peer: self.peer_port,
            source,
        }
    }

    /// Feeds one packet the guest sent on this connection.
    pub fn on_guest_packet(&mut self, hdr: &Header, data: &[u8]) -> Result<Verdict, Error> {
        self.update_peer_credit(hdr);
        match (self.state, hdr.op) {
            (_, OP_RST) => return Ok(Verdict::Drop),
            (State::LocalInit, OP_RESPONSE) => {
                self.state = State::Established;
                self.owed.request = false;
                self.deadline = None;
                self.reply = super::unix::ok_reply(self.local_port);
                self.flush_tx()?;
            }
            (State::Established, OP_RW) => self.push_tx(data)?,
            (State::Established, OP_SHUTDOWN) => {
                self.peer_shut |= hdr.flags & (SHUTDOWN_RCV | SHUTDOWN_SEND);
                self.flush_tx()?;
            }
            (State::Established, OP_CREDIT_UPDATE) => {}
            (State::Established, OP_CREDIT_REQUEST) => self.owed.credit_update = true,
            // A REQUEST for a live pair, a RESPONSE out of turn, data before the guest
            // accepted, or an op we do not know: the stream cannot be trusted any more.
            _ => return Ok(Verdict::Reset),
        }
        Ok(if self.is_finished() {
            Verdict::Reset
        } else {
            Verdict::Keep
        })
    }

    /// Both directions are done and everything the guest sent reached the host socket.
    pub fn is_finished(&self) -> bool {
        if self.state != State::Established || !self.tx_buf.is_empty() {
            return false;
        }
        let guest_done_sending = self.peer_shut & SHUTDOWN_SEND != 0;
        let nothing_more_to_guest = self.peer_shut & SHUTDOWN_RCV != 0 || self.host_eof;
        guest_done_sending && nothing_more_to_guest
    }

    /// The guest asked to close both ways but data is still parked: the muxer arms a
    /// deadline so a host that never reads cannot keep it forever.
    pub fn closing(&self) -> bool {
        self.peer_shut == SHUTDOWN_RCV | SHUTDOWN_SEND
    }

    fn push_tx(&mut self, data: &[u8]) -> Result<(), Error> {
        let (local, peer) = (self.local_port, self.peer_port);
        if self.peer_shut & SHUTDOWN_SEND != 0 {
            return Err(Error::UnexpectedData { local, peer });
        }
        if self.tx_buf.len() + data.len() > TX_BUF_SIZE {
            return Err(Error::CreditExceeded {
                local,
                peer,
                have: self.tx_buf.len(),
                add: data.len(),
            });
        }
        let mut written = 0;
        if self.tx_buf.is_empty() && self.reply.is_empty() {
            written = self.write_host(data)?;
            self.fwd_cnt += Wrapping(written as u32);
        }
        self.tx_buf.extend(&data[written..]);
        self.note_forwarded();
        Ok(())
    }

    /// Writes without blocking; `Ok(0)` when the socket is full.
    fn write_host(&mut self, buf: &[u8]) -> Result<usize, Error> {
        write_nonblocking(&mut self.stream, buf).map_err(|e| self.err_host(e))
    }

    /// Moves parked bytes to the host socket (on EPOLLOUT, or after a state change).
    pub fn flush_tx(&mut self) -> Result<(), Error> {
        if !self.reply.is_empty() {
            let n = self.write_host(&self.reply.clone())?;
            self.reply.drain(..n);
            if !self.reply.is_empty() {
                return Ok(());
            }
        }
        while !self.tx_buf.is_empty() {
            let (front, _) = self.tx_buf.as_slices();
            let n = match write_nonblocking(&mut self.stream, front) {
                Ok(n) => n,
                Err(e) => return Err(self.err_host(e)),
            };
            if n == 0 {
                break;
            }
            self.tx_buf.drain(..n);
            self.fwd_cnt += Wrapping(n as u32);
        }
        if self.tx_buf.is_empty() && self.peer_shut & SHUTDOWN_SEND != 0 && !self.host_write_shut {
            self.host_write_shut = true;
            // The host may have closed already; the guest is done either way.
            let _ = self.stream.shutdown(Shutdown::Write);
        }
        self.note_forwarded();
        Ok(())
    }

    fn note_forwarded(&mut self) {
        if (self.fwd_cnt - self.last_fwd_cnt_sent).0 >= CREDIT_UPDATE_THRESHOLD {
            self.owed.credit_update = true;
        }
    }

    /// The host socket became readable.
    pub fn on_host_readable(&mut self) {
        self.readable = true;
    }

    /// The host socket hung up; the muxer takes it out of epoll and we drain what is left.
    pub fn on_host_hup(&mut self) {
        self.hup = true;
        self.readable = true;
    }

    pub fn hung_up(&self) -> bool {
        self.hup
    }

    fn can_send_data(&self) -> bool {
        self.state == State::Established && !self.host_eof && self.peer_shut & SHUTDOWN_RCV == 0
    }

    /// Epoll interest for the host socket.
    pub fn interest(&self) -> EventSet {
        let mut e = EventSet::empty();
        if self.can_send_data() && !self.readable && self.peer_credit() > 0 {
            e |= EventSet::IN;
        }
        if !self.tx_buf.is_empty() || !self.reply.is_empty() {
            e |= EventSet::OUT;
        }
        e
    }

    /// Whether the connection has a packet for the guest.
    pub fn has_rx(&self) -> bool {
        let o = self.owed;
        let data = self.rw_ready() && (self.peer_credit() > 0 || !self.credit_requested);
        o.request || o.response || o.credit_update || o.shutdown || data
    }

    fn rw_ready(&self) -> bool {
        self.can_send_data() && (self.readable || !self.preread.is_empty())
    }

    fn header(&mut self, op: u16, len: u32, flags: u32) -> Header {
        self.last_fwd_cnt_sent = self.fwd_cnt;
        self.owed.credit_update = false;
        Header {
            src_cid: HOST_CID,
            dst_cid: self.guest_cid,
            src_port: self.local_port,
            dst_port: self.peer_port,
            len,
            type_: TYPE_STREAM,
            op,
            flags,
            buf_alloc: TX_BUF_SIZE as u32,
            fwd_cnt: self.fwd_cnt.0,
        }
    }

    /// An RST for this pair.
    pub fn rst_header(&mut self) -> Header {
        self.header(OP_RST, 0, 0)
    }

    /// Produces the next packet for the guest into `data` (at most `cap` bytes of data).
    /// `Ok(None)`: nothing to send after all (the socket had nothing to read).
    pub fn next_rx(&mut self, cap: usize, data: &mut Vec<u8>) -> Result<Option<Header>, Error> {
        data.clear();
        if self.owed.request {
            self.owed.request = false;
            return Ok(Some(self.header(OP_REQUEST, 0, 0)));
        }
        if self.owed.response {
            self.owed.response = false;
            return Ok(Some(self.header(OP_RESPONSE, 0, 0)));
        }
        if self.rw_ready() {
            let credit = self.peer_credit() as usize;
            if credit == 0 {
                if !self.credit_requested {
                    // Ask once; the answer (any guest header) refreshes our view.
                    self.credit_requested = true;
                    return Ok(Some(self.header(OP_CREDIT_REQUEST, 0, 0)));
                }
            } else if let Some(h) = self.read_data(cap.min(credit), data)? {
                return Ok(Some(h));
            }
        }
        if self.owed.credit_update {
            return Ok(Some(self.header(OP_CREDIT_UPDATE, 0, 0)));
        }
        if self.owed.shutdown {
            self.owed.shutdown = false;
            return Ok(Some(self.header(OP_SHUTDOWN, 0, SHUTDOWN_SEND)));
        }
        Ok(None)
    }

    fn read_data(&mut self, want: usize, data: &mut Vec<u8>) -> Result<Option<Header>, Error> {
        if want == 0 {
            return Ok(None);
        }
        if !self.preread.is_empty() {
            let n = want.min(self.preread.len());
            data.extend(self.preread.drain(..n));
        } else {
            data.resize(want, 0);
            let n = loop {
                match self.stream.read(data) {
                    Ok(n) => break n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        self.readable = false;
                        data.clear();
                        return Ok(None);
                    }
                    Err(e) => return Err(self.err_host(e)),
                }
            };
            data.truncate(n);
            if n == 0 {
                self.host_eof = true;
                self.readable = false;
                self.owed.shutdown = true;
                return Ok(None);
            }
            if n < want {
                // Probably drained; epoll tells us when there is more.
                self.readable = self.hup;
            }
        }
        self.rx_cnt += Wrapping(data.len() as u32);
        Ok(Some(self.header(OP_RW, data.len() as u32, 0)))
    }
}

fn write_nonblocking(stream: &mut UnixStream, buf: &[u8]) -> io::Result<usize> {
    if buf.is_empty() {
        return Ok(0);
    }
    loop {
        match stream.write(buf) {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(0),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guest_hdr(op: u16, len: u32, flags: u32, buf_alloc: u32, fwd_cnt: u32) -> Header {
        Header {
            src_cid: 3,
            dst_cid: HOST_CID,
            src_port: 5000,
            dst_port: 80,
            len,
            type_: TYPE_STREAM,
            op,
            flags,
            buf_alloc,
            fwd_cnt,
        }
    }

    fn established() -> (Connection, UnixStream) {
        let (a, b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        b.set_nonblocking(true).unwrap();
        let mut c = Connection::new_peer_init(a, 3, 80, &guest_hdr(OP_REQUEST, 0, 0, 4096, 0));
        let mut d = Vec::new();
        assert_eq!(c.next_rx(4096, &mut d).unwrap().unwrap().op, OP_RESPONSE);
        (c, b)
    }

    #[test]
    fn host_data_is_bounded_by_guest_credit() {
        let (mut c, mut host) = established();
        host.write_all(&[1u8; 10000]).unwrap();
        c.on_host_readable();
        let mut d = Vec::new();
        let h = c.next_rx(60000, &mut d).unwrap().unwrap();
        assert_eq!((h.op, h.len as usize, d.len()), (OP_RW, 4096, 4096));
        assert_eq!(c.peer_credit(), 0);
        assert_eq!(
            c.interest(),
            EventSet::empty(),
            "no credit: stop reading the host"
        );
        // Out of credit: ask once, then stay quiet.
        assert_eq!(
            c.next_rx(60000, &mut d).unwrap().unwrap().op,
            OP_CREDIT_REQUEST
        );
        assert!(c.next_rx(60000, &mut d).unwrap().is_none());
        // The guest consumed 4096 bytes.
        let v = c
            .on_guest_packet(&guest_hdr(OP_CREDIT_UPDATE, 0, 0, 4096, 4096), &[])
            .unwrap();
        assert_eq!(v, Verdict::Keep);
        let h = c.next_rx(60000, &mut d).unwrap().unwrap();
        assert_eq!((h.op, h.len), (OP_RW, 4096));
    }

    #[test]
    fn guest_data_parks_up_to_cap_then_resets() {
        let (mut c, host) = established();
        let chunk = vec![7u8; 64 * 1024];
        let mut sent = 0;
        // The host never reads: everything beyond the socket buffer parks, up to the cap.
        loop {
            match c.on_guest_packet(&guest_hdr(OP_RW, chunk.len() as u32, 0, 4096, 0), &chunk) {
                Ok(Verdict::Keep) => sent += chunk.len(),
                Err(Error::CreditExceeded { .. }) => break,
                other => panic!("unexpected {other:?}"),
            }
            assert!(sent < 64 * 1024 * 1024, "never stopped");
        }
        assert!(c.tx_buffered() <= TX_BUF_SIZE);
        assert!(c.interest().contains(EventSet::OUT));
        drop(host);
    }

    #[test]
    fn credit_update_after_forwarding_threshold() {
        let (mut c, mut host) = established();
        let chunk = vec![1u8; CREDIT_UPDATE_THRESHOLD as usize];
        c.on_guest_packet(&guest_hdr(OP_RW, chunk.len() as u32, 0, 4096, 0), &chunk)
            .unwrap();
        let mut got = vec![0u8; chunk.len()];
        let mut n = 0;
        while n < got.len() {
            match host.read(&mut got[n..]) {
                Ok(k) => n += k,
                Err(_) => c.flush_tx().unwrap(),
            }
        }
        c.flush_tx().unwrap();
        let mut d = Vec::new();
        let h = c.next_rx(4096, &mut d).unwrap().unwrap();
        assert_eq!(
            (h.op, h.fwd_cnt, h.buf_alloc),
            (
                OP_CREDIT_UPDATE,
                CREDIT_UPDATE_THRESHOLD,
                TX_BUF_SIZE as u32
            )
        );
    }

    #[test]
    fn host_eof_then_guest_shutdown_finishes() {
        let (mut c, host) = established();
        drop(host);
        c.on_host_hup();
        let mut d = Vec::new();
        let h = c.next_rx(4096, &mut d).unwrap().unwrap();
        assert_eq!((h.op, h.flags), (OP_SHUTDOWN, SHUTDOWN_SEND));
        let v = c
            .on_guest_packet(&guest_hdr(OP_SHUTDOWN, 0, SHUTDOWN_SEND, 4096, 0), &[])
            .unwrap();
        assert_eq!(v, Verdict::Reset);
    }

    #[test]
    fn protocol_violations_reset() {
        let (mut c, _host) = established();
        assert_eq!(
            c.on_guest_packet(&guest_hdr(OP_RESPONSE, 0, 0, 0, 0), &[])
                .unwrap(),
            Verdict::Reset
        );
        assert_eq!(
            c.on_guest_packet(&guest_hdr(99, 0, 0, 0, 0), &[]).unwrap(),
            Verdict::Reset
        );
        assert_eq!(
            c.on_guest_packet(&guest_hdr(OP_RST, 0, 0, 0, 0), &[])
                .unwrap(),
            Verdict::Drop
        );
        c.on_guest_packet(&guest_hdr(OP_SHUTDOWN, 0, SHUTDOWN_SEND, 0, 0), &[])
            .unwrap();
        assert!(matches!(
            c.on_guest_packet(&guest_hdr(OP_RW, 3, 0, 0, 0), b"abc"),
            Err(Error::UnexpectedData { .. })
        ));
    }

    #[test]
    fn local_init_sends_ok_on_response() {
        let (a, mut host) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        let mut c = Connection::new_local_init(a, 3, 1 << 30, 52, b"hi".to_vec());
        let mut d = Vec::new();
        let h = c.next_rx(4096, &mut d).unwrap().unwrap();
        assert_eq!(
            (h.op, h.src_port, h.dst_port, h.dst_cid),
            (OP_REQUEST, 1 << 30, 52, 3)
        );
        assert!(!c.has_rx(), "no data before the guest accepts");
        let mut r = guest_hdr(OP_RESPONSE, 0, 0, 4096, 0);
        r.src_port = 52;
        assert_eq!(c.on_guest_packet(&r, &[]).unwrap(), Verdict::Keep);
        let mut buf = [0u8; 32];
        let n = host.read(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"OK 1073741824\n");
        let h = c.next_rx(4096, &mut d).unwrap().unwrap();
        assert_eq!((h.op, d.as_slice()), (OP_RW, &b"hi"[..]));
    }
}
