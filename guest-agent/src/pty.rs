//! Pseudo-terminals for `terminal: true` processes. The pty itself is opened by the init
//! helper inside the container's devpts ([`crate::init`]); the agent keeps the master.

use std::io;
use std::os::fd::RawFd;

pub fn resize(master: RawFd, rows: u16, cols: u16) -> io::Result<()> {
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one winsize from `ws`, a live local of that type; a bad fd only
    // makes it fail.
    if unsafe { libc::ioctl(master, libc::TIOCSWINSZ, &ws) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
