//! The VM holder's control socket: one line per connection (`start`, `kill N`, `kill-all N`),
//! answered with `ok` or `error <why>`. Only `start` and signals before the container's process exists go
//! through here; everything the agent can answer itself (exec, signals to a running process)
//! goes to the agent.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    Start,
    Kill(i32),
    /// Every process of the container (`kill --all`).
    KillAll(i32),
}

impl Request {
    fn line(self) -> String {
        match self {
            Request::Start => "start".into(),
            Request::Kill(s) => format!("kill {s}"),
            Request::KillAll(s) => format!("kill-all {s}"),
        }
    }

    fn parse(line: &str) -> Option<Request> {
        match line.trim().split_once(' ') {
            None if line.trim() == "start" => Some(Request::Start),
            Some(("kill", n)) => n.parse().ok().map(Request::Kill),
            Some(("kill-all", n)) => n.parse().ok().map(Request::KillAll),
            _ => None,
        }
    }
}

/// Sends `req` to the VM holder listening on `sock` and waits up to `timeout` for its answer.
pub fn send(sock: &Path, req: Request, timeout: Duration) -> Result<(), String> {
    let mut s = UnixStream::connect(sock)
        .map_err(|e| format!("cannot reach the VM holder at {}: {e}", sock.display()))?;
    let _ = s.set_read_timeout(Some(timeout));
    writeln!(s, "{}", req.line()).map_err(|e| format!("writing to the VM holder: {e}"))?;
    let mut answer = String::new();
    BufReader::new(&s)
        .read_line(&mut answer)
        .map_err(|e| format!("no answer from the VM holder: {e}"))?;
    match answer.trim() {
        "ok" => Ok(()),
        "" => Err("the VM holder closed the connection without answering".into()),
        other => Err(other.strip_prefix("error ").unwrap_or(other).to_string()),
    }
}

/// Answers requests on `listener` with `handler`, one thread per connection, until the
/// process exits.
pub fn serve(
    listener: UnixListener,
    handler: Arc<dyn Fn(Request) -> Result<(), String> + Send + Sync>,
) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("husk-rt-control".into())
        .spawn(move || {
            for conn in listener.incoming().flatten() {
                let h = handler.clone();
                let _ = std::thread::Builder::new()
                    .name("husk-rt-request".into())
                    .spawn(move || answer(conn, &*h));
            }
        })?;
    Ok(())
}

fn answer(mut conn: UnixStream, handler: &(dyn Fn(Request) -> Result<(), String> + Send + Sync)) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
    let mut line = String::new();
    if BufReader::new(&conn).read_line(&mut line).is_err() {
        return;
    }
    let reply = match Request::parse(&line) {
        Some(req) => match handler(req) {
            Ok(()) => "ok".to_string(),
            Err(e) => format!("error {}", e.replace('\n', " ")),
        },
        None => format!("error unknown request {:?}", line.trim()),
    };
    let _ = writeln!(conn, "{reply}");
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[test]
    fn requests_round_trip_with_answers() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("ctl");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s2 = seen.clone();
        serve(
            UnixListener::bind(&sock).unwrap(),
            Arc::new(move |r| {
                s2.lock().unwrap().push(r);
                match r {
                    Request::Kill(0) => Err("no signal 0".into()),
                    _ => Ok(()),
                }
            }),
        )
        .unwrap();
        let t = Duration::from_secs(5);
        send(&sock, Request::Start, t).unwrap();
        send(&sock, Request::Kill(15), t).unwrap();
        send(&sock, Request::KillAll(9), t).unwrap();
        assert_eq!(send(&sock, Request::Kill(0), t).unwrap_err(), "no signal 0");
        assert_eq!(
            *seen.lock().unwrap(),
            [
                Request::Start,
                Request::Kill(15),
                Request::KillAll(9),
                Request::Kill(0)
            ]
        );
        assert!(send(&dir.path().join("none"), Request::Start, t).is_err());
    }
}
