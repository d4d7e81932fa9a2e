//! Guest RAM and split virtqueues as a hostile driver lays them out.
//!
//! RAM is [`MEM_SIZE`] bytes at guest address 0. The first [`DATA_BASE`] bytes hold the rings:
//! queue `i` has its descriptor table at `i * QUEUE_STRIDE`, its available ring 4 KiB above,
//! its used ring 8 KiB above (room for 256 entries each). Buffers point anywhere the input
//! says: mostly into the data area (whose bytes come from the input too), sometimes at any
//! address in or just past RAM, sometimes at any 64-bit address.

use arbitrary::Arbitrary;
use husk::devices::virtio::GuestMemory;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};

/// Bytes of guest RAM.
pub const MEM_SIZE: usize = 0x2_0000;
/// Start of the data area (buffers); the rings live below it.
pub const DATA_BASE: u64 = 0x1_0000;
/// Bytes of the data area.
pub const DATA_LEN: u64 = MEM_SIZE as u64 - DATA_BASE;
/// Distance between the ring sets of two queues.
pub const QUEUE_STRIDE: u64 = 0x4000;
/// Largest queue size a target configures (the devices' maximum).
pub const MAX_QUEUE: u16 = 256;

/// A buffer address.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum Addr {
    /// An offset into the data area.
    Data(u16),
    /// Any address in RAM or up to 4 KiB past its end.
    Near(u32),
    /// Any address at all.
    Raw(u64),
}

impl Addr {
    pub fn resolve(self) -> u64 {
        match self {
            Addr::Data(o) => DATA_BASE + u64::from(o) % DATA_LEN,
            Addr::Near(a) => u64::from(a) % (MEM_SIZE as u64 + 0x1000),
            Addr::Raw(a) => a,
        }
    }
}

/// A buffer length, biased towards the sizes that matter (headers, sectors).
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum Len {
    Small(u8),
    Medium(u16),
    Raw(u32),
}

impl Len {
    pub fn resolve(self) -> u32 {
        match self {
            Len::Small(l) => l.into(),
            Len::Medium(l) => l.into(),
            Len::Raw(l) => l,
        }
    }
}

/// One descriptor-table entry.
#[derive(Arbitrary, Debug, Clone)]
pub struct Desc {
    pub addr: Addr,
    pub len: Len,
    /// NEXT = 1, WRITE = 2, INDIRECT = 4; the other bits are garbage a driver may set.
    pub flags: u16,
    pub next: u16,
}

/// What the driver put in one queue.
#[derive(Arbitrary, Debug, Clone)]
pub struct QueueInput {
    /// Queue size is `1 << (size_log2 % 9)`: 1 to 256.
    pub size_log2: u8,
    pub event_idx: bool,
    /// Descriptor table entries from index 0 (entries past the queue size are ignored).
    pub descs: Vec<Desc>,
    /// Available ring entries (heads), in order.
    pub avail: Vec<u16>,
    /// An available index that does not match the entries (a driver lying about them).
    pub bogus_avail_idx: Option<u16>,
    pub used_event: u16,
}

impl QueueInput {
    pub fn size(&self) -> u16 {
        1 << (self.size_log2 % 9)
    }

    /// The available index the driver publishes.
    pub fn avail_idx(&self) -> u16 {
        let n = self.avail.len().min(self.size().into()) as u16;
        self.bogus_avail_idx.unwrap_or(n)
    }
}

/// Guest RAM with the data area filled from `data` (zeros elsewhere).
pub fn memory(data: &[u8]) -> GuestMemory {
    let mem = GuestMemory::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).expect("guest memory");
    let n = data.len().min(DATA_LEN as usize);
    mem.write_slice(&data[..n], GuestAddress(DATA_BASE))
        .expect("data area is in RAM");
    mem
}

/// Where queue `index`'s rings are: (descriptor table, available ring, used ring).
pub fn ring_addrs(index: usize) -> (u64, u64, u64) {
    let base = index as u64 * QUEUE_STRIDE;
    (base, base + 0x1000, base + 0x2000)
}

/// Writes `q`'s descriptor table and available ring for queue `index` into `mem` (which
/// must come from [`memory`]; at most four queues fit below the data area).
pub fn write_rings(mem: &GuestMemory, index: usize, q: &QueueInput) {
    assert!(
        (index as u64 + 1) * QUEUE_STRIDE <= DATA_BASE,
        "queue {index} has no ring area"
    );
    let (desc, avail, _used) = ring_addrs(index);
    let size = usize::from(q.size());
    for (i, d) in q.descs.iter().take(size).enumerate() {
        let mut raw = [0u8; 16];
        raw[0..8].copy_from_slice(&d.addr.resolve().to_le_bytes());
        raw[8..12].copy_from_slice(&d.len.resolve().to_le_bytes());
        raw[12..14].copy_from_slice(&d.flags.to_le_bytes());
        raw[14..16].copy_from_slice(&d.next.to_le_bytes());
        mem.write_slice(&raw, GuestAddress(desc + 16 * i as u64))
            .expect("descriptor table is in RAM");
    }
    let w16 = |addr: u64, v: u16| {
        mem.write_obj(v, GuestAddress(addr))
            .expect("available ring is in RAM")
    };
    w16(avail, 0);
    w16(avail + 2, q.avail_idx());
    for (i, &head) in q.avail.iter().take(size).enumerate() {
        w16(avail + 4 + 2 * i as u64, head);
    }
    w16(avail + 4 + 2 * size as u64, q.used_event);
}

/// A ready queue over the rings of queue `index`, as the transport hands it to a device
/// after checking it (`Queue::is_valid`).
pub fn queue(mem: &GuestMemory, index: usize, q: &QueueInput) -> Queue {
    write_rings(mem, index, q);
    let (desc, avail, used) = ring_addrs(index);
    let mut queue = Queue::new(MAX_QUEUE).expect("queue");
    queue.set_size(q.size());
    queue.set_desc_table_address(Some(desc as u32), Some(0));
    queue.set_avail_ring_address(Some(avail as u32), Some(0));
    queue.set_used_ring_address(Some(used as u32), Some(0));
    queue.set_event_idx(q.event_idx);
    queue.set_ready(true);
    assert!(queue.is_valid(mem), "fuzz harness built an invalid queue");
    queue
}
