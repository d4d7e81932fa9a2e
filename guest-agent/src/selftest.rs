//! The syscall-surface self-test: exercises each kernel interface a distribution kernel gives
//! containers and that `tinyconfig` turns off, so a fragment that silently lost one is caught
//! in the guest rather than by a user's workload.
//!
//! Each check prints `SELFTEST <name> ok` or `SELFTEST <name> FAIL <errno> <what>`, then
//! `SELFTEST done pass=N fail=M`. Checks use libc directly: the point is the raw syscall.

use std::ffi::CString;
use std::fs;
use std::io::{Read, Write};
use std::mem::{size_of, zeroed};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

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
/// mounting cgroup2, creating a cgroup), which a host run must not do.
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
                move || inotify(&s)
            }),
        ),
        ("fanotify", Box::new(fanotify)),
        ("posix-timers", Box::new(posix_timers)),
        ("io_uring", Box::new(io_uring)),
        ("memfd", Box::new(memfd)),
        ("userfaultfd", Box::new(userfaultfd)),
        ("sysv-ipc", Box::new(sysv_ipc)),
        ("mqueue", Box::new(mqueue)),
        ("epoll", Box::new(epoll)),
        ("eventfd", Box::new(eventfd)),
        ("signalfd", Box::new(signalfd)),
        ("timerfd", Box::new(timerfd)),
        ("futex", Box::new(futex)),
        ("aio", Box::new(aio)),
        ("seccomp", Box::new(seccomp)),
        ("bpf", Box::new(bpf)),
        ("namespaces", Box::new(namespaces)),
        ("cgroup2", Box::new(move || cgroup2(pid1))),
        ("ipv4", Box::new(move || tcp_loopback("127.0.0.1:0", pid1))),
        ("ipv6", Box::new(move || tcp_loopback("[::1]:0", pid1))),
        ("packet", Box::new(packet)),
        ("vsock", Box::new(vsock)),
        ("proc-sys", Box::new(proc_sys)),
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

fn inotify(dir: &Path) -> Check {
    let ino = fd(
        unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) } as i64,
        "inotify_init1",
    )?;
    let cdir =
        CString::new(dir.as_os_str().as_encoded_bytes()).map_err(|_| fail(libc::EINVAL, "path"))?;
    cvt(
        unsafe { libc::inotify_add_watch(ino.as_raw_fd(), cdir.as_ptr(), libc::IN_CREATE) } as i64,
        "inotify_add_watch",
    )?;
    let file = dir.join(format!("husk-selftest-inotify-{}", std::process::id()));
    fs::write(&file, b"x").map_err(|e| io_fail(e, "create watched file"))?;
    let _ = fs::remove_file(&file);
    let mut buf = [0u8; 512];
    let n = unsafe { libc::read(ino.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
    if n <= 0 {
        return Err(last("read inotify event"));
    }
    Ok(())
}

fn fanotify() -> Check {
    let flags = libc::FAN_CLASS_NOTIF | libc::FAN_CLOEXEC | libc::FAN_NONBLOCK;
    fd(
        unsafe { libc::fanotify_init(flags, libc::O_RDONLY as u32) } as i64,
        "fanotify_init",
    )
    .map(drop)
}

fn posix_timers() -> Check {
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

fn io_uring() -> Check {
    // struct io_uring_params is 120 bytes; all zero asks for defaults.
    let mut params = [0u32; 30];
    let ring = fd(
        unsafe { libc::syscall(libc::SYS_io_uring_setup, 4u32, params.as_mut_ptr()) },
        "io_uring_setup",
    )?;
    // sq_entries (word 0) is filled in by the kernel.
    if params[0] < 4 {
        return Err(fail(
            libc::EINVAL,
            format!("io_uring_setup gave {} sq entries", params[0]),
        ));
    }
    drop(ring);
    Ok(())
}

fn memfd() -> Check {
    let name = c"husk-selftest";
    let mfd = fd(
        unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING) }
            as i64,
        "memfd_create",
    )?;
    let mut f = fs::File::from(mfd);
    f.write_all(b"husk")
        .map_err(|e| io_fail(e, "write memfd"))?;
    cvt(
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

fn userfaultfd() -> Check {
    let ufd = fd(
        unsafe { libc::syscall(libc::SYS_userfaultfd, libc::O_CLOEXEC | libc::O_NONBLOCK) },
        "userfaultfd",
    )?;
    // UFFDIO_API = _IOWR(0xAA, 0x3F, struct uffdio_api { u64 api, features, ioctls })
    const UFFDIO_API: u64 = 0xC018_AA3F;
    let mut api = [0xAAu64, 0, 0];
    cvt(
        unsafe { libc::ioctl(ufd.as_raw_fd(), UFFDIO_API as _, api.as_mut_ptr()) } as i64,
        "ioctl(UFFDIO_API)",
    )?;
    Ok(())
}

fn sysv_ipc() -> Check {
    let shm = cvt(
        unsafe { libc::shmget(libc::IPC_PRIVATE, 4096, libc::IPC_CREAT | 0o600) } as i64,
        "shmget",
    )?;
    unsafe { libc::shmctl(shm as i32, libc::IPC_RMID, std::ptr::null_mut()) };
    let sem = cvt(
        unsafe { libc::semget(libc::IPC_PRIVATE, 1, libc::IPC_CREAT | 0o600) } as i64,
        "semget",
    )?;
    unsafe { libc::semctl(sem as i32, 0, libc::IPC_RMID) };
    let msg = cvt(
        unsafe { libc::msgget(libc::IPC_PRIVATE, libc::IPC_CREAT | 0o600) } as i64,
        "msgget",
    )?;
    unsafe { libc::msgctl(msg as i32, libc::IPC_RMID, std::ptr::null_mut()) };
    Ok(())
}

fn mqueue() -> Check {
    let name = CString::new(format!("/husk-selftest-{}", std::process::id()))
        .map_err(|_| fail(libc::EINVAL, "name"))?;
    let mq = unsafe {
        libc::mq_open(
            name.as_ptr(),
            libc::O_CREAT | libc::O_RDWR | libc::O_CLOEXEC,
            0o600 as libc::mode_t,
            std::ptr::null_mut::<libc::mq_attr>(),
        )
    };
    if mq < 0 {
        return Err(last("mq_open"));
    }
    let sent = unsafe { libc::mq_send(mq, c"ping".as_ptr(), 4, 0) };
    let res = if sent < 0 {
        Err(last("mq_send"))
    } else {
        Ok(())
    };
    unsafe {
        libc::mq_close(mq);
        libc::mq_unlink(name.as_ptr());
    }
    res
}

/// An eventfd made readable, watched by an epoll instance that must report it.
fn epoll() -> Check {
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

fn eventfd() -> Check {
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
fn signalfd() -> Check {
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

fn timerfd() -> Check {
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

fn futex() -> Check {
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

fn aio() -> Check {
    let mut ctx: libc::c_ulong = 0;
    cvt(
        unsafe { libc::syscall(libc::SYS_io_setup, 8, &mut ctx) },
        "io_setup",
    )?;
    unsafe { libc::syscall(libc::SYS_io_destroy, ctx) };
    Ok(())
}

/// Runs `child` in a forked child and returns its exit status: 0 for success, else an errno.
/// The child only makes raw syscalls, so forking a possibly multi-threaded process is safe.
fn in_child(what: &str, child: impl FnOnce() -> i32) -> Check {
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(last("fork"));
    }
    if pid == 0 {
        let code = child();
        unsafe { libc::_exit(code) };
    }
    let mut status = 0;
    loop {
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        if r == pid {
            break;
        }
        if r < 0 && Errno::last_raw() != libc::EINTR {
            return Err(last("waitpid"));
        }
    }
    if libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0 {
        Ok(())
    } else if libc::WIFEXITED(status) {
        Err(fail(libc::WEXITSTATUS(status), what))
    } else {
        Err(fail(
            libc::EINTR,
            format!("{what}: child killed by signal {}", libc::WTERMSIG(status)),
        ))
    }
}

/// A forked child installs an allow-all seccomp filter and checks it is in filter mode.
fn seccomp() -> Check {
    in_child("prctl(NO_NEW_PRIVS)+seccomp(SET_MODE_FILTER)", || unsafe {
        let allow = [libc::sock_filter {
            code: (libc::BPF_RET | libc::BPF_K) as u16,
            jt: 0,
            jf: 0,
            k: libc::SECCOMP_RET_ALLOW,
        }];
        let prog = libc::sock_fprog {
            len: 1,
            filter: allow.as_ptr() as *mut _,
        };
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
            return Errno::last_raw();
        }
        if libc::syscall(libc::SYS_seccomp, libc::SECCOMP_SET_MODE_FILTER, 0, &prog) != 0 {
            return Errno::last_raw();
        }
        // 2 = SECCOMP_MODE_FILTER
        if libc::prctl(libc::PR_GET_SECCOMP, 0, 0, 0, 0) != 2 {
            return libc::EINVAL;
        }
        0
    })
}

/// Loads the smallest socket filter (`r0 = 0; exit`) and creates a one-entry array map.
fn bpf() -> Check {
    const BPF_MAP_CREATE: i64 = 0;
    const BPF_PROG_LOAD: i64 = 5;
    const BPF_PROG_TYPE_SOCKET_FILTER: u32 = 1;
    const BPF_MAP_TYPE_ARRAY: u32 = 2;
    // struct bpf_insn { u8 code; u8 dst:4, src:4; s16 off; s32 imm } as u64 little-endian.
    let insns: [u64; 2] = [
        0xb7, // BPF_ALU64 | BPF_MOV | BPF_K: r0 = 0
        0x95, // BPF_JMP | BPF_EXIT
    ];
    let license = c"GPL";
    // union bpf_attr, prog-load arm: prog_type, insn_cnt, insns, license, log_level, log_size,
    // log_buf, kern_version, ... The rest stays zero.
    #[repr(C)]
    struct ProgLoad {
        prog_type: u32,
        insn_cnt: u32,
        insns: u64,
        license: u64,
        log_level: u32,
        log_size: u32,
        log_buf: u64,
        kern_version: u32,
        prog_flags: u32,
    }
    let attr = ProgLoad {
        prog_type: BPF_PROG_TYPE_SOCKET_FILTER,
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        log_level: 0,
        log_size: 0,
        log_buf: 0,
        kern_version: 0,
        prog_flags: 0,
    };
    let prog = fd(
        unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_PROG_LOAD,
                &attr,
                size_of::<ProgLoad>() as u32,
            )
        },
        "bpf(BPF_PROG_LOAD)",
    )?;
    // Attach it to a socket: what a workload does with a socket filter.
    let sock = fd(
        unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) } as i64,
        "socket",
    )?;
    let pfd = prog.as_raw_fd();
    cvt(
        unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_ATTACH_BPF,
                (&pfd as *const i32).cast(),
                4,
            )
        } as i64,
        "setsockopt(SO_ATTACH_BPF)",
    )?;
    #[repr(C)]
    struct MapCreate {
        map_type: u32,
        key_size: u32,
        value_size: u32,
        max_entries: u32,
        map_flags: u32,
    }
    let map = MapCreate {
        map_type: BPF_MAP_TYPE_ARRAY,
        key_size: 4,
        value_size: 4,
        max_entries: 1,
        map_flags: 0,
    };
    fd(
        unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_CREATE,
                &map,
                size_of::<MapCreate>() as u32,
            )
        },
        "bpf(BPF_MAP_CREATE)",
    )
    .map(drop)
}

/// A forked child unshares every namespace a container runtime uses.
fn namespaces() -> Check {
    in_child("unshare(user|mnt|uts|ipc|pid|net|cgroup)", || unsafe {
        let flags = libc::CLONE_NEWUSER
            | libc::CLONE_NEWNS
            | libc::CLONE_NEWUTS
            | libc::CLONE_NEWIPC
            | libc::CLONE_NEWPID
            | libc::CLONE_NEWNET
            | libc::CLONE_NEWCGROUP;
        if libc::unshare(flags) != 0 {
            return Errno::last_raw();
        }
        if libc::sethostname(c"husk-selftest".as_ptr(), 13) != 0 {
            return Errno::last_raw();
        }
        0
    })
}

const CGROUP_ROOT: &str = "/sys/fs/cgroup";
const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;
const WANT_CONTROLLERS: [&str; 5] = ["cpu", "memory", "pids", "io", "cpuset"];

/// Mounts cgroup2 (as PID 1), checks the controllers container runtimes need are offered,
/// enables them for children and creates a child cgroup that gets their interface files.
fn cgroup2(pid1: bool) -> Check {
    let mut st: libc::statfs = unsafe { zeroed() };
    let root = CString::new(CGROUP_ROOT).map_err(|_| fail(libc::EINVAL, "path"))?;
    let mounted = unsafe { libc::statfs(root.as_ptr(), &mut st) } == 0
        && st.f_type as i64 == CGROUP2_SUPER_MAGIC;
    if !mounted {
        if !pid1 {
            return Err(fail(
                libc::ENOENT,
                format!("{CGROUP_ROOT} is not cgroup2 on this host"),
            ));
        }
        let _ = fs::create_dir_all(CGROUP_ROOT);
        nix::mount::mount(
            Some("cgroup2"),
            CGROUP_ROOT,
            Some("cgroup2"),
            nix::mount::MsFlags::MS_NOSUID
                | nix::mount::MsFlags::MS_NODEV
                | nix::mount::MsFlags::MS_NOEXEC,
            None::<&str>,
        )
        .map_err(|e| fail(e as i32, "mount cgroup2"))?;
    }
    let controllers = fs::read_to_string(format!("{CGROUP_ROOT}/cgroup.controllers"))
        .map_err(|e| io_fail(e, "read cgroup.controllers"))?;
    let offered: Vec<&str> = controllers.split_whitespace().collect();
    let missing: Vec<&str> = WANT_CONTROLLERS
        .iter()
        .copied()
        .filter(|c| !offered.contains(c))
        .collect();
    if !missing.is_empty() {
        return Err(fail(
            libc::ENOENT,
            format!(
                "controllers missing: {} (offered: {})",
                missing.join(" "),
                controllers.trim()
            ),
        ));
    }
    if !pid1 {
        return Ok(());
    }
    let enable: Vec<String> = WANT_CONTROLLERS.iter().map(|c| format!("+{c}")).collect();
    fs::write(
        format!("{CGROUP_ROOT}/cgroup.subtree_control"),
        enable.join(" "),
    )
    .map_err(|e| io_fail(e, "enable controllers in cgroup.subtree_control"))?;
    let child = format!("{CGROUP_ROOT}/husk-selftest");
    fs::create_dir(&child).map_err(|e| io_fail(e, "mkdir child cgroup"))?;
    let files = [
        "cpu.max",
        "memory.max",
        "pids.max",
        "io.stat",
        "cpuset.cpus",
    ];
    let absent: Vec<&str> = files
        .iter()
        .copied()
        .filter(|f| fs::metadata(format!("{child}/{f}")).is_err())
        .collect();
    let _ = fs::remove_dir(&child);
    if !absent.is_empty() {
        return Err(fail(
            libc::ENOENT,
            format!("child cgroup lacks {}", absent.join(" ")),
        ));
    }
    Ok(())
}

/// Brings the loopback interface up (SIOCSIFFLAGS), as PID 1 must before using 127.0.0.1.
fn loopback_up() -> Check {
    let sock = fd(
        unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) } as i64,
        "socket",
    )?;
    let mut req: libc::ifreq = unsafe { zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    cvt(
        unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) } as i64,
        "ioctl(SIOCGIFFLAGS lo)",
    )?;
    let flags = unsafe { req.ifr_ifru.ifru_flags };
    if flags & libc::IFF_UP as i16 != 0 {
        return Ok(());
    }
    req.ifr_ifru.ifru_flags = flags | libc::IFF_UP as i16;
    cvt(
        unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) } as i64,
        "ioctl(SIOCSIFFLAGS lo up)",
    )?;
    Ok(())
}

/// Listens on a loopback address, connects to it and passes a byte across.
fn tcp_loopback(addr: &str, pid1: bool) -> Check {
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
fn packet() -> Check {
    let proto = (libc::ETH_P_ALL as u16).to_be();
    let sock = fd(
        unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                proto as i32,
            )
        } as i64,
        "socket(AF_PACKET)",
    )?;
    let ifindex = unsafe { libc::if_nametoindex(c"lo".as_ptr()) };
    if ifindex == 0 {
        return Err(last("if_nametoindex(lo)"));
    }
    let mut sll: libc::sockaddr_ll = unsafe { zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = proto;
    sll.sll_ifindex = ifindex as i32;
    cvt(
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
fn vsock() -> Check {
    fd(
        unsafe { libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) } as i64,
        "socket(AF_VSOCK)",
    )
    .map(drop)
}

fn proc_sys() -> Check {
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
