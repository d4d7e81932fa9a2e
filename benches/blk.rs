//! virtio-blk throughput through the driver-side harness, beside plain pread/pwrite of the
//! same host file (A/B in the same run, as Firecracker's perf tests do).
//!
//!     cargo bench --bench blk            # ~1 s per row
//!     HUSK_BENCH_SECS=3 cargo bench --bench blk
//!
//! The harness path is the full device path minus the vCPU: descriptors in guest memory,
//! QueueNotify through the MMIO bus, the worker thread's event loop, pread/pwrite straight
//! into guest memory, used ring, irq EventFd, driver wake-up.

#![deny(clippy::undocumented_unsafe_blocks)]

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

use husk::devices::virtio::block::Block;
use husk::devices::virtio::testing::blk::{chain, prepare, Req};
use husk::devices::virtio::testing::Harness;
use husk::devices::virtio::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_blk::{VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT};
use vm_memory::{Bytes, GuestAddress};

const FILE_SIZE: u64 = 64 << 20;

struct Row {
    op: &'static str,
    size: u32,
    dev_rps: f64,
    base_rps: f64,
}

fn secs() -> Duration {
    let s: f64 = std::env::var("HUSK_BENCH_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1.0);
    Duration::from_secs_f64(s)
}

/// Requests/s through the device: batches of `depth` requests per notify.
fn device_rps(h: &mut Harness, req_type: u32, size: u32, depth: usize, dur: Duration) -> f64 {
    h.free_all();
    let reqs: Vec<Req> = (0..depth).map(|_| prepare(h, req_type, 0, size)).collect();
    let slots = FILE_SIZE / u64::from(size);
    let mut n: u64 = 0;
    let start = Instant::now();
    while start.elapsed() < dur {
        for r in &reqs {
            let sector = (n % slots) * u64::from(size) / 512;
            h.mem.write_obj(sector, GuestAddress(r.hdr.0 + 8)).unwrap();
            h.add_chain(0, &chain(r, req_type == VIRTIO_BLK_T_IN));
            n += 1;
        }
        h.notify(0);
        h.wait_used(0, depth, Duration::from_secs(10))
            .expect("device stalled");
    }
    for r in &reqs {
        assert_eq!(h.read(r.status, 1)[0], 0, "request failed");
    }
    n as f64 / start.elapsed().as_secs_f64()
}

/// Requests/s of plain pread/pwrite at the same offsets, rotating over as many buffers as
/// the device has requests in flight (same cache footprint).
fn baseline_rps(file: &File, write: bool, size: u32, depth: usize, dur: Duration) -> f64 {
    let mut bufs = vec![vec![0x5au8; size as usize]; depth];
    let slots = FILE_SIZE / u64::from(size);
    let mut n: u64 = 0;
    let start = Instant::now();
    while start.elapsed() < dur {
        for buf in bufs.iter_mut() {
            let off = (n % slots) * u64::from(size);
            if write {
                file.write_all_at(buf, off).unwrap();
            } else {
                file.read_exact_at(buf, off).unwrap();
            }
            n += 1;
        }
    }
    n as f64 / start.elapsed().as_secs_f64()
}

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bench.img");
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .unwrap();
    // Real data (not a sparse hole) so reads hit the page cache the same way for both sides.
    let chunk = vec![0xa5u8; 1 << 20];
    for i in 0..FILE_SIZE / (1 << 20) {
        file.write_all_at(&chunk, i << 20).unwrap();
    }
    let dev = Block::open("blk-bench", &path, false).unwrap();
    let mut h = Harness::with_mem_size(Box::new(dev), 128 << 20);
    h.init(VIRTIO_F_VERSION_1, 1, 256);

    let dur = secs();
    let mut rows = Vec::new();
    for (op, t, write) in [
        ("read", VIRTIO_BLK_T_IN, false),
        ("write", VIRTIO_BLK_T_OUT, true),
    ] {
        for (size, depth) in [(4096u32, 32usize), (1 << 20, 8)] {
            // Warm up both paths once.
            device_rps(&mut h, t, size, depth, dur / 10);
            baseline_rps(&file, write, size, depth, dur / 10);
            let dev_rps = device_rps(&mut h, t, size, depth, dur);
            let base_rps = baseline_rps(&file, write, size, depth, dur);
            rows.push(Row {
                op,
                size,
                dev_rps,
                base_rps,
            });
        }
    }

    println!();
    println!("virtio-blk via driver-side harness vs plain pread/pwrite ({} s per cell, page-cached 64 MiB file)", dur.as_secs_f64());
    println!(
        "{:<6} {:>6} | {:>12} {:>10} | {:>12} {:>10} | {:>6}",
        "op", "size", "dev req/s", "dev MiB/s", "file req/s", "file MiB/s", "ratio"
    );
    println!("{}", "-".repeat(80));
    for r in rows {
        let mib = |rps: f64| rps * f64::from(r.size) / (1 << 20) as f64;
        let size = if r.size >= 1 << 20 {
            format!("{}M", r.size >> 20)
        } else {
            format!("{}K", r.size >> 10)
        };
        println!(
            "{:<6} {:>6} | {:>12.0} {:>10.1} | {:>12.0} {:>10.1} | {:>6.2}",
            r.op,
            size,
            r.dev_rps,
            mib(r.dev_rps),
            r.base_rps,
            mib(r.base_rps),
            r.dev_rps / r.base_rps
        );
    }
}
