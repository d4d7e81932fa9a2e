//! The guest console's host side: where serial output goes, and stdin fed back as serial
//! input through the event loop.

use std::fs::OpenOptions;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};

use super::config::ConsoleConfig;
use crate::devices::legacy::serial::{ConsoleOut, RawStdout, SerialDevice};

#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    /// The console log file could not be opened for appending.
    #[error("cannot open console file {path}: {source}")]
    File { path: PathBuf, source: io::Error },
}

/// The writer behind the serial port for `cfg`.
pub fn output(cfg: &ConsoleConfig) -> Result<ConsoleOut, ConsoleError> {
    Ok(match cfg {
        ConsoleConfig::Stdout => Box::new(RawStdout),
        // io::Sink is a no-op write: "off" costs the guest its port exits and nothing more.
        ConsoleConfig::Off => Box::new(io::sink()),
        ConsoleConfig::File(path) => Box::new(
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|source| ConsoleError::File {
                    path: path.clone(),
                    source,
                })?,
        ),
    })
}

/// Reads host stdin into the serial port's receive FIFO.
pub struct SerialInput {
    serial: Arc<Mutex<SerialDevice>>,
    fd: RawFd,
}

impl SerialInput {
    pub fn stdin(serial: Arc<Mutex<SerialDevice>>) -> Self {
        Self {
            serial,
            fd: io::stdin().as_raw_fd(),
        }
    }
}

impl MutEventSubscriber for SerialInput {
    fn init(&mut self, ops: &mut EventOps) {
        // Regular files and /dev/null cannot be polled (EPERM): no interactive input then,
        // which is what a test or a daemonised VM wants anyway.
        if let Err(e) = ops.add(Events::new_raw(self.fd, EventSet::IN)) {
            tracing::debug!("console input disabled: {e:?}");
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let mut serial = self.serial.lock().unwrap_or_else(|p| p.into_inner());
        // Take no more than the FIFO holds; the rest stays in the pipe for the next round
        // (level-triggered epoll calls again), so typed input is never dropped.
        let room = serial.input_capacity().min(64);
        let mut buf = [0u8; 64];
        let n = if room == 0 {
            0
        } else {
            // SAFETY: reads into a stack buffer of at least `room` bytes from a fd we poll.
            unsafe { libc::read(self.fd, buf.as_mut_ptr().cast(), room) }
        };
        if n > 0 {
            if let Err(e) = serial.enqueue_input(&buf[..n as usize]) {
                tracing::debug!("{e}");
            }
        } else if room > 0 || events.event_set().contains(EventSet::HANG_UP) {
            // EOF or error: stop polling, or epoll would report it forever.
            let _ = ops.remove(events);
        }
    }
}

/// Wakes the event loop when the VM is ending; the loop itself checks why.
pub struct ExitListener {
    pub fd: RawFd,
}

impl MutEventSubscriber for ExitListener {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new_raw(self.fd, EventSet::IN)) {
            tracing::warn!("exit eventfd not polled: {e:?}");
        }
    }
    fn process(&mut self, _: Events, _: &mut EventOps) {
        let mut v = 0u64;
        // SAFETY: an 8-byte read from an eventfd into a u64; failure only means nothing
        // was pending.
        unsafe { libc::read(self.fd, (&mut v as *mut u64).cast(), 8) };
    }
}
