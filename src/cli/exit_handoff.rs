//! `husk run` in the foreground answers its caller as soon as the container's process has
//! exited and its output is out; powering the VM off and releasing its network go on
//! afterwards, in the background (`run` leaves `--rm` and `--timings` out: see there).
//!
//! Before any thread starts, `husk run` forks. The parent is the process the caller waits on:
//! it reads one message from a pipe, the exit code, and exits with it. Signals another process
//! sends it (`kill`, `timeout`) go on to the worker; those the terminal sends (Ctrl-C) reach
//! the worker directly, as both share the process group, and are not passed twice. The worker
//! runs the container as before; once it has the exit status, it restores the terminal,
//! flushes, writes the code, points its stdio at /dev/null and tears down. A worker that fails
//! or dies before that leaves the parent to exit with the worker's own status. A teardown cut
//! short (the worker killed) leaves what a killed `husk run` always left: the state the next
//! command repairs.

use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicI32, Ordering};

/// The signals the parent passes on (those `husk run` forwards to the container).
const PASSED_ON: [libc::c_int; 5] = [
    libc::SIGINT,
    libc::SIGTERM,
    libc::SIGHUP,
    libc::SIGQUIT,
    libc::SIGWINCH,
];

/// The worker's pid, for the parent's signal handler.
static WORKER: AtomicI32 = AtomicI32::new(0);

/// The worker's end of the pipe to the waiting parent.
pub struct Handoff(OwnedFd);

/// Forks into waiting parent and worker, and returns in the worker only. `None` (nothing
/// forked) when this process already runs other threads, or the fork fails: `husk run` then
/// tears down before it exits, as it would without this.
pub fn split() -> Option<Handoff> {
    if !single_threaded() {
        return None;
    }
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two fds into `fds`, a live [c_int; 2].
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return None;
    }
    // SAFETY: pipe2 succeeded: both fds are new and owned by nothing else.
    let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // SAFETY: this process has one thread (checked above), so the child is a complete copy
    // and may go on running ordinary Rust code.
    match unsafe { libc::fork() } {
        -1 => None,
        0 => {
            drop(read);
            Some(Handoff(write))
        }
        worker => {
            drop(write);
            wait_for(read, worker)
        }
    }
}

impl Handoff {
    /// Tells the caller the container's exit `code` (the parent exits with it), after the
    /// output written so far is flushed; from here on this process writes to /dev/null.
    pub fn deliver(self, code: i32) {
        let _ = std::io::stdout().flush();
        let _ = std::io::stderr().flush();
        let bytes = code.to_ne_bytes();
        // SAFETY: write() reads 4 bytes from `bytes`, a live local array; the fd is ours.
        let _ = unsafe { libc::write(self.0.as_raw_fd(), bytes.as_ptr().cast(), bytes.len()) };
        drop(self);
        // SAFETY: open() of a NUL-terminated literal; dup2 onto the standard fds, which this
        // process owns; the new fd is closed after.
        unsafe {
            let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC);
            if null >= 0 {
                for fd in 0..3 {
                    libc::dup2(null, fd);
                }
                libc::close(null);
            }
        }
    }
}

fn single_threaded() -> bool {
    std::fs::read_dir("/proc/self/task").is_ok_and(|d| d.count() == 1)
}

/// The parent: exits with the code the worker sends, or with the worker's own status.
fn wait_for(read: OwnedFd, worker: libc::pid_t) -> ! {
    WORKER.store(worker, Ordering::SeqCst);
    for sig in PASSED_ON {
        // SAFETY: a zeroed sigaction is valid; the handler is an extern "C" fn with the
        // SA_SIGINFO signature that only calls kill(), which is async-signal-safe.
        unsafe {
            let mut act: libc::sigaction = std::mem::zeroed();
            act.sa_sigaction = pass_on as *const () as usize;
            act.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART;
            libc::sigemptyset(&mut act.sa_mask);
            libc::sigaction(sig, &act, std::ptr::null_mut());
        }
    }
    let mut buf = [0u8; 4];
    let mut got = 0;
    while got < buf.len() {
        // SAFETY: read() writes at most the remaining bytes of `buf`, a live local array.
        let n = unsafe {
            libc::read(
                read.as_raw_fd(),
                buf[got..].as_mut_ptr().cast(),
                buf.len() - got,
            )
        };
        match n {
            n if n > 0 => got += n as usize,
            0 => break,
            _ if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted => {}
            _ => break,
        }
    }
    if got == buf.len() {
        std::process::exit(i32::from_ne_bytes(buf));
    }
    std::process::exit(worker_status(worker));
}

/// The worker's exit status as a shell reports it (128+N for signal N).
fn worker_status(worker: libc::pid_t) -> i32 {
    let mut status = 0;
    loop {
        // SAFETY: waitpid on our own child, writing into a live local.
        let rc = unsafe { libc::waitpid(worker, &mut status, 0) };
        if rc == worker {
            break;
        }
        if rc < 0 && std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
            return 125;
        }
    }
    if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else if libc::WIFSIGNALED(status) {
        128 + libc::WTERMSIG(status)
    } else {
        125
    }
}

/// Passes a signal another process sent (si_code ≤ 0: kill, sigqueue, tkill) to the worker;
/// one the kernel sent for the terminal (SI_KERNEL) reached the worker already.
extern "C" fn pass_on(sig: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo_t to an SA_SIGINFO handler.
    let code = unsafe { (*info).si_code };
    if code <= 0 {
        // SAFETY: kill() is async-signal-safe and touches no memory.
        unsafe { libc::kill(WORKER.load(Ordering::SeqCst), sig) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_with_threads_is_not_split() {
        // The test harness runs tests on threads of their own.
        assert!(!single_threaded());
        assert!(split().is_none());
    }
}
