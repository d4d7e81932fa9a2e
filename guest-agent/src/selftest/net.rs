//! Networking: loopback TCP over IPv4 and IPv6, AF_PACKET and AF_VSOCK.

use std::io::{Read, Write};
use std::mem::{size_of, zeroed};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;

use super::{cvt, fd, io_fail, last, Check};

/// Brings the loopback interface up (SIOCSIFFLAGS), as PID 1 must before using 127.0.0.1.
fn loopback_up() -> Check {
    let sock = fd(
        // SAFETY: socket() takes only integers and returns a new fd or -1.
        unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) } as i64,
        "socket",
    )?;
    // SAFETY: ifreq is a plain C struct (with a union of plain fields); all-zero bytes are a valid
    // value.
    let mut req: libc::ifreq = unsafe { zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    cvt(
        // SAFETY: SIOCGIFFLAGS reads the name from and writes the flags into `req`, a live ifreq;
        // the socket is held open by `sock`.
        unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) } as i64,
        "ioctl(SIOCGIFFLAGS lo)",
    )?;
    // SAFETY: SIOCGIFFLAGS just wrote `ifru_flags`, and every arm of the union is plain integers,
    // so reading it is defined.
    let flags = unsafe { req.ifr_ifru.ifru_flags };
    if flags & libc::IFF_UP as i16 != 0 {
        return Ok(());
    }
    req.ifr_ifru.ifru_flags = flags | libc::IFF_UP as i16;
    cvt(
        // SAFETY: SIOCSIFFLAGS only reads `req`, a live ifreq; the socket is held open by `sock`.
        unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) } as i64,
        "ioctl(SIOCSIFFLAGS lo up)",
    )?;
    Ok(())
}

/// Listens on a loopback address, connects to it and passes a byte across.
pub(super) fn tcp_loopback(addr: &str, pid1: bool) -> Check {
    if pid1 {
        loopback_up()?;
    }
    let listener = TcpListener::bind(addr).map_err(|e| io_fail(e, &format!("bind {addr}")))?;
    let local = listener
        .local_addr()
        .map_err(|e| io_fail(e, "local_addr"))?;
    let mut client =
        TcpStream::connect(local).map_err(|e| io_fail(e, &format!("connect {local}")))?;
    let (mut server, _) = listener.accept().map_err(|e| io_fail(e, "accept"))?;
    client.write_all(b"h").map_err(|e| io_fail(e, "send"))?;
    let mut b = [0u8; 1];
    server.read_exact(&mut b).map_err(|e| io_fail(e, "recv"))?;
    Ok(())
}

/// Opens an AF_PACKET socket and binds it to `lo`.
pub(super) fn packet() -> Check {
    let proto = (libc::ETH_P_ALL as u16).to_be();
    let sock = fd(
        // SAFETY: socket() takes only integers and returns a new fd or -1.
        unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                proto as i32,
            )
        } as i64,
        "socket(AF_PACKET)",
    )?;
    // SAFETY: the argument is a NUL-terminated C string literal, only read.
    let ifindex = unsafe { libc::if_nametoindex(c"lo".as_ptr()) };
    if ifindex == 0 {
        return Err(last("if_nametoindex(lo)"));
    }
    // SAFETY: sockaddr_ll is a plain C struct; all-zero bytes are a valid value.
    let mut sll: libc::sockaddr_ll = unsafe { zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = proto;
    sll.sll_ifindex = ifindex as i32;
    cvt(
        // SAFETY: `sll` is a live sockaddr_ll and the length passed is exactly its size; bind only
        // reads it.
        unsafe {
            libc::bind(
                sock.as_raw_fd(),
                (&sll as *const libc::sockaddr_ll).cast(),
                size_of::<libc::sockaddr_ll>() as u32,
            )
        } as i64,
        "bind(AF_PACKET, lo)",
    )?;
    Ok(())
}

/// An AF_VSOCK socket: how the agent will talk to the host.
pub(super) fn vsock() -> Check {
    fd(
        // SAFETY: socket() takes only integers and returns a new fd or -1.
        unsafe { libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) } as i64,
        "socket(AF_VSOCK)",
    )
    .map(drop)
}
