//! The console as stdin/stdout/stderr.
//!
//! The kernel opens `/dev/console` for init before exec'ing it, but only when the initramfs
//! has that node; when it does not, init starts with fds 0-2 closed. Once devtmpfs is
//! mounted the node exists, so reopen it for any standard fd that is not open.

use std::os::fd::AsRawFd;

pub fn ensure_stdio() {
    let missing: Vec<i32> = (0..3)
        // SAFETY: F_GETFD on any integer only reads the fd table; a closed fd gives EBADF and is
        // the answer we want.
        .filter(|&fd| unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0)
        .collect();
    if missing.is_empty() {
        return;
    }
    let console = match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/console")
    {
        Ok(f) => f,
        // Nothing to print on: there is no console.
        Err(_) => return,
    };
    for fd in missing {
        // SAFETY: dup2 onto 0-2, which the filter above found closed, so no descriptor owned
        // elsewhere in this process is replaced; `console` stays open for the call.
        unsafe { libc::dup2(console.as_raw_fd(), fd) };
    }
    // `console` closes here; the dup'ed descriptors stay open.
}
