//! Host stdio to the agent's streams: pipes or a pty, raw mode on the host terminal,
//! SIGWINCH to `resize_tty`, and the signals husk receives forwarded to the container.

use std::fs::OpenOptions;
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex};

use husk_protocol::{ExitStatus, StreamHello, StreamKind, PROTOCOL_VERSION};

use crate::agent::{attach_stream, AgentClient, Error as AgentError, Pump, WaitSent};
use crate::backend::VmHandle;

use super::AGENT_REACH_TIMEOUT;

/// Where a process's stdio goes.
#[derive(Debug, Clone)]
pub enum Stdio {
    /// husk's own stdin/stdout/stderr; `stdin`: `-i`, `tty`: `-t`.
    Host { stdin: bool, tty: bool },
    /// stdout and stderr appended to a log file (detached containers); no stdin.
    Log { path: std::path::PathBuf, tty: bool },
    /// The FIFOs containerd gives a shim (a path per stream, `None` for a stream nobody
    /// reads or writes); with `tty` the pty's output goes to `stdout`.
    Fifos {
        stdin: Option<PathBuf>,
        stdout: Option<PathBuf>,
        stderr: Option<PathBuf>,
        tty: bool,
    },
}

/// The signals `husk run`/`exec` forward to the container (as docker's sig-proxy does),
/// plus SIGWINCH for the pty size.
const FORWARDED: [i32; 5] = [
    libc::SIGINT,
    libc::SIGTERM,
    libc::SIGHUP,
    libc::SIGQUIT,
    libc::SIGWINCH,
];

/// Whom a signal goes to; filled in as the container comes up.
#[derive(Default)]
pub struct SignalTarget {
    pub vm: Option<Arc<dyn VmHandle>>,
    pub agent: Option<(Arc<AgentClient>, String, Option<String>)>,
    /// A tty process: SIGWINCH resizes it.
    pub tty: bool,
}

/// Blocks the forwarded signals in this thread (and every thread spawned after) and starts
/// the thread that receives them. Call before any other thread starts.
pub fn forward_signals() -> Arc<Mutex<SignalTarget>> {
    let target = Arc::new(Mutex::new(SignalTarget::default()));
    // SAFETY: plain sigset manipulation on a zeroed set we own.
    let set = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in FORWARDED {
            libc::sigaddset(&mut set, s);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    };
    let t = target.clone();
    let _ = std::thread::Builder::new()
        .name("husk-signals".into())
        .spawn(move || loop {
            let mut sig = 0;
            // SAFETY: sigwait on a valid set, writing into our local.
            if unsafe { libc::sigwait(&set, &mut sig) } != 0 {
                continue;
            }
            deliver(&t, sig);
        });
    target
}

/// 128+N once a forwarded signal N is ending this process (before the container ran).
static ENDING: AtomicI32 = AtomicI32::new(0);

/// The exit status a forwarded signal is ending this process with, if one is: a command whose
/// boot then fails (its VM killed by that signal) exits with it, and says nothing of the
/// failure it caused.
pub fn ending_for_signal() -> Option<i32> {
    match ENDING.load(Ordering::SeqCst) {
        0 => None,
        code => Some(code),
    }
}

fn deliver(target: &Mutex<SignalTarget>, sig: i32) {
    let t = lock(target);
    match (&t.agent, sig) {
        (Some((agent, id, exec)), libc::SIGWINCH) => {
            if t.tty {
                if let Some((rows, cols)) = terminal_size() {
                    let _ = agent.resize_tty(id, exec.as_deref(), rows, cols);
                }
            }
        }
        (_, libc::SIGWINCH) => {}
        (Some((agent, id, exec)), _) => {
            if let Err(e) = agent.signal(id, exec.as_deref(), sig) {
                tracing::debug!("forwarding signal {sig}: {e}");
            }
        }
        (None, _) => {
            // Not started yet: give up on the container, and leave no VM behind. Said first,
            // so that the boot failing under us (its VM killed) is not reported instead.
            ENDING.store(128 + sig, Ordering::SeqCst);
            if let Some(vm) = &t.vm {
                let _ = vm.kill();
            }
            std::process::exit(128 + sig);
        }
    }
}

/// Rows and columns of the terminal on husk's stdin (or stdout).
pub fn terminal_size() -> Option<(u16, u16)> {
    for fd in [0, 1] {
        // SAFETY: TIOCGWINSZ writes a winsize into the struct we pass.
        let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
        // SAFETY: TIOCGWINSZ writes one winsize into `ws`, a live local of that type; a bad or
        // non-tty fd only makes it fail.
        if unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut ws) } == 0 && ws.ws_row > 0 {
            return Some((ws.ws_row, ws.ws_col));
        }
    }
    None
}

/// The host terminal in raw mode until dropped.
pub struct RawMode {
    saved: libc::termios,
}

impl RawMode {
    /// Raw mode on stdin if it is a terminal.
    pub fn enter() -> Option<RawMode> {
        // SAFETY: termios calls on fd 0 with structs we own.
        unsafe {
            if libc::isatty(0) != 1 {
                return None;
            }
            let mut t: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(0, &mut t) != 0 {
                return None;
            }
            let saved = t;
            libc::cfmakeraw(&mut t);
            if libc::tcsetattr(0, libc::TCSANOW, &t) != 0 {
                return None;
            }
            Some(RawMode { saved })
        }
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        // SAFETY: restores the attributes read in `enter`.
        unsafe {
            libc::tcsetattr(0, libc::TCSANOW, &self.saved);
        }
    }
}

/// The streams of one process, being pumped.
pub struct Attached {
    pub pump: Pump,
    pub raw: Option<RawMode>,
    /// Pipes with `-i`: the agent gets EOF when husk's stdin ends.
    pub stdin_attached: bool,
}

fn stream(
    uds: &Path,
    container: &str,
    exec: Option<&str>,
    kind: StreamKind,
) -> Result<std::os::unix::net::UnixStream, AgentError> {
    attach_stream(
        uds,
        StreamHello {
            version: PROTOCOL_VERSION,
            container_id: container.to_string(),
            exec_id: exec.map(str::to_string),
            kind,
        },
        AGENT_REACH_TIMEOUT,
    )
}

fn io_err(uds: &Path) -> impl Fn(io::Error) -> AgentError + '_ {
    move |source| AgentError::Io {
        uds: uds.to_path_buf(),
        source,
    }
}

impl Attached {
    /// Waits for the process (`exec`, or the container's own) to end while `target` forwards
    /// husk's signals to it, then drains its output and restores the host terminal.
    pub fn wait(
        self,
        agent: &Arc<AgentClient>,
        container: &str,
        exec: Option<&str>,
        target: Option<&Mutex<SignalTarget>>,
    ) -> Result<ExitStatus, AgentError> {
        self.wait_sent(agent.send_wait(container, exec), target)
    }

    /// [`wait`](Self::wait) for a `Wait` already sent ([`AgentClient::send_wait`]).
    pub fn wait_sent(
        mut self,
        sent: Result<WaitSent<'_>, AgentError>,
        target: Option<&Mutex<SignalTarget>>,
    ) -> Result<ExitStatus, AgentError> {
        let exit = sent.and_then(|w| w.exit(None));
        let _ = self.pump.wait_output();
        drop(self.raw.take());
        if let Some(t) = target {
            lock(t).agent = None;
        }
        exit
    }
}

/// From now on the signals `target` receives go to `container`'s process (`exec`, or its own)
/// through `agent`; `tty`: SIGWINCH resizes its pty.
pub fn follow(
    target: &Mutex<SignalTarget>,
    agent: &Arc<AgentClient>,
    container: &str,
    exec: Option<&str>,
    tty: bool,
) {
    let mut t = lock(target);
    t.agent = Some((
        agent.clone(),
        container.to_string(),
        exec.map(str::to_string),
    ));
    t.tty = tty;
}

/// The VM a signal that comes before the process runs ends (no VM is left behind).
pub fn guard_vm(target: &Mutex<SignalTarget>, vm: &Arc<dyn VmHandle>) {
    lock(target).vm = Some(vm.clone());
}

fn lock(target: &Mutex<SignalTarget>) -> std::sync::MutexGuard<'_, SignalTarget> {
    target.lock().unwrap_or_else(|p| p.into_inner())
}

/// Connects the process's streams to `stdio` and starts pumping. Call after
/// `create_container`/`exec_process`; output produced meanwhile waits in the guest.
pub fn attach(
    agent: &AgentClient,
    uds: &Path,
    container: &str,
    exec: Option<&str>,
    stdio: &Stdio,
) -> Result<Attached, AgentError> {
    let mut pump = Pump::new();
    let mut raw = None;
    let mut stdin_attached = false;
    match stdio {
        Stdio::Host { stdin, tty: true } => {
            let s = stream(uds, container, exec, StreamKind::Pty)?;
            if *stdin {
                raw = RawMode::enter();
                pump.pty(io::stdin(), io::stdout(), s)
                    .map_err(io_err(uds))?;
            } else {
                pump.output(s, io::stdout()).map_err(io_err(uds))?;
            }
        }
        Stdio::Host { stdin, tty: false } => {
            if *stdin {
                let s = stream(uds, container, exec, StreamKind::Stdin)?;
                pump.input(io::stdin(), s).map_err(io_err(uds))?;
                stdin_attached = true;
            } else {
                agent.close_stdin(container, exec)?;
            }
            let out = stream(uds, container, exec, StreamKind::Stdout)?;
            pump.output(out, io::stdout()).map_err(io_err(uds))?;
            let err = stream(uds, container, exec, StreamKind::Stderr)?;
            pump.output(err, io::stderr()).map_err(io_err(uds))?;
        }
        Stdio::Log { path, tty } => {
            // What the container prints is its owner's alone.
            let log = OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o600)
                .open(path)
                .map_err(io_err(uds))?;
            if *tty {
                let s = stream(uds, container, exec, StreamKind::Pty)?;
                pump.output(s, log).map_err(io_err(uds))?;
            } else {
                agent.close_stdin(container, exec)?;
                let out = stream(uds, container, exec, StreamKind::Stdout)?;
                let err = stream(uds, container, exec, StreamKind::Stderr)?;
                pump.output(out, log.try_clone().map_err(io_err(uds))?)
                    .map_err(io_err(uds))?;
                pump.output(err, log).map_err(io_err(uds))?;
            }
        }
        Stdio::Fifos {
            stdin,
            stdout,
            stderr,
            tty,
        } => {
            let sink = |p: &Option<PathBuf>| -> io::Result<Box<dyn io::Write + Send>> {
                Ok(match p {
                    Some(p) => Box::new(open_fifo_for_output(p)?),
                    None => Box::new(io::sink()),
                })
            };
            if *tty {
                let s = stream(uds, container, exec, StreamKind::Pty)?;
                let out = sink(stdout).map_err(io_err(uds))?;
                match stdin {
                    Some(p) => pump.pty(FifoReader::new(p), out, s).map_err(io_err(uds))?,
                    None => pump.output(s, out).map_err(io_err(uds))?,
                }
            } else {
                match stdin {
                    Some(p) => {
                        let s = stream(uds, container, exec, StreamKind::Stdin)?;
                        pump.input(FifoReader::new(p), s).map_err(io_err(uds))?;
                        stdin_attached = true;
                    }
                    None => agent.close_stdin(container, exec)?,
                }
                let out = stream(uds, container, exec, StreamKind::Stdout)?;
                pump.output(out, sink(stdout).map_err(io_err(uds))?)
                    .map_err(io_err(uds))?;
                let err = stream(uds, container, exec, StreamKind::Stderr)?;
                pump.output(err, sink(stderr).map_err(io_err(uds))?)
                    .map_err(io_err(uds))?;
            }
        }
    }
    Ok(Attached {
        pump,
        raw,
        stdin_attached,
    })
}

/// An output FIFO opened read-write: the open does not wait for a reader, and output written
/// after the reader went away (a detached `ctr`) is not an error that ends the pump.
fn open_fifo_for_output(path: &Path) -> io::Result<std::fs::File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(path)
}

/// An input FIFO opened on the first read, in the pump's thread: opening it for reading
/// waits for its writer, which containerd may open after the process starts.
struct FifoReader {
    path: PathBuf,
    file: Option<std::fs::File>,
}

impl FifoReader {
    fn new(path: &Path) -> FifoReader {
        FifoReader {
            path: path.to_path_buf(),
            file: None,
        }
    }
}

impl io::Read for FifoReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.file.is_none() {
            self.file = Some(
                OpenOptions::new()
                    .read(true)
                    .custom_flags(libc::O_CLOEXEC)
                    .open(&self.path)?,
            );
        }
        match &mut self.file {
            Some(f) => f.read(buf),
            None => Ok(0),
        }
    }
}
