//! stdio streams: one vsock connection per stream, raw bytes after a one-frame handshake, and
//! a pump between host file descriptors and those connections.
//!
//! The pump copies through one fixed buffer per direction and blocks on the slower side, so
//! a process flooding stdout into a host that does not read is held back by the pipe in the
//! guest instead of filling host memory. EOF travels as a half-close: host stdin ending shuts
//! down the stream's write side (the agent then closes the process's stdin), and the agent
//! closing stdout/stderr ends the copy to the host.

use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::thread::JoinHandle;
use std::time::Duration;

use husk_protocol::{read_message, write_message, StreamHello, StreamReply, AGENT_VSOCK_PORT};

use super::{vsock, Error};

/// Bytes moved per write, so no single write holds the stream for long.
pub const CHUNK: usize = 16 << 10;

/// Opens a stdio stream: connects (retrying until `timeout`, like the control connection),
/// sends `hello`, and returns the connection once the agent says `Ready`.
pub fn attach_stream(
    uds: &Path,
    hello: StreamHello,
    timeout: Duration,
) -> Result<UnixStream, Error> {
    let mut s = vsock::connect(uds, AGENT_VSOCK_PORT, timeout)?;
    let io_err = |source| Error::Io {
        uds: uds.to_path_buf(),
        source,
    };
    s.set_read_timeout(Some(timeout)).map_err(io_err)?;
    write_message(&mut s, &hello).map_err(|source| Error::Codec {
        request: "stream hello",
        source,
    })?;
    let reply = read_message::<StreamReply>(&mut s).map_err(|source| Error::Codec {
        request: "stream hello",
        source,
    })?;
    match reply {
        Some(StreamReply::Ready) => {
            s.set_read_timeout(None).map_err(io_err)?;
            Ok(s)
        }
        Some(StreamReply::Refused(error)) => Err(Error::StreamRefused {
            kind: hello.kind,
            container_id: hello.container_id,
            error,
        }),
        None => Err(Error::Disconnected(format!(
            "agent closed the {:?} stream of {} before answering",
            hello.kind, hello.container_id
        ))),
    }
}

/// Copies `src` into the stream until `src` ends, then half-closes the stream so the guest
/// sees EOF. Only for one-way (`Stdin`) streams: over vsock the half-close also ends the
/// guest's sending side. Returns the bytes copied.
pub fn copy_to_stream(src: &mut impl Read, stream: &UnixStream) -> io::Result<u64> {
    let mut dst = stream;
    let n = copy_chunks(src, &mut dst)?;
    match stream.shutdown(Shutdown::Write) {
        // The agent may have closed the stream already (the process exited).
        Err(e) if e.kind() != io::ErrorKind::NotConnected => return Err(e),
        _ => {}
    }
    Ok(n)
}

/// Copies the stream into `dst` until the agent closes it. Returns the bytes copied.
pub fn copy_from_stream(stream: &UnixStream, dst: &mut impl Write) -> io::Result<u64> {
    let mut src = stream;
    copy_chunks(&mut src, dst)
}

fn copy_chunks(src: &mut impl Read, dst: &mut impl Write) -> io::Result<u64> {
    let mut buf = vec![0u8; CHUNK];
    let mut total = 0u64;
    loop {
        let n = match src.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        dst.write_all(&buf[..n])?;
        // Interactive output must not sit in a buffered writer.
        dst.flush()?;
        total += n as u64;
    }
    Ok(total)
}

/// Threads moving bytes between host fds and attached streams.
///
/// Output copies are joined by [`Pump::wait_output`]; input copies are left to finish on
/// their own (a host stdin may never end), and they do once the agent closes the stream or
/// the source ends.
#[derive(Default)]
pub struct Pump {
    outputs: Vec<JoinHandle<io::Result<u64>>>,
    inputs: Vec<JoinHandle<io::Result<u64>>>,
}

impl Pump {
    pub fn new() -> Self {
        Self::default()
    }

    /// Host → guest: `src` (e.g. stdin) into `stream` (a `Stdin` or `Pty` stream).
    pub fn input(
        &mut self,
        mut src: impl Read + Send + 'static,
        stream: UnixStream,
    ) -> io::Result<()> {
        let h = std::thread::Builder::new()
            .name("husk-stdin-pump".into())
            .spawn(move || copy_to_stream(&mut src, &stream))?;
        self.inputs.push(h);
        Ok(())
    }

    /// Guest → host: `stream` (a `Stdout`, `Stderr` or `Pty` stream) into `dst`.
    pub fn output(
        &mut self,
        stream: UnixStream,
        mut dst: impl Write + Send + 'static,
    ) -> io::Result<()> {
        let h = std::thread::Builder::new()
            .name("husk-stdout-pump".into())
            .spawn(move || {
                let copied = copy_from_stream(&stream, &mut dst);
                if let Err(e) = &copied {
                    // Joined only after the container exits: say it now, or output cut short
                    // looks like output the container never wrote.
                    tracing::warn!("an output stream from the guest broke off: {e}");
                }
                copied
            })?;
        self.outputs.push(h);
        Ok(())
    }

    /// Both directions of a pty stream. The end of `input` is *not* sent as a half-close,
    /// which would also cut the output (see the module docs of `crate::agent`): the caller
    /// sends `CloseStdin` when [`Pump::wait_input`] returns, if it wants the guest to see it.
    pub fn pty(
        &mut self,
        mut input: impl Read + Send + 'static,
        output: impl Write + Send + 'static,
        stream: UnixStream,
    ) -> io::Result<()> {
        let mut to_guest = stream.try_clone()?;
        let h = std::thread::Builder::new()
            .name("husk-pty-pump".into())
            .spawn(move || copy_chunks(&mut input, &mut to_guest))?;
        self.inputs.push(h);
        self.output(stream, output)
    }

    /// Waits until every output stream has been closed by the agent and copied out; returns
    /// the bytes per output in the order they were added.
    pub fn wait_output(&mut self) -> io::Result<Vec<u64>> {
        let mut totals = Vec::new();
        for h in self.outputs.drain(..) {
            totals.push(
                h.join()
                    .map_err(|_| io::Error::other("output pump thread panicked"))??,
            );
        }
        Ok(totals)
    }

    /// Waits for the input copies too; only for sources known to end (files, pipes).
    pub fn wait_input(&mut self) -> io::Result<Vec<u64>> {
        let mut totals = Vec::new();
        for h in self.inputs.drain(..) {
            totals.push(
                h.join()
                    .map_err(|_| io::Error::other("input pump thread panicked"))??,
            );
        }
        Ok(totals)
    }
}
