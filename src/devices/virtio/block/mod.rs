//! virtio-blk over a raw file.
