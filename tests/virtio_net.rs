//! virtio-net through the driver-side harness against a real TAP: the real virtio-mmio
//! transport, the real device and worker thread, real guest memory — and a TAP inside a
//! network namespace this test creates (10.77.0.1/24 on the host side, the "guest" at
//! 10.77.0.2), so no address ever appears in the host's own namespace. The harness plays
//! the guest's driver and a minimal IPv4 stack (`virtio_net/packets.rs`).
//!
//! Run: `cargo test -p husk --test virtio_net` (root: namespaces and TAPs).
//! Benchmark: `cargo test --release -p husk --test virtio_net -- --ignored --nocapture bench`.

#![deny(clippy::undocumented_unsafe_blocks)]

mod common;
#[path = "virtio_net/guest.rs"]
mod guest;
#[path = "virtio_net/netns.rs"]
mod netns;
#[path = "virtio_net/packets.rs"]
mod packets;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use guest::*;
use husk::devices::virtio::net::handler::FRAME_BUDGET;
use husk::devices::virtio::net::{features as f, hdr, Tap, TapError, HDR_LEN};
use husk::devices::virtio::testing::{Buf, VIRTQ_DESC_F_NEXT};
use husk::devices::virtio::VIRTIO_F_VERSION_1;
use netns::Netns;
use packets::*;
use vm_memory::GuestAddress;

#[test]
fn udp_guest_to_host_and_back() {
    if skip("udp_guest_to_host_and_back") {
        return;
    }
    udp_both_ways(0);
}

#[test]
fn udp_both_ways_with_event_idx() {
    if skip("udp_both_ways_with_event_idx") {
        return;
    }
    udp_both_ways(f::RING_EVENT_IDX);
}

fn udp_both_ways(features: u64) {
    let mut g = Guest::new(features, 16);
    assert_eq!(g.h.device_features() & features, features);
    assert_eq!(g.h.read_config(0, 6), GUEST_MAC, "MAC in config space");
    assert_eq!(g.h.read_config(6, 2), [1, 0], "link up");
    let host = g.host_udp(5555);

    let data = payload(1000, 1);
    let fr = g.udp_frame(4444, 5555, &data, false);
    g.send(no_offload(), &fr);
    let mut buf = [0u8; 2048];
    let (n, from) = host
        .recv_from(&mut buf)
        .expect("host did not get the datagram");
    assert_eq!(&buf[..n], &data[..]);
    assert_eq!(from, "10.77.0.2:4444".parse::<SocketAddr>().unwrap());

    let back = payload(1400, 2);
    host.send_to(&back, "10.77.0.2:4444").unwrap();
    let got = g.recv(is_udp_to(4444));
    // Nothing offloaded was negotiated: complete checksums, one buffer.
    assert_eq!(got[0], 0, "vnet flags");
    assert_eq!(&got[10..12], &[1, 0], "num_buffers");
    let ip = parse_ipv4(&got[HDR_LEN..]).unwrap();
    assert_eq!((ip.eth_dst, ip.src, ip.dst), (GUEST_MAC, HOST_IP, GUEST_IP));
    assert!(ip.header_ok && udp_checksum_ok(&ip));
    assert_eq!(&ip.payload[8..], &back[..]);
    assert_eq!(g.stat(|s| &s.tx_frames), 1);
    assert!(g.stat(|s| &s.rx_frames) >= 1);
}

#[test]
fn guest_ping_is_answered_by_the_host() {
    if skip("guest_ping_is_answered_by_the_host") {
        return;
    }
    let mut g = Guest::new(0, 16);
    for seq in 1..=3u16 {
        let data = payload(56, seq as u8);
        let icmp = icmp_echo_request(0x4242, seq, &data);
        let fr = eth(
            g.host_mac,
            GUEST_MAC,
            ETH_IP,
            &ipv4(GUEST_IP, HOST_IP, PROTO_ICMP, &icmp),
        );
        g.send(no_offload(), &fr);
        let got = g.recv(|fr| {
            parse_ipv4(fr).is_some_and(|ip| ip.proto == PROTO_ICMP && ip.payload[0] == 0)
        });
        let ip = parse_ipv4(&got[HDR_LEN..]).unwrap();
        assert_eq!(ip.src, HOST_IP);
        assert_eq!(&ip.payload[4..6], &0x4242u16.to_be_bytes());
        assert_eq!(&ip.payload[6..8], &seq.to_be_bytes());
        assert_eq!(&ip.payload[8..], &data[..], "echo data intact");
        assert_eq!(csum_fold(csum_add(0, ip.payload)), 0xffff, "ICMP checksum");
    }
}

#[test]
fn checksum_offload_is_negotiated_and_used_both_ways() {
    if skip("checksum_offload_is_negotiated_and_used_both_ways") {
        return;
    }
    let offloads =
        f::CSUM | f::GUEST_CSUM | f::HOST_TSO4 | f::HOST_TSO6 | f::GUEST_TSO4 | f::GUEST_TSO6;
    let mut g = Guest::new(offloads, 16);
    let offered = g.h.device_features();
    assert_eq!(
        offered & offloads,
        offloads,
        "a Linux TAP accepts TUN_F_CSUM|TSO4|TSO6, so all are offered: {offered:#x}"
    );
    assert_eq!(offered & f::MRG_RXBUF, 0);
    assert_ne!(offered & VIRTIO_F_VERSION_1, 0);
    let host = g.host_udp(5556);

    // Guest → host with only the pseudo-header sum: the host stack must complete it, or
    // its UDP socket would drop the datagram as corrupt.
    let data = payload(1200, 3);
    let fr = g.udp_frame(4445, 5556, &data, true);
    let mut vh = no_offload();
    vh[0] = hdr::F_NEEDS_CSUM;
    vh[6..8].copy_from_slice(&34u16.to_le_bytes()); // csum_start: Ethernet + IPv4 headers
    vh[8..10].copy_from_slice(&6u16.to_le_bytes()); // csum_offset: UDP checksum field
    g.send(vh, &fr);
    let mut buf = [0u8; 2048];
    let n = host
        .recv(&mut buf)
        .expect("partial-checksum datagram not delivered");
    assert_eq!(&buf[..n], &data[..]);

    // Host → guest: the host leaves the checksum to the guest and says so.
    host.send_to(&payload(800, 4), "10.77.0.2:4445").unwrap();
    let got = g.recv(is_udp_to(4445));
    assert_eq!(
        got[0] & hdr::F_NEEDS_CSUM,
        hdr::F_NEEDS_CSUM,
        "vnet header {:?}",
        &got[..12]
    );
    assert_eq!(u16::from_le_bytes([got[6], got[7]]), 34, "csum_start");
    assert_eq!(u16::from_le_bytes([got[8], got[9]]), 6, "csum_offset");

    // A guest that did not negotiate CSUM cannot ask for it.
    let mut g2 = Guest::new(0, 4);
    let fr = g2.udp_frame(4446, 5557, &data, true);
    g2.send(vh, &fr);
    assert_eq!(g2.stat(|s| &s.tx_rejected), 1);
    assert_eq!(g2.stat(|s| &s.tx_frames), 0);
}

/// TCP segmentation offload both ways over a real TCP connection to a host socket: the
/// "guest" does the handshake by hand, sends one 4000-byte segment for the host to cut
/// (HOST_TSO4), and receives the host's data as segments larger than the MTU (GUEST_TSO4).
#[test]
fn tcp_segmentation_offload_both_ways() {
    if skip("tcp_segmentation_offload_both_ways") {
        return;
    }
    let tso = f::CSUM | f::GUEST_CSUM | f::HOST_TSO4 | f::GUEST_TSO4;
    let mut g = Guest::new(tso, 0);
    // Without MRG_RXBUF a TSO guest posts buffers for a whole 64 KiB packet.
    for _ in 0..8 {
        let a = g.h.alloc(65562 + HDR_LEN as u64);
        g.post_rx_len(a, 65562 + HDR_LEN as u32);
    }
    g.h.notify(RXQ);
    let ports = (40000u16, 7000u16);
    let Tcp {
        mut conn,
        isn,
        host_isn,
        ..
    } = tcp_open(&mut g, ports);

    // Guest → host: one 4000-byte segment; the host's stack takes it as GSO (MSS 1448).
    let data = payload(4000, 7);
    let fr = tcp_frame(
        &g,
        ports,
        isn + 1,
        host_isn + 1,
        TCP_ACK | TCP_PSH,
        &data,
        true,
    );
    g.send(tso_header(1448), &fr);
    let mut got = vec![0u8; data.len()];
    std::io::Read::read_exact(&mut conn, &mut got).expect("host reads the offloaded segment");
    assert_eq!(got, data);

    // Host → guest: 30000 bytes; the TAP hands over GSO frames bigger than the MTU.
    let out = payload(30000, 9);
    std::io::Write::write_all(&mut conn, &out).unwrap();
    let mut stream = Vec::new();
    let mut biggest = 0usize;
    let mut gso_seen = false;
    while stream.len() < 2 * 1460 {
        let fr = g.recv(is_tcp);
        let ip = parse_ipv4(&fr[HDR_LEN..]).unwrap();
        let doff = usize::from(ip.payload[12] >> 4) * 4;
        let seq = u32::from_be_bytes(ip.payload[4..8].try_into().unwrap());
        let body = &ip.payload[doff..];
        if body.is_empty() || seq != host_isn + 1 + stream.len() as u32 {
            continue; // an ACK or a retransmission
        }
        if fr[1] == hdr::GSO_TCPV4 {
            gso_seen = true;
            assert_eq!(fr[0] & hdr::F_NEEDS_CSUM, hdr::F_NEEDS_CSUM);
            assert!(u16::from_le_bytes([fr[4], fr[5]]) > 0, "gso_size");
        }
        biggest = biggest.max(body.len());
        stream.extend_from_slice(body);
    }
    assert!(gso_seen, "no GSO frame reached the guest");
    assert!(
        biggest > 1460,
        "largest segment {biggest} fits the MTU: no GSO"
    );
    assert_eq!(&stream[..], &out[..stream.len()], "TCP stream intact");
}

#[test]
fn hostile_chains_are_refused_over_a_real_tap() {
    if skip("hostile_chains_are_refused_over_a_real_tap") {
        return;
    }
    let mut g = Guest::new(0, 0);
    let host = g.host_udp(5558);
    let a = g.h.alloc(4096);
    let n = VIRTQ_DESC_F_NEXT;
    // tx: device-writable, header only, outside memory, a loop.
    g.h.add_chain(TXQ, &[Buf::r(a, 12), Buf::w(GuestAddress(a.0 + 12), 60)]);
    g.h.add_chain(TXQ, &[Buf::r(a, 12)]);
    g.h.add_chain(TXQ, &[Buf::r(a, 12), Buf::r(GuestAddress(1 << 40), 60)]);
    g.h.write_desc(TXQ, 10, a.0, 12, n, 11);
    g.h.write_desc(TXQ, 11, a.0, 60, n, 10);
    g.h.push_avail(TXQ, 10);
    g.h.notify(TXQ);
    let used =
        g.h.wait_used(TXQ, 4, WAIT)
            .expect("hostile tx chains not returned");
    assert!(used.iter().all(|&(_, len)| len == 0));
    assert_eq!(g.stat(|s| &s.tx_rejected), 4);
    // The device still works.
    let data = payload(100, 5);
    let fr = g.udp_frame(4447, 5558, &data, false);
    g.send(no_offload(), &fr);
    let mut buf = [0u8; 256];
    assert_eq!(host.recv(&mut buf).unwrap(), data.len());

    // rx: a device-readable buffer comes back empty, the frame lands in the next one.
    let bad = g.h.alloc(4096);
    g.h.add_chain(RXQ, &[Buf::r(bad, RX_BUF)]);
    let good = g.h.alloc(u64::from(RX_BUF));
    g.post_rx(good);
    g.h.notify(RXQ);
    host.send_to(&payload(300, 6), "10.77.0.2:4448").unwrap();
    let used = g.h.wait_used(RXQ, 2, WAIT).expect("rx buffers not used");
    assert_eq!(used[0].1, 0, "read-only rx chain returned empty");
    assert!(used[1].1 as usize > HDR_LEN + 300);
    assert_eq!(g.stat(|s| &s.rx_bad_chains), 1);
}

#[test]
fn a_frame_too_big_for_the_guest_buffer_is_dropped_and_the_buffer_reused() {
    if skip("a_frame_too_big_for_the_guest_buffer_is_dropped_and_the_buffer_reused") {
        return;
    }
    let mut g = Guest::new(0, 0);
    let host = g.host_udp(5561);
    let small = g.h.alloc(1024);
    g.post_rx_len(small, 1024);
    g.h.notify(RXQ);
    // 1400 bytes of UDP payload cannot fit 1024 bytes: the frame is dropped, not split.
    host.send_to(&payload(1400, 1), "10.77.0.2:4451").unwrap();
    host.send_to(&payload(500, 2), "10.77.0.2:4451").unwrap();
    let got = g.recv(is_udp_to(4451));
    let ip = parse_ipv4(&got[HDR_LEN..]).unwrap();
    assert_eq!(
        &ip.payload[8..],
        &payload(500, 2)[..],
        "the next frame, intact"
    );
    assert!(udp_checksum_ok(&ip));
    assert_eq!(g.stat(|s| &s.rx_dropped), 1);
    assert_eq!(g.stat(|s| &s.rx_frames), 1);
}

#[test]
fn a_host_flood_waits_for_buffers_and_moves_in_budgeted_batches() {
    if skip("a_host_flood_waits_for_buffers_and_moves_in_budgeted_batches") {
        return;
    }
    let mut g = Guest::new(0, 0);
    let host = g.host_udp(5559);
    // 500 datagrams while the guest has no buffer: they wait in the TAP, none is dropped.
    let count = 500u32;
    for i in 0..count {
        let mut d = payload(1000, i as u8);
        d[..4].copy_from_slice(&i.to_be_bytes());
        host.send_to(&d, "10.77.0.2:4449").unwrap();
    }
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(g.stat(|s| &s.rx_frames), 0);
    // Now 256 buffers: the device moves them FRAME_BUDGET at a time, yielding in between.
    for _ in 0..QSIZE {
        let a = g.h.alloc(u64::from(RX_BUF));
        g.post_rx(a);
    }
    g.h.notify(RXQ);
    for i in 0..count {
        let got = g.recv(is_udp_to(4449));
        let ip = parse_ipv4(&got[HDR_LEN..]).unwrap();
        assert_eq!(&ip.payload[8..12], &i.to_be_bytes(), "in order, none lost");
        let mut want = payload(1000, i as u8);
        want[..4].copy_from_slice(&i.to_be_bytes());
        assert_eq!(&ip.payload[8..], &want[..]);
    }
    assert_eq!(g.stat(|s| &s.rx_dropped), 0);
    assert!(g.stat(|s| &s.rx_deferred) >= 1);
    let yields = g.stat(|s| &s.budget_yields);
    assert!(
        yields >= u64::from(QSIZE) / FRAME_BUDGET as u64 - 1,
        "256 ready buffers and a full TAP must take several budgeted passes, got {yields}"
    );

    // A guest flood the other way: 255 chains and one kick.
    let before = g.stat(|s| &s.budget_yields);
    let sink = g.host_udp(5560);
    for i in 0..255u32 {
        let mut d = payload(1000, i as u8);
        d[..4].copy_from_slice(&i.to_be_bytes());
        let fr = g.udp_frame(4450, 5560, &d, false);
        g.queue_tx(no_offload(), &fr);
    }
    g.h.notify(TXQ);
    g.h.wait_used(TXQ, 255, WAIT)
        .expect("tx flood not completed");
    assert!(
        g.stat(|s| &s.budget_yields) - before >= 3,
        "255 chains = 4 budgeted passes"
    );
    let mut buf = [0u8; 2048];
    for i in 0..255u32 {
        let n = sink.recv(&mut buf).expect("flooded datagram missing");
        assert_eq!((n, &buf[..4]), (1000, &i.to_be_bytes()[..]));
    }
}

#[test]
fn a_reset_device_comes_back_with_new_features_and_traffic_flows() {
    if skip("a_reset_device_comes_back_with_new_features_and_traffic_flows") {
        return;
    }
    let offloads = f::CSUM | f::GUEST_CSUM;
    let mut g = Guest::new(offloads, 8);
    let host = g.host_udp(5570);
    host.send_to(&payload(100, 1), "10.77.0.2:4470").unwrap();
    let got = g.recv(is_udp_to(4470));
    assert_eq!(got[0] & hdr::F_NEEDS_CSUM, hdr::F_NEEDS_CSUM);

    // The driver resets and comes back without offloads: the TAP must be told, or the
    // host would keep handing over frames with partial checksums.
    g.h.reset();
    g.h.free_all();
    g.rx_bufs.clear();
    g.h.init(f::MAC, 2, QSIZE);
    g.tx_base = g.h.alloc(TX_SLOT * u64::from(QSIZE));
    for _ in 0..8 {
        let a = g.h.alloc(u64::from(RX_BUF));
        g.post_rx(a);
    }
    g.h.notify(RXQ);
    host.send_to(&payload(100, 2), "10.77.0.2:4470").unwrap();
    let got = g.recv(is_udp_to(4470));
    assert_eq!(
        got[0], 0,
        "no NEEDS_CSUM after renegotiating without GUEST_CSUM"
    );
    let ip = parse_ipv4(&got[HDR_LEN..]).unwrap();
    assert!(udp_checksum_ok(&ip));
    let fr = g.udp_frame(4470, 5570, &payload(64, 3), false);
    g.send(no_offload(), &fr);
    let mut buf = [0u8; 256];
    assert_eq!(host.recv(&mut buf).unwrap(), 64);
}

#[test]
fn a_persistent_tap_made_by_ip_tuntap_is_attached_by_name() {
    if skip("a_persistent_tap_made_by_ip_tuntap_is_attached_by_name") {
        return;
    }
    // What host network code typically does: create the TAP (without vnet_hdr), put it on
    // a bridge, and let the VMM attach.
    let ns = Netns::new();
    ns.ip(&["tuntap", "add", "dev", "hnt5", "mode", "tap"]);
    let tap = ns
        .enter(|| Tap::open("hnt5"))
        .expect("attach to the persistent TAP");
    assert_eq!(tap.name(), "hnt5");
    assert_ne!(tap.supported_offloads() & libc::TUN_F_CSUM, 0);
    // Only one process may hold a single-queue TAP.
    let again = ns.enter(|| Tap::open("hnt5"));
    assert!(matches!(again, Err(TapError::SetIff { .. })), "{again:?}");
    drop(tap);
    ns.ip(&["link", "show", "hnt5"]); // still there: persistent
}

#[test]
fn a_tap_fd_from_another_namespace_is_taken_and_checked() {
    if skip("a_tap_fd_from_another_namespace_is_taken_and_checked") {
        return;
    }
    let ns = Netns::new();
    let fd = ns.open_tun("hnt9", libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR);
    let tap = Tap::from_fd(fd).expect("a proper TAP fd");
    assert_eq!(tap.name(), "hnt9");
    assert_ne!(tap.supported_offloads() & libc::TUN_F_CSUM, 0);
    // It is not in our namespace: opening it by name here would have created another one.
    assert!(!std::path::Path::new("/sys/class/net/hnt9").exists());

    let no_vnet = ns.open_tun("hnt8", libc::IFF_TAP | libc::IFF_NO_PI);
    let e = Tap::from_fd(no_vnet).unwrap_err();
    assert!(
        matches!(
            e,
            TapError::WrongFlags {
                missing: "IFF_VNET_HDR",
                ..
            }
        ),
        "{e}"
    );
    let tun = ns.open_tun("hnt7", libc::IFF_TUN | libc::IFF_NO_PI | libc::IFF_VNET_HDR);
    assert!(matches!(
        Tap::from_fd(tun),
        Err(TapError::WrongFlags { .. })
    ));
}

// ------------------------------------------------------------------ benchmark

/// MB/s of UDP payload through the TAP, host→guest and guest→host, 1472-byte datagrams
/// (full Ethernet frames).
#[test]
#[ignore = "benchmark: cargo test --release --test virtio_net -- --ignored --nocapture bench"]
fn bench_throughput() {
    if skip("bench_throughput") {
        return;
    }
    const PAYLOAD: usize = 1472;
    const SECS: f64 = 2.0;
    let mut g = Guest::with_mem(0, QSIZE as usize, 64 << 20);

    // host → guest: a host thread sends as fast as the TAP takes them; the guest drains.
    let host = g.host_udp(5600);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sender = {
        let host = host.try_clone().unwrap();
        let stop = stop.clone();
        std::thread::spawn(move || {
            let d = payload(PAYLOAD, 1);
            while !stop.load(Ordering::Relaxed) {
                let _ = host.send_to(&d, "10.77.0.2:4600");
            }
        })
    };
    let start = Instant::now();
    let mut bytes = 0u64;
    while start.elapsed().as_secs_f64() < SECS {
        let Some(used) = g.h.wait_used(RXQ, 1, Duration::from_secs(1)) else {
            continue;
        };
        for (id, len) in used {
            bytes += u64::from(len).saturating_sub(42 + HDR_LEN as u64);
            let (a, len) = g.rx_bufs[&(id as u16)];
            g.post_rx_len(a, len);
        }
        g.h.notify(RXQ);
    }
    let h2g = bytes as f64 / start.elapsed().as_secs_f64() / 1e6;
    stop.store(true, Ordering::Relaxed);
    sender.join().unwrap();

    // guest → host: batches of 128 frames; a host thread counts what arrives.
    let sink = g.host_udp(5601);
    let received = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let reader = {
        let received = received.clone();
        sink.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while let Ok(n) = sink.recv(&mut buf) {
                received.fetch_add(n as u64, Ordering::Relaxed);
            }
        })
    };
    let fr = g.udp_frame(4601, 5601, &payload(PAYLOAD, 2), false);
    let start = Instant::now();
    while start.elapsed().as_secs_f64() < SECS {
        for _ in 0..128 {
            g.queue_tx(no_offload(), &fr);
        }
        g.h.notify(TXQ);
        g.h.wait_used(TXQ, 128, WAIT).expect("tx batch");
    }
    let secs = start.elapsed().as_secs_f64();
    let sent = g.stat(|s| &s.tx_bytes) as f64;
    reader.join().unwrap();
    let g2h = received.load(Ordering::Relaxed) as f64 / secs / 1e6;

    // Baseline: the same datagrams between two sockets over loopback in the namespace.
    let a = g.host_udp(5602);
    let b = g.host_udp(5603);
    b.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let received = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let reader = {
        let received = received.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while let Ok(n) = b.recv(&mut buf) {
                received.fetch_add(n as u64, Ordering::Relaxed);
            }
        })
    };
    let d = payload(PAYLOAD, 3);
    let start = Instant::now();
    while start.elapsed().as_secs_f64() < SECS {
        for _ in 0..128 {
            let _ = a.send_to(&d, "10.77.0.1:5603");
        }
    }
    let secs_lo = start.elapsed().as_secs_f64();
    reader.join().unwrap();
    let lo = received.load(Ordering::Relaxed) as f64 / secs_lo / 1e6;
    println!(
        "virtio-net over TAP, {PAYLOAD}-byte UDP payloads: host->guest {h2g:.0} MB/s, \
         guest->host {g2h:.0} MB/s received ({:.0} MB/s of frames written to the TAP); \
         baseline UDP over loopback in the same namespace: {lo:.0} MB/s received",
        sent / secs / 1e6
    );
    assert!(h2g > 0.0 && g2h > 0.0);
}

/// TCP throughput with segmentation offload both ways through the TAP: the harness acks
/// every in-order segment it receives (host→guest) and keeps the host's window full of
/// 62 KiB GSO segments (guest→host). Payload MB/s as the host socket sees it.
#[test]
#[ignore = "benchmark: cargo test --release --test virtio_net -- --ignored --nocapture bench"]
fn bench_tcp_throughput() {
    if skip("bench_tcp_throughput") {
        return;
    }
    const SECS: f64 = 2.0;
    const BIG: u32 = 65562 + HDR_LEN as u32;
    let tso = f::CSUM | f::GUEST_CSUM | f::HOST_TSO4 | f::GUEST_TSO4;
    let mut g = Guest::with_mem(tso, 0, 128 << 20);
    for _ in 0..64 {
        let a = g.h.alloc(u64::from(BIG));
        g.post_rx_len(a, BIG);
    }
    g.h.notify(RXQ);
    let c = tcp_open(&mut g, (40001, 7001));
    let (snd_start, mut rcv_nxt) = (c.isn + 1, c.host_isn + 1);

    // host → guest.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let mut conn = c.conn.try_clone().unwrap();
        conn.set_write_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let stop = stop.clone();
        std::thread::spawn(move || {
            let chunk = payload(1 << 20, 5);
            while !stop.load(Ordering::Relaxed) {
                let _ = std::io::Write::write(&mut conn, &chunk);
            }
        })
    };
    let start = Instant::now();
    let mut bytes = 0u64;
    while start.elapsed().as_secs_f64() < SECS {
        let mut advanced = false;
        for fr in g.poll_frames(Duration::from_millis(100)) {
            let Some(ip) = parse_ipv4(&fr[HDR_LEN..]).filter(|ip| ip.proto == PROTO_TCP) else {
                continue;
            };
            let doff = usize::from(ip.payload[12] >> 4) * 4;
            let seq = u32::from_be_bytes(ip.payload[4..8].try_into().unwrap());
            let len = ip.payload.len() - doff;
            if len > 0 && seq == rcv_nxt {
                rcv_nxt = rcv_nxt.wrapping_add(len as u32);
                bytes += len as u64;
                advanced = true;
            }
        }
        if advanced {
            let fr = tcp_frame(&g, c.ports, snd_start, rcv_nxt, TCP_ACK, &[], false);
            g.send(no_offload(), &fr);
        }
    }
    let h2g = bytes as f64 / start.elapsed().as_secs_f64() / 1e6;
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();

    // guest → host.
    let received = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let reader = {
        let mut conn = c.conn.try_clone().unwrap();
        conn.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let received = received.clone();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 1 << 20];
            while let Ok(n @ 1..) = std::io::Read::read(&mut conn, &mut buf) {
                received.fetch_add(n as u64, Ordering::Relaxed);
            }
        })
    };
    let seg = payload(43 * 1448, 6);
    let (mut snd_una, mut snd_nxt) = (snd_start, snd_start);
    let mut wnd = 65535u64;
    let start = Instant::now();
    while start.elapsed().as_secs_f64() < SECS {
        let mut queued = 0;
        while u64::from(snd_nxt.wrapping_sub(snd_una)) + seg.len() as u64 <= wnd && queued < 64 {
            let fr = tcp_frame(&g, c.ports, snd_nxt, rcv_nxt, TCP_ACK | TCP_PSH, &seg, true);
            g.queue_tx(tso_header(1448), &fr);
            snd_nxt = snd_nxt.wrapping_add(seg.len() as u32);
            queued += 1;
        }
        if queued > 0 {
            g.h.notify(TXQ);
            g.h.wait_used(TXQ, queued, WAIT).expect("tx batch");
        }
        for fr in g.poll_frames(Duration::from_millis(5)) {
            let Some(ip) = parse_ipv4(&fr[HDR_LEN..]).filter(|ip| ip.proto == PROTO_TCP) else {
                continue;
            };
            let th = ip.payload;
            let ack = u32::from_be_bytes(th[8..12].try_into().unwrap());
            let in_flight = snd_nxt.wrapping_sub(snd_una);
            let acked = ack.wrapping_sub(snd_una);
            if th[13] & TCP_ACK != 0 && acked <= in_flight {
                snd_una = ack;
                wnd = u64::from(u16::from_be_bytes([th[14], th[15]])) << c.host_wscale;
            }
        }
    }
    let secs = start.elapsed().as_secs_f64();
    reader.join().unwrap();
    let g2h = received.load(Ordering::Relaxed) as f64 / secs / 1e6;
    println!(
        "virtio-net over TAP, TCP with TSO/checksum offload: host->guest {h2g:.0} MB/s, \
         guest->host {g2h:.0} MB/s"
    );
    assert!(h2g > 0.0 && g2h > 0.0);
}
