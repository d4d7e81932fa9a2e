//! One file descriptor passed over a unix socket (`SCM_RIGHTS`), written once for both sides:
//! husk-runtime sends a pty master to an engine's `--console-socket`, and husk-agent moves pty
//! masters between its init helper and itself. A crate of its own because the two sides share
//! nothing else below the wire protocol, and that one is pure data.

#![deny(clippy::undocumented_unsafe_blocks)]

use std::io;
use std::mem::size_of;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

/// Bytes of control buffer for one descriptor.
fn space() -> usize {
    // SAFETY: CMSG_SPACE only computes a size from its argument; it touches no memory.
    unsafe { libc::CMSG_SPACE(size_of::<RawFd>() as u32) as usize }
}

/// Sends `msg` on `sock` with the descriptor `pass` attached (the peer gets its own copy;
/// ours stays open). `MSG_NOSIGNAL`: a peer gone away is `EPIPE`, not a SIGPIPE.
pub fn send_fd(sock: RawFd, msg: &[u8], pass: RawFd) -> io::Result<()> {
    let space = space();
    let mut cbuf = vec![0u8; space];
    let mut iov = libc::iovec {
        iov_base: msg.as_ptr() as *mut libc::c_void,
        iov_len: msg.len(),
    };
    // SAFETY: msghdr is a plain C struct for which all-zero bytes are a valid value (null
    // pointers, zero lengths).
    let mut m: libc::msghdr = unsafe { std::mem::zeroed() };
    m.msg_iov = &mut iov;
    m.msg_iovlen = 1;
    m.msg_control = cbuf.as_mut_ptr().cast();
    m.msg_controllen = space;
    // SAFETY: `m` points at `cbuf`, which is CMSG_SPACE(one fd) bytes long, so CMSG_FIRSTHDR
    // returns a non-null header inside it with room for CMSG_LEN(one fd) bytes; the fd is
    // written unaligned because the data offset need not be aligned for an i32 in a Vec<u8>.
    unsafe {
        let c = libc::CMSG_FIRSTHDR(&m);
        (*c).cmsg_level = libc::SOL_SOCKET;
        (*c).cmsg_type = libc::SCM_RIGHTS;
        (*c).cmsg_len = libc::CMSG_LEN(size_of::<RawFd>() as u32) as usize;
        std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<RawFd>(), pass);
    }
    // SAFETY: every pointer in `m` (iov → `msg`, control → `cbuf`) is valid for the lengths
    // given and outlives the call; the kernel only reads them.
    if unsafe { libc::sendmsg(sock, &m, libc::MSG_NOSIGNAL) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Receives one message of at most `max` bytes from `sock` and the descriptor passed with it,
/// if any (close-on-exec, owned by the caller); an empty message at EOF. Retries on EINTR.
pub fn recv_fd(sock: RawFd, max: usize) -> io::Result<(Vec<u8>, Option<OwnedFd>)> {
    let mut buf = vec![0u8; max];
    let space = space();
    let mut cbuf = vec![0u8; space];
    loop {
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        // SAFETY: all-zero bytes are a valid msghdr (null pointers, zero lengths).
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cbuf.as_mut_ptr().cast();
        msg.msg_controllen = space;
        // SAFETY: iov → `buf` and control → `cbuf` are valid for writes of the lengths given
        // and live across the call.
        let n = unsafe { libc::recvmsg(sock, &mut msg, libc::MSG_CMSG_CLOEXEC) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        let mut passed = None;
        // SAFETY: `msg` is the header recvmsg just filled; CMSG_FIRSTHDR returns null or a
        // header inside `cbuf` (msg_controllen was updated to what the kernel wrote).
        let mut c = unsafe { libc::CMSG_FIRSTHDR(&msg) };
        while !c.is_null() {
            // SAFETY: `c` is non-null and was returned by CMSG_FIRSTHDR/CMSG_NXTHDR for this
            // `msg`, so it points at a complete cmsghdr inside `cbuf`.
            let h = unsafe { &*c };
            if h.cmsg_level == libc::SOL_SOCKET && h.cmsg_type == libc::SCM_RIGHTS {
                // SAFETY: an SCM_RIGHTS header the kernel wrote carries at least one fd after
                // CMSG_DATA (our buffer has room for exactly one); read unaligned as above.
                let raw = unsafe { std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<RawFd>()) };
                // SAFETY: the kernel installed `raw` in this process for us alone; nothing
                // else owns it, so the OwnedFd is its only owner and closes it once.
                passed = Some(unsafe { OwnedFd::from_raw_fd(raw) });
            }
            // SAFETY: `c` is a header of `msg`; CMSG_NXTHDR returns the next one inside the
            // control buffer or null.
            c = unsafe { libc::CMSG_NXTHDR(&msg, c) };
        }
        buf.truncate(n as usize);
        return Ok((buf, passed));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Seek, Write};
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixStream;

    #[test]
    fn a_descriptor_and_its_message_cross_the_socket() {
        let (a, b) = UnixStream::pair().unwrap();
        let mut file = tempfile_in_tmp();
        file.write_all(b"payload").unwrap();
        send_fd(a.as_raw_fd(), b"T/dev/pts/3", file.as_raw_fd()).unwrap();
        let (msg, fd) = recv_fd(b.as_raw_fd(), 64).unwrap();
        assert_eq!(msg, b"T/dev/pts/3");
        let mut got = std::fs::File::from(fd.expect("a descriptor was passed"));
        got.rewind().unwrap();
        let mut s = String::new();
        got.read_to_string(&mut s).unwrap();
        assert_eq!(s, "payload");
        // Without a descriptor, and at EOF.
        (&a).write_all(b"x").unwrap();
        let (msg, fd) = recv_fd(b.as_raw_fd(), 64).unwrap();
        assert_eq!((msg.as_slice(), fd.is_none()), (&b"x"[..], true));
        drop(a);
        assert!(recv_fd(b.as_raw_fd(), 64).unwrap().0.is_empty());
    }

    fn tempfile_in_tmp() -> std::fs::File {
        let p = std::env::temp_dir().join(format!("husk-fdpass-{}", std::process::id()));
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&p)
            .unwrap();
        std::fs::remove_file(&p).unwrap();
        f
    }
}
