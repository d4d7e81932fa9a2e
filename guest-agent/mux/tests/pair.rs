//! Both sides of the mux in one process, over a socket pair standing in for the serial link.

use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::thread;
use std::time::Duration;

use husk_mux::{guest, host};

const PORT: u32 = 1024;

struct Rig {
    _dir: tempfile::TempDir,
    uds: PathBuf,
    _host: thread::JoinHandle<Result<(), husk_mux::Error>>,
    /// The guest's streams, as blocking unix sockets.
    acceptor: guest::Acceptor,
}

fn rig() -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let uds = dir.path().join("vsock");
    let listener: OwnedFd = UnixListener::bind(&uds).unwrap().into();
    let (h, g) = UnixStream::pair().unwrap();
    let host = thread::spawn(move || host::run(h.into(), listener));
    let acceptor = guest::start(g.into(), PORT, |e| panic!("guest mux: {e}")).unwrap();
    Rig {
        _dir: dir,
        uds,
        _host: host,
        acceptor,
    }
}

fn connect(uds: &Path, port: u32) -> std::io::Result<UnixStream> {
    let mut s = UnixStream::connect(uds)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(format!("CONNECT {port}\n").as_bytes())?;
    let mut line = Vec::new();
    let mut b = [0u8];
    loop {
        if s.read(&mut b)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        if b[0] == b'\n' {
            break;
        }
        line.push(b[0]);
    }
    assert_eq!(line, format!("OK {port}").as_bytes());
    Ok(s)
}

/// Plays the guest's part of the handshake on a raw link end: reads the host's Hello and
/// echoes it.
fn echo_hello(g: &mut UnixStream) {
    let mut hello = [0u8; husk_mux::frame::HELLO_LEN];
    g.read_exact(&mut hello).unwrap();
    assert_eq!(hello[4], husk_mux::frame::Kind::Hello as u8);
    g.write_all(&hello).unwrap();
}

fn guest_end(r: &Rig) -> UnixStream {
    let fd = r.acceptor.accept().unwrap();
    let s = UnixStream::from(fd);
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

#[test]
fn bytes_cross_both_ways_with_half_close() {
    let r = rig();
    let mut c = connect(&r.uds, PORT).unwrap();
    let mut g = guest_end(&r);
    c.write_all(b"ping").unwrap();
    let mut buf = [0u8; 4];
    g.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"ping");
    g.write_all(b"pong").unwrap();
    c.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"pong");
    // The client's EOF reaches the guest; the guest can still answer after it.
    c.shutdown(std::net::Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    g.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
    g.write_all(b"bye").unwrap();
    drop(g);
    let mut rest = Vec::new();
    c.read_to_end(&mut rest).unwrap();
    assert_eq!(rest, b"bye");
}

#[test]
fn a_port_nobody_listens_on_is_a_closed_connection() {
    let r = rig();
    assert!(connect(&r.uds, PORT + 1).is_err());
    // The link is fine afterwards.
    let mut c = connect(&r.uds, PORT).unwrap();
    let mut g = guest_end(&r);
    g.write_all(b"x").unwrap();
    let mut b = [0u8];
    c.read_exact(&mut b).unwrap();
}

/// Megabytes each way on several streams at once, one of which nobody reads for a while:
/// the others finish regardless, and the stalled one loses nothing.
#[test]
fn a_stalled_stream_holds_up_no_other() {
    const LEN: usize = 8 << 20;
    let r = rig();
    let mut stalled_c = connect(&r.uds, PORT).unwrap();
    let stalled_g = guest_end(&r);
    // The guest floods the stalled stream; its writer blocks once the window and the socket
    // buffers are full.
    let flood = thread::spawn(move || {
        let mut g = stalled_g;
        let data: Vec<u8> = (0..LEN).map(|i| (i % 251) as u8).collect();
        g.write_all(&data).unwrap();
        g
    });
    thread::sleep(Duration::from_millis(200));
    let mut workers = Vec::new();
    for n in 0..4u8 {
        let c = connect(&r.uds, PORT).unwrap();
        let g = guest_end(&r);
        workers.push(thread::spawn(move || {
            let data: Vec<u8> = (0..LEN).map(|i| (i as u8).wrapping_mul(n + 3)).collect();
            let (mut c, mut g) = (c, g);
            let d2 = data.clone();
            let up = thread::spawn(move || {
                c.write_all(&d2).unwrap();
                c.shutdown(std::net::Shutdown::Write).unwrap();
                let mut back = Vec::new();
                c.read_to_end(&mut back).unwrap();
                back
            });
            let mut got = Vec::new();
            g.read_to_end(&mut got).unwrap();
            assert!(got == data, "stream {n}: guest got {} bytes", got.len());
            g.write_all(&got).unwrap();
            drop(g);
            assert!(up.join().unwrap() == data, "stream {n}: echo differs");
        }));
    }
    for w in workers {
        w.join().unwrap();
    }
    assert!(
        !flood.is_finished(),
        "the stalled stream's writer should still be blocked"
    );
    stalled_c
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut got = vec![0u8; LEN];
    stalled_c.read_exact(&mut got).unwrap();
    drop(flood.join().unwrap());
    assert!(got.iter().enumerate().all(|(i, &b)| b == (i % 251) as u8));
    let mut rest = Vec::new();
    stalled_c.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
}

#[test]
fn the_host_side_ends_when_the_link_does_and_rejects_a_lying_guest() {
    // A guest that sends a frame no guest may send (a host's hello).
    let dir = tempfile::tempdir().unwrap();
    let uds = dir.path().join("vsock");
    let listener: OwnedFd = UnixListener::bind(&uds).unwrap().into();
    let (h, mut g) = UnixStream::pair().unwrap();
    let host = thread::spawn(move || host::run(h.into(), listener));
    echo_hello(&mut g);
    let mut hello = Vec::new();
    husk_mux::frame::encode_word(&mut hello, 0, husk_mux::frame::Kind::Hello, 1);
    g.write_all(&hello).unwrap();
    let e = host.join().unwrap().unwrap_err().to_string();
    assert!(e.contains("hello"), "{e}");

    // A length no frame has.
    let listener: OwnedFd = UnixListener::bind(dir.path().join("v2")).unwrap().into();
    let (h, mut g) = UnixStream::pair().unwrap();
    let host = thread::spawn(move || host::run(h.into(), listener));
    // Garbage before the echo is skipped (a guest restored mid-frame); after it, not.
    g.write_all(&[0xee; 100]).unwrap();
    echo_hello(&mut g);
    g.write_all(&[1, 0, 0, 0, 5, 0xff, 0xff, 0xff, 0x7f])
        .unwrap();
    let e = host.join().unwrap().unwrap_err().to_string();
    assert!(e.contains("payload length"), "{e}");
}

#[test]
fn a_guest_overrunning_its_credit_loses_only_that_stream() {
    let dir = tempfile::tempdir().unwrap();
    let uds = dir.path().join("vsock");
    let listener: OwnedFd = UnixListener::bind(&uds).unwrap().into();
    let (h, g) = UnixStream::pair().unwrap();
    let host = thread::spawn(move || host::run(h.into(), listener));
    let mut g = g;
    let mut rd = g.try_clone().unwrap();
    // Answer the host's hello, then read the first open.
    echo_hello(&mut g);
    let mut c1 = UnixStream::connect(&uds).unwrap();
    c1.write_all(b"CONNECT 5\n").unwrap();
    let mut hdr = [0u8; 13];
    rd.read_exact(&mut hdr).unwrap();
    let id = u32::from_le_bytes([hdr[0], hdr[1], hdr[2], hdr[3]]);
    assert_eq!(hdr[4], husk_mux::frame::Kind::Open as u8);
    let mut out = Vec::new();
    husk_mux::frame::encode(&mut out, id, husk_mux::frame::Kind::Accept, &[]);
    let chunk = vec![7u8; husk_mux::frame::MAX_PAYLOAD];
    const CHUNKS: usize = 64;
    for _ in 0..CHUNKS {
        husk_mux::frame::encode(&mut out, id, husk_mux::frame::Kind::Data, &chunk);
    }
    g.write_all(&out).unwrap();
    // The client, reading nothing meanwhile, then sees its OK, some data and the end: the
    // host took no more than its socket buffer and one window.
    thread::sleep(Duration::from_millis(300));
    c1.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut all = Vec::new();
    let _ = c1.read_to_end(&mut all);
    assert!(all.len() < CHUNKS * chunk.len() / 2, "{}", all.len());
    // The host answered with a reset and is still serving.
    let mut f = [0u8; 9];
    loop {
        rd.read_exact(&mut f).unwrap();
        let len = u32::from_le_bytes([f[5], f[6], f[7], f[8]]) as usize;
        let mut p = vec![0u8; len];
        rd.read_exact(&mut p).unwrap();
        if f[4] == husk_mux::frame::Kind::Reset as u8 {
            break;
        }
    }
    assert!(!host.is_finished());
    drop(g);
    drop(rd);
    // The link's end (QEMU exiting) ends the host side cleanly.
    assert!(
        host.join().unwrap().is_ok(),
        "the link's end ends the host side cleanly"
    );
}

/// A flush returns once the agent's bytes are on the link itself (before the agent resets
/// the VM, its last answer must have left).
#[test]
fn a_flush_puts_written_bytes_on_the_link() {
    use husk_mux::frame::{self, Kind};
    let (mut host_end, g) = UnixStream::pair().unwrap();
    let acceptor = guest::start(g.into(), PORT, |e| panic!("guest mux: {e}")).unwrap();
    // Bytes from before a snapshot (no frame can start with them) are skipped up to the
    // host's Hello, which the guest echoes.
    let mut out = vec![0xffu8; 20];
    frame::encode_word(&mut out, 0, Kind::Hello, 0xabcd);
    frame::encode_word(&mut out, 9, Kind::Open, PORT);
    host_end.write_all(&out).unwrap();
    let mut echo = [0u8; frame::HELLO_LEN];
    host_end.read_exact(&mut echo).unwrap();
    assert_eq!(
        (echo[4], &echo[frame::HEADER..]),
        (Kind::Hello as u8, &0xabcdu32.to_le_bytes()[..])
    );
    let mut accept = [0u8; frame::HEADER];
    host_end.read_exact(&mut accept).unwrap();
    assert_eq!(accept[4], Kind::Accept as u8);
    let mut s = UnixStream::from(acceptor.accept().unwrap());
    let flusher = acceptor.flusher();
    for round in 0..20u8 {
        s.write_all(&[round; 100]).unwrap();
        assert!(flusher.flush(Duration::from_secs(5)));
        // Already there: a non-blocking read finds the whole frame.
        host_end.set_nonblocking(true).unwrap();
        let mut f = [0u8; frame::HEADER + 100];
        host_end.read_exact(&mut f).unwrap();
        host_end.set_nonblocking(false).unwrap();
        assert_eq!(
            (f[4], &f[frame::HEADER..]),
            (Kind::Data as u8, &[round; 100][..])
        );
    }
}

/// A guest that sends frames needing an answer (opens the host refuses) and never reads the
/// answers is stopped by backpressure: the host stops reading the link instead of queueing
/// answers without bound.
#[test]
fn a_guest_that_never_reads_its_answers_gets_backpressure() {
    let dir = tempfile::tempdir().unwrap();
    let listener: OwnedFd = UnixListener::bind(dir.path().join("vsock")).unwrap().into();
    let (h, g) = UnixStream::pair().unwrap();
    let _host = thread::spawn(move || host::run(h.into(), listener));
    let flood = thread::spawn(move || {
        let mut g = g;
        echo_hello(&mut g);
        let mut opens = Vec::new();
        for id in 0..1000u32 {
            husk_mux::frame::encode_word(&mut opens, id, husk_mux::frame::Kind::Open, 1);
        }
        // 500,000 opens (6.5 MB): a refusal each would be 4.5 MB of answers.
        for _ in 0..500 {
            if g.write_all(&opens).is_err() {
                break;
            }
        }
        g
    });
    thread::sleep(Duration::from_secs(2));
    assert!(
        !flood.is_finished(),
        "the host took every open without its answers being read"
    );
}
