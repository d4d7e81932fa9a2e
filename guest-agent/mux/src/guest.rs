//! The guest side: streams the host opens to the agent's port become one end of a unix
//! socket pair each, handed out by [`Acceptor::accept`] the way a vsock listener hands out
//! connections.

use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use crate::frame::{self, Kind};
use crate::link::{Link, MAX_STREAMS, OUT_HIGH};
use crate::role::{FlushState, GuestSide, Role};
use crate::stream::Stream;
use crate::{sys, Error};

/// The streams opened to the port, one socket each (blocking, close-on-exec).
pub struct Acceptor {
    rx: mpsc::Receiver<OwnedFd>,
    flusher: Flusher,
}

/// Waits for what the agent has written to its streams to be on the link: before the agent
/// ends the VM, its last answer must have left.
#[derive(Clone)]
pub struct Flusher {
    state: Arc<FlushState>,
    wake: Arc<OwnedFd>,
}

impl Flusher {
    /// Asks the mux thread to move every byte written to a stream so far onto the link, and
    /// waits up to `timeout` for it; false if that did not happen in time.
    pub fn flush(&self, timeout: Duration) -> bool {
        let want = {
            let mut g = self.state.gen.lock().unwrap_or_else(|p| p.into_inner());
            g.0 += 1;
            g.0
        };
        // A full pipe already holds a wake-up.
        let _ = sys::write(self.wake.as_raw_fd(), &[1]);
        let deadline = Instant::now() + timeout;
        let mut g = self.state.gen.lock().unwrap_or_else(|p| p.into_inner());
        while g.1 < want {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            g = match self.state.done.wait_timeout(g, left) {
                Ok((g, _)) => g,
                Err(p) => p.into_inner().0,
            };
        }
        true
    }
}

impl Acceptor {
    /// A handle for [`Flusher::flush`].
    pub fn flusher(&self) -> Flusher {
        self.flusher.clone()
    }

    /// The next stream; an error once the mux thread has ended.
    pub fn accept(&self) -> std::io::Result<OwnedFd> {
        self.rx.recv().map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the mux thread has ended")
        })
    }
}

/// Starts the mux on `link` (the guest's end of the serial port, read and written by nobody
/// else) in a thread of its own, accepting streams to `port`. `on_error` is called with
/// what ended the thread, should it end.
pub fn start(
    link: OwnedFd,
    port: u32,
    on_error: impl FnOnce(Error) + Send + 'static,
) -> Result<Acceptor, Error> {
    let (tx, rx) = mpsc::channel();
    let (wake_rx, wake_tx) = sys::pipe().map_err(|source| Error::Io {
        what: "making the flush pipe",
        source,
    })?;
    let state = Arc::new(FlushState::default());
    let flusher = Flusher {
        state: state.clone(),
        wake: Arc::new(wake_tx),
    };
    let mut l = Link::new(
        link,
        Role::Guest(GuestSide {
            port,
            accepted: tx,
            wake: wake_rx,
            flush: state,
        }),
    )?;
    std::thread::Builder::new()
        .name("mux".into())
        .spawn(move || {
            if let Err(e) = l.run() {
                on_error(e);
            }
        })
        .map_err(|source| Error::Io {
            what: "starting the mux thread",
            source,
        })?;
    Ok(Acceptor { rx, flusher })
}

impl Link {
    /// The host opens stream `id` to `port`.
    pub(crate) fn guest_open(&mut self, id: u32, port: u32) {
        let Role::Guest(g) = &self.role else {
            return;
        };
        let refuse =
            self.streams.contains_key(&id) || port != g.port || self.streams.len() >= MAX_STREAMS;
        let pair = if refuse { None } else { new_pair().ok() };
        let Some((ours, theirs)) = pair else {
            frame::encode(self.out.back(), id, Kind::Refuse, &[]);
            return;
        };
        if g.accepted.send(theirs).is_err() {
            frame::encode(self.out.back(), id, Kind::Refuse, &[]);
            return;
        }
        self.streams.insert(id, Stream::new(ours, port, true));
        frame::encode(self.out.back(), id, Kind::Accept, &[]);
    }
}

/// The longest a flush keeps at it: a link the host does not read holds nothing up longer.
const FLUSH_LIMIT: Duration = Duration::from_secs(1);

impl Link {
    /// The agent asked for a flush: every stream's readable bytes (as far as its credit
    /// goes) are framed and the link written until empty, then the request is marked done.
    pub(crate) fn flush_requested(&mut self) {
        let Role::Guest(g) = &self.role else {
            return;
        };
        let mut buf = [0u8; 64];
        while matches!(sys::read(g.wake.as_raw_fd(), &mut buf), Ok(Some(n)) if n > 0) {}
        let state = g.flush.clone();
        let want = state.gen.lock().unwrap_or_else(|p| p.into_inner()).0;
        let ids: Vec<u32> = self.streams.keys().copied().collect();
        for id in ids {
            while self.out.len() < OUT_HIGH && self.read_local(id) {}
        }
        self.write_link_until(Instant::now() + FLUSH_LIMIT);
        let mut gen = state.gen.lock().unwrap_or_else(|p| p.into_inner());
        gen.1 = gen.1.max(want);
        state.done.notify_all();
    }
}

/// A socket pair, the mux's end non-blocking.
fn new_pair() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let (ours, theirs) = sys::socketpair()?;
    sys::set_nonblocking(ours.as_raw_fd())?;
    Ok((ours, theirs))
}
