//! Waiting and timing: POSIX timers, epoll, eventfd, signalfd, timerfd and futex.

use std::mem::{size_of, zeroed};
use std::os::fd::AsRawFd;

use nix::errno::Errno;

use super::{cvt, fail, fd, last, Check};

pub(super) fn posix_timers() -> Check {
    // SAFETY: sigevent is a plain C struct; all-zero bytes are a valid value.
    let mut sev: libc::sigevent = unsafe { zeroed() };
    sev.sigev_notify = libc::SIGEV_NONE;
    let mut timer: libc::timer_t = std::ptr::null_mut();
    cvt(
        // SAFETY: timer_create reads `sev` and writes the new timer id into `timer`, both live
        // locals.
        unsafe { libc::timer_create(libc::CLOCK_MONOTONIC, &mut sev, &mut timer) } as i64,
        "timer_create",
    )?;
    let spec = libc::itimerspec {
        it_interval: libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        },
        it_value: libc::timespec {
            tv_sec: 60,
            tv_nsec: 0,
        },
    };
    let res = cvt(
        // SAFETY: `timer` was created above and not yet deleted; timer_settime reads `spec`, a
        // live local, and a null old-value pointer is allowed.
        unsafe { libc::timer_settime(timer, 0, &spec, std::ptr::null_mut()) } as i64,
        "timer_settime",
    )
    .and_then(|_| {
        // SAFETY: itimerspec is a plain C struct; all-zero bytes are a valid value.
        let mut cur: libc::itimerspec = unsafe { zeroed() };
        cvt(
            // SAFETY: `timer` is live (deleted only below); timer_gettime writes one itimerspec
            // into `cur`, a live local.
            unsafe { libc::timer_gettime(timer, &mut cur) } as i64,
            "timer_gettime",
        )?;
        if cur.it_value.tv_sec == 0 && cur.it_value.tv_nsec == 0 {
            return Err(fail(libc::EINVAL, "armed timer reads as disarmed"));
        }
        Ok(())
    });
    // SAFETY: `timer` was created above and is deleted exactly once, here.
    unsafe { libc::timer_delete(timer) };
    res
}

/// An eventfd made readable, watched by an epoll instance that must report it.
pub(super) fn epoll() -> Check {
    let ep = fd(
        // SAFETY: epoll_create1 takes only flags and returns a new fd or -1.
        unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) } as i64,
        "epoll_create1",
    )?;
    let ev = fd(
        // SAFETY: eventfd takes only integers and returns a new fd or -1.
        unsafe { libc::eventfd(1, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) } as i64,
        "eventfd",
    )?;
    let mut event = libc::epoll_event {
        events: libc::EPOLLIN as u32,
        u64: 7,
    };
    cvt(
        // SAFETY: both fds are open (held by `ep` and `ev`); epoll_ctl reads `event`, a live
        // local.
        unsafe {
            libc::epoll_ctl(
                ep.as_raw_fd(),
                libc::EPOLL_CTL_ADD,
                ev.as_raw_fd(),
                &mut event,
            )
        } as i64,
        "epoll_ctl",
    )?;
    let mut out = [libc::epoll_event { events: 0, u64: 0 }; 2];
    let n = cvt(
        // SAFETY: epoll_wait writes at most 2 events into `out`, a live array of 2; both fds are
        // held open.
        unsafe { libc::epoll_wait(ep.as_raw_fd(), out.as_mut_ptr(), 2, 0) } as i64,
        "epoll_wait",
    )?;
    if n != 1 || out[0].u64 != 7 {
        return Err(fail(
            libc::EIO,
            format!("epoll_wait reported {n} events, want the eventfd"),
        ));
    }
    Ok(())
}

pub(super) fn eventfd() -> Check {
    let ev = fd(
        // SAFETY: eventfd takes only integers and returns a new fd or -1.
        unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) } as i64,
        "eventfd",
    )?;
    let one: u64 = 1;
    // SAFETY: write reads 8 bytes from `one`, a live u64; the eventfd is held open by `ev`.
    if unsafe { libc::write(ev.as_raw_fd(), (&one as *const u64).cast(), 8) } != 8 {
        return Err(last("write eventfd"));
    }
    let mut got: u64 = 0;
    // SAFETY: read writes 8 bytes into `got`, a live u64; the eventfd is held open by `ev`.
    if unsafe { libc::read(ev.as_raw_fd(), (&mut got as *mut u64).cast(), 8) } != 8 || got != 1 {
        return Err(last("read eventfd"));
    }
    Ok(())
}

/// Blocks SIGUSR1, sends it to ourselves and reads it back through a signalfd.
pub(super) fn signalfd() -> Check {
    // SAFETY: sigset_t and signalfd_siginfo are plain C structs for which all-zero bytes are
    // valid; every pointer passed (`mask`, `old`, `info`) is a live local of the type the call
    // expects, and read() is given exactly size_of::<signalfd_siginfo>(). SIGUSR1 is blocked
    // before raise(), so its default action (termination) cannot run: it stays pending for the
    // signalfd, and the old mask is restored on every path.
    unsafe {
        let mut mask: libc::sigset_t = zeroed();
        libc::sigemptyset(&mut mask);
        libc::sigaddset(&mut mask, libc::SIGUSR1);
        let mut old: libc::sigset_t = zeroed();
        cvt(
            libc::sigprocmask(libc::SIG_BLOCK, &mask, &mut old) as i64,
            "sigprocmask",
        )?;
        let res = (|| {
            let sfd = fd(
                libc::signalfd(-1, &mask, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK) as i64,
                "signalfd",
            )?;
            cvt(libc::raise(libc::SIGUSR1) as i64, "raise")?;
            let mut info: libc::signalfd_siginfo = zeroed();
            let n = libc::read(
                sfd.as_raw_fd(),
                (&mut info as *mut libc::signalfd_siginfo).cast(),
                size_of::<libc::signalfd_siginfo>(),
            );
            if n != size_of::<libc::signalfd_siginfo>() as isize {
                return Err(last("read signalfd"));
            }
            if info.ssi_signo != libc::SIGUSR1 as u32 {
                return Err(fail(
                    libc::EIO,
                    format!("signalfd delivered signal {}", info.ssi_signo),
                ));
            }
            Ok(())
        })();
        libc::sigprocmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
        res
    }
}

pub(super) fn timerfd() -> Check {
    let tfd = fd(
        // SAFETY: timerfd_create takes only integers and returns a new fd or -1.
        unsafe { libc::timerfd_create(libc::CLOCK_MONOTONIC, libc::TFD_CLOEXEC) } as i64,
        "timerfd_create",
    )?;
    let spec = libc::itimerspec {
        it_interval: libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        },
        it_value: libc::timespec {
            tv_sec: 0,
            tv_nsec: 1_000_000,
        },
    };
    cvt(
        // SAFETY: the timerfd is held open by `tfd`; timerfd_settime reads `spec`, a live local,
        // and a null old-value pointer is allowed.
        unsafe { libc::timerfd_settime(tfd.as_raw_fd(), 0, &spec, std::ptr::null_mut()) } as i64,
        "timerfd_settime",
    )?;
    // Blocking read: returns once the 1 ms timer expired.
    let mut expirations: u64 = 0;
    // SAFETY: read writes 8 bytes into `expirations`, a live u64; the timerfd is held open by
    // `tfd`.
    if unsafe { libc::read(tfd.as_raw_fd(), (&mut expirations as *mut u64).cast(), 8) } != 8 {
        return Err(last("read timerfd"));
    }
    Ok(())
}

pub(super) fn futex() -> Check {
    let word: u32 = 0;
    let addr = &word as *const u32;
    // Nobody waits: FUTEX_WAKE returns 0 woken.
    let woken = cvt(
        // SAFETY: `addr` points at `word`, a live, aligned u32 on our stack; FUTEX_WAKE with no
        // waiters only reads it, and the timeout/second-address arguments are unused (0).
        unsafe {
            libc::syscall(
                libc::SYS_futex,
                addr,
                libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG,
                1,
                0,
                0,
                0,
            )
        },
        "futex(FUTEX_WAKE)",
    )?;
    if woken != 0 {
        return Err(fail(libc::EIO, format!("FUTEX_WAKE woke {woken}")));
    }
    // The value differs from 1: FUTEX_WAIT must refuse with EAGAIN instead of sleeping.
    // SAFETY: `addr` points at `word`, still live and aligned; its value (0) differs from the
    // expected 1, so FUTEX_WAIT returns EAGAIN at once instead of sleeping, and the null timeout
    // is never used.
    let r = unsafe {
        libc::syscall(
            libc::SYS_futex,
            addr,
            libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG,
            1,
            0,
            0,
            0,
        )
    };
    if r == 0 || Errno::last_raw() != libc::EAGAIN {
        return Err(last("futex(FUTEX_WAIT) on a changed value"));
    }
    Ok(())
}
