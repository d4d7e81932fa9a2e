//! Files and notification: inotify, fanotify, memfd sealing and /proc/sys.

use std::ffi::CString;
use std::fs;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::Path;

use super::{cvt, fail, fd, io_fail, last, Check};

pub(super) fn inotify(dir: &Path) -> Check {
    let ino = fd(
        // SAFETY: inotify_init1 takes only flags and returns a new fd or -1.
        unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) } as i64,
        "inotify_init1",
    )?;
    let cdir =
        CString::new(dir.as_os_str().as_encoded_bytes()).map_err(|_| fail(libc::EINVAL, "path"))?;
    cvt(
        // SAFETY: `cdir` is a live NUL-terminated path, only read; the inotify fd is held open by
        // `ino`.
        unsafe { libc::inotify_add_watch(ino.as_raw_fd(), cdir.as_ptr(), libc::IN_CREATE) } as i64,
        "inotify_add_watch",
    )?;
    let file = dir.join(format!("husk-selftest-inotify-{}", std::process::id()));
    fs::write(&file, b"x").map_err(|e| io_fail(e, "create watched file"))?;
    let _ = fs::remove_file(&file);
    let mut buf = [0u8; 512];
    // SAFETY: read writes at most buf.len() bytes into `buf`, a live local array.
    let n = unsafe { libc::read(ino.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
    if n <= 0 {
        return Err(last("read inotify event"));
    }
    Ok(())
}

pub(super) fn fanotify() -> Check {
    let flags = libc::FAN_CLASS_NOTIF | libc::FAN_CLOEXEC | libc::FAN_NONBLOCK;
    fd(
        // SAFETY: fanotify_init takes only integers and returns a new fd or -1.
        unsafe { libc::fanotify_init(flags, libc::O_RDONLY as u32) } as i64,
        "fanotify_init",
    )
    .map(drop)
}

pub(super) fn memfd() -> Check {
    let name = c"husk-selftest";
    let mfd = fd(
        // SAFETY: `name` is a NUL-terminated C string literal, only read; memfd_create returns a
        // new fd or -1.
        unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING) }
            as i64,
        "memfd_create",
    )?;
    let mut f = fs::File::from(mfd);
    f.write_all(b"husk")
        .map_err(|e| io_fail(e, "write memfd"))?;
    cvt(
        // SAFETY: F_ADD_SEALS takes integer seals on an fd `f` holds open; no memory is passed.
        unsafe {
            libc::fcntl(
                f.as_raw_fd(),
                libc::F_ADD_SEALS,
                libc::F_SEAL_WRITE | libc::F_SEAL_SHRINK,
            )
        } as i64,
        "fcntl(F_ADD_SEALS)",
    )?;
    Ok(())
}

pub(super) fn proc_sys() -> Check {
    let osrelease = fs::read_to_string("/proc/sys/kernel/osrelease")
        .map_err(|e| io_fail(e, "read /proc/sys/kernel/osrelease"))?;
    let uname = nix::sys::utsname::uname().map_err(|e| fail(e as i32, "uname"))?;
    if osrelease.trim() != uname.release().to_string_lossy() {
        return Err(fail(
            libc::EIO,
            format!("/proc/sys/kernel/osrelease says {}", osrelease.trim()),
        ));
    }
    Ok(())
}
