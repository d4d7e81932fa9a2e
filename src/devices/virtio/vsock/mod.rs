//! virtio-vsock in userspace, bridged to host unix sockets (Firecracker protocol).
