//! The few system calls the mux makes, through libc: non-blocking reads and writes, `poll`,
//! `socketpair` and `shutdown`.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// Makes `fd` non-blocking.
pub fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl(F_GETFL/F_SETFL) only reads and sets the descriptor's status flags.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags < 0 || libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// One read: `Ok(Some(0))` at EOF, `Ok(None)` when nothing is there yet.
pub fn read(fd: RawFd, buf: &mut [u8]) -> io::Result<Option<usize>> {
    retry(|| {
        // SAFETY: read() writes at most buf.len() bytes into `buf`, exclusively borrowed here.
        unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) }
    })
}

/// One write: how much was taken, `Ok(None)` when nothing could be.
pub fn write(fd: RawFd, buf: &[u8]) -> io::Result<Option<usize>> {
    retry(|| {
        // SAFETY: write() reads at most buf.len() bytes from `buf`, borrowed for the call.
        unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) }
    })
}

/// Runs `op` (one read or write, returning the call's result) until it is not interrupted:
/// the bytes it moved, `Ok(None)` when it would block.
fn retry(mut op: impl FnMut() -> isize) -> io::Result<Option<usize>> {
    loop {
        let rc = op();
        if rc >= 0 {
            return Ok(Some(rc as usize));
        }
        match io::Error::last_os_error() {
            e if e.kind() == io::ErrorKind::Interrupted => continue,
            e if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
            e => return Err(e),
        }
    }
}

/// poll(2) over `fds`, retried on EINTR; `timeout_ms` < 0 waits for ever.
pub fn poll(fds: &mut [libc::pollfd], timeout_ms: i32) -> io::Result<usize> {
    loop {
        // SAFETY: `fds` is a live, exclusively borrowed array of pollfd of the length passed;
        // poll only writes their `revents`.
        let rc = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
        if rc >= 0 {
            return Ok(rc as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// A connected pair of unix stream sockets, both close-on-exec.
pub fn socketpair() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: `fds` is a live array of two ints that socketpair fills on success.
    let rc = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: socketpair just returned these two new descriptors; nothing else owns them.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Ends the writing half of a socket (the peer reads EOF).
pub fn shutdown_write(fd: &OwnedFd) -> io::Result<()> {
    // SAFETY: shutdown() on a descriptor we own, with a valid `how`; it touches no memory.
    if unsafe { libc::shutdown(fd.as_raw_fd(), libc::SHUT_WR) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Accepts one connection from a non-blocking listening socket, itself non-blocking.
pub fn accept(listener: RawFd) -> io::Result<Option<OwnedFd>> {
    loop {
        // SAFETY: null address pointers are allowed (the peer's address is not wanted).
        let fd = unsafe {
            libc::accept4(
                listener,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            )
        };
        if fd >= 0 {
            // SAFETY: accept4 just returned `fd`; nothing else owns it.
            return Ok(Some(unsafe { OwnedFd::from_raw_fd(fd) }));
        }
        match io::Error::last_os_error() {
            e if e.kind() == io::ErrorKind::Interrupted => continue,
            e if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
            // The connection died in the queue; the next one may be fine.
            e if e.raw_os_error() == Some(libc::ECONNABORTED) => continue,
            e => return Err(e),
        }
    }
}

/// A pipe, both ends close-on-exec and non-blocking: (read end, write end).
pub fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: `fds` is a live array of two ints that pipe2 fills on success.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: pipe2 just returned these two new descriptors; nothing else owns them.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}
