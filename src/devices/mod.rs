//! Devices emulated by husk-vmm: the PIO/MMIO buses, legacy devices (serial, i8042)
//! and virtio devices on the virtio-mmio transport; and the NBD export that serves QEMU the
//! disks only husk can assemble.

pub mod bus;
pub mod legacy;
pub mod nbd_export;
pub mod virtio;
