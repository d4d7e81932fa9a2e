//! The block worker's event subscriber: queue notification → drain the queue → interrupt.

use std::sync::Arc;

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vmm_sys_util::eventfd::EventFd;

use super::backend::DiskBackend;
use super::request;
use crate::devices::virtio::{GuestMemory, VirtioInterrupt};

/// Drains the request queue of one block device on its worker thread.
pub struct BlockHandler {
    pub mem: GuestMemory,
    pub queue: Queue,
    pub queue_evt: EventFd,
    pub interrupt: Arc<VirtioInterrupt>,
    pub disk: Arc<dyn DiskBackend>,
    /// Set once the driver corrupted the available ring; the queue is then left alone.
    broken: bool,
}

impl BlockHandler {
    pub fn new(
        mem: GuestMemory,
        queue: Queue,
        queue_evt: EventFd,
        interrupt: Arc<VirtioInterrupt>,
        disk: Arc<dyn DiskBackend>,
    ) -> Self {
        Self {
            mem,
            queue,
            queue_evt,
            interrupt,
            disk,
            broken: false,
        }
    }

    /// Processes every available request; returns how many were completed.
    pub fn process_queue(&mut self) -> usize {
        if self.broken {
            return 0;
        }
        let mut done = 0usize;
        loop {
            if let Err(e) = self.queue.disable_notification(&self.mem) {
                tracing::warn!("virtio-blk: disabling notifications: {e}");
            }
            let mut progressed = false;
            while let Some(chain) = self.queue.pop_descriptor_chain(&self.mem) {
                progressed = true;
                let head = chain.head_index();
                let out = request::process(&self.mem, chain, self.disk.as_ref());
                if let Err(e) = self.queue.add_used(&self.mem, head, out.used_len) {
                    tracing::warn!("virtio-blk: add_used({head}): {e}");
                }
                done += 1;
            }
            match self.queue.enable_notification(&self.mem) {
                Ok(true) if progressed => continue,
                Ok(true) => {
                    // Nothing popped although the ring says there is more: either the driver
                    // raced us (retry) or its avail index is bogus (stop for good).
                    if self.queue.iter(&self.mem).is_err() {
                        tracing::error!("virtio-blk: invalid available ring index; queue stopped");
                        self.broken = true;
                        break;
                    }
                }
                Ok(false) => break,
                Err(e) => {
                    tracing::warn!("virtio-blk: enabling notifications: {e}");
                    break;
                }
            }
        }
        if done > 0 && self.queue.needs_notification(&self.mem).unwrap_or(true) {
            if let Err(e) = self.interrupt.signal_used_queue() {
                tracing::error!("virtio-blk: raising interrupt: {e}");
            }
        }
        done
    }
}

impl MutEventSubscriber for BlockHandler {
    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        if events.event_set().contains(EventSet::IN) {
            let _ = self.queue_evt.read();
            self.process_queue();
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.queue_evt, EventSet::IN)) {
            tracing::error!("virtio-blk: cannot watch the queue eventfd: {e:?}");
        }
        // Requests queued before activation (or before a ioeventfd kick was missed).
        self.process_queue();
    }
}
