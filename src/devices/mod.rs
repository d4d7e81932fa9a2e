//! Devices emulated by husk-vmm: the PIO/MMIO buses, legacy devices (serial, i8042)
//! and virtio devices on the virtio-mmio transport; and the vhost-user-blk backend that serves
//! the same virtio-blk requests to QEMU.

pub mod bus;
pub mod legacy;
pub mod vhost_user_blk;
pub mod virtio;
