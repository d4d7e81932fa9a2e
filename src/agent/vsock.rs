//! Reaching a guest vsock port through the hybrid unix socket both backends expose
//! (Firecracker's protocol): connect to the socket, write `CONNECT <port>\n`, read one line.
//!
//! Firecracker answers `OK <host port>\n`, husk-agent-mux `OK <guest port>\n`; only the
//! `OK ` prefix means anything to us. A guest with nothing listening yet shows up as a closed
//! connection (or a missing/refusing socket while the VMM starts), so callers retry until a
//! deadline rather than fail on the first try.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use super::Error;

/// Longest line a VMM sends in answer to `CONNECT`.
const MAX_REPLY_LINE: usize = 64;

/// First and longest pause between attempts: short at first because a booting guest's
/// listener appears at an unknown moment, capped so a slow boot costs few wasted tries.
const FIRST_PAUSE: Duration = Duration::from_millis(10);
const MAX_PAUSE: Duration = Duration::from_millis(200);
/// The longest one CONNECT may wait for its answer before a fresh attempt: a transport that
/// lost the connection attempt (a guest that rebooted under it) costs this much, not the
/// whole deadline.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(3);

/// One attempt: connect and do the `CONNECT`/`OK` exchange, each step bounded by `timeout`.
/// On success the stream carries the guest connection's bytes and has no timeouts set.
pub fn connect_once(uds: &Path, port: u32, timeout: Duration) -> io::Result<UnixStream> {
    let mut s = UnixStream::connect(uds)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    s.write_all(format!("CONNECT {port}\n").as_bytes())?;
    let line = read_line(&mut s)?;
    if !line.starts_with("OK ") {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("expected \"OK <port>\" after CONNECT {port}, got {line:?}"),
        ));
    }
    s.set_read_timeout(None)?;
    s.set_write_timeout(None)?;
    Ok(s)
}

/// Reads one `\n`-terminated line a byte at a time: whatever follows it belongs to the guest
/// connection and must stay in the socket.
fn read_line(s: &mut UnixStream) -> io::Result<String> {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        match s.read(&mut byte) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed before the VMM answered CONNECT (nothing listening on \
                     that guest port yet?)",
                ))
            }
            Ok(_) if byte[0] == b'\n' => break,
            Ok(_) if line.len() >= MAX_REPLY_LINE => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "over-long answer to CONNECT",
                ))
            }
            Ok(_) => line.push(byte[0]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(String::from_utf8_lossy(&line).into_owned())
}

/// Retries [`connect_once`] with growing pauses until it succeeds or `timeout` has passed.
pub fn connect(uds: &Path, port: u32, timeout: Duration) -> Result<UnixStream, Error> {
    connect_while(uds, port, timeout, || true)
}

/// [`connect`], giving up early (with the last attempt's error) once `worth_trying` says
/// the other side is gone for good: a VM that ended will never listen.
pub fn connect_while(
    uds: &Path,
    port: u32,
    timeout: Duration,
    mut worth_trying: impl FnMut() -> bool,
) -> Result<UnixStream, Error> {
    let start = Instant::now();
    let deadline = start + timeout;
    let mut pause = FIRST_PAUSE;
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        let left = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1))
            .min(ATTEMPT_TIMEOUT);
        match connect_once(uds, port, left) {
            Ok(s) => {
                tracing::debug!(uds = %uds.display(), port, attempts, elapsed = ?start.elapsed(), "vsock connected");
                return Ok(s);
            }
            Err(e) => {
                let now = Instant::now();
                if now >= deadline || !worth_trying() {
                    return Err(Error::ConnectTimeout {
                        uds: uds.to_path_buf(),
                        port,
                        secs: now
                            .duration_since(start)
                            .as_secs_f64()
                            .min(timeout.as_secs_f64()),
                        attempts,
                        last: e.to_string(),
                    });
                }
                tracing::trace!(uds = %uds.display(), port, "vsock connect attempt failed: {e}");
                std::thread::sleep(pause.min(deadline - now));
                pause = (pause * 2).min(MAX_PAUSE);
            }
        }
    }
}
