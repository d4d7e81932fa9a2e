//! Test support (not used by husk-vmm): a driver-side virtio harness.
//!
//! [`Harness`] plays the guest driver against the real [`MmioTransport`] and a real device
//! over real guest memory: it attaches the device with [`attach_virtio_mmio`] (no KVM),
//! talks to the registers through the MMIO [`Bus`], lays out split virtqueues in guest
//! memory, places descriptor chains, notifies through QueueNotify, and waits for used-ring
//! entries on the interrupt `EventFd` — the same path a guest takes, minus the vCPU.
//!
//! Used by `tests/virtio_blk.rs`, `benches/blk.rs` and the vsock tests.

use std::os::unix::io::AsRawFd;
use std::sync::atomic::{fence, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use linux_loader::cmdline::Cmdline;
use vm_memory::{Bytes, GuestAddress};

use super::mmio::attach::NoKvm;
use super::mmio::{attach_virtio_mmio, reg, status, MmioAllocator, MmioTransport};
use super::{GuestMemory, VirtioDevice, VIRTIO_F_VERSION_1};
use crate::devices::bus::Bus;

/// Descriptor flags (virtio 1.2, 2.7.5).
pub const VIRTQ_DESC_F_NEXT: u16 = 1;
pub const VIRTQ_DESC_F_WRITE: u16 = 2;
pub const VIRTQ_DESC_F_INDIRECT: u16 = 4;

/// Where the harness puts the device (the values husk-vmm uses on x86_64).
pub const MMIO_BASE: u64 = 0xd000_0000;
/// Guest RAM of the harness VM.
pub const DEFAULT_MEM_SIZE: usize = 64 << 20;
/// Guest memory below this is for rings; buffers are allocated above it.
const RING_AREA: u64 = 1 << 20;

/// One buffer of a chain: guest address, length, device-writable?
#[derive(Clone, Copy, Debug)]
pub struct Buf {
    pub addr: GuestAddress,
    pub len: u32,
    pub write: bool,
}

impl Buf {
    /// Device-readable buffer.
    pub fn r(addr: GuestAddress, len: u32) -> Self {
        Self {
            addr,
            len,
            write: false,
        }
    }
    /// Device-writable buffer.
    pub fn w(addr: GuestAddress, len: u32) -> Self {
        Self {
            addr,
            len,
            write: true,
        }
    }
}

/// Driver-side state of one split virtqueue.
#[derive(Debug, Clone)]
pub struct DriverQueue {
    pub size: u16,
    pub desc: GuestAddress,
    pub avail: GuestAddress,
    pub used: GuestAddress,
    next_desc: u16,
    avail_idx: u16,
    used_seen: u16,
}

/// The guest driver of one virtio-mmio device.
pub struct Harness {
    pub mem: GuestMemory,
    pub bus: Bus,
    pub base: u64,
    pub transport: Arc<Mutex<MmioTransport>>,
    pub cmdline: Cmdline,
    pub queues: Vec<DriverQueue>,
    next_ring: u64,
    next_buf: u64,
}

impl Harness {
    /// Attaches `device` (no KVM) in a VM with [`DEFAULT_MEM_SIZE`] bytes of RAM.
    pub fn new(device: Box<dyn VirtioDevice>) -> Self {
        Self::with_mem_size(device, DEFAULT_MEM_SIZE)
    }

    pub fn with_mem_size(device: Box<dyn VirtioDevice>, size: usize) -> Self {
        let mem = GuestMemory::from_ranges(&[(GuestAddress(0), size)]).expect("guest memory");
        Self::with_mem(device, mem)
    }

    /// Attaches `device` over `mem` (one region at 0, as from `vmm::memory::create_shared`
    /// for a vhost-user device).
    pub fn with_mem(device: Box<dyn VirtioDevice>, mem: GuestMemory) -> Self {
        let mut bus = Bus::new();
        let mut cmdline = Cmdline::new(4096).expect("cmdline");
        let mut alloc = MmioAllocator::new(MMIO_BASE, 0x1000, 5..=23);
        let attached = attach_virtio_mmio(&NoKvm, &mut bus, &mut cmdline, &mem, &mut alloc, device)
            .expect("attach virtio-mmio device");
        Self {
            mem,
            bus,
            base: attached.base,
            transport: attached.transport,
            cmdline,
            queues: Vec::new(),
            next_ring: 0x1000,
            next_buf: RING_AREA,
        }
    }

    // ---- registers ----

    pub fn read32(&self, offset: u64) -> u32 {
        let mut b = [0u8; 4];
        assert!(
            self.bus.read(self.base + offset, &mut b),
            "no device at {offset:#x}"
        );
        u32::from_le_bytes(b)
    }

    pub fn write32(&self, offset: u64, v: u32) {
        assert!(self.bus.write(self.base + offset, &v.to_le_bytes()));
    }

    /// Reads `len` bytes of config space at `offset`.
    pub fn read_config(&self, offset: u64, len: usize) -> Vec<u8> {
        let mut b = vec![0u8; len];
        assert!(self.bus.read(self.base + reg::CONFIG + offset, &mut b));
        b
    }

    pub fn status(&self) -> u32 {
        self.read32(reg::STATUS)
    }

    fn add_status(&self, bit: u32) {
        self.write32(reg::STATUS, self.status() | bit);
    }

    /// Checks magic and version, returns the device id.
    pub fn probe(&self) -> u32 {
        assert_eq!(self.read32(reg::MAGIC), 0x7472_6976, "magic");
        assert_eq!(self.read32(reg::VERSION), 2, "version");
        self.read32(reg::DEVICE_ID)
    }

    pub fn device_features(&self) -> u64 {
        self.write32(reg::DEVICE_FEATURES_SEL, 0);
        let lo = self.read32(reg::DEVICE_FEATURES);
        self.write32(reg::DEVICE_FEATURES_SEL, 1);
        let hi = self.read32(reg::DEVICE_FEATURES);
        u64::from(lo) | u64::from(hi) << 32
    }

    /// Reset, ACKNOWLEDGE, DRIVER, write `features`, FEATURES_OK; returns whether the
    /// device accepted (FEATURES_OK reads back set).
    pub fn negotiate(&self, features: u64) -> bool {
        self.write32(reg::STATUS, 0);
        self.add_status(status::ACKNOWLEDGE);
        self.add_status(status::DRIVER);
        self.write32(reg::DRIVER_FEATURES_SEL, 0);
        self.write32(reg::DRIVER_FEATURES, features as u32);
        self.write32(reg::DRIVER_FEATURES_SEL, 1);
        self.write32(reg::DRIVER_FEATURES, (features >> 32) as u32);
        self.add_status(status::FEATURES_OK);
        self.status() & status::FEATURES_OK != 0
    }

    /// Lays out and enables `count` queues of at most `size` entries each.
    pub fn setup_queues(&mut self, count: usize, size: u16) {
        self.queues.clear();
        self.next_ring = 0x1000;
        for i in 0..count {
            self.write32(reg::QUEUE_SEL, i as u32);
            let max = self.read32(reg::QUEUE_NUM_MAX) as u16;
            assert!(max > 0, "queue {i} does not exist");
            let size = size.min(max);
            let n = u64::from(size);
            let desc = self.ring_alloc(16 * n, 16);
            let avail = self.ring_alloc(6 + 2 * n, 2);
            let used = self.ring_alloc(6 + 8 * n, 4);
            for (addr, len) in [(desc, 16 * n), (avail, 6 + 2 * n), (used, 6 + 8 * n)] {
                self.mem
                    .write_slice(&vec![0u8; len as usize], addr)
                    .unwrap();
            }
            self.write32(reg::QUEUE_NUM, u32::from(size));
            self.set_queue_addrs(desc, avail, used);
            self.write32(reg::QUEUE_READY, 1);
            self.queues.push(DriverQueue {
                size,
                desc,
                avail,
                used,
                next_desc: 0,
                avail_idx: 0,
                used_seen: 0,
            });
        }
    }

    /// Writes the selected queue's ring addresses.
    pub fn set_queue_addrs(&self, desc: GuestAddress, avail: GuestAddress, used: GuestAddress) {
        for (lo, a) in [
            (reg::QUEUE_DESC_LOW, desc),
            (reg::QUEUE_AVAIL_LOW, avail),
            (reg::QUEUE_USED_LOW, used),
        ] {
            self.write32(lo, a.0 as u32);
            self.write32(lo + 4, (a.0 >> 32) as u32);
        }
    }

    fn ring_alloc(&mut self, len: u64, align: u64) -> GuestAddress {
        let a = self.next_ring.div_ceil(align) * align;
        self.next_ring = a + len;
        assert!(self.next_ring <= RING_AREA, "ring area exhausted");
        GuestAddress(a)
    }

    pub fn driver_ok(&self) {
        self.add_status(status::DRIVER_OK);
    }

    /// Negotiates `features ∩ offered` (always with VERSION_1), sets up `queues` queues of up
    /// to `size` entries, DRIVER_OK; asserts the device went live.
    pub fn init(&mut self, features: u64, queues: usize, size: u16) {
        let f = (self.device_features() & features) | VIRTIO_F_VERSION_1;
        assert!(self.negotiate(f), "device refused features {f:#x}");
        self.setup_queues(queues, size);
        self.driver_ok();
        assert_eq!(
            self.status(),
            status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK,
            "device did not go live"
        );
    }

    /// Writes status 0 (device reset).
    pub fn reset(&mut self) {
        self.write32(reg::STATUS, 0);
    }

    // ---- buffers ----

    /// Allocates `len` bytes of guest memory for buffers (4 KiB aligned).
    pub fn alloc(&mut self, len: u64) -> GuestAddress {
        let a = self.next_buf.div_ceil(4096) * 4096;
        self.next_buf = a + len.max(1);
        assert!(
            self.next_buf <= self.mem_size(),
            "harness guest memory exhausted"
        );
        GuestAddress(a)
    }

    /// Forgets every buffer allocation.
    pub fn free_all(&mut self) {
        self.next_buf = RING_AREA;
    }

    pub fn mem_size(&self) -> u64 {
        use vm_memory::GuestMemoryBackend;
        self.mem.last_addr().0 + 1
    }

    pub fn write(&self, addr: GuestAddress, data: &[u8]) {
        self.mem.write_slice(data, addr).unwrap();
    }

    pub fn read(&self, addr: GuestAddress, len: usize) -> Vec<u8> {
        let mut b = vec![0u8; len];
        self.mem.read_slice(&mut b, addr).unwrap();
        b
    }

    // ---- queues ----

    /// Writes raw descriptor `index` of queue `q` (for hostile layouts).
    pub fn write_desc(&self, q: usize, index: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let dq = &self.queues[q];
        let a = GuestAddress(dq.desc.0 + 16 * u64::from(index));
        let mut d = [0u8; 16];
        d[0..8].copy_from_slice(&addr.to_le_bytes());
        d[8..12].copy_from_slice(&len.to_le_bytes());
        d[12..14].copy_from_slice(&flags.to_le_bytes());
        d[14..16].copy_from_slice(&next.to_le_bytes());
        self.mem.write_slice(&d, a).unwrap();
    }

    /// Publishes chain head `head` on the available ring (does not notify).
    pub fn push_avail(&mut self, q: usize, head: u16) {
        let dq = &mut self.queues[q];
        let slot = dq.avail_idx % dq.size;
        self.mem
            .write_obj(head, GuestAddress(dq.avail.0 + 4 + 2 * u64::from(slot)))
            .unwrap();
        dq.avail_idx = dq.avail_idx.wrapping_add(1);
        fence(Ordering::SeqCst);
        self.mem
            .write_obj(dq.avail_idx, GuestAddress(dq.avail.0 + 2))
            .unwrap();
    }

    /// Sets the raw avail index (hostile drivers).
    pub fn set_avail_idx(&mut self, q: usize, idx: u16) {
        self.queues[q].avail_idx = idx;
        self.mem
            .write_obj(idx, GuestAddress(self.queues[q].avail.0 + 2))
            .unwrap();
    }

    /// Places `bufs` as one chain on consecutive descriptors and publishes it; returns the head.
    pub fn add_chain(&mut self, q: usize, bufs: &[Buf]) -> u16 {
        let size = self.queues[q].size;
        let head = self.queues[q].next_desc;
        for (i, b) in bufs.iter().enumerate() {
            let idx = (head + i as u16) % size;
            let next = (idx + 1) % size;
            let mut flags = if b.write { VIRTQ_DESC_F_WRITE } else { 0 };
            if i + 1 < bufs.len() {
                flags |= VIRTQ_DESC_F_NEXT;
            }
            self.write_desc(q, idx, b.addr.0, b.len, flags, next);
        }
        self.queues[q].next_desc = (head + bufs.len() as u16) % size;
        self.push_avail(q, head);
        head
    }

    /// QueueNotify for queue `q`.
    pub fn notify(&self, q: usize) {
        self.write32(reg::QUEUE_NOTIFY, q as u32);
    }

    /// The device's used index for queue `q`.
    pub fn used_idx(&self, q: usize) -> u16 {
        fence(Ordering::SeqCst);
        self.mem
            .read_obj(GuestAddress(self.queues[q].used.0 + 2))
            .unwrap()
    }

    /// Number of interrupts raised since the last call (reads the irq EventFd).
    pub fn take_interrupts(&self) -> u64 {
        self.transport
            .lock()
            .unwrap()
            .interrupt()
            .irq_evt()
            .read()
            .unwrap_or(0)
    }

    /// InterruptStatus, then InterruptACK of the same bits.
    pub fn ack_interrupt(&self) -> u32 {
        let s = self.read32(reg::INTERRUPT_STATUS);
        self.write32(reg::INTERRUPT_ACK, s);
        s
    }

    /// Waits until `count` new used entries exist on queue `q`, returns them as (id, len).
    /// `None` after `timeout` (the device did not answer).
    pub fn wait_used(
        &mut self,
        q: usize,
        count: usize,
        timeout: Duration,
    ) -> Option<Vec<(u32, u32)>> {
        let irq_fd = self
            .transport
            .lock()
            .unwrap()
            .interrupt()
            .irq_evt()
            .as_raw_fd();
        let deadline = Instant::now() + timeout;
        let target = self.queues[q].used_seen.wrapping_add(count as u16);
        loop {
            let idx = self.used_idx(q);
            if idx.wrapping_sub(self.queues[q].used_seen) >= count as u16 && count > 0 {
                break;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            let mut pfd = libc::pollfd {
                fd: irq_fd,
                events: libc::POLLIN,
                revents: 0,
            };
            let ms = left.as_millis().min(50) as i32;
            // SAFETY: one valid pollfd for the duration of the call.
            unsafe { libc::poll(&mut pfd, 1, ms) };
        }
        let dq = &self.queues[q];
        let mut out = Vec::with_capacity(count);
        let mut i = dq.used_seen;
        while i != target {
            let slot = u64::from(i % dq.size);
            let e = GuestAddress(dq.used.0 + 4 + 8 * slot);
            let id: u32 = self.mem.read_obj(e).unwrap();
            let len: u32 = self.mem.read_obj(GuestAddress(e.0 + 4)).unwrap();
            out.push((id, len));
            i = i.wrapping_add(1);
        }
        self.queues[q].used_seen = target;
        Some(out)
    }

    /// Waits for one used entry.
    pub fn wait_one(&mut self, q: usize) -> Option<(u32, u32)> {
        self.wait_used(q, 1, Duration::from_secs(5)).map(|v| v[0])
    }

    /// Asserts that no used entry appears on `q` within `wait`.
    pub fn expect_no_used(&self, q: usize, wait: Duration) -> bool {
        let deadline = Instant::now() + wait;
        while Instant::now() < deadline {
            if self.used_idx(q) != self.queues[q].used_seen {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        true
    }
}

/// virtio-blk request helpers on top of [`Harness`].
pub mod blk {
    use super::*;
    use virtio_bindings::virtio_blk::{
        VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
    };

    /// A request placed in guest memory: header, data, status byte.
    #[derive(Clone, Copy, Debug)]
    pub struct Req {
        pub hdr: GuestAddress,
        pub data: GuestAddress,
        pub data_len: u32,
        pub status: GuestAddress,
    }

    /// Allocates header/data/status buffers and writes the header.
    pub fn prepare(h: &mut Harness, req_type: u32, sector: u64, data_len: u32) -> Req {
        let hdr = h.alloc(16);
        let data = h.alloc(u64::from(data_len));
        let status = h.alloc(1);
        let mut b = [0u8; 16];
        b[0..4].copy_from_slice(&req_type.to_le_bytes());
        b[8..16].copy_from_slice(&sector.to_le_bytes());
        h.write(hdr, &b);
        h.write(status, &[0xff]);
        Req {
            hdr,
            data,
            data_len,
            status,
        }
    }

    /// The standard 3-descriptor chain for `r` (data writable for IN/GET_ID).
    pub fn chain(r: &Req, data_writable: bool) -> Vec<Buf> {
        let mut v = vec![Buf::r(r.hdr, 16)];
        if r.data_len > 0 {
            v.push(Buf {
                addr: r.data,
                len: r.data_len,
                write: data_writable,
            });
        }
        v.push(Buf::w(r.status, 1));
        v
    }

    /// Submits a request, waits for it; returns (status byte, used len).
    pub fn submit(h: &mut Harness, r: &Req, req_type: u32) -> (u8, u32) {
        let writable = matches!(req_type, VIRTIO_BLK_T_IN | VIRTIO_BLK_T_GET_ID);
        h.add_chain(0, &chain(r, writable));
        h.notify(0);
        let (_, len) = h.wait_one(0).expect("device did not complete the request");
        (h.read(r.status, 1)[0], len)
    }

    pub fn read(h: &mut Harness, sector: u64, len: u32) -> (u8, Vec<u8>) {
        let r = prepare(h, VIRTIO_BLK_T_IN, sector, len);
        let (s, _) = submit(h, &r, VIRTIO_BLK_T_IN);
        (s, h.read(r.data, len as usize))
    }

    pub fn write(h: &mut Harness, sector: u64, data: &[u8]) -> u8 {
        let r = prepare(h, VIRTIO_BLK_T_OUT, sector, data.len() as u32);
        h.write(r.data, data);
        submit(h, &r, VIRTIO_BLK_T_OUT).0
    }

    pub fn flush(h: &mut Harness) -> u8 {
        let r = prepare(h, VIRTIO_BLK_T_FLUSH, 0, 0);
        submit(h, &r, VIRTIO_BLK_T_FLUSH).0
    }

    pub fn get_id(h: &mut Harness) -> (u8, u32, Vec<u8>) {
        let r = prepare(h, VIRTIO_BLK_T_GET_ID, 0, 20);
        let (s, len) = submit(h, &r, VIRTIO_BLK_T_GET_ID);
        (s, len, h.read(r.data, 20))
    }
}
