//! Pseudo-terminals for `terminal: true` processes.

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;

use husk_protocol::ConsoleSize;

pub struct Pty {
    pub master: OwnedFd,
    pub slave: OwnedFd,
    /// The slave's path in the agent's /dev/pts, bind-mounted as the container's
    /// /dev/console.
    pub slave_path: PathBuf,
}

/// Opens a new pty pair, sized `size` when given.
pub fn open(size: Option<ConsoleSize>) -> io::Result<Pty> {
    let m = unsafe { libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC) };
    if m < 0 {
        return Err(io::Error::last_os_error());
    }
    let master = unsafe { OwnedFd::from_raw_fd(m) };
    if unsafe { libc::grantpt(m) } < 0 || unsafe { libc::unlockpt(m) } < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut name = [0 as libc::c_char; 128];
    let rc = unsafe { libc::ptsname_r(m, name.as_mut_ptr(), name.len()) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    let cname = unsafe { CStr::from_ptr(name.as_ptr()) };
    let s = unsafe {
        libc::open(
            cname.as_ptr(),
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        )
    };
    if s < 0 {
        return Err(io::Error::last_os_error());
    }
    let slave = unsafe { OwnedFd::from_raw_fd(s) };
    if let Some(sz) = size {
        resize(master.as_raw_fd(), sz.rows, sz.cols)?;
    }
    Ok(Pty {
        master,
        slave,
        slave_path: PathBuf::from(cname.to_string_lossy().into_owned()),
    })
}

pub fn resize(master: RawFd, rows: u16, cols: u16) -> io::Result<()> {
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    if unsafe { libc::ioctl(master, libc::TIOCSWINSZ, &ws) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
