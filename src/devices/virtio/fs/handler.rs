//! The fs worker: backend "call" eventfds -> the device's interrupt, and the vhost-user
//! socket's hang-up -> the VMM's exit.

use std::os::unix::io::RawFd;
use std::sync::Arc;

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use vmm_sys_util::eventfd::EventFd;

use crate::devices::virtio::VirtioInterrupt;

/// Called once when the backend hangs up.
pub type OnBackendGone = Arc<dyn Fn(String) + Send + Sync>;

pub struct Relay {
    pub calls: Vec<EventFd>,
    pub interrupt: Arc<VirtioInterrupt>,
    /// The vhost-user socket (owned by the device, which outlives this worker).
    pub socket_fd: RawFd,
    pub what: String,
    pub on_gone: OnBackendGone,
    gone: bool,
}

/// `data` of the socket's event; queue calls use their index.
const SOCKET: u32 = u32::MAX;

impl Relay {
    pub fn new(
        calls: Vec<EventFd>,
        interrupt: Arc<VirtioInterrupt>,
        socket_fd: RawFd,
        what: String,
        on_gone: OnBackendGone,
    ) -> Self {
        Relay {
            calls,
            interrupt,
            socket_fd,
            what,
            on_gone,
            gone: false,
        }
    }
}

impl MutEventSubscriber for Relay {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        if events.data() == SOCKET {
            if !self.gone {
                self.gone = true;
                let _ = ops.remove(events);
                (self.on_gone)(format!(
                    "{}: the vhost-user backend hung up; the guest's file system is gone",
                    self.what
                ));
            }
            return;
        }
        if let Some(call) = self.calls.get(events.data() as usize) {
            let _ = call.read();
            if let Err(e) = self.interrupt.signal_used_queue() {
                tracing::error!("{}: raising the interrupt: {e}", self.what);
            }
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        for (i, c) in self.calls.iter().enumerate() {
            if let Err(e) = ops.add(Events::with_data(c, i as u32, EventSet::IN)) {
                tracing::error!(
                    "{}: cannot watch queue {i}'s call eventfd: {e:?}",
                    self.what
                );
            }
        }
        // Only hang-ups: replies to our requests are read by the frontend on the vCPU side.
        let set = EventSet::READ_HANG_UP | EventSet::HANG_UP | EventSet::ERROR;
        if let Err(e) = ops.add(Events::with_data_raw(self.socket_fd, SOCKET, set)) {
            tracing::error!("{}: cannot watch the vhost-user socket: {e:?}", self.what);
        }
    }
}
