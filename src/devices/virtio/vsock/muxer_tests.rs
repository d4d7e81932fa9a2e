//! Muxer tests: the guest side is played by calling `send_pkt`/`recv_pkt` directly.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::muxer::Muxer;
use super::packet::*;

const CID: u64 = 3;

fn muxer(dir: &Path) -> (Muxer, PathBuf) {
    let uds = dir.join("v.sock");
    let l = UnixListener::bind(&uds).unwrap();
    (Muxer::new(CID, uds.clone(), l).unwrap(), uds)
}

fn ghdr(op: u16, src_port: u32, dst_port: u32, len: u32) -> Header {
    Header {
        src_cid: CID,
        dst_cid: HOST_CID,
        src_port,
        dst_port,
        len,
        type_: TYPE_STREAM,
        op,
        flags: 0,
        buf_alloc: 256 * 1024,
        fwd_cnt: 0,
    }
}

/// Waits for host-side activity (up to `ms`) and handles it.
fn pump(m: &mut Muxer, ms: i32) {
    let mut pfd = libc::pollfd {
        fd: m.epoll_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    unsafe { libc::poll(&mut pfd, 1, ms) };
    m.process_host_events();
}

/// Pumps until the muxer has a packet for the guest, and returns it.
fn next(m: &mut Muxer, data: &mut Vec<u8>) -> Header {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(h) = m.recv_pkt(4096, data) {
            return h;
        }
        assert!(Instant::now() < deadline, "no packet for the guest");
        pump(m, 50);
    }
}

#[test]
fn host_initiated_connect_ok_and_data() {
    let dir = tempfile::tempdir().unwrap();
    let (mut m, uds) = muxer(dir.path());
    let mut host = UnixStream::connect(&uds).unwrap();
    host.write_all(b"CONNECT 52\nearly").unwrap();
    let mut d = Vec::new();
    let req = next(&mut m, &mut d);
    assert_eq!(
        (req.op, req.dst_port, req.dst_cid, req.src_cid),
        (OP_REQUEST, 52, CID, HOST_CID)
    );
    assert!(req.src_port >= 1 << 30);
    m.send_pkt(&ghdr(OP_RESPONSE, 52, req.src_port, 0), &[]);
    let mut ok = vec![0u8; 64];
    let n = host.read(&mut ok).unwrap();
    assert_eq!(&ok[..n], format!("OK {}\n", req.src_port).as_bytes());
    // Data behind the CONNECT line reaches the guest first.
    let h = next(&mut m, &mut d);
    assert_eq!((h.op, d.as_slice()), (OP_RW, &b"early"[..]));
    m.send_pkt(&ghdr(OP_RW, 52, req.src_port, 5), b"reply");
    let mut buf = [0u8; 5];
    host.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"reply");
    // Guest RST closes the host side.
    m.send_pkt(&ghdr(OP_RST, 52, req.src_port, 0), &[]);
    assert_eq!(host.read(&mut buf).unwrap(), 0);
    assert_eq!(m.connection_count(), 0);
}

#[test]
fn guest_initiated_forwards_to_port_socket() {
    let dir = tempfile::tempdir().unwrap();
    let (mut m, uds) = muxer(dir.path());
    let l = UnixListener::bind(dir.path().join("v.sock_80")).unwrap();
    m.send_pkt(&ghdr(OP_REQUEST, 4000, 80, 0), &[]);
    let mut d = Vec::new();
    let h = next(&mut m, &mut d);
    assert_eq!((h.op, h.src_port, h.dst_port), (OP_RESPONSE, 80, 4000));
    let (mut peer, _) = l.accept().unwrap();
    m.send_pkt(&ghdr(OP_RW, 4000, 80, 3), b"abc");
    let mut b = [0u8; 3];
    peer.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"abc");
    peer.write_all(b"xyz").unwrap();
    let h = next(&mut m, &mut d);
    assert_eq!((h.op, d.as_slice()), (OP_RW, &b"xyz"[..]));
    // Host closes: SHUTDOWN(SEND) to the guest, then the guest's RST removes the stream.
    drop(peer);
    let h = next(&mut m, &mut d);
    assert_eq!((h.op, h.flags), (OP_SHUTDOWN, SHUTDOWN_SEND));
    m.send_pkt(&ghdr(OP_RST, 4000, 80, 0), &[]);
    assert_eq!(m.connection_count(), 0);
    drop(uds);
}

#[test]
fn bad_packets_get_rst_or_are_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let (mut m, _uds) = muxer(dir.path());
    let mut d = Vec::new();
    // Nobody listens on port 81.
    m.send_pkt(&ghdr(OP_REQUEST, 4000, 81, 0), &[]);
    let h = m.recv_pkt(4096, &mut d).unwrap();
    assert_eq!((h.op, h.src_port, h.dst_port), (OP_RST, 81, 4000));
    // Data for an unknown stream, an unknown op, a wrong destination CID, a bad type.
    let mut wrong_dst = ghdr(OP_REQUEST, 1, 2, 0);
    wrong_dst.dst_cid = 7;
    let mut bad_type = ghdr(OP_REQUEST, 1, 2, 0);
    bad_type.type_ = 2;
    for h in [ghdr(OP_RW, 1, 2, 0), ghdr(42, 1, 2, 0), wrong_dst, bad_type] {
        m.send_pkt(&h, &[]);
        assert_eq!(m.recv_pkt(4096, &mut d).unwrap().op, OP_RST, "{h:?}");
    }
    // Wrong source CID and RSTs for unknown streams: silently dropped.
    let mut spoofed = ghdr(OP_REQUEST, 1, 2, 0);
    spoofed.src_cid = 9;
    m.send_pkt(&spoofed, &[]);
    m.send_pkt(&ghdr(OP_RST, 1, 2, 0), &[]);
    assert!(m.recv_pkt(4096, &mut d).is_none());
    // The RST queue is bounded however much garbage arrives.
    for i in 0..5000 {
        m.send_pkt(&ghdr(OP_RW, i, 2, 0), &[]);
    }
    let mut n = 0;
    while m.recv_pkt(4096, &mut d).is_some() {
        n += 1;
    }
    assert_eq!(n, super::muxer::MAX_QUEUED_RST);
}

#[test]
fn unanswered_request_and_silent_host_time_out() {
    let dir = tempfile::tempdir().unwrap();
    let (mut m, uds) = muxer(dir.path());
    let mut host = UnixStream::connect(&uds).unwrap();
    let mut silent = UnixStream::connect(&uds).unwrap();
    host.write_all(b"CONNECT 52\n").unwrap();
    let mut d = Vec::new();
    assert_eq!(next(&mut m, &mut d).op, OP_REQUEST);
    assert_eq!(m.connection_count(), 2);
    let deadline = Instant::now() + Duration::from_secs(6);
    while m.connection_count() > 0 {
        assert!(Instant::now() < deadline, "timeouts never fired");
        pump(&mut m, 100);
    }
    assert_eq!(m.recv_pkt(4096, &mut d).unwrap().op, OP_RST);
    let mut b = [0u8; 8];
    assert_eq!(host.read(&mut b).unwrap(), 0, "host sees EOF, no OK");
    assert_eq!(silent.read(&mut b).unwrap(), 0);
}

#[test]
fn bad_connect_line_closes_host() {
    let dir = tempfile::tempdir().unwrap();
    let (mut m, uds) = muxer(dir.path());
    let mut host = UnixStream::connect(&uds).unwrap();
    host.write_all(b"HELLO\n").unwrap();
    host.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    pump(&mut m, 100);
    pump(&mut m, 100);
    let mut b = [0u8; 8];
    assert_eq!(host.read(&mut b).unwrap(), 0);
    assert_eq!(m.connection_count(), 0);
}
