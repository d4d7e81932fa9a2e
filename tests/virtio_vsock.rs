//! virtio-vsock through the real virtio-mmio transport over real guest memory, with this
//! file playing the guest driver (and a minimal guest socket layer with credit accounting).
//!
//! Run: `cargo test -p husk --test virtio_vsock`.
//! Benchmark: `cargo test --release -p husk --test virtio_vsock -- --ignored --nocapture bench`.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{fence, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use husk::devices::bus::BusDevice;
use husk::devices::virtio::mmio::{reg, status, MmioTransport, MMIO_MAGIC};
use husk::devices::virtio::vsock::packet::*;
use husk::devices::virtio::vsock::Vsock;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

const CID: u64 = 3;
const QSIZE: u16 = 256;
const MEM_SIZE: usize = 64 << 20;
const RING_BASE: u64 = 0x1_0000;
const DATA_BASE: u64 = 0x10_0000;
/// Every descriptor index of every queue owns a fixed 64 KiB buffer slot.
const SLOT: u64 = 64 * 1024;
const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;
/// The guest's receive buffer (buf_alloc) in most tests.
const GUEST_BUF: u32 = 256 * 1024;
/// Largest tx packet the test guest sends, as Linux 6.12 does, split over 3 descriptors.
const TX_PKT: usize = 32 * 1024;

type Mem = GuestMemoryMmap<()>;

// ---------------------------------------------------------------- virtqueue driver

struct Vq {
    index: u32,
    desc: u64,
    avail: u64,
    used: u64,
    free: Vec<u16>,
    chains: HashMap<u16, Vec<u16>>,
    avail_idx: u16,
    last_used: u16,
}

impl Vq {
    fn new(index: u32) -> Self {
        let base = RING_BASE + u64::from(index) * 0x4000;
        Vq {
            index,
            desc: base,
            avail: base + 0x1000,
            used: base + 0x2000,
            free: (0..QSIZE).rev().collect(),
            chains: HashMap::new(),
            avail_idx: 0,
            last_used: 0,
        }
    }

    fn slot(&self, d: u16) -> u64 {
        DATA_BASE + (u64::from(self.index) * u64::from(QSIZE) + u64::from(d)) * SLOT
    }

    /// Places a chain of raw (addr, len, flags) descriptors; `None` addr = the slot's buffer.
    /// `fill` writes the buffers before the chain is published to the device.
    fn add_raw(&mut self, mem: &Mem, bufs: &[(Option<u64>, u32, u16)], fill: impl FnOnce(&[u64])) -> Option<(u16, Vec<u64>)> {
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
            let d = self.desc + u64::from(id) * 16;
            mem.write_obj(addr, GuestAddress(d)).unwrap();
            mem.write_obj(len, GuestAddress(d + 8)).unwrap();
            mem.write_obj(flags, GuestAddress(d + 12)).unwrap();
            mem.write_obj(next, GuestAddress(d + 14)).unwrap();
        }
        fill(&addrs);
        let head = ids[0];
        self.chains.insert(head, ids);
        let slot = GuestAddress(self.avail + 4 + u64::from(self.avail_idx % QSIZE) * 2);
        mem.write_obj(head, slot).unwrap();
        fence(Ordering::SeqCst);
        self.avail_idx = self.avail_idx.wrapping_add(1);
        mem.write_obj(self.avail_idx, GuestAddress(self.avail + 2)).unwrap();
        fence(Ordering::SeqCst);
        Some((head, addrs))
    }

    /// Next used entry: (head, len, the chain's descriptor ids) — the ids are freed.
    fn pop_used(&mut self, mem: &Mem) -> Option<(u16, u32, Vec<u16>)> {
        fence(Ordering::SeqCst);
        let idx: u16 = mem.read_obj(GuestAddress(self.used + 2)).unwrap();
        if idx == self.last_used {
            return None;
        }
        let e = self.used + 4 + u64::from(self.last_used % QSIZE) * 8;
        let id: u32 = mem.read_obj(GuestAddress(e)).unwrap();
        let len: u32 = mem.read_obj(GuestAddress(e + 4)).unwrap();
        self.last_used = self.last_used.wrapping_add(1);
        let ids = self.chains.remove(&(id as u16)).expect("device returned a head it was never given");
        self.free.extend(&ids);
        Some((id as u16, len, ids))
    }
}

struct Driver {
    mem: Mem,
    transport: Arc<Mutex<MmioTransport>>,
    irq: EventFd,
    rx: Vq,
    tx: Vq,
    rx_bufs: HashMap<u16, Vec<(u64, u32)>>,
}

impl Driver {
    fn reg_read(&self, off: u64) -> u32 {
        let mut b = [0u8; 4];
        self.transport.lock().unwrap().read(off, &mut b);
        u32::from_le_bytes(b)
    }

    fn reg_write(&self, off: u64, v: u32) {
        self.transport.lock().unwrap().write(off, &v.to_le_bytes());
    }

    fn new(uds: &Path) -> Self {
        let mem = Mem::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap();
        let dev = Vsock::new(CID, uds.to_path_buf()).unwrap();
        let t = MmioTransport::new(mem.clone(), Box::new(dev)).unwrap();
        let irq = t.interrupt().irq_evt().try_clone().unwrap();
        let mut d = Driver {
            mem,
            transport: Arc::new(Mutex::new(t)),
            irq,
            rx: Vq::new(0),
            tx: Vq::new(1),
            rx_bufs: HashMap::new(),
        };
        assert_eq!(d.reg_read(reg::MAGIC), MMIO_MAGIC);
        assert_eq!(d.reg_read(reg::VERSION), 2);
        assert_eq!(d.reg_read(reg::DEVICE_ID), 19);
        d.reg_write(reg::STATUS, status::ACKNOWLEDGE);
        d.reg_write(reg::STATUS, status::ACKNOWLEDGE | status::DRIVER);
        d.reg_write(reg::DEVICE_FEATURES_SEL, 1);
        assert_eq!(d.reg_read(reg::DEVICE_FEATURES) & 1, 1, "VIRTIO_F_VERSION_1");
        d.reg_write(reg::DRIVER_FEATURES_SEL, 1);
        d.reg_write(reg::DRIVER_FEATURES, 1);
        let s = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK;
        d.reg_write(reg::STATUS, s);
        assert_eq!(d.reg_read(reg::STATUS) & status::FEATURES_OK, status::FEATURES_OK);
        assert_eq!(u64::from(d.reg_read(reg::CONFIG)) | u64::from(d.reg_read(reg::CONFIG + 4)) << 32, CID);
        for q in 0..3u32 {
            let vq = Vq::new(q);
            d.reg_write(reg::QUEUE_SEL, q);
            assert!(d.reg_read(reg::QUEUE_NUM_MAX) >= u32::from(QSIZE));
            d.reg_write(reg::QUEUE_NUM, u32::from(QSIZE));
            for (lo, a) in [(reg::QUEUE_DESC_LOW, vq.desc), (reg::QUEUE_AVAIL_LOW, vq.avail), (reg::QUEUE_USED_LOW, vq.used)] {
                d.reg_write(lo, a as u32);
                d.reg_write(lo + 4, (a >> 32) as u32);
            }
            d.reg_write(reg::QUEUE_READY, 1);
        }
        d.reg_write(reg::STATUS, s | status::DRIVER_OK);
        assert!(d.transport.lock().unwrap().is_activated(), "device activated");
        d.refill_rx();
        d
    }

    /// Keeps the rx queue full of buffers: a lone 44-byte header descriptor followed by two
    /// 16 KiB data descriptors (packets land split across all three).
    fn refill_rx(&mut self) {
        let mut added = false;
        let bufs = [(None, 44, F_WRITE), (None, 16384, F_WRITE), (None, 16384, F_WRITE)];
        while let Some((head, addrs)) = self.rx.add_raw(&self.mem, &bufs, |_| ()) {
            self.rx_bufs.insert(head, addrs.into_iter().zip([44, 16384, 16384]).collect());
            added = true;
        }
        if added {
            self.reg_write(reg::QUEUE_NOTIFY, 0);
        }
    }

    /// Sends one tx packet; data split into up to 3 descriptors. False if the ring is full.
    fn send(&mut self, hdr: &Header, data: &[u8]) -> bool {
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
            mem.write_slice(&hdr.to_bytes(), GuestAddress(addrs[0])).unwrap();
            let mut off = 0;
            for (a, b) in addrs[1..].iter().zip(&bufs[1..]) {
                mem.write_slice(&data[off..off + b.1 as usize], GuestAddress(*a)).unwrap();
                off += b.1 as usize;
            }
        };
        if self.tx.add_raw(mem, &bufs, fill).is_none() {
            return false;
        }
        self.reg_write(reg::QUEUE_NOTIFY, 1);
        true
    }

    fn reclaim_tx(&mut self) {
        while self.tx.pop_used(&self.mem).is_some() {}
    }

    /// Waits up to `ms` for an interrupt, then collects every used rx buffer as a packet.
    fn poll(&mut self, ms: i32) -> Vec<(Header, Vec<u8>)> {
        let mut pfd = libc::pollfd { fd: self.irq.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd.
        unsafe { libc::poll(&mut pfd, 1, ms) };
        let _ = self.irq.read();
        let mut out = Vec::new();
        while let Some((head, len, _)) = self.rx.pop_used(&self.mem) {
            let bufs = self.rx_bufs.remove(&head).unwrap();
            let mut wire = Vec::with_capacity(len as usize);
            for (a, l) in bufs {
                let take = (len as usize - wire.len()).min(l as usize);
                let mut b = vec![0u8; take];
                self.mem.read_slice(&mut b, GuestAddress(a)).unwrap();
                wire.extend(b);
            }
            assert!(wire.len() >= HDR_SIZE, "device returned a {len}-byte rx packet");
            let h = Header::from_bytes(wire[..HDR_SIZE].try_into().unwrap());
            assert_eq!(h.len as usize, wire.len() - HDR_SIZE, "rx len matches used len");
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
struct GConn {
    gport: u32,
    hport: u32,
    buf_alloc: u32,
    fwd_cnt: u32,
    last_fwd_sent: u32,
    peer_buf_alloc: u32,
    peer_fwd_cnt: u32,
    tx_cnt: u32,
    /// Bytes to send / sent, bytes expected / received.
    tx_total: usize,
    tx_pos: usize,
    rx_total: usize,
    rx_pos: usize,
    seed_tx: u8,
    seed_rx: u8,
    /// Credit updates are withheld (the credit-exhaustion test).
    stingy: bool,
    rst: bool,
    shutdown: u32,
}

impl GConn {
    fn hdr(&mut self, op: u16, len: u32) -> Header {
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

    fn peer_credit(&self) -> u32 {
        self.peer_buf_alloc.saturating_sub(self.tx_cnt.wrapping_sub(self.peer_fwd_cnt))
    }

    fn done(&self) -> bool {
        self.tx_pos == self.tx_total && self.rx_pos == self.rx_total
    }
}

/// Test bytes: a pseudo-random table with a prime period, so a packet dropped, repeated
/// or moved by any power-of-two distance shows up; `seed` shifts it per stream.
fn pattern(seed: u8, off: usize, len: usize) -> Vec<u8> {
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

struct Guest {
    drv: Driver,
    conns: HashMap<(u32, u32), GConn>,
    /// Non-data packets seen, for the tests to inspect.
    control: Vec<Header>,
}

impl Guest {
    fn new(uds: &Path) -> Self {
        Guest { drv: Driver::new(uds), conns: HashMap::new(), control: Vec::new() }
    }

    fn send_ctl(&mut self, key: (u32, u32), op: u16, flags: u32) {
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
    fn poll(&mut self, ms: i32) {
        for (h, data) in self.drv.poll(ms) {
            assert_eq!((h.src_cid, h.dst_cid, h.type_), (HOST_CID, CID, TYPE_STREAM));
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
                    assert!(data == pattern(c.seed_rx, c.rx_pos, data.len()), "guest side: mismatch at {} on {key:?}", c.rx_pos);
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
    fn pump_tx(&mut self) {
        let keys: Vec<_> = self.conns.keys().copied().collect();
        for key in keys {
            loop {
                let c = self.conns.get_mut(&key).unwrap();
                let n = (c.tx_total - c.tx_pos).min(TX_PKT).min(c.peer_credit() as usize);
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

    fn wait_control(&mut self, what: &str, f: impl Fn(&Header) -> bool) -> Header {
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
    fn accept(&mut self, gport: u32) -> (u32, u32) {
        let req = self.wait_control("REQUEST", |h| h.op == OP_REQUEST && h.dst_port == gport);
        let key = (gport, req.src_port);
        let c = GConn { gport, hport: req.src_port, buf_alloc: GUEST_BUF, peer_buf_alloc: req.buf_alloc, peer_fwd_cnt: req.fwd_cnt, ..Default::default() };
        self.conns.insert(key, c);
        self.send_ctl(key, OP_RESPONSE, 0);
        key
    }

    /// Opens a guest-initiated stream to host port `hport`; returns once RESPONSE arrived.
    fn connect(&mut self, gport: u32, hport: u32) -> (u32, u32) {
        let key = (gport, hport);
        self.conns.insert(key, GConn { gport, hport, buf_alloc: GUEST_BUF, ..Default::default() });
        self.send_ctl(key, OP_REQUEST, 0);
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.conns[&key].peer_buf_alloc == 0 {
            assert!(!self.conns[&key].rst, "guest connect to host port {hport} was reset");
            assert!(Instant::now() < deadline, "no RESPONSE from host port {hport}");
            self.poll(20);
        }
        key
    }

    /// Moves every stream's bytes both ways until all are done.
    fn run_transfers(&mut self, secs: u64) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while !self.conns.values().all(GConn::done) {
            assert!(Instant::now() < deadline, "transfers stalled");
            self.pump_tx();
            self.poll(5);
        }
    }
}

/// The host end of a stream: writes `n` pattern bytes and reads back `n`, checking each.
fn host_peer(stream: UnixStream, n: usize, seed_out: u8, seed_in: u8) -> JoinHandle<()> {
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
            assert!(buf[..k] == pattern(seed_in, off, k)[..], "host side: mismatch at {off}");
            off += k;
        }
        writer.join().unwrap();
    })
}

fn host_connect(uds: &Path, port: u32) -> (UnixStream, JoinHandle<String>) {
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

fn setup() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let uds = dir.path().join("vsock.sock");
    (dir, uds)
}

const MIB16: usize = 16 << 20;

// ---------------------------------------------------------------- tests

#[test]
fn host_initiated_stream_16mib_both_ways() {
    let (_dir, uds) = setup();
    let mut g = Guest::new(&uds);
    let (s, ok) = host_connect(&uds, 5000);
    let key = g.accept(5000);
    let ok = ok.join().unwrap();
    assert_eq!(ok, format!("OK {}", key.1));
    let c = g.conns.get_mut(&key).unwrap();
    (c.tx_total, c.rx_total, c.seed_tx, c.seed_rx) = (MIB16, MIB16, 1, 2);
    let host = host_peer(s, MIB16, 2, 1);
    g.run_transfers(120);
    host.join().unwrap();
}

#[test]
fn guest_initiated_stream_16mib_both_ways() {
    let (dir, uds) = setup();
    let l = UnixListener::bind(dir.path().join("vsock.sock_6000")).unwrap();
    let mut g = Guest::new(&uds);
    let key = g.connect(40000, 6000);
    let (s, _) = l.accept().unwrap();
    let c = g.conns.get_mut(&key).unwrap();
    (c.tx_total, c.rx_total, c.seed_tx, c.seed_rx) = (MIB16, MIB16, 3, 4);
    let host = host_peer(s, MIB16, 4, 3);
    g.run_transfers(120);
    host.join().unwrap();
}

#[test]
fn thirty_two_concurrent_connections() {
    let (dir, uds) = setup();
    let l = UnixListener::bind(dir.path().join("vsock.sock_7000")).unwrap();
    let mut g = Guest::new(&uds);
    let n = 512 * 1024;
    let mut hosts = Vec::new();
    for i in 0..16u32 {
        let (s, ok) = host_connect(&uds, 100 + i);
        let key = g.accept(100 + i);
        assert!(ok.join().unwrap().starts_with("OK "));
        let c = g.conns.get_mut(&key).unwrap();
        (c.tx_total, c.rx_total, c.seed_tx, c.seed_rx) = (n, n, i as u8, 100 + i as u8);
        hosts.push(host_peer(s, n, 100 + i as u8, i as u8));
        let key = g.connect(50000 + i, 7000);
        let (s, _) = l.accept().unwrap();
        let c = g.conns.get_mut(&key).unwrap();
        (c.tx_total, c.rx_total, c.seed_tx, c.seed_rx) = (n, n, 50 + i as u8, 150 + i as u8);
        hosts.push(host_peer(s, n, 150 + i as u8, 50 + i as u8));
    }
    assert_eq!(g.conns.len(), 32);
    g.run_transfers(120);
    for h in hosts {
        h.join().unwrap();
    }
}

#[test]
fn guest_withholding_credit_stalls_host_writes_then_resumes() {
    let (_dir, uds) = setup();
    let mut g = Guest::new(&uds);
    let (s, ok) = host_connect(&uds, 5001);
    let key = g.accept(5001);
    ok.join().unwrap();
    let total = 4 << 20;
    let c = g.conns.get_mut(&key).unwrap();
    (c.rx_total, c.seed_rx, c.stingy) = (total, 9, true);
    // The host writes 4 MiB without blocking and counts what the socket took.
    s.set_nonblocking(true).unwrap();
    let data = pattern(9, 0, total);
    let mut written = 0;
    let deadline = Instant::now() + Duration::from_secs(1);
    while Instant::now() < deadline {
        match (&s).write(&data[written..]) {
            Ok(k) => written += k,
            Err(_) => g.poll(10),
        }
    }
    g.poll(50);
    // The guest got exactly its buf_alloc, asked nothing more of the VMM's memory, and the
    // host is stalled with most of its data unsent (only the socket buffer took more).
    assert_eq!(g.conns[&key].rx_pos, GUEST_BUF as usize);
    assert!(written < GUEST_BUF as usize + (2 << 20), "host wrote {written}: the device kept reading");
    assert!(written < total);
    // Credit comes back: the rest flows.
    let c = g.conns.get_mut(&key).unwrap();
    c.stingy = false;
    g.send_ctl(key, OP_CREDIT_UPDATE, 0);
    let deadline = Instant::now() + Duration::from_secs(60);
    while g.conns[&key].rx_pos < total {
        assert!(Instant::now() < deadline, "no progress after CREDIT_UPDATE");
        while written < total {
            match (&s).write(&data[written..]) {
                Ok(k) => written += k,
                Err(_) => break,
            }
        }
        g.poll(5);
    }
}

#[test]
fn host_not_reading_stalls_guest_then_resumes() {
    let (_dir, uds) = setup();
    let mut g = Guest::new(&uds);
    let (s, ok) = host_connect(&uds, 5002);
    let key = g.accept(5002);
    ok.join().unwrap();
    let total = 8 << 20;
    let c = g.conns.get_mut(&key).unwrap();
    (c.tx_total, c.seed_tx) = (total, 5);
    let deadline = Instant::now() + Duration::from_millis(800);
    while Instant::now() < deadline {
        g.pump_tx();
        g.poll(10);
    }
    // Credit stops the guest after the device's 256 KiB buffer plus the host socket buffer.
    let sent = g.conns[&key].tx_pos;
    assert!(sent < 256 * 1024 + (2 << 20), "guest could send {sent} to a host that never reads");
    assert_eq!(g.conns[&key].peer_credit(), 0);
    let reader = host_peer_reader(s, total, 5);
    g.run_transfers(60);
    reader.join().unwrap();
}

fn host_peer_reader(mut r: UnixStream, n: usize, seed: u8) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut off = 0;
        let mut buf = vec![0u8; 128 * 1024];
        while off < n {
            let k = r.read(&mut buf).unwrap();
            assert!(k > 0, "host side: early EOF at {off}");
            assert!(buf[..k] == pattern(seed, off, k)[..], "host side: mismatch at {off}");
            off += k;
        }
    })
}

#[test]
fn rst_both_ways() {
    let (dir, uds) = setup();
    let mut g = Guest::new(&uds);
    // Guest RST closes the host program's socket.
    let (mut s, ok) = host_connect(&uds, 5003);
    let key = g.accept(5003);
    ok.join().unwrap();
    g.send_ctl(key, OP_RST, 0);
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    assert_eq!(s.read(&mut [0u8; 8]).unwrap(), 0, "host sees EOF after guest RST");
    // Host closes: the guest gets SHUTDOWN(SEND); the guest's close ends in RST.
    let l = UnixListener::bind(dir.path().join("vsock.sock_6001")).unwrap();
    let key = g.connect(41000, 6001);
    drop(l.accept().unwrap());
    let h = g.wait_control("SHUTDOWN", |h| h.op == OP_SHUTDOWN && h.dst_port == 41000);
    assert_eq!(h.flags, SHUTDOWN_SEND);
    g.send_ctl(key, OP_SHUTDOWN, SHUTDOWN_RCV | SHUTDOWN_SEND);
    g.wait_control("RST after close", |h| h.op == OP_RST && h.dst_port == 41000);
    // Connecting to a host port nobody listens on is reset.
    g.conns.insert((42000, 6002), GConn { gport: 42000, hport: 6002, buf_alloc: GUEST_BUF, ..Default::default() });
    g.send_ctl((42000, 6002), OP_REQUEST, 0);
    g.wait_control("RST for closed port", |h| h.op == OP_RST && h.dst_port == 42000);
}

#[test]
fn hostile_packets_are_dropped_or_reset_and_queue_keeps_working() {
    let (dir, uds) = setup();
    let mut g = Guest::new(&uds);
    let good = |op: u16, len: u32| Header {
        src_cid: CID,
        dst_cid: HOST_CID,
        src_port: 900,
        dst_port: 9,
        len,
        type_: TYPE_STREAM,
        op,
        flags: 0,
        buf_alloc: GUEST_BUF,
        fwd_cnt: 0,
    };
    // Unknown op, wrong destination CID, data length beyond the chain: each answered by RST.
    let mut wrong_cid = good(OP_REQUEST, 0);
    wrong_cid.dst_cid = 77;
    for h in [good(99, 0), wrong_cid] {
        assert!(g.drv.send(&h, &[]));
        g.wait_control("RST", |r| r.op == OP_RST && r.dst_port == 900);
    }
    let mem = g.drv.mem.clone();
    let fill = |a: &[u64]| mem.write_slice(&good(OP_RW, 5000).to_bytes(), GuestAddress(a[0])).unwrap();
    g.drv.tx.add_raw(&mem, &[(None, 44, 0), (None, 100, 0)], fill).unwrap();
    g.drv.reg_write(reg::QUEUE_NOTIFY, 1);
    g.wait_control("RST for short chain", |r| r.op == OP_RST && r.dst_port == 900);
    // Header too short, header in a device-writable descriptor, memory outside the guest,
    // an empty chain: dropped (returned to the used ring), no answer.
    let bad: [&[(Option<u64>, u32, u16)]; 4] = [
        &[(None, 20, 0)],
        &[(None, 44, F_WRITE), (None, 10, 0)],
        &[(Some(1 << 40), 44, 0)],
        &[(None, 0, 0)],
    ];
    for chain in bad {
        let fill = |a: &[u64]| {
            if a[0] < MEM_SIZE as u64 && chain[0].1 >= 20 {
                mem.write_slice(&good(OP_REQUEST, 0).to_bytes()[..20], GuestAddress(a[0])).unwrap();
            }
        };
        g.drv.tx.add_raw(&mem, chain, fill).unwrap();
    }
    g.drv.reg_write(reg::QUEUE_NOTIFY, 1);
    let deadline = Instant::now() + Duration::from_secs(5);
    while g.drv.tx.free.len() < QSIZE as usize {
        assert!(Instant::now() < deadline, "device kept hostile chains");
        g.poll(10);
    }
    g.poll(100);
    assert!(g.control.is_empty(), "no answer to dropped packets: {:?}", g.control);
    // The device still works.
    let l = UnixListener::bind(dir.path().join("vsock.sock_6100")).unwrap();
    let key = g.connect(43000, 6100);
    let (s, _) = l.accept().unwrap();
    let c = g.conns.get_mut(&key).unwrap();
    (c.tx_total, c.rx_total, c.seed_tx, c.seed_rx) = (1 << 20, 1 << 20, 7, 8);
    let host = host_peer(s, 1 << 20, 8, 7);
    g.run_transfers(60);
    host.join().unwrap();
}

// ---------------------------------------------------------------- benchmark

fn mib_s(bytes: usize, d: Duration) -> f64 {
    bytes as f64 / (1 << 20) as f64 / d.as_secs_f64()
}

/// vsock MiB/s each way through transport + device, beside a plain unix socket pair moving
/// the same bytes. Prints a table.
#[test]
#[ignore]
fn bench_vsock_throughput() {
    let total: usize = std::env::var("VSOCK_BENCH_MIB").ok().and_then(|v| v.parse().ok()).unwrap_or(256) << 20;
    let (dir, uds) = setup();
    let l = UnixListener::bind(dir.path().join("vsock.sock_8000")).unwrap();
    let mut g = Guest::new(&uds);
    let mut rows = Vec::new();
    // host -> guest
    let (s, ok) = host_connect(&uds, 8000);
    let key = g.accept(8000);
    ok.join().unwrap();
    g.conns.get_mut(&key).unwrap().rx_total = total;
    g.conns.get_mut(&key).unwrap().seed_rx = 1;
    let t = Instant::now();
    let w = std::thread::spawn(move || {
        let chunk = pattern(1, 0, 1 << 20);
        let mut s = s;
        for off in (0..total).step_by(1 << 20) {
            // pattern() depends on the offset; the guest checks every byte.
            let buf = if off == 0 { chunk.clone() } else { pattern(1, off, 1 << 20) };
            s.write_all(&buf).unwrap();
        }
        s
    });
    g.run_transfers(600);
    rows.push(("vsock host->guest", mib_s(total, t.elapsed())));
    drop(w.join().unwrap());
    // guest -> host
    let key = g.connect(44000, 8000);
    let (s, _) = l.accept().unwrap();
    g.conns.get_mut(&key).unwrap().tx_total = total;
    g.conns.get_mut(&key).unwrap().seed_tx = 2;
    let t = Instant::now();
    let r = host_peer_reader(s, total, 2);
    g.run_transfers(600);
    r.join().unwrap();
    rows.push(("vsock guest->host", mib_s(total, t.elapsed())));
    // baseline: the same bytes (generated and checked the same way) over a socketpair
    let (a, b) = UnixStream::pair().unwrap();
    let t = Instant::now();
    let r = host_peer_reader(b, total, 3);
    let mut a = a;
    for off in (0..total).step_by(TX_PKT) {
        a.write_all(&pattern(3, off, TX_PKT.min(total - off))).unwrap();
    }
    r.join().unwrap();
    rows.push(("unix socketpair", mib_s(total, t.elapsed())));
    let base = rows[2].1;
    println!("\n{:<20} {:>10} {:>8}   ({} MiB each, byte-checked)", "path", "MiB/s", "ratio", total >> 20);
    for (name, v) in rows {
        println!("{name:<20} {v:>10.1} {:>8.2}", v / base);
    }
}
