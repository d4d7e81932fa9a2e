//! Starting a process through the re-executed `init` helper, agent side.
//!
//! The agent is multi-threaded, and namespaces, `chroot` and the other per-process setup must
//! happen in a single-threaded process, so each container init or exec is created by running
//! `/proc/self/exe init` (see [`crate::init`]). The helper gets the process's stdio as fds
//! 0-2, a SOCK_SEQPACKET sync socket as fd 3 and the JSON config on a pipe as fd 4. It sets
//! up namespaces, then clones the real process with CLONE_PARENT (so the agent is its parent
//! and reaps it) and exits. Messages on the sync socket, one per packet:
//! `F` carrying a stdio fd (agent, three in fd order, to a spare helper started as `init
//! spare` with `/dev/null` stdio before it was needed: [`prepare_spare`]),
//! `P<pid>` (helper: the process's pid), `T` carrying a pty master fd (process, when it has
//! a terminal: the pty comes from the container's own devpts), `R` (process: set up,
//! waiting), `E<message>` (either: failed); the agent answers `S` to start, and the socket
//! reaching EOF means the exec succeeded (fd 3 is close-on-exec by then).

use std::io::{self, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::sync::Mutex;

use husk_protocol::{ContainerSpec, NamespaceKind, ProcessSpec};
use serde::{Deserialize, Serialize};

use crate::reaper;
use crate::seccomp::Filter;
use crate::stdio::ChildStdio;

/// What the helper is asked to do.
#[derive(Debug, Serialize, Deserialize)]
pub struct InitConfig {
    pub mode: Mode,
    pub process: ProcessSpec,
    pub seccomp: Option<Filter>,
}

#[derive(Debug, Serialize, Deserialize)]
pub enum Mode {
    /// A container's init: new namespaces, the rootfs at `rootfs` becomes `/`.
    Create {
        spec: Box<ContainerSpec>,
        rootfs: PathBuf,
    },
    /// Another process in the namespaces of `target` (the container init's pid).
    Exec {
        target: i32,
        namespaces: Vec<NamespaceKind>,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("cannot run the init helper (/proc/self/exe init): {0}")]
    Helper(#[source] io::Error),
    #[error("sync socket with the init helper: {0}")]
    Sync(#[source] io::Error),
    #[error("encoding the init config: {0}")]
    EncodeConfig(#[source] serde_json::Error),
    #[error("sending the init config: {0}")]
    SendConfig(#[source] io::Error),
    #[error("{0}")]
    Setup(String),
    #[error("the init helper exited before the process was ready (see the guest console)")]
    Vanished,
}

/// A process set up and waiting for its start byte.
pub struct Spawned {
    pub pid: i32,
    /// The pty master, for a process with a terminal.
    pub pty: Option<OwnedFd>,
    gate: OwnedFd,
}

fn socketpair() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: socketpair writes two fds into `fds`, a live [c_int; 2].
    let rc = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: socketpair succeeded, so both fds are fresh and owned by nobody else: each OwnedFd
    // is its only owner.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Receives one packet; empty at EOF.
pub fn recv(fd: RawFd) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; 64 << 10];
    loop {
        // SAFETY: recv() writes at most buf.len() bytes into `buf`, a live Vec we own.
        let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n >= 0 {
            buf.truncate(n as usize);
            return Ok(buf);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Receives one packet and the descriptor passed with it, if any; empty at EOF.
pub fn recv_fd(fd: RawFd) -> io::Result<(Vec<u8>, Option<OwnedFd>)> {
    husk_fdpass::recv_fd(fd, 64 << 10)
}

/// Sends `msg` with the descriptor `pass` attached.
pub use husk_fdpass::send_fd;

pub fn send(fd: RawFd, msg: &[u8]) -> io::Result<()> {
    // SAFETY: send() reads msg.len() bytes from `msg`, borrowed for the call.
    let n = unsafe { libc::send(fd, msg.as_ptr().cast(), msg.len(), libc::MSG_NOSIGNAL) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Runs the helper with `cfg` and waits until the process is set up (or failed).
pub fn spawn(cfg: &InitConfig, stdio: ChildStdio) -> Result<Spawned, SpawnError> {
    Helper::start(stdio)?.configure(cfg)
}

/// An init helper that runs (exec'd, its runtime up) and waits for its configuration: started
/// first, it comes up while the caller prepares what the configuration names (a container's
/// root filesystem). Dropped unconfigured, it reads end-of-file and exits.
pub struct Helper {
    sync: OwnedFd,
    config: std::fs::File,
}

/// One helper started ahead of need ([`prepare_spare`]), taken by the next [`Helper::start`].
static SPARE: Mutex<Option<Helper>> = Mutex::new(None);

/// Starts a spare helper, with `/dev/null` as stdio until a process takes it: exec'd and
/// waiting before the host asks for a container, so that the first container's create skips
/// the spawn. Called from the agent's idle-priority thread: the helper comes up at idle
/// priority, off the host's first requests, and takes the normal one once taken. In a VM
/// template's guest it is started before the template is saved, and every clone has it
/// waiting (under TCG a clone's first spawn and exec cost ~35 ms, code its QEMU has not
/// translated yet).
pub fn prepare_spare() -> Result<(), SpawnError> {
    let null = || {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/null")
            .map(OwnedFd::from)
            .map_err(SpawnError::Helper)
    };
    let stdio = ChildStdio {
        stdin: null()?,
        stdout: null()?,
        stderr: null()?,
    };
    let helper = Helper::launch(stdio, true)?;
    *SPARE.lock().unwrap_or_else(|e| e.into_inner()) = Some(helper);
    Ok(())
}

impl Helper {
    /// A helper with `stdio`: the spare one if there is one (handed `stdio` over its sync
    /// socket), else `/proc/self/exe init` started now; its configuration follows in
    /// [`configure`](Self::configure).
    pub fn start(stdio: ChildStdio) -> Result<Helper, SpawnError> {
        let spare = SPARE.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(spare) = spare {
            match spare.hand_stdio(&stdio) {
                Ok(()) => return Ok(spare),
                Err(e) => say!("husk-agent: the spare init helper is gone ({e}); starting one"),
            }
        }
        Self::launch(stdio, false)
    }

    /// Passes `stdio` to a spare helper, one descriptor per packet (`F`), in fd order.
    fn hand_stdio(&self, stdio: &ChildStdio) -> io::Result<()> {
        for fd in [&stdio.stdin, &stdio.stdout, &stdio.stderr] {
            send_fd(self.sync.as_raw_fd(), b"F", fd.as_raw_fd())?;
        }
        Ok(())
    }

    /// Starts `/proc/self/exe init` (`init spare` when `spare`) with `stdio`.
    fn launch(stdio: ChildStdio, spare: bool) -> Result<Helper, SpawnError> {
        let (ours, theirs) = socketpair().map_err(SpawnError::Sync)?;
        let mut fds = [0; 2];
        // SAFETY: pipe2 writes two fds into `fds`, a live [c_int; 2].
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
            return Err(SpawnError::Helper(io::Error::last_os_error()));
        }
        // SAFETY: pipe2 succeeded, so both fds are fresh and owned by nobody else: each OwnedFd
        // is its only owner.
        let (cfg_r, cfg_w) =
            unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        let pid = crate::spawn::helper(&stdio, theirs.as_raw_fd(), cfg_r.as_raw_fd(), spare)
            .map_err(SpawnError::Helper)?;
        // The child has its copies; the parent's ends close here.
        drop((stdio, theirs, cfg_r));
        // The helper's status is of no interest; let the reaper discard it.
        drop(reaper::watch(pid));
        Ok(Helper {
            sync: ours,
            config: std::fs::File::from(cfg_w),
        })
    }

    /// Sends `cfg` and waits until the process is set up (or failed).
    pub fn configure(self, cfg: &InitConfig) -> Result<Spawned, SpawnError> {
        let Helper { sync: ours, config } = self;
        let json = serde_json::to_vec(cfg).map_err(SpawnError::EncodeConfig)?;
        let mut w = config;
        w.write_all(&json).map_err(SpawnError::SendConfig)?;
        drop(w);
        let tv = libc::timeval {
            tv_sec: 60,
            tv_usec: 0,
        };
        // SAFETY: `tv` is a live timeval and the length passed is exactly its size; setsockopt only
        // reads it.
        unsafe {
            libc::setsockopt(
                ours.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        // `P` (from the helper) and `R` (from the process) race; wait for both.
        let (mut pid, mut ready, mut pty) = (None, false, None);
        while pid.is_none() || !ready {
            let (msg, fd) = recv_fd(ours.as_raw_fd()).map_err(SpawnError::Sync)?;
            match msg.first() {
                None => return Err(SpawnError::Vanished),
                Some(b'T') if fd.is_some() => pty = fd,
                Some(b'P') => pid = String::from_utf8_lossy(&msg[1..]).parse::<i32>().ok(),
                Some(b'R') => ready = true,
                Some(b'E') => {
                    return Err(SpawnError::Setup(
                        String::from_utf8_lossy(&msg[1..]).into_owned(),
                    ))
                }
                Some(_) => {
                    return Err(SpawnError::Setup(
                        "unexpected message from the init helper".into(),
                    ))
                }
            }
        }
        let pid = pid.ok_or_else(|| {
            SpawnError::Setup("the init helper never said the process's pid".into())
        })?;
        if cfg.process.terminal && pty.is_none() {
            return Err(SpawnError::Setup(
                "the process has a terminal but the init helper sent no pty".into(),
            ));
        }
        Ok(Spawned {
            pid,
            pty,
            gate: ours,
        })
    }
}

impl Spawned {
    /// Lets the process exec; an error if the exec failed.
    pub fn start(self) -> Result<(), SpawnError> {
        send(self.gate.as_raw_fd(), b"S").map_err(SpawnError::Sync)?;
        let msg = recv(self.gate.as_raw_fd()).map_err(SpawnError::Sync)?;
        match msg.first() {
            None => Ok(()),
            Some(b'E') => Err(SpawnError::Setup(
                String::from_utf8_lossy(&msg[1..]).into_owned(),
            )),
            Some(_) => Err(SpawnError::Setup(
                "unexpected message from the process before exec".into(),
            )),
        }
    }
}

/// `pid`'s pid as its own pid namespace sees it (last `NSpid` entry).
pub fn ns_pid(pid: i32) -> u32 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("NSpid:"))
                .and_then(|l| l.split_whitespace().last().and_then(|p| p.parse().ok()))
        })
        .unwrap_or(pid as u32)
}
