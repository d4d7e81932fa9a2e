//! A read-only NBD export of one [`DiskBackend`] over one connection: how QEMU reads a disk
//! only husk can serve, the composite layer disk
//! ([`CompositeDisk`](super::virtio::block::CompositeDisk)), through its own `nbd` block
//! driver and virtio-blk device. Unlike a vhost-user backend the server never sees guest
//! memory, so it works whatever QEMU's RAM is backed by: a VM restored from a template maps
//! the template's RAM privately, which no other process can share.
//!
//! The protocol is the NBD "fixed newstyle" handshake and simple replies
//! (<https://github.com/NetworkBlockDevice/nbd/blob/master/doc/proto.md>), the subset a
//! read-only export needs: options `EXPORT_NAME`, `GO`, `INFO` and `ABORT` (any export name
//! is this one export); commands `READ`, `FLUSH` and `DISC`; every write-like command is
//! answered `EPERM`, anything else `EINVAL`. The peer is QEMU, which a guest may have taken
//! over: every length is bounded before anything is allocated or read, every range checked
//! against the disk, and a peer that breaks the protocol ends its connection, never the
//! server's process with a panic.

use std::io::{self, BufReader, BufWriter, Read, Write};
use std::os::unix::net::UnixStream;

use vm_memory::VolatileSlice;

use super::virtio::block::DiskBackend;

/// Why a connection ended badly.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("NBD connection: {what}")]
    Io {
        what: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("NBD client broke the protocol: {0}")]
    Protocol(String),
}

const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
const OPT_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
const REQUEST_MAGIC: u32 = 0x2560_9513;
const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;

const FLAG_FIXED_NEWSTYLE: u16 = 1 << 0;
const FLAG_NO_ZEROES: u16 = 1 << 1;

const OPT_EXPORT_NAME: u32 = 1;
const OPT_ABORT: u32 = 2;
const OPT_INFO: u32 = 6;
const OPT_GO: u32 = 7;

const REP_ACK: u32 = 1;
const REP_INFO: u32 = 3;
const REP_ERR_UNSUP: u32 = (1 << 31) | 1;
const REP_ERR_INVALID: u32 = (1 << 31) | 3;

const INFO_EXPORT: u16 = 0;
const INFO_BLOCK_SIZE: u16 = 3;

const TFLAG_HAS_FLAGS: u16 = 1 << 0;
const TFLAG_READ_ONLY: u16 = 1 << 1;
/// Every export is read-only, whatever the disk would allow.
const TRANSMISSION_FLAGS: u16 = TFLAG_HAS_FLAGS | TFLAG_READ_ONLY;

const CMD_READ: u16 = 0;
const CMD_WRITE: u16 = 1;
const CMD_DISC: u16 = 2;
const CMD_FLUSH: u16 = 3;
const CMD_TRIM: u16 = 4;
const CMD_WRITE_ZEROES: u16 = 6;

const EPERM: u32 = 1;
const EIO: u32 = 5;
const EINVAL: u32 = 22;

/// The longest option a client may send (NBD bounds names at 4096 bytes).
const MAX_OPTION_LEN: u32 = 8192;
/// The most options before the client must pick an export.
const MAX_OPTIONS: usize = 64;
/// The longest read or write payload served (QEMU asks for at most 32 MiB).
pub const MAX_REQUEST: u32 = 32 << 20;
/// The block size advertised: QEMU's nbd driver asks in whole 512-byte sectors anyway.
const MIN_BLOCK: u32 = 512;
const PREFERRED_BLOCK: u32 = 4096;

fn io_err(what: &'static str) -> impl FnOnce(io::Error) -> Error {
    move |source| Error::Io { what, source }
}

/// What the handshake ended in.
enum Handshake {
    Transmission,
    Aborted,
}

/// Serves `disk`, read-only, to the client on `conn` until it disconnects. A client that
/// hangs up (at any point) is a clean end: `Ok`.
pub fn serve(conn: UnixStream, disk: &dyn DiskBackend) -> Result<(), Error> {
    let mut r = BufReader::with_capacity(64 << 10, conn.try_clone().map_err(io_err("dup"))?);
    let mut w = BufWriter::with_capacity(64 << 10, conn);
    let result = match handshake(&mut r, &mut w, disk) {
        Ok(Handshake::Transmission) => transmission(&mut r, &mut w, disk),
        Ok(Handshake::Aborted) => Ok(()),
        Err(e) => Err(e),
    };
    match result {
        Err(Error::Io { source, .. }) if hung_up(&source) => Ok(()),
        other => other,
    }
}

fn hung_up(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::UnexpectedEof | io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
    )
}

fn read_u32(r: &mut impl Read) -> io::Result<u32> {
    let mut b = [0; 4];
    r.read_exact(&mut b)?;
    Ok(u32::from_be_bytes(b))
}

fn read_u64(r: &mut impl Read) -> io::Result<u64> {
    let mut b = [0; 8];
    r.read_exact(&mut b)?;
    Ok(u64::from_be_bytes(b))
}

fn option_reply(w: &mut impl Write, option: u32, kind: u32, data: &[u8]) -> io::Result<()> {
    let mut m = Vec::with_capacity(20 + data.len());
    m.extend_from_slice(&OPT_REPLY_MAGIC.to_be_bytes());
    m.extend_from_slice(&option.to_be_bytes());
    m.extend_from_slice(&kind.to_be_bytes());
    m.extend_from_slice(&(data.len() as u32).to_be_bytes());
    m.extend_from_slice(data);
    w.write_all(&m)
}

fn handshake(
    r: &mut impl Read,
    w: &mut impl Write,
    disk: &dyn DiskBackend,
) -> Result<Handshake, Error> {
    let mut hello = Vec::with_capacity(18);
    hello.extend_from_slice(&NBDMAGIC.to_be_bytes());
    hello.extend_from_slice(&IHAVEOPT.to_be_bytes());
    hello.extend_from_slice(&(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).to_be_bytes());
    w.write_all(&hello).map_err(io_err("greeting"))?;
    w.flush().map_err(io_err("greeting"))?;
    let client = read_u32(r).map_err(io_err("client flags"))?;
    let known = u32::from(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES);
    if client & u32::from(FLAG_FIXED_NEWSTYLE) == 0 || client & !known != 0 {
        return Err(Error::Protocol(format!("client flags {client:#x}")));
    }
    let no_zeroes = client & u32::from(FLAG_NO_ZEROES) != 0;
    for _ in 0..MAX_OPTIONS {
        let magic = read_u64(r).map_err(io_err("option"))?;
        if magic != IHAVEOPT {
            return Err(Error::Protocol(format!("option magic {magic:#x}")));
        }
        let option = read_u32(r).map_err(io_err("option"))?;
        let len = read_u32(r).map_err(io_err("option"))?;
        if len > MAX_OPTION_LEN {
            return Err(Error::Protocol(format!("option of {len} bytes")));
        }
        let mut data = vec![0; len as usize];
        r.read_exact(&mut data).map_err(io_err("option"))?;
        match option {
            OPT_EXPORT_NAME => {
                // No error reply exists for this option: the only export is served.
                let mut m = Vec::with_capacity(10 + 124);
                m.extend_from_slice(&disk.capacity().to_be_bytes());
                m.extend_from_slice(&TRANSMISSION_FLAGS.to_be_bytes());
                if !no_zeroes {
                    m.extend_from_slice(&[0; 124]);
                }
                w.write_all(&m).map_err(io_err("export"))?;
                w.flush().map_err(io_err("export"))?;
                return Ok(Handshake::Transmission);
            }
            OPT_INFO | OPT_GO => {
                if !valid_info_request(&data) {
                    option_reply(w, option, REP_ERR_INVALID, b"").map_err(io_err("option"))?;
                } else {
                    let mut export = Vec::with_capacity(12);
                    export.extend_from_slice(&INFO_EXPORT.to_be_bytes());
                    export.extend_from_slice(&disk.capacity().to_be_bytes());
                    export.extend_from_slice(&TRANSMISSION_FLAGS.to_be_bytes());
                    option_reply(w, option, REP_INFO, &export).map_err(io_err("option"))?;
                    let mut sizes = Vec::with_capacity(14);
                    sizes.extend_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
                    for v in [MIN_BLOCK, PREFERRED_BLOCK, MAX_REQUEST] {
                        sizes.extend_from_slice(&v.to_be_bytes());
                    }
                    option_reply(w, option, REP_INFO, &sizes).map_err(io_err("option"))?;
                    option_reply(w, option, REP_ACK, b"").map_err(io_err("option"))?;
                    if option == OPT_GO {
                        w.flush().map_err(io_err("option"))?;
                        return Ok(Handshake::Transmission);
                    }
                }
            }
            OPT_ABORT => {
                // The client may already have gone: its ACK is a courtesy.
                let _ = option_reply(w, option, REP_ACK, b"").and_then(|()| w.flush());
                return Ok(Handshake::Aborted);
            }
            _ => option_reply(w, option, REP_ERR_UNSUP, b"").map_err(io_err("option"))?,
        }
        w.flush().map_err(io_err("option"))?;
    }
    Err(Error::Protocol(format!(
        "no export chosen after {MAX_OPTIONS} options"
    )))
}

/// `INFO`/`GO` data: a 32-bit name length, the name, a 16-bit count of info requests and
/// that many 16-bit request types — exactly, nothing left over.
fn valid_info_request(data: &[u8]) -> bool {
    let Some(name_len) = data
        .get(..4)
        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    else {
        return false;
    };
    let Some(rest) = (name_len as usize)
        .checked_add(4)
        .and_then(|at| data.get(at..))
    else {
        return false;
    };
    let Some(n) = rest.get(..2).map(|b| u16::from_be_bytes([b[0], b[1]])) else {
        return false;
    };
    rest.len() == 2 + 2 * usize::from(n)
}

/// One simple reply, and for a successful read its data, in one write.
fn reply(w: &mut impl Write, error: u32, handle: u64, data: &[u8]) -> io::Result<()> {
    let mut head = [0u8; 16];
    head[..4].copy_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
    head[4..8].copy_from_slice(&error.to_be_bytes());
    head[8..].copy_from_slice(&handle.to_be_bytes());
    w.write_all(&head)?;
    w.write_all(data)
}

fn transmission(
    r: &mut BufReader<UnixStream>,
    w: &mut BufWriter<UnixStream>,
    disk: &dyn DiskBackend,
) -> Result<(), Error> {
    let mut buf: Vec<u8> = Vec::new();
    loop {
        let mut req = [0u8; 28];
        r.read_exact(&mut req).map_err(io_err("request"))?;
        let field = |at: usize, n: usize| {
            req[at..at + n]
                .iter()
                .fold(0u64, |acc, &b| (acc << 8) | u64::from(b))
        };
        let magic = field(0, 4) as u32;
        if magic != REQUEST_MAGIC {
            return Err(Error::Protocol(format!("request magic {magic:#x}")));
        }
        let command = field(6, 2) as u16;
        let handle = field(8, 8);
        let offset = field(16, 8);
        let len = field(24, 4) as u32;
        let in_range = offset
            .checked_add(u64::from(len))
            .is_some_and(|end| end <= disk.capacity());
        match command {
            CMD_READ => {
                if len > MAX_REQUEST || !in_range {
                    reply(w, EINVAL, handle, b"").map_err(io_err("reply"))?;
                } else {
                    buf.resize(len as usize, 0);
                    match disk.read_at(offset, &VolatileSlice::from(&mut buf[..])) {
                        Ok(()) => reply(w, 0, handle, &buf).map_err(io_err("reply"))?,
                        Err(e) => {
                            tracing::warn!(offset, len, error = %e, "NBD read failed");
                            reply(w, EIO, handle, b"").map_err(io_err("reply"))?
                        }
                    }
                }
            }
            CMD_WRITE => {
                // The payload follows the request: skip it to stay in step, then refuse.
                if len > MAX_REQUEST {
                    return Err(Error::Protocol(format!("write of {len} bytes")));
                }
                let skipped = io::copy(&mut r.by_ref().take(u64::from(len)), &mut io::sink())
                    .map_err(io_err("write payload"))?;
                if skipped != u64::from(len) {
                    return Err(Error::Io {
                        what: "write payload",
                        source: io::ErrorKind::UnexpectedEof.into(),
                    });
                }
                let error = if in_range { EPERM } else { EINVAL };
                reply(w, error, handle, b"").map_err(io_err("reply"))?;
            }
            CMD_DISC => return Ok(()),
            CMD_FLUSH => {
                let error = match disk.flush() {
                    Ok(()) => 0,
                    Err(_) => EIO,
                };
                reply(w, error, handle, b"").map_err(io_err("reply"))?;
            }
            CMD_TRIM | CMD_WRITE_ZEROES => reply(w, EPERM, handle, b"").map_err(io_err("reply"))?,
            _ => reply(w, EINVAL, handle, b"").map_err(io_err("reply"))?,
        }
        // Answer now unless the next request is already here (QEMU keeps several in flight).
        if r.buffer().is_empty() {
            w.flush().map_err(io_err("reply"))?;
        }
        if buf.capacity() > (1 << 20) {
            buf = Vec::new();
        }
    }
}

#[cfg(test)]
#[path = "nbd_export_tests.rs"]
mod tests;
