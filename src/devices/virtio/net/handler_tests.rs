//! The handler over mock split queues and an in-memory backend: budget, deferral, hostile
//! chains on the live path.

use std::collections::VecDeque;
use std::os::fd::RawFd;
use std::sync::Mutex;

use super::*;
use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EFD_NONBLOCK;

const W: u16 = VRING_DESC_F_WRITE as u16;
const N: u16 = VRING_DESC_F_NEXT as u16;
const QSIZE: u16 = 256;
const RXQ_ADDR: u64 = 0;
const TXQ_ADDR: u64 = 0x8000;
const BUFS: u64 = 0x10_0000;

/// Frames queued for the guest, and what the guest sent.
struct Fake {
    to_guest: VecDeque<Vec<u8>>,
    sent: Arc<Mutex<Vec<Vec<u8>>>>,
    fd: EventFd,
}

impl AsRawFd for Fake {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl NetBackend for Fake {
    /// Like a TAP: fills the buffers, then the spill, returns what it copied.
    fn read_frame_into(&mut self, parts: &[GuestSlice<'_>], spill: &mut [u8]) -> io::Result<usize> {
        let f = self
            .to_guest
            .pop_front()
            .ok_or_else(|| io::Error::from(io::ErrorKind::WouldBlock))?;
        let mut rest = &f[..];
        for p in parts {
            let n = p.len().min(rest.len());
            p.subslice(0, n).unwrap().copy_from(&rest[..n]);
            rest = &rest[n..];
        }
        let n = spill.len().min(rest.len());
        spill[..n].copy_from_slice(&rest[..n]);
        Ok(f.len() - rest.len() + n)
    }
    fn write_frame(&mut self, frame: &TxFrame<'_>) -> io::Result<usize> {
        self.sent.lock().unwrap().push(frame.to_vec());
        Ok(frame.len)
    }
}

struct Rig {
    mem: GuestMemory,
    h: NetHandler<Fake>,
    sent: Arc<Mutex<Vec<Vec<u8>>>>,
    stats: Arc<NetStats>,
    rx_evt: EventFd,
    tx_evt: EventFd,
    next_desc: [u16; 2],
    next_buf: u64,
}

fn frame(len: usize, seed: u8) -> Vec<u8> {
    let mut f = vec![0u8; HDR_LEN];
    f.extend((0..len).map(|i| (i as u8).wrapping_add(seed)));
    f
}

impl Rig {
    fn new(to_guest: Vec<Vec<u8>>) -> Rig {
        let mem = GuestMemory::from_ranges(&[(GuestAddress(0), 32 << 20)]).unwrap();
        let rxq = MockSplitQueue::create(&mem, GuestAddress(RXQ_ADDR), QSIZE)
            .create_queue::<Queue>()
            .unwrap();
        let txq = MockSplitQueue::create(&mem, GuestAddress(TXQ_ADDR), QSIZE)
            .create_queue::<Queue>()
            .unwrap();
        let sent = Arc::new(Mutex::new(Vec::new()));
        let rx_evt = EventFd::new(EFD_NONBLOCK).unwrap();
        let tx_evt = EventFd::new(EFD_NONBLOCK).unwrap();
        let stats = Arc::new(NetStats::default());
        let backend = Fake {
            to_guest: to_guest.into(),
            sent: sent.clone(),
            fd: EventFd::new(EFD_NONBLOCK).unwrap(),
        };
        let h = NetHandler::new(
            mem.clone(),
            rxq,
            txq,
            rx_evt.try_clone().unwrap(),
            tx_evt.try_clone().unwrap(),
            Arc::new(VirtioInterrupt::new().unwrap()),
            backend,
            0,
            stats.clone(),
        );
        Rig {
            mem,
            h,
            sent,
            stats,
            rx_evt,
            tx_evt,
            next_desc: [0, 0],
            next_buf: BUFS,
        }
    }

    /// (descriptor table, avail ring, used ring) of queue `q`, as MockSplitQueue laid
    /// them out (a second MockSplitQueue would re-initialise the rings, so ask a scratch
    /// memory).
    fn rings(q: usize) -> (u64, u64, u64) {
        let start = if q == RXQ { RXQ_ADDR } else { TXQ_ADDR };
        let scratch = GuestMemory::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let m = MockSplitQueue::create(&scratch, GuestAddress(start), QSIZE);
        (m.desc_table_addr().0, m.avail_addr().0, m.used_addr().0)
    }

    fn alloc(&mut self, len: u32) -> u64 {
        let a = self.next_buf;
        self.next_buf += u64::from(len).div_ceil(4096).max(1) * 4096;
        a
    }

    /// Publishes raw descriptors (next fields as given) as chains on queue `q`: a head is
    /// every descriptor that does not follow one with NEXT.
    fn push_raw(&mut self, q: usize, descs: &[(u64, u32, u16, u16)]) {
        let (desc, avail, _) = Self::rings(q);
        let base = self.next_desc[q];
        let mut idx: u16 = self.mem.read_obj(GuestAddress(avail + 2)).unwrap();
        let mut prev_next = false;
        for (i, &(a, l, f, n)) in descs.iter().enumerate() {
            let slot = (base + i as u16) % QSIZE;
            let raw = RawDescriptor::from(SplitDescriptor::new(a, l, f, n));
            self.mem
                .write_obj(raw, GuestAddress(desc + 16 * u64::from(slot)))
                .unwrap();
            if !prev_next {
                let e = avail + 4 + 2 * u64::from(idx % QSIZE);
                self.mem.write_obj(slot, GuestAddress(e)).unwrap();
                idx = idx.wrapping_add(1);
            }
            prev_next = f & N != 0;
        }
        self.mem.write_obj(idx, GuestAddress(avail + 2)).unwrap();
        self.next_desc[q] = (base + descs.len() as u16) % QSIZE;
    }

    /// One well-formed chain of `bufs` (addr, len, flags without NEXT).
    fn push_chain(&mut self, q: usize, bufs: &[(u64, u32, u16)]) {
        let base = self.next_desc[q];
        let descs: Vec<_> = bufs
            .iter()
            .enumerate()
            .map(|(i, &(a, l, f))| {
                let last = i + 1 == bufs.len();
                let next = base + i as u16 + 1;
                (
                    a,
                    l,
                    if last { f } else { f | N },
                    if last { 0 } else { next },
                )
            })
            .collect();
        self.push_raw(q, &descs);
    }

    fn tx_frame(&mut self, data: &[u8]) {
        let a = self.alloc(data.len() as u32);
        self.mem.write_slice(data, GuestAddress(a)).unwrap();
        self.push_chain(TXQ, &[(a, data.len() as u32, 0)]);
    }

    fn rx_buffer(&mut self, len: u32) -> u64 {
        let a = self.alloc(len);
        self.push_chain(RXQ, &[(a, len, W)]);
        a
    }

    fn used(&self, q: usize) -> Vec<(u32, u32)> {
        let (_, _, used) = Self::rings(q);
        let idx: u16 = self.mem.read_obj(GuestAddress(used + 2)).unwrap();
        (0..idx)
            .map(|i| {
                let e = used + 4 + 8 * u64::from(i % QSIZE);
                (
                    self.mem.read_obj(GuestAddress(e)).unwrap(),
                    self.mem.read_obj(GuestAddress(e + 4)).unwrap(),
                )
            })
            .collect()
    }

    fn read(&self, a: u64, len: usize) -> Vec<u8> {
        let mut b = vec![0u8; len];
        self.mem.read_slice(&mut b, GuestAddress(a)).unwrap();
        b
    }
}

fn get(c: &AtomicU64) -> u64 {
    NetStats::get(c)
}

#[test]
fn tx_stops_on_the_budget_and_rearms() {
    let mut r = Rig::new(vec![]);
    let frames: Vec<_> = (0..100).map(|i| frame(60 + i, i as u8)).collect();
    for f in &frames {
        r.tx_frame(f);
    }
    assert_eq!(r.h.process_tx(), FRAME_BUDGET);
    assert_eq!(r.tx_evt.read().unwrap(), 1, "tx re-armed itself");
    assert_eq!(get(&r.stats.budget_yields), 1);
    assert_eq!(r.used(TXQ).len(), FRAME_BUDGET);
    assert_eq!(r.h.process_tx(), 100 - FRAME_BUDGET);
    assert!(r.tx_evt.read().is_err(), "no re-arm once drained");
    assert_eq!(*r.sent.lock().unwrap(), frames);
    assert_eq!(get(&r.stats.tx_frames), 100);
    let summary = r.stats.to_string();
    assert!(summary.contains("tx 100 frames"), "{summary}");
    assert!(summary.ends_with("1 budget yields"), "{summary}");
}

#[test]
fn hostile_tx_chains_are_used_and_counted() {
    let mut r = Rig::new(vec![]);
    let good = frame(60, 1);
    let a = r.alloc(4096);
    r.mem.write_slice(&good, GuestAddress(a)).unwrap();
    r.push_chain(TXQ, &[(a, 72, 0)]); // good
    r.push_chain(TXQ, &[(a, 12, 0), (a + 12, 60, W)]); // write-only
    r.push_chain(TXQ, &[(a, 12, 0)]); // header only
    r.push_chain(TXQ, &[(a, 12, 0), (64 << 20, 60, 0)]); // outside memory
                                                         // A loop: 4 -> 5 -> 4.
    r.push_raw(TXQ, &[(a, 12, N, 5), (a + 12, 60, N, 4)]);
    // A chain over the size limit.
    r.push_chain(TXQ, &[(a, 12, 0), (a, 65536, 0), (a, 65536, 0)]);
    r.push_chain(TXQ, &[(a, 72, 0)]); // good again
    assert_eq!(r.h.process_tx(), 7);
    let used = r.used(TXQ);
    assert_eq!(used.len(), 7, "every chain goes back to the guest");
    assert!(used.iter().all(|&(_, len)| len == 0));
    assert_eq!(get(&r.stats.tx_rejected), 5);
    assert_eq!(get(&r.stats.tx_frames), 2);
    assert_eq!(*r.sent.lock().unwrap(), vec![good.clone(), good]);
}

#[test]
fn rx_defers_without_buffers_and_resumes() {
    let frames: Vec<_> = (0..3).map(|i| frame(100 * (i + 1), i as u8)).collect();
    let mut r = Rig::new(frames.clone());
    assert_eq!(r.h.process_rx(), RxStop::NoBuffers);
    assert_eq!(r.h.h_backend_queued(), 3, "nothing read without a buffer");
    let b0 = r.rx_buffer(2048);
    assert_eq!(r.h.process_rx(), RxStop::NoBuffers);
    assert_eq!(
        r.h.h_backend_queued(),
        2,
        "exactly one frame taken for one buffer"
    );
    let b1 = r.rx_buffer(2048);
    let b2 = r.rx_buffer(2048);
    r.rx_buffer(2048); // a spare: rx ends because the TAP is empty
    assert_eq!(r.h.process_rx(), RxStop::Drained);
    let used = r.used(RXQ);
    assert_eq!(used.len(), 3);
    for ((b, f), (_, len)) in [b0, b1, b2].iter().zip(&frames).zip(&used) {
        assert_eq!(*len as usize, f.len());
        let got = r.read(*b, f.len());
        assert_eq!(&got[HDR_LEN..], &f[HDR_LEN..]);
        assert_eq!(&got[HDR_NUM_BUFFERS..HDR_LEN], &1u16.to_le_bytes());
    }
    assert_eq!(get(&r.stats.rx_frames), 3);
    assert_eq!(get(&r.stats.rx_dropped), 0);
    assert_eq!(get(&r.stats.rx_deferred), 2);
}

#[test]
fn a_bad_rx_chain_is_returned_and_the_frame_waits_for_the_next() {
    let f = frame(200, 9);
    let mut r = Rig::new(vec![f.clone()]);
    let a = r.alloc(4096);
    r.push_chain(RXQ, &[(a, 12, W), (a + 12, 2000, 0)]); // device-readable
    r.push_chain(RXQ, &[(a, 2048, W), (60 << 20, 2048, W)]); // outside memory
                                                             // Descriptor 3 names itself as next: a loop.
    r.push_raw(RXQ, &[(a, 2048, W | N, 3)]);
    let good = r.rx_buffer(2048);
    assert_eq!(r.h.process_rx(), RxStop::NoBuffers);
    let used = r.used(RXQ);
    assert_eq!(used.len(), 4);
    assert_eq!(used[..3].iter().map(|u| u.1).collect::<Vec<_>>(), [0, 0, 0]);
    assert_eq!(used[3].1 as usize, f.len());
    assert_eq!(&r.read(good, f.len())[HDR_LEN..], &f[HDR_LEN..]);
    assert_eq!(get(&r.stats.rx_bad_chains), 3);
    assert_eq!(get(&r.stats.rx_frames), 1);
}

#[test]
fn a_frame_too_big_for_the_buffer_is_dropped_and_the_buffer_kept() {
    let big = frame(1500, 1);
    let small = frame(60, 2);
    let mut r = Rig::new(vec![big, small.clone()]);
    let b = r.rx_buffer(100);
    assert_eq!(r.h.process_rx(), RxStop::NoBuffers);
    let used = r.used(RXQ);
    assert_eq!(used.len(), 1);
    assert_eq!(used[0].1 as usize, small.len());
    assert_eq!(&r.read(b, small.len())[HDR_LEN..], &small[HDR_LEN..]);
    assert_eq!(get(&r.stats.rx_dropped), 1);
}

#[test]
fn rx_stops_on_the_budget_and_rearms() {
    let frames: Vec<_> = (0..100).map(|i| frame(60, i as u8)).collect();
    let mut r = Rig::new(frames);
    for _ in 0..101 {
        r.rx_buffer(2048);
    }
    assert_eq!(r.h.process_rx(), RxStop::Budget);
    assert_eq!(r.used(RXQ).len(), FRAME_BUDGET);
    assert_eq!(r.rx_evt.read().unwrap(), 1, "rx re-armed itself");
    assert_eq!(r.h.process_rx(), RxStop::Drained);
    assert_eq!(r.used(RXQ).len(), 100);
}

#[test]
fn a_corrupt_avail_index_stops_the_queue_instead_of_spinning() {
    let mut r = Rig::new(vec![frame(60, 0)]);
    for q in [RXQ, TXQ] {
        let (_, avail, _) = Rig::rings(q);
        r.mem.write_obj(1000u16, GuestAddress(avail + 2)).unwrap();
    }
    assert_eq!(r.h.process_tx(), 0);
    assert_eq!(r.h.process_rx(), RxStop::Broken);
    assert_eq!(r.h.process_tx(), 0);
    assert!(r.used(RXQ).is_empty() && r.used(TXQ).is_empty());
}

impl NetHandler<Fake> {
    fn h_backend_queued(&self) -> usize {
        self.backend.to_guest.len()
    }
}

/// xorshift64*: deterministic noise for the fuzz test.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[test]
fn random_descriptor_tables_never_panic_and_every_tx_chain_is_accounted_for() {
    let frames: Vec<_> = (0..4000).map(|i| frame(60 + i % 1500, i as u8)).collect();
    let mut r = Rig::new(frames);
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mem_end = 32u64 << 20;
    let (mut tx_pushed, mut rx_pushed) = (0usize, 0usize);
    for _round in 0..200 {
        for q in [RXQ, TXQ] {
            let (desc, avail, _) = Rig::rings(q);
            // Random table: addresses in and out of memory, any length, any flags, any next.
            for slot in 0..QSIZE {
                let addr = match rng.below(4) {
                    0 => rng.next(),
                    1 => mem_end - rng.below(4096),
                    _ => BUFS + rng.below(16 << 20),
                };
                let len = match rng.below(4) {
                    0 => rng.next() as u32,
                    1 => 0,
                    _ => rng.below(70_000) as u32,
                };
                let flags = rng.below(8) as u16; // NEXT, WRITE, INDIRECT in any mix
                let next = rng.below(u64::from(QSIZE) + 8) as u16;
                let raw = RawDescriptor::from(SplitDescriptor::new(addr, len, flags, next));
                r.mem
                    .write_obj(raw, GuestAddress(desc + 16 * u64::from(slot)))
                    .unwrap();
            }
            // Publish up to 32 random heads (some outside the table).
            let n = 1 + rng.below(32) as u16;
            let mut idx: u16 = r.mem.read_obj(GuestAddress(avail + 2)).unwrap();
            for _ in 0..n {
                let head = rng.below(u64::from(QSIZE) + 4) as u16;
                let e = avail + 4 + 2 * u64::from(idx % QSIZE);
                r.mem.write_obj(head, GuestAddress(e)).unwrap();
                idx = idx.wrapping_add(1);
            }
            r.mem.write_obj(idx, GuestAddress(avail + 2)).unwrap();
            if q == TXQ {
                tx_pushed += usize::from(n);
            } else {
                rx_pushed += usize::from(n);
            }
        }
        while r.h.process_tx() == FRAME_BUDGET {}
        while r.h.process_rx() == RxStop::Budget {}
    }
    // (The used rings themselves are not checked: random indirect tables can point rx
    // writes at them, which a guest may do to itself.)
    assert_eq!(
        get(&r.stats.tx_frames) + get(&r.stats.tx_rejected),
        tx_pushed as u64,
        "every tx chain is either sent or rejected"
    );
    // rx keeps a chain only to reuse it for the next frame; the rest went back.
    let rx_used = get(&r.stats.rx_frames) + get(&r.stats.rx_bad_chains);
    assert!(rx_used <= rx_pushed as u64);
    assert!(get(&r.stats.tx_rejected) > 0 && get(&r.stats.rx_bad_chains) > 0);
}
