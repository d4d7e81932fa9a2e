//! virtio-vsock through the real virtio-mmio transport over real guest memory: the shared
//! driver-side harness (`devices::virtio::testing`) attaches the device and sets up the
//! queues; `virtio_vsock/guest.rs` adds descriptor bookkeeping and a minimal guest socket
//! layer with credit accounting.
//!
//! Run: `cargo test -p husk --test virtio_vsock`.
//! Benchmark: `cargo test --release -p husk --test virtio_vsock -- --ignored --nocapture bench`.

#![deny(clippy::undocumented_unsafe_blocks)]

#[path = "virtio_vsock/guest.rs"]
mod guest;

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::{Duration, Instant};

use guest::*;
use husk::devices::virtio::vsock::packet::*;
use vm_memory::{Bytes, GuestAddress};

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
    assert!(
        written < GUEST_BUF as usize + (2 << 20),
        "host wrote {written}: the device kept reading"
    );
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
    assert!(
        sent < 256 * 1024 + (2 << 20),
        "guest could send {sent} to a host that never reads"
    );
    assert_eq!(g.conns[&key].peer_credit(), 0);
    let reader = host_peer_reader(s, total, 5);
    g.run_transfers(60);
    reader.join().unwrap();
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
    assert_eq!(
        s.read(&mut [0u8; 8]).unwrap(),
        0,
        "host sees EOF after guest RST"
    );
    // Host closes: the guest gets SHUTDOWN(SEND); the guest's close ends in RST.
    let l = UnixListener::bind(dir.path().join("vsock.sock_6001")).unwrap();
    let key = g.connect(41000, 6001);
    drop(l.accept().unwrap());
    let h = g.wait_control("SHUTDOWN", |h| h.op == OP_SHUTDOWN && h.dst_port == 41000);
    assert_eq!(h.flags, SHUTDOWN_SEND);
    g.send_ctl(key, OP_SHUTDOWN, SHUTDOWN_RCV | SHUTDOWN_SEND);
    g.wait_control("RST after close", |h| h.op == OP_RST && h.dst_port == 41000);
    // Connecting to a host port nobody listens on is reset.
    g.conns.insert(
        (42000, 6002),
        GConn {
            gport: 42000,
            hport: 6002,
            buf_alloc: GUEST_BUF,
            ..Default::default()
        },
    );
    g.send_ctl((42000, 6002), OP_REQUEST, 0);
    g.wait_control("RST for closed port", |h| {
        h.op == OP_RST && h.dst_port == 42000
    });
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
    let fill = |a: &[u64]| {
        mem.write_slice(&good(OP_RW, 5000).to_bytes(), GuestAddress(a[0]))
            .unwrap()
    };
    g.drv
        .tx
        .add_raw(&mut g.drv.h, &[(None, 44, 0), (None, 100, 0)], fill)
        .unwrap();
    g.drv.h.notify(1);
    g.wait_control("RST for short chain", |r| {
        r.op == OP_RST && r.dst_port == 900
    });
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
                mem.write_slice(&good(OP_REQUEST, 0).to_bytes()[..20], GuestAddress(a[0]))
                    .unwrap();
            }
        };
        g.drv.tx.add_raw(&mut g.drv.h, chain, fill).unwrap();
    }
    g.drv.h.notify(1);
    let deadline = Instant::now() + Duration::from_secs(5);
    while g.drv.tx.free.len() < QSIZE as usize {
        assert!(Instant::now() < deadline, "device kept hostile chains");
        g.poll(10);
    }
    g.poll(100);
    assert!(
        g.control.is_empty(),
        "no answer to dropped packets: {:?}",
        g.control
    );
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

#[test]
fn device_reset_closes_streams_and_reactivates() {
    let (dir, uds) = setup();
    let mut g = Guest::new(&uds);
    let (mut s, ok) = host_connect(&uds, 5004);
    g.accept(5004);
    ok.join().unwrap();
    g.drv.reinit();
    g.conns.clear();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    assert_eq!(
        s.read(&mut [0u8; 8]).unwrap(),
        0,
        "reset drops the host side of every stream"
    );
    // The listener survives the reset; a new session works both ways.
    let l = UnixListener::bind(dir.path().join("vsock.sock_6200")).unwrap();
    let key = g.connect(44000, 6200);
    let (s, _) = l.accept().unwrap();
    let c = g.conns.get_mut(&key).unwrap();
    (c.tx_total, c.rx_total, c.seed_tx, c.seed_rx) = (1 << 20, 1 << 20, 11, 12);
    let host = host_peer(s, 1 << 20, 12, 11);
    let (s2, ok) = host_connect(&uds, 5005);
    let key2 = g.accept(5005);
    assert!(ok.join().unwrap().starts_with("OK "));
    let c = g.conns.get_mut(&key2).unwrap();
    (c.tx_total, c.rx_total, c.seed_tx, c.seed_rx) = (1 << 20, 1 << 20, 13, 14);
    let host2 = host_peer(s2, 1 << 20, 14, 13);
    g.run_transfers(60);
    host.join().unwrap();
    host2.join().unwrap();
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
    let total: usize = std::env::var("VSOCK_BENCH_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256)
        << 20;
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
            let buf = if off == 0 {
                chunk.clone()
            } else {
                pattern(1, off, 1 << 20)
            };
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
        a.write_all(&pattern(3, off, TX_PKT.min(total - off)))
            .unwrap();
    }
    r.join().unwrap();
    rows.push(("unix socketpair", mib_s(total, t.elapsed())));
    let base = rows[2].1;
    println!(
        "\n{:<20} {:>10} {:>8}   ({} MiB each, byte-checked)",
        "path",
        "MiB/s",
        "ratio",
        total >> 20
    );
    for (name, v) in rows {
        println!("{name:<20} {v:>10.1} {:>8.2}", v / base);
    }
}
