//! The syscalls each husk-vmm thread kind may make: what its code and the Rust/glibc runtime
//! under it were seen to need (strace and `--seccomp log` over every device path), nothing
//! more. Arguments are checked where Firecracker checks them: ioctl numbers (KVM's type, the
//! two TUN requests, FIONBIO), no executable mappings, unix sockets only, threads (never
//! processes) from `clone`, `prctl` for thread names only.

use std::collections::BTreeMap;

use seccompiler::{
    BackendError, SeccompCmpArgLen as Len, SeccompCmpOp as Op, SeccompCondition as Cond,
    SeccompRule,
};

use super::thread_kind::ThreadKind;

pub type Rules = BTreeMap<i64, Vec<SeccompRule>>;

/// KVM's ioctl type (`_IO(KVMIO, …)`, KVMIO = 0xAE), in bits 8..16 of the request.
const KVMIO: u64 = 0xAE;

/// The syscalls of any thread: memory, futexes, signals' return, time, exit, stderr.
const RUNTIME: &[i64] = &[
    libc::SYS_brk,
    libc::SYS_clock_gettime,
    libc::SYS_clock_nanosleep,
    libc::SYS_close,
    libc::SYS_exit,
    libc::SYS_exit_group,
    libc::SYS_futex,
    libc::SYS_getpid,
    libc::SYS_getrandom,
    libc::SYS_gettid,
    libc::SYS_madvise,
    libc::SYS_munmap,
    libc::SYS_nanosleep,
    libc::SYS_restart_syscall,
    libc::SYS_rt_sigprocmask,
    libc::SYS_rt_sigreturn,
    libc::SYS_sched_yield,
    libc::SYS_sigaltstack,
    libc::SYS_write,
];

/// An event loop (event-manager over epoll) with eventfds.
const EVENT_LOOP: &[i64] = &[
    libc::SYS_epoll_ctl,
    libc::SYS_fcntl,
    libc::SYS_epoll_pwait,
    libc::SYS_epoll_wait,
    libc::SYS_read,
];

/// What a vCPU needs besides KVM: device register writes activate devices (eventfds, irqfds,
/// the worker's event loop, the vhost-user session's set-up messages) and reset them.
const VCPU: &[i64] = &[
    libc::SYS_epoll_create1,
    libc::SYS_timerfd_create,
    libc::SYS_epoll_ctl,
    libc::SYS_eventfd2,
    libc::SYS_fcntl,
    libc::SYS_read,
    libc::SYS_recvmsg,
    libc::SYS_sendmsg,
];

const BLOCK: &[i64] = &[
    libc::SYS_fdatasync,
    libc::SYS_fsync,
    libc::SYS_lseek,
    libc::SYS_pread64,
    libc::SYS_preadv,
    libc::SYS_preadv2,
    libc::SYS_pwrite64,
    libc::SYS_pwritev,
    libc::SYS_pwritev2,
];

const VSOCK: &[i64] = &[
    libc::SYS_accept,
    libc::SYS_accept4,
    libc::SYS_connect,
    libc::SYS_fcntl,
    libc::SYS_getsockopt,
    libc::SYS_readv,
    libc::SYS_recvfrom,
    libc::SYS_recvmsg,
    libc::SYS_sendmsg,
    libc::SYS_sendto,
    libc::SYS_shutdown,
    libc::SYS_timerfd_gettime,
    libc::SYS_timerfd_settime,
    libc::SYS_writev,
];

const NET: &[i64] = &[libc::SYS_readv, libc::SYS_writev];

const FS: &[i64] = &[
    libc::SYS_recvfrom,
    libc::SYS_recvmsg,
    libc::SYS_sendmsg,
    libc::SYS_sendto,
];

/// A new thread's start-up (glibc, Rust's std), before its closure installs its own filter.
const THREAD_START: &[i64] = &[
    libc::SYS_rseq,
    libc::SYS_sched_getaffinity,
    libc::SYS_set_robust_list,
];

/// The allow-list of `kind`. `fast_exit`: the main thread may fork once, to leave the VM's
/// destruction to a child (see `vmm::teardown`).
pub fn rules(kind: ThreadKind, fast_exit: bool) -> Result<Rules, BackendError> {
    let mut r = Rules::new();
    allow(&mut r, RUNTIME);
    r.insert(libc::SYS_mmap, vec![not_executable(2)?]);
    r.insert(libc::SYS_mprotect, vec![not_executable(2)?]);
    r.insert(libc::SYS_mremap, vec![]);
    // abort() raises SIGABRT on itself; nothing else.
    r.insert(
        libc::SYS_tgkill,
        vec![rule(vec![eq(2, libc::SIGABRT as u64)?])?],
    );
    match kind {
        ThreadKind::Main => {
            allow(&mut r, EVENT_LOOP);
            // Kicking vCPUs out of KVM_RUN (any real-time or abort signal, own threads).
            r.insert(libc::SYS_tgkill, vec![]);
            if fast_exit {
                allow(&mut r, &[libc::SYS_pipe2, libc::SYS_wait4]);
                // fork(): a process, not a thread.
                r.insert(
                    libc::SYS_clone,
                    vec![rule(vec![Cond::new(
                        0,
                        Len::Qword,
                        Op::MaskedEq(libc::CLONE_THREAD as u64),
                        0,
                    )?])?],
                );
            }
        }
        ThreadKind::Vcpu => {
            allow(&mut r, VCPU);
            r.insert(
                libc::SYS_ioctl,
                vec![
                    rule(vec![Cond::new(
                        1,
                        Len::Dword,
                        Op::MaskedEq(0xff00),
                        KVMIO << 8,
                    )?])?,
                    rule(vec![eq(1, libc::TUNSETOFFLOAD)?])?,
                    rule(vec![eq(1, libc::TUNSETVNETHDRSZ)?])?,
                    fionbio()?,
                ],
            );
        }
        ThreadKind::Block => {
            allow(&mut r, EVENT_LOOP);
            allow(&mut r, BLOCK);
        }
        ThreadKind::Vsock => {
            allow(&mut r, EVENT_LOOP);
            allow(&mut r, VSOCK);
            r.insert(libc::SYS_socket, vec![unix_socket()?]);
            r.insert(libc::SYS_ioctl, vec![fionbio()?]);
        }
        ThreadKind::Net => {
            allow(&mut r, EVENT_LOOP);
            allow(&mut r, NET);
        }
        ThreadKind::Fs => {
            allow(&mut r, EVENT_LOOP);
            allow(&mut r, FS);
            r.insert(libc::SYS_ioctl, vec![fionbio()?]);
        }
        ThreadKind::Spawner => {
            // Every worker starts under this filter too (filters stack), so it is the union
            // of theirs, plus making threads. It reads nothing but its request channel.
            for set in [EVENT_LOOP, BLOCK, VSOCK, NET, FS, THREAD_START] {
                allow(&mut r, set);
            }
            r.insert(libc::SYS_socket, vec![unix_socket()?]);
            r.insert(libc::SYS_ioctl, vec![fionbio()?]);
            // clone3's flags live in memory a filter cannot read: it answers ENOSYS (a
            // second filter) and glibc falls back to clone, checked here.
            r.insert(libc::SYS_clone3, vec![]);
            let thread = (libc::CLONE_THREAD | libc::CLONE_VM) as u64;
            r.insert(
                libc::SYS_clone,
                vec![rule(vec![Cond::new(
                    0,
                    Len::Qword,
                    Op::MaskedEq(thread),
                    thread,
                )?])?],
            );
            // Thread names, and a new worker installing its own (stricter) filter: filters
            // only ever add restrictions.
            r.insert(
                libc::SYS_prctl,
                vec![
                    rule(vec![eq(0, libc::PR_SET_NAME as u64)?])?,
                    rule(vec![eq(0, libc::PR_SET_NO_NEW_PRIVS as u64)?])?,
                ],
            );
            r.insert(
                libc::SYS_seccomp,
                vec![rule(vec![eq(0, libc::SECCOMP_SET_MODE_FILTER as u64)?])?],
            );
        }
    }
    Ok(r)
}

/// Allows each of `syscalls` whatever its arguments.
pub(super) fn allow(r: &mut Rules, syscalls: &[i64]) {
    for &nr in syscalls {
        r.insert(nr, vec![]);
    }
}

fn rule(conditions: Vec<Cond>) -> Result<SeccompRule, BackendError> {
    SeccompRule::new(conditions)
}

fn eq(arg: u8, value: u64) -> Result<Cond, BackendError> {
    Cond::new(arg, Len::Qword, Op::Eq, value)
}

/// `prot` (argument `arg`) without PROT_EXEC: husk-vmm never makes code at run time.
fn not_executable(arg: u8) -> Result<SeccompRule, BackendError> {
    rule(vec![Cond::new(
        arg,
        Len::Dword,
        Op::MaskedEq(libc::PROT_EXEC as u64),
        0,
    )?])
}

/// `ioctl(fd, FIONBIO, …)`: std's `set_nonblocking` on sockets.
fn fionbio() -> Result<SeccompRule, BackendError> {
    rule(vec![eq(1, libc::FIONBIO)?])
}

/// `socket(AF_UNIX, …)` only: guest-initiated vsock connections go to host unix sockets.
fn unix_socket() -> Result<SeccompRule, BackendError> {
    rule(vec![Cond::new(
        0,
        Len::Dword,
        Op::Eq,
        libc::AF_UNIX as u64,
    )?])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_spawner_makes_threads_and_no_one_execs() {
        for kind in ThreadKind::ALL {
            let r = rules(kind, false).unwrap();
            assert_eq!(
                r.contains_key(&libc::SYS_clone3),
                kind == ThreadKind::Spawner,
                "{kind}"
            );
            for nr in [
                libc::SYS_execve,
                libc::SYS_execveat,
                libc::SYS_ptrace,
                libc::SYS_open,
                libc::SYS_openat,
                libc::SYS_rt_sigaction,
                libc::SYS_setuid,
                libc::SYS_mount,
                libc::SYS_unshare,
            ] {
                assert!(!r.contains_key(&nr), "{kind} allows syscall {nr}");
            }
        }
        assert!(!rules(ThreadKind::Main, false)
            .unwrap()
            .contains_key(&libc::SYS_clone));
        assert!(rules(ThreadKind::Main, true)
            .unwrap()
            .contains_key(&libc::SYS_clone));
    }

    #[test]
    fn ioctls_only_where_a_device_needs_them() {
        for kind in ThreadKind::ALL {
            let r = rules(kind, true).unwrap();
            let want = !matches!(kind, ThreadKind::Main | ThreadKind::Block | ThreadKind::Net);
            assert_eq!(r.contains_key(&libc::SYS_ioctl), want, "{kind}");
        }
    }
}
