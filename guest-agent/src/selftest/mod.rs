//! The syscall-surface self-test: exercises each kernel interface a distribution kernel gives
//! containers and that `tinyconfig` turns off, so a fragment that silently lost one is caught
//! in the guest rather than by a user's workload.
//!
//! Each check prints `SELFTEST <name> ok` or `SELFTEST <name> FAIL <errno> <what>`, then
//! `SELFTEST done pass=N fail=M`. Checks use libc directly: the point is the raw syscall.

mod async_io;
mod cgroup;
mod events;
mod files;
mod ipc;
mod net;
mod restored;
mod sandbox;

use std::os::fd::{FromRawFd, OwnedFd};
use std::path::PathBuf;

use nix::errno::Errno;

/// A failed check: the errno and the call that returned it.
struct Fail {
    errno: i32,
    what: String,
}

type Check = Result<(), Fail>;

/// A named check, run in order.
type NamedCheck<'a> = (&'a str, Box<dyn Fn() -> Check>);

fn fail(errno: i32, what: impl Into<String>) -> Fail {
    Fail {
        errno,
        what: what.into(),
    }
}

/// The errno of the last failed libc call, as a `Fail` naming that call.
fn last(what: &str) -> Fail {
    fail(Errno::last_raw(), what)
}

/// Checks a libc return value: negative is failure with errno.
fn cvt(ret: i64, what: &str) -> Result<i64, Fail> {
    if ret < 0 {
        Err(last(what))
    } else {
        Ok(ret)
    }
}

/// Wraps a new file descriptor so it is closed on every path.
fn fd(ret: i64, what: &str) -> Result<OwnedFd, Fail> {
    let raw = cvt(ret, what)?;
    // SAFETY: every caller passes the return value of a call that creates a new fd (epoll_create1,
    // eventfd, socket, ...), checked non-negative by cvt above, so nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(raw as i32) })
}

fn io_fail(e: std::io::Error, what: &str) -> Fail {
    fail(
        e.raw_os_error().unwrap_or(libc::EIO),
        format!("{what}: {e}"),
    )
}

pub struct Summary {
    pub pass: u32,
    pub fail: u32,
}

/// Runs every check. `pid1` allows the checks that change global state (bringing `lo` up,
/// mounting cgroup2, creating a cgroup, the clock and NIC MACs), which a host run must not do.
pub fn run(pid1: bool) -> Summary {
    let scratch = if pid1 {
        PathBuf::from("/tmp")
    } else {
        std::env::temp_dir()
    };
    let checks: Vec<NamedCheck> = vec![
        (
            "inotify",
            Box::new({
                let s = scratch.clone();
                move || files::inotify(&s)
            }),
        ),
        ("fanotify", Box::new(files::fanotify)),
        ("posix-timers", Box::new(events::posix_timers)),
        ("io_uring", Box::new(async_io::io_uring)),
        ("memfd", Box::new(files::memfd)),
        ("userfaultfd", Box::new(async_io::userfaultfd)),
        ("sysv-ipc", Box::new(ipc::sysv_ipc)),
        ("mqueue", Box::new(ipc::mqueue)),
        ("epoll", Box::new(events::epoll)),
        ("eventfd", Box::new(events::eventfd)),
        ("signalfd", Box::new(events::signalfd)),
        ("timerfd", Box::new(events::timerfd)),
        ("futex", Box::new(events::futex)),
        ("aio", Box::new(async_io::aio)),
        ("seccomp", Box::new(sandbox::seccomp)),
        ("bpf", Box::new(sandbox::bpf)),
        ("namespaces", Box::new(sandbox::namespaces)),
        ("cgroup2", Box::new(move || cgroup::cgroup2(pid1))),
        (
            "ipv4",
            Box::new(move || net::tcp_loopback("127.0.0.1:0", pid1)),
        ),
        ("ipv6", Box::new(move || net::tcp_loopback("[::1]:0", pid1))),
        ("packet", Box::new(net::packet)),
        ("vsock", Box::new(net::vsock)),
        ("proc-sys", Box::new(files::proc_sys)),
        // Last: it moves the clock (and puts it back).
        ("restored", Box::new(move || restored::restored(pid1))),
    ];
    let mut summary = Summary { pass: 0, fail: 0 };
    for (name, check) in checks {
        match check() {
            Ok(()) => {
                summary.pass += 1;
                say!("SELFTEST {name} ok");
            }
            Err(f) => {
                summary.fail += 1;
                say!(
                    "SELFTEST {name} FAIL {} {} ({})",
                    f.errno,
                    Errno::from_raw(f.errno),
                    f.what
                );
            }
        }
    }
    say!("SELFTEST done pass={} fail={}", summary.pass, summary.fail);
    summary
}
