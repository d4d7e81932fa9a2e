//! `--console-socket`: as runc does, the runtime makes the pty and hands its master to the
//! engine over a unix socket (SCM_RIGHTS, the pty's name as the message); the VM holder keeps
//! the slave as its stdio and relays it to the guest's pty.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;

/// A host pty: the master for the engine, the slave for the VM holder.
pub struct Pty {
    pub master: OwnedFd,
    pub slave: OwnedFd,
    pub name: String,
}

/// Opens a pty of `rows`×`cols`, its slave in raw mode (the guest's pty does the line
/// discipline; a second one on the host would echo and translate twice).
pub fn open(rows: u16, cols: u16) -> io::Result<Pty> {
    let mut master: libc::c_int = -1;
    let mut slave: libc::c_int = -1;
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: openpty writes two fds; we pass no name buffer and valid winsize.
    let rc = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            &ws,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fresh fds from openpty, owned from here on.
    let (master, slave) = unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
    for fd in [master.as_raw_fd(), slave.as_raw_fd()] {
        // SAFETY: fcntl on fds we own.
        unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    }
    let name = std::fs::read_link(format!("/proc/self/fd/{}", slave.as_raw_fd()))
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_else(|_| "/dev/pts/?".into());
    // SAFETY: termios calls on the slave fd we own, with a struct we own.
    unsafe {
        let mut t: libc::termios = std::mem::zeroed();
        if libc::tcgetattr(slave.as_raw_fd(), &mut t) == 0 {
            libc::cfmakeraw(&mut t);
            libc::tcsetattr(slave.as_raw_fd(), libc::TCSANOW, &t);
        }
    }
    Ok(Pty {
        master,
        slave,
        name,
    })
}

/// Connects to the engine's console socket and sends `master` with `name` as the payload.
pub fn send_master(socket: &Path, master: &OwnedFd, name: &str) -> io::Result<()> {
    let s = UnixStream::connect(socket).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("console socket {}: {e}", socket.display()),
        )
    })?;
    send_fd(s.as_raw_fd(), name.as_bytes(), master.as_raw_fd())
}

/// Makes a `size` (rows, columns; 24×80 when None) pty, sends its master to the engine over
/// `socket`, and makes its slave this process's stdin, stdout, stderr and controlling
/// terminal: the relay, raw mode and SIGWINCH → resize then work exactly as for a terminal
/// husk runs in. The caller must be a session leader (a holder spawned with its own session).
pub fn become_pty_of(socket: &Path, size: Option<(u16, u16)>) -> io::Result<()> {
    let (rows, cols) = size.unwrap_or((24, 80));
    let pty = open(rows, cols)?;
    send_master(socket, &pty.master, &pty.name)?;
    drop(pty.master);
    for fd in 0..3 {
        // SAFETY: dup2 of the slave, an fd we own, onto the standard fds.
        if unsafe { libc::dup2(pty.slave.as_raw_fd(), fd) } < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    // SAFETY: TIOCSCTTY on our stdin, now the slave; only a session leader may, and a failure
    // only costs SIGWINCH.
    unsafe { libc::ioctl(0, libc::TIOCSCTTY, 0) };
    Ok(())
}

/// Sends `msg` with descriptor `pass` attached (the one SCM_RIGHTS sender, shared with
/// husk-agent).
pub use husk_fdpass::send_fd;

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    #[test]
    fn pty_is_raw_and_its_master_can_be_sent() {
        let pty = open(30, 100).unwrap();
        assert!(pty.name.starts_with("/dev/pts/"), "{}", pty.name);
        let (a, mut b) = UnixStream::pair().unwrap();
        send_fd(a.as_raw_fd(), pty.name.as_bytes(), pty.master.as_raw_fd()).unwrap();
        let mut buf = [0u8; 64];
        let n = b.read(&mut buf).unwrap();
        assert_eq!(&buf[..n], pty.name.as_bytes());
        // Raw: what the slave writes arrives on the master as is (no \n → \r\n).
        let mut slave = std::fs::File::from(pty.slave.try_clone().unwrap());
        slave.write_all(b"a\nb").unwrap();
        let mut master = std::fs::File::from(pty.master.try_clone().unwrap());
        let mut got = [0u8; 3];
        master.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"a\nb");
    }
}
