//! The per-device worker thread: one named thread running one `EventManager`.
//!
//! A device builds its subscribers (queue handlers, backend listeners) in `activate` and
//! hands them to [`Worker::spawn`]. The worker also watches a stop `EventFd`;
//! [`Worker::stop`] (or `Drop`) signals it and joins the thread, which drops the
//! subscribers — and with them the queues, guest memory and fds of the driver session.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use event_manager::{EventManager, EventOps, EventSet, Events, MutEventSubscriber, SubscriberOps};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::ActivateError;
use crate::confine::seccomp::ThreadKind;
use crate::confine::threads;

/// A subscriber that can move to the worker thread.
pub type Subscriber = Box<dyn MutEventSubscriber + Send>;

/// Handle on a running device worker thread.
pub struct Worker {
    name: String,
    stop_evt: EventFd,
    handle: Option<JoinHandle<()>>,
}

/// Sets the stop flag when the stop `EventFd` fires.
struct StopSubscriber {
    evt: EventFd,
    stopped: Arc<AtomicBool>,
}

impl MutEventSubscriber for StopSubscriber {
    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        let _ = self.evt.read();
        self.stopped.store(true, Ordering::SeqCst);
    }

    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.evt, EventSet::IN)) {
            tracing::error!("worker: cannot watch stop eventfd: {e:?}");
            // Without a stop event the loop could never be joined; stop right away.
            self.stopped.store(true, Ordering::SeqCst);
        }
    }
}

impl Worker {
    /// Starts thread `name`, of seccomp kind `kind`, running an event loop over `subscribers`.
    pub fn spawn(
        name: &str,
        kind: ThreadKind,
        subscribers: Vec<Subscriber>,
    ) -> Result<Self, ActivateError> {
        let stop_evt = EventFd::new(EFD_NONBLOCK)?;
        let stopped = Arc::new(AtomicBool::new(false));
        let mut em: EventManager<Subscriber> =
            EventManager::new().map_err(ActivateError::EventManager)?;
        em.add_subscriber(Box::new(StopSubscriber {
            evt: stop_evt.try_clone()?,
            stopped: stopped.clone(),
        }));
        let thread_name = name.to_string();
        // The thread installs `kind`'s seccomp filter, then adds the subscribers: their
        // `init` already serves what the guest queued before activation, and that must not
        // run on the (vCPU) thread that activated the device.
        let handle = threads::spawn(name, kind, None, move || {
            for s in subscribers {
                em.add_subscriber(s);
            }
            while !stopped.load(Ordering::SeqCst) {
                if let Err(e) = em.run() {
                    tracing::error!("{thread_name}: event loop failed: {e:?}");
                    break;
                }
            }
        })
        .map_err(|source| ActivateError::Thread {
            name: name.to_string(),
            source,
        })?;
        Ok(Self {
            name: name.to_string(),
            stop_evt,
            handle: Some(handle),
        })
    }

    /// Stops the loop and joins the thread. Idempotent.
    pub fn stop(&mut self) -> io::Result<()> {
        if let Some(h) = self.handle.take() {
            self.stop_evt.write(1)?;
            if h.join().is_err() {
                tracing::error!("{}: worker thread panicked", self.name);
            }
        }
        Ok(())
    }

    pub fn is_running(&self) -> bool {
        self.handle.as_ref().is_some_and(|h| !h.is_finished())
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU32;

    struct Counter {
        evt: EventFd,
        hits: Arc<AtomicU32>,
    }
    impl MutEventSubscriber for Counter {
        fn process(&mut self, _e: Events, _o: &mut EventOps) {
            let _ = self.evt.read();
            self.hits.fetch_add(1, Ordering::SeqCst);
        }
        fn init(&mut self, ops: &mut EventOps) {
            ops.add(Events::new(&self.evt, EventSet::IN)).unwrap();
        }
    }

    #[test]
    fn runs_subscribers_and_stops_on_request() {
        let evt = EventFd::new(EFD_NONBLOCK).unwrap();
        let hits = Arc::new(AtomicU32::new(0));
        let sub = Counter {
            evt: evt.try_clone().unwrap(),
            hits: hits.clone(),
        };
        let mut w = Worker::spawn("test-worker", ThreadKind::Block, vec![Box::new(sub)]).unwrap();
        evt.write(1).unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while hits.load(Ordering::SeqCst) == 0 && std::time::Instant::now() < deadline {
            std::thread::yield_now();
        }
        assert_eq!(hits.load(Ordering::SeqCst), 1);
        assert!(w.is_running());
        w.stop().unwrap();
        assert!(!w.is_running());
        w.stop().unwrap();
    }
}
