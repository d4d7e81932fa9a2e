//! What each side of the link keeps beside the streams: the host its listening socket and the
//! clients still sending their `CONNECT` line, the guest its port and the agent's accept
//! queue and flush requests. The engine ([`Link`](crate::link::Link)) holds one of these;
//! `host` and `guest` act on it.

use std::os::fd::OwnedFd;
use std::sync::{mpsc, Arc, Condvar, Mutex};

pub(crate) enum Role {
    Host(HostSide),
    Guest(GuestSide),
}

/// The host side's listening socket and the clients not yet streams.
pub(crate) struct HostSide {
    pub(crate) listener: OwnedFd,
    pub(crate) pending: Vec<Pending>,
    pub(crate) next_id: u32,
}

/// A client still sending its `CONNECT` line.
pub(crate) struct Pending {
    /// Taken when the client becomes a stream (its entry is then `done`).
    pub(crate) fd: Option<OwnedFd>,
    pub(crate) got: Vec<u8>,
    /// Closed, answered or turned into a stream: pruned after this round.
    pub(crate) done: bool,
}

/// The guest side's port, the agent's accept queue and its flush requests.
pub(crate) struct GuestSide {
    pub(crate) port: u32,
    pub(crate) accepted: mpsc::Sender<OwnedFd>,
    /// Read end of the pipe [`Flusher::flush`](crate::guest::Flusher::flush) wakes the mux thread through.
    pub(crate) wake: OwnedFd,
    pub(crate) flush: Arc<FlushState>,
}

/// Flush requests made and done, in order.
#[derive(Default)]
pub(crate) struct FlushState {
    pub(crate) gen: Mutex<(u64, u64)>,
    pub(crate) done: Condvar,
}
