//! Waiting and timing: POSIX timers, epoll, eventfd, signalfd, timerfd and futex.

use std::mem::{size_of, zeroed};
use std::os::fd::AsRawFd;

use nix::errno::Errno;

use super::{cvt, fail, fd, last, Check};

pub(super) fn posix_timers() -> Check {
    let mut sev: libc::sigevent = unsafe { zeroed() };
    sev.sigev_notify = libc::SIGEV_NONE;
    let mut timer: libc::timer_t = std::ptr::null_mut();
    cvt(
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
        unsafe { libc::timer_settime(timer, 0, &spec, std::ptr::null_mut()) } as i64,
        "timer_settime",
    )
    .and_then(|_| {
        let mut cur: libc::itimerspec = unsafe { zeroed() };
        cvt(
            unsafe { libc::timer_gettime(timer, &mut cur) } as i64,
            "timer_gettime",
        )?;
        if cur.it_value.tv_sec == 0 && cur.it_value.tv_nsec == 0 {
            return Err(fail(libc::EINVAL, "armed timer reads as disarmed"));
        }
        Ok(())
    });
    unsafe { libc::timer_delete(timer) };
    res
}

/// An eventfd made readable, watched by an epoll instance that must report it.
pub(super) fn epoll() -> Check {
    let ep = fd(
        unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) } as i64,
        "epoll_create1",
    )?;
    let ev = fd(
        unsafe { libc::eventfd(1, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) } as i64,
        "eventfd",
    )?;
    let mut event = libc::epoll_event {
        events: libc::EPOLLIN as u32,
        u64: 7,
    };
    cvt(
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
        unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) } as i64,
        "eventfd",
    )?;
    let one: u64 = 1;
    if unsafe { libc::write(ev.as_raw_fd(), (&one as *const u64).cast(), 8) } != 8 {
        return Err(last("write eventfd"));
    }
    let mut got: u64 = 0;
    if unsafe { libc::read(ev.as_raw_fd(), (&mut got as *mut u64).cast(), 8) } != 8 || got != 1 {
        return Err(last("read eventfd"));
    }
    Ok(())
}

/// Blocks SIGUSR1, sends it to ourselves and reads it back through a signalfd.
pub(super) fn signalfd() -> Check {
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
        unsafe { libc::timerfd_settime(tfd.as_raw_fd(), 0, &spec, std::ptr::null_mut()) } as i64,
        "timerfd_settime",
    )?;
    // Blocking read: returns once the 1 ms timer expired.
    let mut expirations: u64 = 0;
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
