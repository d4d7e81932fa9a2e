//! virtio-mmio transport (virtio 1.x).
