//! The NBD export against a hand-written client: both ways to pick the export, reads checked
//! against the disk's bytes, and a hostile client's requests refused or its connection ended
//! without a panic.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::thread::JoinHandle;

use super::*;
use crate::devices::virtio::block::RawFile;

const SIZE: usize = 64 << 10;

fn pattern() -> Vec<u8> {
    (0..SIZE).map(|i| (i * 7 % 251) as u8).collect()
}

/// A server thread over a read-only raw file holding [`pattern`], and the client's end.
fn server() -> (UnixStream, JoinHandle<Result<(), Error>>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("disk");
    std::fs::write(&path, pattern()).unwrap();
    let disk = RawFile::open(&path, true).unwrap();
    let (client, srv) = UnixStream::pair().unwrap();
    let t = std::thread::spawn(move || serve(srv, &disk));
    (client, t, dir)
}

fn u16_of(c: &mut UnixStream) -> u16 {
    let mut b = [0; 2];
    c.read_exact(&mut b).unwrap();
    u16::from_be_bytes(b)
}

fn u32_of(c: &mut UnixStream) -> u32 {
    let mut b = [0; 4];
    c.read_exact(&mut b).unwrap();
    u32::from_be_bytes(b)
}

fn u64_of(c: &mut UnixStream) -> u64 {
    let mut b = [0; 8];
    c.read_exact(&mut b).unwrap();
    u64::from_be_bytes(b)
}

/// Reads the greeting and answers with `flags`.
fn greet(c: &mut UnixStream, flags: u32) {
    assert_eq!(u64_of(c), NBDMAGIC);
    assert_eq!(u64_of(c), IHAVEOPT);
    assert_eq!(u16_of(c), FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES);
    c.write_all(&flags.to_be_bytes()).unwrap();
}

fn option(c: &mut UnixStream, opt: u32, data: &[u8]) {
    let mut m = IHAVEOPT.to_be_bytes().to_vec();
    m.extend_from_slice(&opt.to_be_bytes());
    m.extend_from_slice(&(data.len() as u32).to_be_bytes());
    m.extend_from_slice(data);
    c.write_all(&m).unwrap();
}

/// One option reply: its type and data.
fn option_reply_of(c: &mut UnixStream, opt: u32) -> (u32, Vec<u8>) {
    assert_eq!(u64_of(c), OPT_REPLY_MAGIC);
    assert_eq!(u32_of(c), opt);
    let kind = u32_of(c);
    let len = u32_of(c);
    let mut data = vec![0; len as usize];
    c.read_exact(&mut data).unwrap();
    (kind, data)
}

fn go_data(name: &str, infos: &[u16]) -> Vec<u8> {
    let mut d = (name.len() as u32).to_be_bytes().to_vec();
    d.extend_from_slice(name.as_bytes());
    d.extend_from_slice(&(infos.len() as u16).to_be_bytes());
    for i in infos {
        d.extend_from_slice(&i.to_be_bytes());
    }
    d
}

/// Negotiates with `GO` as QEMU does; returns the advertised size.
fn go(c: &mut UnixStream) -> u64 {
    greet(c, u32::from(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES));
    option(c, OPT_GO, &go_data("", &[INFO_BLOCK_SIZE]));
    let (kind, export) = option_reply_of(c, OPT_GO);
    assert_eq!(kind, REP_INFO);
    assert_eq!(export.len(), 12);
    assert_eq!(u16::from_be_bytes([export[0], export[1]]), INFO_EXPORT);
    let flags = u16::from_be_bytes([export[10], export[11]]);
    assert_eq!(flags, TFLAG_HAS_FLAGS | TFLAG_READ_ONLY);
    let (kind, sizes) = option_reply_of(c, OPT_GO);
    assert_eq!((kind, sizes.len()), (REP_INFO, 14));
    assert_eq!(option_reply_of(c, OPT_GO), (REP_ACK, vec![]));
    u64::from_be_bytes(export[2..10].try_into().unwrap())
}

fn request(c: &mut UnixStream, cmd: u16, handle: u64, offset: u64, len: u32) {
    let mut m = REQUEST_MAGIC.to_be_bytes().to_vec();
    m.extend_from_slice(&0u16.to_be_bytes());
    m.extend_from_slice(&cmd.to_be_bytes());
    m.extend_from_slice(&handle.to_be_bytes());
    m.extend_from_slice(&offset.to_be_bytes());
    m.extend_from_slice(&len.to_be_bytes());
    c.write_all(&m).unwrap();
}

/// A simple reply's error, checking its handle.
fn reply_of(c: &mut UnixStream, handle: u64) -> u32 {
    assert_eq!(u32_of(c), SIMPLE_REPLY_MAGIC);
    let error = u32_of(c);
    assert_eq!(u64_of(c), handle);
    error
}

#[test]
fn go_then_reads_return_the_disks_bytes() {
    let (mut c, t, _dir) = server();
    assert_eq!(go(&mut c), SIZE as u64);
    let want = pattern();
    // Several requests in flight before any answer is read, as QEMU sends them.
    for (h, (off, len)) in [(0u64, 4096u32), (8192, 512), (SIZE as u64 - 4096, 4096)]
        .into_iter()
        .enumerate()
    {
        request(&mut c, CMD_READ, h as u64, off, len);
    }
    for (h, (off, len)) in [(0usize, 4096usize), (8192, 512), (SIZE - 4096, 4096)]
        .into_iter()
        .enumerate()
    {
        assert_eq!(reply_of(&mut c, h as u64), 0);
        let mut got = vec![0; len];
        c.read_exact(&mut got).unwrap();
        assert_eq!(got, want[off..off + len], "read {h}");
    }
    request(&mut c, CMD_FLUSH, 9, 0, 0);
    assert_eq!(reply_of(&mut c, 9), 0);
    request(&mut c, CMD_DISC, 10, 0, 0);
    t.join().unwrap().unwrap();
}

#[test]
fn export_name_is_the_old_way_in() {
    let (mut c, t, _dir) = server();
    greet(&mut c, u32::from(FLAG_FIXED_NEWSTYLE));
    option(&mut c, 42, b"");
    assert_eq!(option_reply_of(&mut c, 42).0, REP_ERR_UNSUP);
    option(&mut c, OPT_EXPORT_NAME, b"anything");
    assert_eq!(u64_of(&mut c), SIZE as u64);
    assert_eq!(u16_of(&mut c), TFLAG_HAS_FLAGS | TFLAG_READ_ONLY);
    let mut zeroes = [1u8; 124];
    c.read_exact(&mut zeroes).unwrap();
    assert_eq!(zeroes, [0; 124]);
    request(&mut c, CMD_READ, 1, 512, 16);
    assert_eq!(reply_of(&mut c, 1), 0);
    let mut got = [0; 16];
    c.read_exact(&mut got).unwrap();
    assert_eq!(got[..], pattern()[512..528]);
    // A client that just hangs up ends the connection cleanly.
    drop(c);
    t.join().unwrap().unwrap();
}

#[test]
fn writes_out_of_range_and_unknown_commands_are_refused_in_step() {
    let (mut c, t, _dir) = server();
    go(&mut c);
    // A write's payload is skipped, so the next request is still read in step.
    request(&mut c, CMD_WRITE, 1, 0, 4096);
    c.write_all(&[0xaa; 4096]).unwrap();
    assert_eq!(reply_of(&mut c, 1), EPERM);
    request(&mut c, CMD_WRITE_ZEROES, 2, 0, 4096);
    assert_eq!(reply_of(&mut c, 2), EPERM);
    request(&mut c, CMD_READ, 3, SIZE as u64 - 512, 1024);
    assert_eq!(reply_of(&mut c, 3), EINVAL);
    request(&mut c, CMD_READ, 4, u64::MAX - 10, 512);
    assert_eq!(reply_of(&mut c, 4), EINVAL);
    request(&mut c, CMD_READ, 5, 0, MAX_REQUEST + 1);
    assert_eq!(reply_of(&mut c, 5), EINVAL);
    request(&mut c, 77, 6, 0, 0);
    assert_eq!(reply_of(&mut c, 6), EINVAL);
    request(&mut c, CMD_READ, 7, 0, 8);
    assert_eq!(reply_of(&mut c, 7), 0);
    let mut got = [0; 8];
    c.read_exact(&mut got).unwrap();
    assert_eq!(got[..], pattern()[..8]);
    // The disk's file is unchanged by the refused write.
    request(&mut c, CMD_DISC, 8, 0, 0);
    t.join().unwrap().unwrap();
}

#[test]
fn broken_clients_end_their_connection_with_an_error() {
    // Unknown client flags.
    let (mut c, t, _dir) = server();
    greet(&mut c, 0x80);
    assert!(matches!(t.join().unwrap(), Err(Error::Protocol(_))));
    // An option longer than any name.
    let (mut c, t, _dir) = server();
    greet(&mut c, u32::from(FLAG_FIXED_NEWSTYLE));
    let mut m = IHAVEOPT.to_be_bytes().to_vec();
    m.extend_from_slice(&OPT_GO.to_be_bytes());
    m.extend_from_slice(&u32::MAX.to_be_bytes());
    c.write_all(&m).unwrap();
    assert!(matches!(t.join().unwrap(), Err(Error::Protocol(_))));
    // A malformed GO is answered, not served.
    let (mut c, t, _dir) = server();
    greet(&mut c, u32::from(FLAG_FIXED_NEWSTYLE));
    option(&mut c, OPT_GO, &[0, 0, 0, 200, 1]);
    assert_eq!(option_reply_of(&mut c, OPT_GO).0, REP_ERR_INVALID);
    option(&mut c, OPT_ABORT, b"");
    assert_eq!(option_reply_of(&mut c, OPT_ABORT).0, REP_ACK);
    t.join().unwrap().unwrap();
    // A request with the wrong magic, and a write too long to skip.
    for bad in [0u8, 1] {
        let (mut c, t, _dir) = server();
        go(&mut c);
        if bad == 0 {
            c.write_all(&[0x55; 28]).unwrap();
        } else {
            request(&mut c, CMD_WRITE, 1, 0, MAX_REQUEST + 1);
        }
        assert!(matches!(t.join().unwrap(), Err(Error::Protocol(_))));
    }
    // Endless options.
    let (mut c, t, _dir) = server();
    greet(&mut c, u32::from(FLAG_FIXED_NEWSTYLE));
    for _ in 0..MAX_OPTIONS {
        option(&mut c, 42, b"");
        assert_eq!(option_reply_of(&mut c, 42).0, REP_ERR_UNSUP);
    }
    assert!(matches!(t.join().unwrap(), Err(Error::Protocol(_))));
}
