//! The host side of the hybrid vsock protocol (Firecracker's `docs/vsock.md`).
//!
//! A host program connects to `<uds>`, writes `CONNECT <port>\n`, and reads
//! `OK <local_port>\n` once the guest accepts; from then on the socket is a byte stream
//! to the guest listener on `<port>`. A guest connection to host port P goes to the unix
//! socket `<uds>_P`.

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

/// Longest CONNECT line accepted ("CONNECT 4294967295\n" is 19 bytes; leave slack for
/// spaces but never let a host program make us buffer much).
pub const MAX_CONNECT_LINE: usize = 32;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    /// The host program sent something other than `CONNECT <port>\n`.
    #[error("vsock: bad host CONNECT line {0:?}; expected \"CONNECT <port>\\n\"")]
    BadConnectLine(String),
    /// The host program sent more than [`MAX_CONNECT_LINE`] bytes without a newline.
    #[error("vsock: host CONNECT line longer than {MAX_CONNECT_LINE} bytes")]
    LineTooLong,
}

/// Parses a CONNECT line from the bytes received so far. `Ok(None)`: no newline yet;
/// `Ok(Some((port, consumed)))`: the port and how many bytes the line took (anything
/// after it is already stream data for the guest).
pub fn parse_connect(buf: &[u8]) -> Result<Option<(u32, usize)>, Error> {
    let Some(nl) = buf.iter().position(|&b| b == b'\n') else {
        return if buf.len() >= MAX_CONNECT_LINE {
            Err(Error::LineTooLong)
        } else {
            Ok(None)
        };
    };
    if nl >= MAX_CONNECT_LINE {
        return Err(Error::LineTooLong);
    }
    let line = &buf[..nl];
    let bad = || Error::BadConnectLine(String::from_utf8_lossy(line).into_owned());
    let text = std::str::from_utf8(line).map_err(|_| bad())?;
    let text = text.strip_suffix('\r').unwrap_or(text);
    let mut words = text.split_ascii_whitespace();
    match (words.next(), words.next(), words.next()) {
        (Some(cmd), Some(port), None) if cmd.eq_ignore_ascii_case("CONNECT") => {
            let port = port.parse::<u32>().map_err(|_| bad())?;
            Ok(Some((port, nl + 1)))
        }
        _ => Err(bad()),
    }
}

/// The reply a host program reads once the guest accepted its connection.
pub fn ok_reply(local_port: u32) -> Vec<u8> {
    format!("OK {local_port}\n").into_bytes()
}

/// Where a guest connection to host port `port` is forwarded.
pub fn guest_target(uds: &Path, port: u32) -> PathBuf {
    let mut s = uds.as_os_str().to_owned();
    s.push(format!("_{port}"));
    PathBuf::from(s)
}

/// Connects to the unix socket at `path` without blocking: a host listener whose backlog
/// is full answers `WouldBlock` instead of stalling the device thread. The stream comes
/// back non-blocking.
pub fn connect_nonblocking(path: &Path) -> std::io::Result<UnixStream> {
    use std::os::fd::FromRawFd;
    use std::os::unix::ffi::OsStrExt;

    let bytes = path.as_os_str().as_bytes();
    // SAFETY: sockaddr_un is plain old data; all-zero is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    if bytes.len() >= addr.sun_path.len() || bytes.contains(&0) {
        return Err(std::io::Error::from_raw_os_error(libc::ENAMETOOLONG));
    }
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (d, s) in addr.sun_path.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    // SAFETY: plain syscall; the fd is owned by the UnixStream right away.
    let fd = unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh socket nobody else owns.
    let stream = unsafe { UnixStream::from_raw_fd(fd) };
    let len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
    // SAFETY: `addr` is a valid sockaddr_un of `len` bytes.
    let rc = unsafe {
        libc::connect(
            fd,
            &addr as *const libc::sockaddr_un as *const libc::sockaddr,
            len,
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(stream)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_lines() {
        assert_eq!(parse_connect(b"CONNECT 52\n"), Ok(Some((52, 11))));
        assert_eq!(parse_connect(b"CONNECT 52\nhello"), Ok(Some((52, 11))));
        assert_eq!(parse_connect(b"connect  1024\r\n"), Ok(Some((1024, 15))));
        assert_eq!(parse_connect(b"CONNECT 5"), Ok(None));
        assert_eq!(parse_connect(b""), Ok(None));
        assert!(parse_connect(b"CONNECT\n").is_err());
        assert!(parse_connect(b"CONNECT -1\n").is_err());
        assert!(parse_connect(b"CONNECT 4294967296\n").is_err());
        assert!(parse_connect(b"CONNECT 1 2\n").is_err());
        assert!(parse_connect(b"LISTEN 1\n").is_err());
        assert!(parse_connect(b"CONNECT \xff\n").is_err());
        assert_eq!(parse_connect(&[b'A'; 40]), Err(Error::LineTooLong));
    }

    #[test]
    fn reply_and_target() {
        assert_eq!(ok_reply(1073741824), b"OK 1073741824\n");
        assert_eq!(
            guest_target(Path::new("/run/v.sock"), 52),
            PathBuf::from("/run/v.sock_52")
        );
    }

    #[test]
    fn nonblocking_connect() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("l");
        assert!(connect_nonblocking(&p).is_err(), "nobody listens");
        let l = std::os::unix::net::UnixListener::bind(&p).unwrap();
        let s = connect_nonblocking(&p).unwrap();
        let (mut a, _) = l.accept().unwrap();
        use std::io::{Read, Write};
        (&s).write_all(b"x").unwrap();
        let mut b = [0u8; 1];
        a.read_exact(&mut b).unwrap();
        assert_eq!(&b, b"x");
        assert!(connect_nonblocking(Path::new(&"x".repeat(200))).is_err());
    }
}
