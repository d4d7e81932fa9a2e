//! One stream's state on one side of the link.

use std::os::fd::OwnedFd;

use crate::frame::WINDOW;
use crate::queue::Queue;

#[derive(Debug)]
pub struct Stream {
    /// This side's end: a client's connection (host) or the mux's end of a socket pair (guest).
    pub fd: OwnedFd,
    /// The port the stream was opened to (the host answers its client's `CONNECT` with it).
    pub port: u32,
    /// The acceptor has accepted (always true on the acceptor's side).
    pub open: bool,
    /// Bytes this side may still send.
    pub send_credit: u32,
    /// Bytes the peer sent that have not been granted back yet (queued or written, not yet
    /// credited): never more than [`WINDOW`].
    pub recv_outstanding: u32,
    /// Written to `fd` and not yet granted back.
    pub owed: u32,
    /// The peer's bytes waiting for `fd`.
    pub to_local: Queue,
    /// Bytes read from the local end before the stream opened (the host's client sends its
    /// first bytes right behind `CONNECT`), sent once it opens.
    pub early: Vec<u8>,
    /// The local end is at EOF and the peer was told ([`Kind::Shut`](crate::frame::Kind)).
    pub local_eof: bool,
    /// The peer sends no more.
    pub peer_shut: bool,
    /// The local end's writing half is shut (after `peer_shut` and `to_local` drained).
    pub local_shut: bool,
    /// The local end reported a hang-up: it is not polled while nothing is wanted of it (a
    /// hung-up socket is always ready, and would spin the loop).
    pub hup: bool,
}

impl Stream {
    pub fn new(fd: OwnedFd, port: u32, open: bool) -> Stream {
        Stream {
            fd,
            port,
            open,
            send_credit: WINDOW,
            recv_outstanding: 0,
            owed: 0,
            to_local: Queue::default(),
            early: Vec::new(),
            local_eof: false,
            peer_shut: false,
            local_shut: false,
            hup: false,
        }
    }

    /// Both directions are over: nothing more to read from the local end or to write to it.
    pub fn finished(&self) -> bool {
        self.local_eof && self.local_shut
    }
}
