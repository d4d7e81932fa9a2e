//! The `init` helper: `husk-agent init`, re-executed by the agent for each process it runs
//! (see [`crate::process`] for the protocol). Single-threaded, so it may unshare and setns
//! freely. On any failure it reports `E<why>` on the sync socket and exits.
//!
//! [`namespaces`] creates or joins the namespaces, [`mounts`] builds the container's
//! filesystem tree (every spec path resolved inside the root by [`in_root`]), [`devices`]
//! fills /dev and makes the terminal, [`exec`] applies the process spec and execs.

mod devices;
mod exec;
mod in_root;
mod mounts;
mod namespaces;

use std::fmt::Display;
use std::fs;
use std::io::{self, Read};
use std::os::fd::{FromRawFd, RawFd};

use husk_protocol::{NamespaceKind, RlimitKind};

use crate::process::{recv, send, InitConfig, Mode};

const SYNC: RawFd = 3;
const CONFIG: RawFd = 4;

/// A failed step of the helper; the message names the operation and the path or id.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("reading the init config from fd 4: {0}")]
    ReadConfig(#[source] io::Error),
    #[error("decoding the init config: {0}")]
    DecodeConfig(#[source] serde_json::Error),
    #[error("{0:?} namespaces are not supported by husk-agent")]
    UnsupportedNamespace(NamespaceKind),
    /// A system call with no path of its own (unshare, clone, setsid, ...).
    #[error("{op}: {source}")]
    Sys {
        op: &'static str,
        #[source]
        source: io::Error,
    },
    /// An operation on a path of the agent's own view (/proc/<pid>/ns/*, the rootfs).
    #[error("{op} {path}: {source}")]
    Path {
        op: &'static str,
        path: String,
        #[source]
        source: io::Error,
    },
    /// An operation on a path as the container sees it, resolved inside its root.
    #[error("{op} {path} inside the container root: {source}")]
    InRoot {
        op: &'static str,
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("mounting {src} ({fstype}) on {dest}: {source}")]
    Mount {
        src: String,
        fstype: String,
        dest: String,
        #[source]
        source: io::Error,
    },
    #[error("sysctl {key:?} is not a kernel parameter name (no '/', no '..')")]
    BadSysctl { key: String },
    #[error("sysctl {key}={value:?} (/proc/sys/{path}): {source}")]
    Sysctl {
        key: String,
        value: String,
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("setrlimit {kind:?} to soft {soft} hard {hard}: {source}")]
    Rlimit {
        kind: RlimitKind,
        soft: u64,
        hard: u64,
        #[source]
        source: io::Error,
    },
    #[error("{op}: {source}")]
    Capabilities {
        op: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("installing the seccomp filter: {0}")]
    Seccomp(#[source] io::Error),
    #[error("{op}({id}): {source}")]
    User {
        op: &'static str,
        id: String,
        #[source]
        source: io::Error,
    },
    #[error("{0} contains a NUL byte")]
    Nul(&'static str),
    #[error("sync socket with the agent: {0}")]
    Sync(#[source] io::Error),
}

pub type Result<T> = std::result::Result<T, InitError>;

/// `Err(errno)` for a negative return.
fn cvt(rc: impl Into<i64>) -> io::Result<()> {
    if rc.into() < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn sys(op: &'static str) -> impl FnOnce(io::Error) -> InitError {
    move |source| InitError::Sys { op, source }
}

fn on_path(op: &'static str, path: impl Display) -> impl FnOnce(io::Error) -> InitError {
    let path = path.to_string();
    move |source| InitError::Path { op, path, source }
}

fn inside(op: &'static str, path: impl Display) -> impl FnOnce(io::Error) -> InitError {
    let path = path.to_string();
    move |source| InitError::InRoot { op, path, source }
}

/// Entry point of `husk-agent init`. Never returns.
pub fn main() -> ! {
    // The agent ignores SIGPIPE; ignored dispositions survive exec, the process must not
    // inherit that.
    // SAFETY: resetting dispositions to SIG_DFL for the catchable signals (SIGKILL/SIGSTOP
    // skipped) touches no memory; the helper has installed no handler anything relies on.
    unsafe {
        for sig in 1..32 {
            if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                libc::signal(sig, libc::SIG_DFL);
            }
        }
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
        libc::syscall(libc::SYS_close_range, 5u32, u32::MAX, 0u32);
    }
    let spare = std::env::args().nth(2).as_deref() == Some("spare");
    let stdio = if spare { take_stdio() } else { Ok(()) };
    let err = match stdio.and_then(|()| read_config()).and_then(run) {
        Ok(never) => match never {},
        Err(e) => e,
    };
    let _ = send(SYNC, format!("E{err}").as_bytes());
    // SAFETY: _exit ends the single-threaded helper at once; the error already went to the sync
    // socket and no destructor needs to run.
    unsafe { libc::_exit(1) }
}

/// A spare helper's stdio, which the agent sends once a process takes the helper: three
/// `F` packets on the sync socket, each with the descriptor for fd 0, 1 and 2 in turn. Before
/// that its stdio is `/dev/null`; end-of-file (the agent dropped it) ends it quietly. Taken,
/// it leaves the idle priority it came up at (off the host's first requests) for the normal
/// one, which the process it starts inherits.
fn take_stdio() -> Result<()> {
    for target in 0..3 {
        let (msg, fd) = crate::process::recv_fd(SYNC).map_err(InitError::Sync)?;
        let fd = match (msg.as_slice(), fd) {
            (b"F", Some(fd)) => fd,
            // SAFETY: _exit ends the single-threaded helper at once; nothing is left to flush.
            ([], _) => unsafe { libc::_exit(0) },
            _ => {
                return Err(InitError::Sync(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "expected a stdio descriptor from the agent",
                )))
            }
        };
        // SAFETY: dup2 onto 0-2 only replaces this process's stdio with a descriptor it owns.
        cvt(unsafe { libc::dup2(std::os::fd::AsRawFd::as_raw_fd(&fd), target) })
            .map_err(sys("dup2 of a stdio descriptor"))?;
    }
    let normal = libc::sched_param { sched_priority: 0 };
    // SAFETY: pid 0 is this single-threaded process; sched_setscheduler reads `normal`, which
    // outlives the call.
    cvt(unsafe { libc::sched_setscheduler(0, libc::SCHED_OTHER, &normal) })
        .map_err(sys("sched_setscheduler (normal priority)"))?;
    Ok(())
}

fn read_config() -> Result<InitConfig> {
    // SAFETY: fd 4 (CONFIG) is the config pipe the agent's pre_exec placed there for this process
    // alone; nothing else in the helper owns or closes it, so the File is its only owner.
    let mut f = unsafe { fs::File::from_raw_fd(CONFIG) };
    let mut buf = Vec::new();
    f.read_to_end(&mut buf).map_err(InitError::ReadConfig)?;
    serde_json::from_slice(&buf).map_err(InitError::DecodeConfig)
}

enum Never {}

fn run(cfg: InitConfig) -> Result<Never> {
    // Through the agent's /proc while it is still there; fork and exec inherit it.
    if let Some(adj) = cfg.process.oom_score_adj {
        fs::write("/proc/self/oom_score_adj", adj.to_string())
            .map_err(on_path("writing", "/proc/self/oom_score_adj"))?;
    }
    match &cfg.mode {
        Mode::Create { spec, rootfs } => {
            let flags = namespaces::flags(&spec.namespaces)?;
            // SAFETY: unshare takes only flags; the helper is single-threaded, as unsharing a user
            // or mount namespace requires.
            cvt(unsafe { libc::unshare(flags) }).map_err(sys("unshare"))?;
            fork_parent()?;
            mounts::setup_container(spec, rootfs, &cfg.process)?;
        }
        Mode::Exec { target, namespaces } => {
            namespaces::join(*target, namespaces)?;
            fork_parent()?;
            if cfg.process.terminal {
                let root = in_root::open_root("/".as_ref()).map_err(on_path("opening", "/"))?;
                devices::terminal(&root, &cfg.process, false)?;
            }
        }
    }
    send(SYNC, b"R").map_err(InitError::Sync)?;
    match recv(SYNC).map_err(InitError::Sync)?.first() {
        Some(b'S') => {}
        // The agent dropped the container before starting it.
        // SAFETY: _exit ends the single-threaded helper at once; nothing is left to flush.
        _ => unsafe { libc::_exit(0) },
    }
    exec::exec(&cfg.process, cfg.seccomp.as_ref())
}

/// clone(CLONE_PARENT): the process becomes the agent's child (so the agent reaps it and
/// learns its status) and, after unshare/setns of a pid namespace, the first process in it.
/// The helper reports the pid and exits; only the child returns.
fn fork_parent() -> Result<()> {
    // SAFETY: a raw clone with no new stack (0) and no pointer arguments behaves as fork: the
    // child gets a copy of this single-threaded process's memory, so no other thread's state is
    // duplicated half-way; CLONE_PARENT | SIGCHLD only changes who is told of its exit.
    let pid = unsafe {
        libc::syscall(
            libc::SYS_clone,
            libc::CLONE_PARENT | libc::SIGCHLD,
            0,
            0,
            0,
            0,
        )
    };
    cvt(pid).map_err(sys("clone(CLONE_PARENT)"))?;
    if pid > 0 {
        let _ = send(SYNC, format!("P{pid}").as_bytes());
        // SAFETY: _exit ends the helper's parent side at once; the child's pid already went to the
        // sync socket and no destructor needs to run.
        unsafe { libc::_exit(0) }
    }
    Ok(())
}
