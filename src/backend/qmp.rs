//! A client of QMP, QEMU's machine protocol, for the few commands husk sends: stop a VM, hand
//! QEMU a descriptor and save the VM's state into it, and follow the save.
//!
//! QMP is one JSON object per line each way. QEMU greets, the client leaves capabilities
//! negotiation with `qmp_capabilities`, then each `{"execute": ...}` is answered by one
//! `{"return": ...}` or `{"error": ...}`, with asynchronous `{"event": ...}` lines between.
//! Only husk's own template VMs are driven this way (no container has run in them), but QEMU
//! is still a process that reads a guest: every line is bounded and every answer checked.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// The longest line read from QEMU (its answers to these commands are a few hundred bytes).
const MAX_LINE: u64 = 1 << 20;

/// Why a QMP exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    #[error("connecting to QEMU's QMP socket {path}: {source}")]
    Connect {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("talking to QEMU's QMP socket: {0}")]
    Io(#[source] io::Error),
    #[error("QEMU's QMP socket sent {0}")]
    Protocol(String),
    #[error("QMP {command} failed: {class}: {desc}")]
    Command {
        command: String,
        class: String,
        desc: String,
    },
}

/// A QMP session in command mode.
pub struct Qmp {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Qmp {
    /// Connects to the QMP socket at `path` (retrying while QEMU has not bound it yet, up to
    /// `timeout`), reads the greeting and enters command mode. Each later read waits at most
    /// `timeout`.
    pub fn connect(path: &Path, timeout: Duration) -> Result<Qmp, QmpError> {
        let deadline = Instant::now() + timeout;
        let stream = loop {
            match UnixStream::connect(path) {
                Ok(s) => break s,
                Err(e) if Instant::now() < deadline && retry_connect(&e) => {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(source) => {
                    return Err(QmpError::Connect {
                        path: path.to_path_buf(),
                        source,
                    })
                }
            }
        };
        Qmp::over(stream, timeout)
    }

    /// Enters command mode over `stream`, an already connected QMP link (QEMU's other end
    /// inherited as `-chardev socket,fd=N`): reads the greeting and leaves negotiation. Each
    /// read waits at most `timeout`.
    pub fn over(stream: UnixStream, timeout: Duration) -> Result<Qmp, QmpError> {
        stream
            .set_read_timeout(Some(timeout))
            .map_err(QmpError::Io)?;
        let writer = stream.try_clone().map_err(QmpError::Io)?;
        let mut q = Qmp {
            reader: BufReader::new(stream),
            writer,
        };
        let greeting = q.read_message()?;
        if greeting.get("QMP").is_none() {
            return Err(QmpError::Protocol(format!("no greeting but {greeting}")));
        }
        q.execute("qmp_capabilities", json!({}))?;
        Ok(q)
    }

    /// Runs `command` with `arguments` and returns its `return` value.
    pub fn execute(&mut self, command: &str, arguments: Value) -> Result<Value, QmpError> {
        self.send(command, arguments, None)
    }

    /// Hands QEMU the descriptor `fd` under `name` (`getfd`: it travels with the command as
    /// SCM_RIGHTS), for a later `fd:NAME` migration URI.
    pub fn pass_fd(&mut self, name: &str, fd: impl AsFd) -> Result<(), QmpError> {
        self.send(
            "getfd",
            json!({ "fdname": name }),
            Some(fd.as_fd().as_raw_fd()),
        )
        .map(drop)
    }

    fn send(
        &mut self,
        command: &str,
        arguments: Value,
        fd: Option<std::os::fd::RawFd>,
    ) -> Result<Value, QmpError> {
        let mut line = json!({ "execute": command, "arguments": arguments }).to_string();
        line.push('\n');
        match fd {
            Some(fd) => husk_fdpass::send_fd(self.writer.as_raw_fd(), line.as_bytes(), fd)
                .map_err(QmpError::Io)?,
            None => self
                .writer
                .write_all(line.as_bytes())
                .map_err(QmpError::Io)?,
        }
        loop {
            let m = self.read_message()?;
            if m.get("event").is_some() {
                continue;
            }
            if let Some(r) = m.get("return") {
                return Ok(r.clone());
            }
            if let Some(e) = m.get("error") {
                let field = |k: &str| e.get(k).and_then(Value::as_str).unwrap_or("?").to_string();
                return Err(QmpError::Command {
                    command: command.to_string(),
                    class: field("class"),
                    desc: field("desc"),
                });
            }
            return Err(QmpError::Protocol(format!("an unexpected answer {m}")));
        }
    }

    /// One JSON object from its line, bounded to [`MAX_LINE`] bytes.
    fn read_message(&mut self) -> Result<Value, QmpError> {
        let mut line = Vec::new();
        let n = (&mut self.reader)
            .take(MAX_LINE)
            .read_until(b'\n', &mut line)
            .map_err(QmpError::Io)?;
        if n == 0 {
            return Err(QmpError::Protocol(
                "nothing: it closed the connection".into(),
            ));
        }
        if !line.ends_with(b"\n") {
            return Err(QmpError::Protocol(format!(
                "a line longer than {MAX_LINE} bytes"
            )));
        }
        serde_json::from_slice(&line)
            .map_err(|e| QmpError::Protocol(format!("a line that is not JSON ({e})")))
    }
}

/// Whether connecting failed only because QEMU has not bound its socket yet.
fn retry_connect(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    /// A fake QEMU: greets, then answers each line with the next of `answers`.
    fn fake(
        dir: &Path,
        answers: Vec<&'static str>,
    ) -> (PathBuf, std::thread::JoinHandle<Vec<String>>) {
        let path = dir.join("qmp.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let t = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            s.write_all(b"{\"QMP\": {\"version\": {}, \"capabilities\": []}}\n")
                .unwrap();
            let mut r = BufReader::new(s.try_clone().unwrap());
            let mut got = Vec::new();
            for a in std::iter::once("{\"return\": {}}").chain(answers) {
                let mut l = String::new();
                if r.read_line(&mut l).unwrap() == 0 {
                    break;
                }
                got.push(l);
                s.write_all(a.as_bytes()).unwrap();
                s.write_all(b"\n").unwrap();
            }
            got
        });
        (path, t)
    }

    #[test]
    fn commands_get_their_return_past_events_and_errors_name_the_command() {
        let dir = tempfile::tempdir().unwrap();
        let (path, t) = fake(
            dir.path(),
            vec![
                "{\"event\": \"STOP\"}\n{\"return\": {\"status\": \"completed\"}}",
                "{\"error\": {\"class\": \"GenericError\", \"desc\": \"no such fd\"}}",
            ],
        );
        let mut q = Qmp::connect(&path, Duration::from_secs(5)).unwrap();
        let r = q.execute("query-migrate", json!({})).unwrap();
        assert_eq!(r["status"], "completed");
        let e = q.execute("migrate", json!({"uri": "fd:x"})).unwrap_err();
        assert_eq!(
            e.to_string(),
            "QMP migrate failed: GenericError: no such fd"
        );
        drop(q);
        let sent = t.join().unwrap();
        assert!(sent[0].contains("qmp_capabilities"));
        assert!(sent[2].contains("\"uri\":\"fd:x\""));
    }

    #[test]
    fn a_peer_that_is_not_qmp_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("qmp.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let t = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            s.write_all(b"not json\n").unwrap();
        });
        let e = Qmp::connect(&path, Duration::from_secs(5)).err().unwrap();
        assert!(e.to_string().contains("not JSON"), "{e}");
        t.join().unwrap();
    }
}
