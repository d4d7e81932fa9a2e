//! The virtio-fs device (type 26) as a vhost-user frontend: the data path lives in an
//! external `virtiofsd`, which maps guest memory (so husk-vmm's memory must be memfd-backed,
//! see `vmm::memory`) and serves the queues itself.
//!
//! What stays in husk-vmm: the config space (tag + number of request queues), feature
//! negotiation with both sides, and the handover at DRIVER_OK — memory table, ring addresses,
//! the queue ioeventfds as kick fds. The backend's call eventfds are relayed by a small worker
//! ([`handler::Relay`]) instead of being the irqfd itself: a virtio-mmio driver only looks at
//! the used rings when InterruptStatus has the used-ring bit, which only the VMM can set.
//! The same worker watches the vhost-user socket: a backend that goes away ends the VM with
//! one clear line rather than leaving the guest waiting on queues nobody serves.

mod device;
mod handler;

pub use device::{Error, VhostUserFs, NUM_QUEUES, QUEUE_SIZE, TAG_LEN};
