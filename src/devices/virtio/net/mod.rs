//! virtio-net (type 1) over a host TAP device.
//!
//! - [`tap`]: the host side — a TAP opened by name or taken as an already-open fd (the host
//!   network code may open it inside another network namespace), non-blocking, with
//!   `IFF_VNET_HDR` and a vnet header of [`HDR_LEN`] bytes, and the offloads it accepts;
//! - [`frame`]: pure validation of one descriptor chain, every descriptor checked — a tx
//!   chain becomes a checked copy of its vnet header plus guest memory slices (written to
//!   the TAP with one writev), an rx chain becomes the slices a frame is read into (readv);
//! - [`handler`]: the worker-thread subscriber moving frames between the queues and the
//!   TAP, with a per-event budget so neither a flooding guest nor a flooding host holds the
//!   loop, and rx deferred (not dropped) while the guest has no buffers;
//! - [`device`]: [`Net`], the [`VirtioDevice`](super::VirtioDevice): MAC and link status in
//!   config space, feature negotiation.
//!
//! # Features
//!
//! `VERSION_1`, `F_MAC`, `F_STATUS`, `RING_F_EVENT_IDX`, and — only for the offloads the
//! TAP accepts through `TUNSETOFFLOAD` — `CSUM`/`GUEST_CSUM`, `HOST_TSO4/6` and
//! `GUEST_TSO4/6`. `MRG_RXBUF` is not offered: every frame is exactly one rx chain, which
//! keeps rx free of partial-frame state across chains (and of a guest that posts half of
//! what a frame needs). The price is guest memory: with `GUEST_TSO*` a Linux guest then
//! posts "big packet" buffers of ~64 KiB per rx slot; without it, 1.5 KiB ones. With
//! `VERSION_1` the header is `virtio_net_hdr_v1` (12 bytes) whether or not `MRG_RXBUF` is
//! negotiated, so the TAP's vnet header size is fixed at 12 and `num_buffers` is always 1.

pub mod device;
pub mod frame;
pub mod handler;
pub mod tap;

pub use device::{Net, NetStats};
pub use tap::{Tap, TapError};

/// `virtio_net_hdr_v1`: flags, gso_type, hdr_len, gso_size, csum_start, csum_offset,
/// num_buffers.
pub const HDR_LEN: usize = 12;
/// Byte offset of `num_buffers` in the header.
pub const HDR_NUM_BUFFERS: usize = 10;
/// Largest Ethernet frame either way, without the vnet header: a 64 KiB GSO packet plus
/// Ethernet and VLAN headers (the bound Linux's virtio-net driver uses for big buffers).
pub const MAX_FRAME: usize = 65562;
/// An Ethernet header: the least a frame can be.
pub const ETH_HLEN: usize = 14;

/// Feature bits (virtio 1.2, 5.1.3).
pub mod features {
    use virtio_bindings::virtio_net as n;
    pub const CSUM: u64 = 1 << n::VIRTIO_NET_F_CSUM;
    pub const GUEST_CSUM: u64 = 1 << n::VIRTIO_NET_F_GUEST_CSUM;
    pub const MAC: u64 = 1 << n::VIRTIO_NET_F_MAC;
    pub const GUEST_TSO4: u64 = 1 << n::VIRTIO_NET_F_GUEST_TSO4;
    pub const GUEST_TSO6: u64 = 1 << n::VIRTIO_NET_F_GUEST_TSO6;
    pub const HOST_TSO4: u64 = 1 << n::VIRTIO_NET_F_HOST_TSO4;
    pub const HOST_TSO6: u64 = 1 << n::VIRTIO_NET_F_HOST_TSO6;
    pub const MRG_RXBUF: u64 = 1 << n::VIRTIO_NET_F_MRG_RXBUF;
    pub const STATUS: u64 = 1 << n::VIRTIO_NET_F_STATUS;
    pub const RING_EVENT_IDX: u64 = 1 << virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
}

/// Header `flags` and `gso_type` values (virtio 1.2, 5.1.6).
pub mod hdr {
    pub const F_NEEDS_CSUM: u8 = 1;
    pub const F_DATA_VALID: u8 = 2;
    pub const GSO_NONE: u8 = 0;
    pub const GSO_TCPV4: u8 = 1;
    pub const GSO_UDP: u8 = 3;
    pub const GSO_TCPV6: u8 = 4;
    pub const GSO_ECN: u8 = 0x80;
}
