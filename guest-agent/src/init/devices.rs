//! The container's /dev (device nodes, devpts, shm, the fd links) and its terminal: a pty
//! from the container's own devpts, so the process sees `/dev/pts/N` as its tty.

use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};

use husk_protocol::ProcessSpec;
use nix::mount::{mount, MsFlags};

use super::in_root::{self, fd_path};
use super::{cvt, inside, sys, InitError, Result, SYNC};
use crate::process::send_fd;

/// The standard /dev of an OCI container: device nodes, devpts and shm unless the spec
/// mounted its own, and the fd links. Nodes and links are made relative to the /dev
/// descriptor, never through a path.
pub fn populate(root: &OwnedFd, has_pts: bool, has_shm: bool) -> Result<()> {
    let dev =
        in_root::mkdir_all(root.as_fd(), "/dev", 0o755).map_err(inside("creating", "/dev"))?;
    for (name, major, minor) in [
        ("null", 1, 3),
        ("zero", 1, 5),
        ("full", 1, 7),
        ("random", 1, 8),
        ("urandom", 1, 9),
        ("tty", 5, 0),
    ] {
        let c = CString::new(name).expect("static name");
        if exists(&dev, &c) {
            continue;
        }
        let path = format!("/dev/{name}");
        // SAFETY: `c` is a live NUL-terminated name and `dev` a directory fd we hold; mknodat only
        // reads the name.
        let rc = unsafe {
            libc::mknodat(
                dev.as_raw_fd(),
                c.as_ptr(),
                libc::S_IFCHR | 0o666,
                libc::makedev(major, minor),
            )
        };
        cvt(rc).map_err(inside("mknod", &path))?;
        // mknod obeys the umask.
        // SAFETY: as above: a live NUL-terminated name relative to a directory fd we hold;
        // fchmodat only reads it.
        unsafe { libc::fchmodat(dev.as_raw_fd(), c.as_ptr(), 0o666, 0) };
    }
    let pts = in_root::mkdir_all(root.as_fd(), "/dev/pts", 0o755)
        .map_err(inside("creating", "/dev/pts"))?;
    if !has_pts {
        mount(
            Some("devpts"),
            &fd_path(&pts),
            Some("devpts"),
            MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
            Some("newinstance,ptmxmode=0666,mode=0620,gid=5"),
        )
        .map_err(|e| inside("mounting devpts on", "/dev/pts")(e.into()))?;
    }
    let shm = in_root::mkdir_all(root.as_fd(), "/dev/shm", 0o1777)
        .map_err(inside("creating", "/dev/shm"))?;
    if !has_shm {
        mount(
            Some("shm"),
            &fd_path(&shm),
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            Some("mode=1777,size=65536k"),
        )
        .map_err(|e| inside("mounting tmpfs on", "/dev/shm")(e.into()))?;
    }
    for (link, to) in [
        ("ptmx", "pts/ptmx"),
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        let c = CString::new(link).expect("static name");
        if exists(&dev, &c) {
            continue;
        }
        let t = CString::new(to).expect("static target");
        // SAFETY: `t` and `c` are live NUL-terminated strings and `dev` a directory fd we hold;
        // symlinkat only reads them.
        cvt(unsafe { libc::symlinkat(t.as_ptr(), dev.as_raw_fd(), c.as_ptr()) })
            .map_err(inside("symlink", format!("/dev/{link}")))?;
    }
    Ok(())
}

fn exists(dir: &OwnedFd, name: &CString) -> bool {
    // SAFETY: stat is a plain C struct; all-zero bytes are a valid value.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstatat reads the live NUL-terminated `name` and writes one stat into `st`, a live
    // local of that type; `dir` is a directory fd we hold.
    unsafe {
        libc::fstatat(
            dir.as_raw_fd(),
            name.as_ptr(),
            &mut st,
            libc::AT_SYMLINK_NOFOLLOW,
        ) == 0
    }
}

/// Opens a pty in the container's devpts (`root` is the container's root), sends the
/// master to the agent (`T` with the fd) and makes the slave fds 0-2. With `console` the
/// slave is also bound on /dev/console, as runc does for a container's init.
pub fn terminal(root: &OwnedFd, p: &ProcessSpec, console: bool) -> Result<()> {
    let flags = libc::O_RDWR | libc::O_NOCTTY;
    let master = in_root::open(root.as_fd(), "/dev/pts/ptmx", flags)
        .or_else(|_| in_root::open(root.as_fd(), "/dev/ptmx", flags))
        .map_err(inside("opening", "/dev/pts/ptmx"))?;
    let m = master.as_raw_fd();
    let unlock: libc::c_int = 0;
    // SAFETY: TIOCSPTLCK reads one c_int from `unlock`, a live local.
    cvt(unsafe { libc::ioctl(m, libc::TIOCSPTLCK, &unlock) }).map_err(sys("unlockpt"))?;
    // The slave straight from the master: no path lookup that a hostile /dev/pts could
    // redirect.
    // SAFETY: TIOCGPTPEER takes integer flags (no pointer) on the master fd we hold, and returns a
    // new fd or -1.
    let s = unsafe { libc::ioctl(m, libc::TIOCGPTPEER, flags | libc::O_CLOEXEC) };
    cvt(s).map_err(sys("opening the pty slave (TIOCGPTPEER)"))?;
    // SAFETY: TIOCGPTPEER just returned `s` (checked by cvt above); nothing else owns it.
    let slave = unsafe { OwnedFd::from_raw_fd(s) };
    // Owned by the process's user, as a login would leave it.
    // SAFETY: fchown on `s`, kept open by `slave` for the rest of this function; it touches no
    // memory.
    unsafe { libc::fchown(s, p.user.uid, u32::MAX) };
    if let Some(sz) = p.console_size {
        crate::pty::resize(m, sz.rows, sz.cols).map_err(sys("TIOCSWINSZ"))?;
    }
    if console {
        let target = in_root::create_file(root.as_fd(), "/dev/console", 0o666)
            .map_err(inside("creating", "/dev/console"))?;
        mount(
            Some(&fd_path(&slave)),
            &fd_path(&target),
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(|e| inside("binding the pty on", "/dev/console")(e.into()))?;
    }
    send_fd(SYNC, b"T", m).map_err(InitError::Sync)?;
    drop(master);
    for fd in 0..3 as RawFd {
        // SAFETY: `s` is kept open by `slave` until the function returns, and is above 2 (fds 0-2
        // were open already), so dup2 only replaces this helper's standard fds, which no Rust
        // object owns.
        cvt(unsafe { libc::dup2(s, fd) }).map_err(sys("dup2 of the pty slave"))?;
    }
    Ok(())
}
