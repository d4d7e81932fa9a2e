//! The host side: Firecracker's hybrid vsock protocol on a unix socket. A client connects,
//! writes `CONNECT <port>\n`, and once the guest accepts reads `OK <port>\n` followed by the
//! stream's bytes; a refused or unanswered stream is a closed connection, which clients
//! retry while the guest boots.

use std::os::fd::{AsRawFd, OwnedFd};

use crate::frame::{self, Kind};
use crate::link::{Link, Sync, MAX_STREAMS};
use crate::role::{HostSide, Pending, Role};
use crate::stream::Stream;
use crate::{sys, Error};

/// Longest `CONNECT` line, newline included.
const MAX_LINE: usize = 64;
/// Clients that have not yet sent their `CONNECT` line; beyond this the oldest is dropped.
const MAX_PENDING: usize = 64;

/// Serves `listener`'s clients over `link` (the connection to QEMU's chardev) until QEMU
/// hangs up (`Ok`) or the guest breaks the protocol.
pub fn run(link: OwnedFd, listener: OwnedFd) -> Result<(), Error> {
    sys::set_nonblocking(listener.as_raw_fd()).map_err(|source| Error::Io {
        what: "making the listening socket non-blocking",
        source,
    })?;
    let mut l = Link::new(
        link,
        Role::Host(HostSide {
            listener,
            pending: Vec::new(),
            next_id: 1,
        }),
    )?;
    // Every stream of an earlier host side (a VM restored from a snapshot) is gone; the
    // guest's frames are read from its echo of this on.
    let nonce = nonce();
    frame::encode_word(l.out.back(), 0, Kind::Hello, nonce);
    l.sync = Sync::AwaitingEcho(nonce);
    l.run()
}

impl Link {
    pub(crate) fn accept_clients(&mut self) {
        let Role::Host(h) = &mut self.role else {
            return;
        };
        while h.pending.len() + self.streams.len() < MAX_STREAMS {
            match sys::accept(h.listener.as_raw_fd()) {
                Ok(Some(fd)) => {
                    // (Marked, not removed: this round's poll slots index the list.)
                    if h.pending.iter().filter(|p| !p.done).count() >= MAX_PENDING {
                        if let Some(oldest) = h.pending.iter_mut().find(|p| !p.done) {
                            oldest.done = true;
                        }
                    }
                    h.pending.push(Pending {
                        fd: Some(fd),
                        got: Vec::new(),
                        done: false,
                    });
                }
                Ok(None) => break,
                // Out of descriptors or memory: the client stays queued for the next round.
                Err(_) => break,
            }
        }
    }

    /// Reads what a pending client sent; a complete `CONNECT` line opens its stream.
    pub(crate) fn read_pending(&mut self, i: usize) {
        let Role::Host(h) = &mut self.role else {
            return;
        };
        let Some(p) = h.pending.get_mut(i) else {
            return;
        };
        if p.done {
            return;
        }
        let Some(fd) = &p.fd else {
            return;
        };
        let mut buf = [0u8; MAX_LINE];
        let room = MAX_LINE - p.got.len();
        match sys::read(fd.as_raw_fd(), &mut buf[..room]) {
            Ok(Some(0)) | Err(_) => {
                p.done = true;
                return;
            }
            Ok(None) => return,
            Ok(Some(n)) => p.got.extend_from_slice(&buf[..n]),
        }
        let Some(nl) = p.got.iter().position(|&b| b == b'\n') else {
            if p.got.len() >= MAX_LINE {
                p.done = true;
            }
            return;
        };
        p.done = true;
        let Some(port) = parse_connect(&p.got[..nl]) else {
            return;
        };
        let early = p.got[nl + 1..].to_vec();
        // The client's connection moves to its stream; the entry, done, is pruned this round.
        let Some(fd) = p.fd.take() else {
            return;
        };
        let mut id = h.next_id;
        while id == 0 || self.streams.contains_key(&id) {
            id = id.wrapping_add(1);
        }
        h.next_id = id.wrapping_add(1);
        let mut s = Stream::new(fd, port, false);
        s.early = early;
        self.streams.insert(id, s);
        frame::encode_word(self.out.back(), id, Kind::Open, port);
    }

    pub(crate) fn prune_pending(&mut self) {
        if let Role::Host(h) = &mut self.role {
            h.pending.retain(|p| !p.done);
        }
    }

    /// The guest accepted stream `id`: the client gets its `OK` line, then the stream.
    pub(crate) fn host_accepted(&mut self, id: u32) {
        if !matches!(self.role, Role::Host(_)) {
            return;
        }
        let Some(s) = self.streams.get_mut(&id) else {
            return;
        };
        if s.open {
            return;
        }
        s.open = true;
        let line = format!("OK {}\n", s.port);
        // A fresh connection's send buffer takes a short line whole.
        if !matches!(sys::write(s.fd.as_raw_fd(), line.as_bytes()), Ok(Some(n)) if n == line.len())
        {
            self.reset(id);
            return;
        }
        let early = std::mem::take(&mut s.early);
        if !early.is_empty() {
            s.send_credit -= early.len() as u32;
            frame::encode(self.out.back(), id, Kind::Data, &early);
        }
    }
}

/// A number the guest cannot have seen before this host side began: random, else the clock.
fn nonce() -> u32 {
    let mut b = [0u8; 4];
    // SAFETY: getrandom writes at most b.len() bytes into `b`, exclusively borrowed here.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), libc::GRND_NONBLOCK) };
    if n == 4 {
        return u32::from_le_bytes(b);
    }
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() ^ d.as_secs() as u32)
        .unwrap_or(0x6875_736b)
}

/// The port of a `CONNECT <port>` line.
fn parse_connect(line: &[u8]) -> Option<u32> {
    let line = std::str::from_utf8(line).ok()?;
    let port = line.strip_prefix("CONNECT ")?;
    port.trim_end_matches('\r').parse().ok()
}

#[cfg(test)]
mod tests {
    #[test]
    fn connect_lines_parse() {
        use super::parse_connect;
        assert_eq!(parse_connect(b"CONNECT 1024"), Some(1024));
        assert_eq!(parse_connect(b"CONNECT 7\r"), Some(7));
        for bad in [
            &b"CONNECT"[..],
            b"CONNECT -1",
            b"connect 5",
            b"CONNECT 99999999999",
            b"\xff",
        ] {
            assert_eq!(parse_connect(bad), None);
        }
    }
}
