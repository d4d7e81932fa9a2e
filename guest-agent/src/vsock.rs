//! AF_VSOCK sockets through libc: the listener on the agent port and its connections (and the
//! connection type of the serial channel's streams too, see `channel`).
//!
//! Every write is capped at [`CHUNK`] bytes: Linux 6.12 guests send larger writes as vsock
//! packets split across several descriptors, which some device backends (vhost-device-vsock,
//! virtio-vsock 0.12) reject. 16 KiB writes arrive intact everywhere.

use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// Largest single write on a vsock socket.
pub const CHUNK: usize = 16 << 10;

pub struct Listener(OwnedFd);

impl Listener {
    /// Listens on `port` for any CID.
    pub fn bind(port: u32) -> io::Result<Listener> {
        // SAFETY: socket() takes only integers and returns a new fd or -1.
        let fd = unsafe { libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: socket() just returned `fd` (checked non-negative); nothing else owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: sockaddr_vm is a plain C struct; all-zero bytes are a valid value.
        let mut addr: libc::sockaddr_vm = unsafe { std::mem::zeroed() };
        addr.svm_family = libc::AF_VSOCK as libc::sa_family_t;
        addr.svm_cid = libc::VMADDR_CID_ANY;
        addr.svm_port = port;
        // SAFETY: `addr` is a live sockaddr_vm and the length passed is exactly its size; bind
        // only reads it.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                &addr as *const libc::sockaddr_vm as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: listen() takes an fd we own and an integer.
        if unsafe { libc::listen(fd.as_raw_fd(), 128) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Listener(fd))
    }

    pub fn accept(&self) -> io::Result<VsockStream> {
        // SAFETY: null addr/addrlen pointers are allowed (the peer address is not wanted); the
        // listening fd is ours.
        let fd = unsafe {
            libc::accept4(
                self.0.as_raw_fd(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                libc::SOCK_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: accept4 just returned `fd` (checked non-negative); nothing else owns it.
        Ok(VsockStream(unsafe { OwnedFd::from_raw_fd(fd) }))
    }
}

/// One connection (a vsock socket, or one end of the socket pair of a stream carried over
/// the serial port); `Read`/`Write` work on `&VsockStream` too, so a reader and a writer can
/// share it.
pub struct VsockStream(OwnedFd);

impl From<OwnedFd> for VsockStream {
    fn from(fd: OwnedFd) -> VsockStream {
        VsockStream(fd)
    }
}

impl VsockStream {
    pub fn try_clone(&self) -> io::Result<VsockStream> {
        Ok(VsockStream(self.0.try_clone()?))
    }

    pub fn shutdown(&self, how: std::net::Shutdown) -> io::Result<()> {
        let how = match how {
            std::net::Shutdown::Read => libc::SHUT_RD,
            std::net::Shutdown::Write => libc::SHUT_WR,
            std::net::Shutdown::Both => libc::SHUT_RDWR,
        };
        // SAFETY: shutdown() on an fd we own, with a valid `how`; it touches no memory.
        if unsafe { libc::shutdown(self.0.as_raw_fd(), how) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

impl AsRawFd for VsockStream {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

impl Read for &VsockStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        fd_read(self.0.as_raw_fd(), buf)
    }
}

impl Write for &VsockStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = buf.len().min(CHUNK);
        // SAFETY: the kernel reads `n` bytes from `buf`, and `n` <= buf.len(); MSG_NOSIGNAL turns
        // a closed peer into EPIPE instead of SIGPIPE.
        let rc = unsafe {
            libc::send(
                self.0.as_raw_fd(),
                buf.as_ptr().cast(),
                n,
                libc::MSG_NOSIGNAL,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(rc as usize)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Read for VsockStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        (&*self).read(buf)
    }
}

impl Write for VsockStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        (&*self).write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// read(2), retried on EINTR.
pub fn fd_read(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        // SAFETY: read() writes at most buf.len() bytes into `buf`, which is exclusively borrowed
        // for the call.
        let rc = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        if rc >= 0 {
            return Ok(rc as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// write(2) of all of `buf`, retried on EINTR and short writes.
pub fn fd_write_all(fd: RawFd, mut buf: &[u8]) -> io::Result<()> {
    while !buf.is_empty() {
        // SAFETY: write() reads at most buf.len() bytes from `buf`, which is borrowed for the
        // call.
        let rc = unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) };
        if rc < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        buf = &buf[rc as usize..];
    }
    Ok(())
}
