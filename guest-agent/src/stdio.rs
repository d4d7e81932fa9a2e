//! A process's stdio on the agent side, and the pumps between it and the host's streams.
//!
//! Pipes (or the pty master) are not read until the host attaches the matching stream, so
//! output written before the attach waits in the kernel pipe (the process blocks once it is
//! full) and nothing is lost. Every stream is one-way except a pty's. EOF travels both ways:
//! the host ending stdin closes the pipe's write end; the process closing stdout ends the
//! stream with shutdown(WR).

use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::{Mutex, OnceLock};

use husk_protocol::{ErrorCode, ErrorReply, StreamKind};

use crate::pty;
use crate::vsock::{fd_read, fd_write_all, VsockStream, CHUNK};

/// The agent's ends of a process's stdio.
pub enum Stdio {
    Pipes {
        stdin: Mutex<Option<OwnedFd>>,
        stdout: Mutex<Option<OwnedFd>>,
        stderr: Mutex<Option<OwnedFd>>,
        /// The attached stdin stream, so `CloseStdin` can end its pump.
        stdin_stream: Mutex<Option<VsockStream>>,
    },
    /// The master arrives from the init helper once it has opened the pty inside the
    /// container (see [`crate::process`]).
    Pty {
        master: OnceLock<OwnedFd>,
        attached: Mutex<bool>,
    },
}

/// The process's ends: fds 0, 1, 2 (/dev/null for a terminal process until the helper
/// puts the pty slave there).
pub struct ChildStdio {
    pub stdin: OwnedFd,
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
}

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two fds into `fds`, a live [c_int; 2].
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: pipe2 succeeded, so both fds are fresh and owned by nobody else: each OwnedFd is its
    // only owner.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

impl Stdio {
    pub fn new(terminal: bool) -> io::Result<(Stdio, ChildStdio)> {
        if terminal {
            let null = OwnedFd::from(
                std::fs::File::options()
                    .read(true)
                    .write(true)
                    .open("/dev/null")?,
            );
            let child = ChildStdio {
                stdin: null.try_clone()?,
                stdout: null.try_clone()?,
                stderr: null,
            };
            return Ok((
                Stdio::Pty {
                    master: OnceLock::new(),
                    attached: Mutex::new(false),
                },
                child,
            ));
        }
        let (in_r, in_w) = pipe()?;
        let (out_r, out_w) = pipe()?;
        let (err_r, err_w) = pipe()?;
        Ok((
            Stdio::Pipes {
                stdin: Mutex::new(Some(in_w)),
                stdout: Mutex::new(Some(out_r)),
                stderr: Mutex::new(Some(err_r)),
                stdin_stream: Mutex::new(None),
            },
            ChildStdio {
                stdin: in_r,
                stdout: out_w,
                stderr: err_w,
            },
        ))
    }

    /// Takes the pty master the init helper opened.
    pub fn set_pty_master(&self, fd: OwnedFd) {
        if let Stdio::Pty { master, .. } = self {
            let _ = master.set(fd);
        }
    }

    /// Hands `stream` its end of the process's stdio and starts the pump. `ready` is called
    /// first (it sends `Ready`), so no raw byte goes out before the handshake's answer.
    pub fn attach(
        &self,
        kind: StreamKind,
        stream: VsockStream,
        ready: impl FnOnce(&VsockStream) -> io::Result<()>,
    ) -> Result<(), ErrorReply> {
        let internal =
            |e: io::Error| ErrorReply::new(ErrorCode::Internal, format!("attaching {kind:?}: {e}"));
        match (self, kind) {
            (Stdio::Pipes { stdout, .. }, StreamKind::Stdout) => {
                let fd = take_when_ready(stdout, kind, &stream, ready)?;
                spawn("stdout-pump", move || output_pump(fd, stream, false));
            }
            (Stdio::Pipes { stderr, .. }, StreamKind::Stderr) => {
                let fd = take_when_ready(stderr, kind, &stream, ready)?;
                spawn("stderr-pump", move || output_pump(fd, stream, false));
            }
            (
                Stdio::Pipes {
                    stdin,
                    stdin_stream,
                    ..
                },
                StreamKind::Stdin,
            ) => {
                let fd = take_when_ready(stdin, kind, &stream, ready)?;
                *lock(stdin_stream) = stream.try_clone().ok();
                spawn("stdin-pump", move || input_pump(stream, fd));
            }
            (Stdio::Pty { master, attached }, StreamKind::Pty) => {
                let mut a = lock(attached);
                if *a {
                    return Err(ErrorReply::new(
                        ErrorCode::AlreadyExists,
                        "the pty stream is already attached",
                    ));
                }
                let master = pty_master(master)?;
                let m_in = master.try_clone().map_err(internal)?;
                let m_out = master.try_clone().map_err(internal)?;
                let s_in = stream.try_clone().map_err(internal)?;
                ready(&stream).map_err(internal)?;
                *a = true;
                spawn("pty-in-pump", move || input_pump(s_in, m_in));
                spawn("pty-out-pump", move || output_pump(m_out, stream, true));
            }
            (Stdio::Pty { .. }, k) => {
                return Err(ErrorReply::new(
                    ErrorCode::InvalidRequest,
                    format!("the process runs on a terminal: attach one Pty stream, not {k:?}"),
                ))
            }
            (Stdio::Pipes { .. }, StreamKind::Pty) => {
                return Err(ErrorReply::new(
                    ErrorCode::InvalidRequest,
                    "the process has no terminal: attach Stdin/Stdout/Stderr streams, not Pty",
                ))
            }
        }
        Ok(())
    }

    /// Ends the process's input: closes the stdin pipe (ending an attached pump), or sends
    /// the terminal's end-of-file character.
    pub fn close_stdin(&self) -> io::Result<()> {
        match self {
            Stdio::Pipes {
                stdin,
                stdin_stream,
                ..
            } => {
                drop(lock(stdin).take());
                if let Some(s) = lock(stdin_stream).take() {
                    // The pump's read returns 0 and it drops the pipe.
                    let _ = s.shutdown(Shutdown::Read);
                }
                Ok(())
            }
            Stdio::Pty { master, .. } => match master.get() {
                Some(m) => fd_write_all(m.as_raw_fd(), &[4]),
                None => Err(io::Error::other("the pty is not open yet")),
            },
        }
    }

    pub fn resize(&self, rows: u16, cols: u16) -> Result<(), ErrorReply> {
        match self {
            Stdio::Pty { master, .. } => pty::resize(pty_master(master)?.as_raw_fd(), rows, cols)
                .map_err(|e| ErrorReply::new(ErrorCode::Internal, format!("TIOCSWINSZ: {e}"))),
            Stdio::Pipes { .. } => Err(ErrorReply::new(
                ErrorCode::InvalidState,
                "the process has no terminal to resize",
            )),
        }
    }
}

fn pty_master(m: &OnceLock<OwnedFd>) -> Result<&OwnedFd, ErrorReply> {
    m.get()
        .ok_or_else(|| ErrorReply::new(ErrorCode::InvalidState, "the pty is not open yet"))
}

/// Takes a pipe end out of `slot` for `stream`, once `ready` has answered the handshake. If
/// that fails (the host gave up on this connection), the fd goes back into `slot` so the
/// host's next attach gets it, rather than being tied to a dead stream or closed.
fn take_when_ready(
    slot: &Mutex<Option<OwnedFd>>,
    kind: StreamKind,
    stream: &VsockStream,
    ready: impl FnOnce(&VsockStream) -> io::Result<()>,
) -> Result<OwnedFd, ErrorReply> {
    let fd = lock(slot).take().ok_or_else(|| {
        ErrorReply::new(
            ErrorCode::AlreadyExists,
            format!("the {kind:?} stream is already attached"),
        )
    })?;
    match ready(stream) {
        Ok(()) => Ok(fd),
        Err(e) => {
            *lock(slot) = Some(fd);
            Err(ErrorReply::new(
                ErrorCode::Internal,
                format!("attaching {kind:?}: {e}"),
            ))
        }
    }
}

fn spawn(name: &str, f: impl FnOnce() + Send + 'static) {
    if let Err(e) = std::thread::Builder::new().name(name.into()).spawn(f) {
        say!("husk-agent: cannot start {name}: {e}");
    }
}

/// Process output → host, until the process closes it (a pty reports EIO once every slave
/// fd is closed), then shutdown(WR) so the host sees EOF.
fn output_pump(fd: OwnedFd, stream: VsockStream, pty: bool) {
    let mut buf = vec![0u8; CHUNK];
    let mut out = &stream;
    loop {
        let n = match fd_read(fd.as_raw_fd(), &mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if pty && e.raw_os_error() == Some(libc::EIO) => break,
            Err(e) => {
                say!("husk-agent: reading process output: {e}");
                break;
            }
        };
        if let Err(e) = out.write_all(&buf[..n]) {
            // The host went away; dropping the read end gives the writer EPIPE. Said on the
            // console: output lost this way otherwise looks like output never written.
            say!("husk-agent: relaying process output to the host: {e}");
            return;
        }
    }
    if pty {
        // A pty stream also carries input: a half-close over vsock would cut that too, and
        // the process is gone anyway.
        let _ = stream.shutdown(Shutdown::Both);
    } else {
        let _ = stream.shutdown(Shutdown::Write);
    }
}

/// Host → process input, until the host half-closes (or `CloseStdin`), then close the pipe.
fn input_pump(stream: VsockStream, fd: OwnedFd) {
    let mut buf = vec![0u8; CHUNK];
    let mut inp = &stream;
    loop {
        let n = match inp.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        if fd_write_all(fd.as_raw_fd(), &buf[..n]).is_err() {
            // The process closed its stdin (EPIPE) or the pty went away.
            break;
        }
    }
    drop(fd);
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
