//! The test guest: descriptor bookkeeping on top of the shared harness, and a minimal guest
//! socket layer (streams with credit accounting) for `tests/virtio_vsock.rs`.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{fence, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use husk::devices::virtio::testing::Harness;
use husk::devices::virtio::vsock::packet::*;
use husk::devices::virtio::vsock::Vsock;
use husk::devices::virtio::VIRTIO_F_VERSION_1;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

pub const CID: u64 = 3;
pub const QSIZE: u16 = 256;
pub const MEM_SIZE: usize = 64 << 20;
/// Every descriptor index of every queue owns a fixed 64 KiB buffer slot.
pub const SLOT: u64 = 64 * 1024;
pub const F_NEXT: u16 = 1;
pub const F_WRITE: u16 = 2;
/// The guest's receive buffer (buf_alloc) in most tests.
pub const GUEST_BUF: u32 = 256 * 1024;
/// Largest tx packet the test guest sends, as Linux 6.12 does, split over 3 descriptors.
pub const TX_PKT: usize = 32 * 1024;

pub type Mem = GuestMemoryMmap<()>;

// ---------------------------------------------------------------- virtqueue driver

/// Descriptor bookkeeping on top of the shared harness: vsock keeps rx buffers posted
/// indefinitely and gets tx chains back in any order, so descriptors come from a free
/// list, and every descriptor index owns a fixed 64 KiB buffer slot.
pub struct Vq {
    pub q: usize,
    pub used: u64,
    pub slots: u64,
    pub free: Vec<u16>,
    pub chains: HashMap<u16, Vec<u16>>,
    pub last_used: u16,
}

impl Vq {
    pub fn new(h: &mut Harness, q: usize) -> Self {
        let slots = h.alloc(u64::from(QSIZE) * SLOT).0;
        Vq {
            q,
            used: h.queues[q].used.0,
            slots,
            free: (0..QSIZE).rev().collect(),
            chains: HashMap::new(),
            last_used: 0,
        }
    }

    pub fn slot(&self, d: u16) -> u64 {
        self.slots + u64::from(d) * SLOT
    }

    /// Places a chain of raw (addr, len, flags) descriptors; `None` addr = the slot's buffer.
    /// `fill` writes the buffers before the chain is published to the device.
    pub fn add_raw(
        &mut self,
        h: &mut Harness,
        bufs: &[(Option<u64>, u32, u16)],
        fill: impl FnOnce(&[u64]),
    ) -> Option<u16> {
        if self.free.len() < bufs.len() {
            return None;
        }
        let ids: Vec<u16> = (0..bufs.len()).map(|_| self.free.pop().unwrap()).collect();
        let mut addrs = Vec::new();
        for (i, (&id, &(addr, len, flags))) in ids.iter().zip(bufs).enumerate() {
            let addr = addr.unwrap_or(self.slot(id));
            addrs.push(addr);
            let (flags, next) = match ids.get(i + 1) {
                Some(&n) => (flags | F_NEXT, n),
                None => (flags, 0),
            };
            h.write_desc(self.q, id, addr, len, flags, next);
        }
        fill(&addrs);
        let head = ids[0];
        self.chains.insert(head, ids);
        h.push_avail(self.q, head);
        Some(head)
    }

    /// Next used entry: (head, len) — the chain's descriptors are freed.
    pub fn pop_used(&mut self, mem: &Mem) -> Option<(u16, u32)> {
        fence(Ordering::SeqCst);
        let idx: u16 = mem.read_obj(GuestAddress(self.used + 2)).unwrap();
        if idx == self.last_used {
            return None;
        }
        let e = self.used + 4 + u64::from(self.last_used % QSIZE) * 8;
        let id: u32 = mem.read_obj(GuestAddress(e)).unwrap();
        let len: u32 = mem.read_obj(GuestAddress(e + 4)).unwrap();
        self.last_used = self.last_used.wrapping_add(1);
        let ids = self
            .chains
            .remove(&(id as u16))
            .expect("device returned a head it was never given");
        self.free.extend(&ids);
        Some((id as u16, len))
    }
}

pub struct Driver {
    pub h: Harness,
    pub mem: Mem,
    pub irq: EventFd,
    pub rx: Vq,
    pub tx: Vq,
    pub rx_bufs: HashMap<u16, Vec<(u64, u32)>>,
}

impl Driver {
    pub fn new(uds: &Path) -> Self {
        let dev = Vsock::new(CID, uds.to_path_buf()).unwrap();
        let mut h = Harness::new(Box::new(dev));
        assert_eq!(h.probe(), 19, "device id");
        assert!(h
            .cmdline
            .as_cstring()
            .unwrap()
            .to_string_lossy()
            .contains("virtio_mmio.device="));
        assert_eq!(
            h.read_config(0, 8),
            CID.to_le_bytes(),
            "config space: guest_cid"
        );
        assert_eq!(
            h.device_features(),
            VIRTIO_F_VERSION_1,
            "stream only: VERSION_1 and nothing else"
        );
        h.init(VIRTIO_F_VERSION_1, 3, QSIZE);
        assert!(h.queues.iter().all(|q| q.size == QSIZE));
        let irq = h
            .transport
            .lock()
            .unwrap()
            .interrupt()
            .irq_evt()
            .try_clone()
            .unwrap();
        let (rx, tx) = (Vq::new(&mut h, 0), Vq::new(&mut h, 1));
        let mut d = Driver {
            mem: h.mem.clone(),
            h,
            irq,
            rx,
            tx,
            rx_bufs: HashMap::new(),
        };
        d.refill_rx();
        d
    }

    /// Device reset (status 0), then a fresh driver session on the same device.
    pub fn reinit(&mut self) {
        self.h.reset();
        assert_eq!(self.h.status(), 0);
        self.h.free_all();
        self.h.init(VIRTIO_F_VERSION_1, 3, QSIZE);
        self.rx = Vq::new(&mut self.h, 0);
        self.tx = Vq::new(&mut self.h, 1);
        self.rx_bufs.clear();
        self.refill_rx();
    }

    /// Keeps the rx queue full of buffers: a lone 44-byte header descriptor followed by two
    /// 16 KiB data descriptors (packets land split across all three).
    pub fn refill_rx(&mut self) {
        let mut added = false;
        let bufs = [
            (None, 44, F_WRITE),
            (None, 16384, F_WRITE),
            (None, 16384, F_WRITE),
        ];
        let mut got = Vec::new();
        while let Some(head) = self.rx.add_raw(&mut self.h, &bufs, |a| got = a.to_vec()) {
            self.rx_bufs
                .insert(head, got.drain(..).zip([44, 16384, 16384]).collect());
            added = true;
        }
        if added {
            self.h.notify(0);
        }
    }

    /// Sends one tx packet; data split into up to 3 descriptors. False if the ring is full.
    pub fn send(&mut self, hdr: &Header, data: &[u8]) -> bool {
        self.reclaim_tx();
        let cuts = [data.len() / 3, data.len() * 2 / 3, data.len()];
        let mut bufs = vec![(None, HDR_SIZE as u32, 0)];
        let mut prev = 0;
        for &c in &cuts {
            if c > prev {
                bufs.push((None, (c - prev) as u32, 0));
                prev = c;
            }
        }
        let mem = &self.mem;
        let fill = |addrs: &[u64]| {
            mem.write_slice(&hdr.to_bytes(), GuestAddress(addrs[0]))
                .unwrap();
            let mut off = 0;
            for (a, b) in addrs[1..].iter().zip(&bufs[1..]) {
                mem.write_slice(&data[off..off + b.1 as usize], GuestAddress(*a))
                    .unwrap();
                off += b.1 as usize;
            }
        };
        if self.tx.add_raw(&mut self.h, &bufs, fill).is_none() {
            return false;
        }
        self.h.notify(1);
        true
    }

    pub fn reclaim_tx(&mut self) {
        while self.tx.pop_used(&self.mem).is_some() {}
    }

    /// Waits up to `ms` for an interrupt, then collects every used rx buffer as a packet.
    pub fn poll(&mut self, ms: i32) -> Vec<(Header, Vec<u8>)> {
        let mut pfd = libc::pollfd {
            fd: self.irq.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        unsafe { libc::poll(&mut pfd, 1, ms) };
        let _ = self.irq.read();
        let mut out = Vec::new();
        while let Some((head, len)) = self.rx.pop_used(&self.mem) {
            let bufs = self.rx_bufs.remove(&head).unwrap();
            let mut wire = Vec::with_capacity(len as usize);
            for (a, l) in bufs {
                let take = (len as usize - wire.len()).min(l as usize);
                let mut b = vec![0u8; take];
                self.mem.read_slice(&mut b, GuestAddress(a)).unwrap();
                wire.extend(b);
            }
            assert!(
                wire.len() >= HDR_SIZE,
                "device returned a {len}-byte rx packet"
            );
            let h = Header::from_bytes(wire[..HDR_SIZE].try_into().unwrap());
            assert_eq!(
                h.len as usize,
                wire.len() - HDR_SIZE,
                "rx len matches used len"
            );
            out.push((h, wire.split_off(HDR_SIZE)));
        }
        self.refill_rx();
        self.reclaim_tx();
        out
    }
}

// ---------------------------------------------------------------- guest socket layer

/// One guest stream (`gport` in the guest, `hport` on the host), with credit both ways.
#[derive(Default)]
pub struct GConn {
    pub gport: u32,
    pub hport: u32,
    pub buf_alloc: u32,
    pub fwd_cnt: u32,
    pub last_fwd_sent: u32,
    pub peer_buf_alloc: u32,
    pub peer_fwd_cnt: u32,
    pub tx_cnt: u32,
    /// Bytes to send / sent, bytes expected / received.
    pub tx_total: usize,
    pub tx_pos: usize,
    pub rx_total: usize,
    pub rx_pos: usize,
    pub seed_tx: u8,
    pub seed_rx: u8,
    /// Credit updates are withheld (the credit-exhaustion test).
    pub stingy: bool,
    pub rst: bool,
    pub shutdown: u32,
}

impl GConn {
    pub fn hdr(&mut self, op: u16, len: u32) -> Header {
        self.last_fwd_sent = self.fwd_cnt;
        Header {
            src_cid: CID,
            dst_cid: HOST_CID,
            src_port: self.gport,
            dst_port: self.hport,
            len,
            type_: TYPE_STREAM,
            op,
            flags: 0,
            buf_alloc: self.buf_alloc,
            fwd_cnt: self.fwd_cnt,
        }
    }

    pub fn peer_credit(&self) -> u32 {
        self.peer_buf_alloc
            .saturating_sub(self.tx_cnt.wrapping_sub(self.peer_fwd_cnt))
    }

    pub fn done(&self) -> bool {
        self.tx_pos == self.tx_total && self.rx_pos == self.rx_total
    }
}

/// Test bytes: a pseudo-random table with a prime period, so a packet dropped, repeated
/// or moved by any power-of-two distance shows up; `seed` shifts it per stream.
pub fn pattern(seed: u8, off: usize, len: usize) -> Vec<u8> {
    const PERIOD: usize = 65521;
    static TABLE: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    let t = TABLE.get_or_init(|| {
        let mut x: u32 = 0x9e37_79b9;
        let one: Vec<u8> = (0..PERIOD)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect();
        // Two periods back to back, so any window of up to PERIOD bytes is one slice.
        one.repeat(2)
    });
    let mut out = Vec::with_capacity(len);
    let mut pos = (off + usize::from(seed) * 4099) % PERIOD;
    while out.len() < len {
        let k = (len - out.len()).min(PERIOD);
        out.extend_from_slice(&t[pos..pos + k]);
        pos = (pos + k) % PERIOD;
    }
    out
}

pub struct Guest {
    pub drv: Driver,
    pub conns: HashMap<(u32, u32), GConn>,
    /// Non-data packets seen, for the tests to inspect.
    pub control: Vec<Header>,
}

impl Guest {
    pub fn new(uds: &Path) -> Self {
        Guest {
            drv: Driver::new(uds),
            conns: HashMap::new(),
            control: Vec::new(),
        }
    }

    pub fn send_ctl(&mut self, key: (u32, u32), op: u16, flags: u32) {
        let c = self.conns.get_mut(&key).unwrap();
        let mut h = c.hdr(op, 0);
        h.flags = flags;
        // Never poll rx here (that would reorder packets being handled); the device
        // returns tx chains without waiting on rx, so the ring frees up by itself.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.drv.send(&h, &[]) {
            assert!(Instant::now() < deadline, "tx ring never drained");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Handles the packets that arrived within `ms`.
    pub fn poll(&mut self, ms: i32) {
        for (h, data) in self.drv.poll(ms) {
            assert_eq!(
                (h.src_cid, h.dst_cid, h.type_),
                (HOST_CID, CID, TYPE_STREAM)
            );
            let key = (h.dst_port, h.src_port);
            let Some(c) = self.conns.get_mut(&key) else {
                self.control.push(h);
                continue;
            };
            c.peer_buf_alloc = h.buf_alloc;
            c.peer_fwd_cnt = h.fwd_cnt;
            match h.op {
                OP_RW => {
                    assert!(c.rx_pos + data.len() <= c.rx_total, "more data than sent");
                    assert!(data.len() <= 64 * 1024);
                    assert!(
                        data == pattern(c.seed_rx, c.rx_pos, data.len()),
                        "guest side: mismatch at {} on {key:?}",
                        c.rx_pos
                    );
                    c.rx_pos += data.len();
                    c.fwd_cnt = c.fwd_cnt.wrapping_add(data.len() as u32);
                    if !c.stingy && c.fwd_cnt.wrapping_sub(c.last_fwd_sent) >= c.buf_alloc / 2 {
                        self.send_ctl(key, OP_CREDIT_UPDATE, 0);
                    }
                }
                OP_RST => {
                    c.rst = true;
                    self.control.push(h);
                }
                OP_SHUTDOWN => {
                    c.shutdown |= h.flags;
                    self.control.push(h);
                }
                OP_CREDIT_REQUEST if !c.stingy => self.send_ctl(key, OP_CREDIT_UPDATE, 0),
                _ => self.control.push(h),
            }
        }
    }

    /// Sends whatever credit and ring space allow on every stream.
    pub fn pump_tx(&mut self) {
        let keys: Vec<_> = self.conns.keys().copied().collect();
        for key in keys {
            loop {
                let c = self.conns.get_mut(&key).unwrap();
                let n = (c.tx_total - c.tx_pos)
                    .min(TX_PKT)
                    .min(c.peer_credit() as usize);
                if n == 0 || c.rst {
                    break;
                }
                let data = pattern(c.seed_tx, c.tx_pos, n);
                let h = c.hdr(OP_RW, n as u32);
                if !self.drv.send(&h, &data) {
                    return;
                }
                let c = self.conns.get_mut(&key).unwrap();
                c.tx_pos += n;
                c.tx_cnt = c.tx_cnt.wrapping_add(n as u32);
            }
        }
    }

    pub fn wait_control(&mut self, what: &str, f: impl Fn(&Header) -> bool) -> Header {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(i) = self.control.iter().position(&f) {
                return self.control.remove(i);
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            self.poll(20);
        }
    }

    /// Accepts a host-initiated stream: waits for the REQUEST to `gport`, answers RESPONSE.
    pub fn accept(&mut self, gport: u32) -> (u32, u32) {
        let req = self.wait_control("REQUEST", |h| h.op == OP_REQUEST && h.dst_port == gport);
        let key = (gport, req.src_port);
        let c = GConn {
            gport,
            hport: req.src_port,
            buf_alloc: GUEST_BUF,
            peer_buf_alloc: req.buf_alloc,
            peer_fwd_cnt: req.fwd_cnt,
            ..Default::default()
        };
        self.conns.insert(key, c);
        self.send_ctl(key, OP_RESPONSE, 0);
        key
    }

    /// Opens a guest-initiated stream to host port `hport`; returns once RESPONSE arrived.
    pub fn connect(&mut self, gport: u32, hport: u32) -> (u32, u32) {
        let key = (gport, hport);
        self.conns.insert(
            key,
            GConn {
                gport,
                hport,
                buf_alloc: GUEST_BUF,
                ..Default::default()
            },
        );
        self.send_ctl(key, OP_REQUEST, 0);
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.conns[&key].peer_buf_alloc == 0 {
            assert!(
                !self.conns[&key].rst,
                "guest connect to host port {hport} was reset"
            );
            assert!(
                Instant::now() < deadline,
                "no RESPONSE from host port {hport}"
            );
            self.poll(20);
        }
        key
    }

    /// Moves every stream's bytes both ways until all are done.
    pub fn run_transfers(&mut self, secs: u64) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while !self.conns.values().all(GConn::done) {
            assert!(Instant::now() < deadline, "transfers stalled");
            self.pump_tx();
            self.poll(5);
        }
    }
}

/// The host end of a stream: writes `n` pattern bytes and reads back `n`, checking each.
pub fn host_peer(stream: UnixStream, n: usize, seed_out: u8, seed_in: u8) -> JoinHandle<()> {
    let mut w = stream.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        let mut off = 0;
        while off < n {
            let k = (n - off).min(100_000);
            w.write_all(&pattern(seed_out, off, k)).unwrap();
            off += k;
        }
    });
    let mut r = stream;
    std::thread::spawn(move || {
        let mut off = 0;
        let mut buf = vec![0u8; 128 * 1024];
        while off < n {
            let k = r.read(&mut buf).unwrap();
            assert!(k > 0, "host side: early EOF at {off}");
            assert!(
                buf[..k] == pattern(seed_in, off, k)[..],
                "host side: mismatch at {off}"
            );
            off += k;
        }
        writer.join().unwrap();
    })
}

pub fn host_connect(uds: &Path, port: u32) -> (UnixStream, JoinHandle<String>) {
    let mut s = UnixStream::connect(uds).unwrap();
    s.write_all(format!("CONNECT {port}\n").as_bytes()).unwrap();
    let mut r = s.try_clone().unwrap();
    let ok = std::thread::spawn(move || {
        let mut line = Vec::new();
        let mut b = [0u8; 1];
        while r.read(&mut b).unwrap() == 1 && b[0] != b'\n' {
            line.push(b[0]);
        }
        String::from_utf8(line).unwrap()
    });
    (s, ok)
}

pub fn setup() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let uds = dir.path().join("vsock.sock");
    (dir, uds)
}

pub const MIB16: usize = 16 << 20;

pub fn host_peer_reader(mut r: UnixStream, n: usize, seed: u8) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut off = 0;
        let mut buf = vec![0u8; 128 * 1024];
        while off < n {
            let k = r.read(&mut buf).unwrap();
            assert!(k > 0, "host side: early EOF at {off}");
            assert!(
                buf[..k] == pattern(seed, off, k)[..],
                "host side: mismatch at {off}"
            );
            off += k;
        }
    })
}
