//! Virtio devices and the virtio-mmio transport.

pub mod block;
pub mod mmio;
pub mod vsock;
