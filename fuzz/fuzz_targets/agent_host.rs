//! The agent protocol as the host decodes it: the guest agent is hostile. A fake guest
//! answers the host's hybrid-vsock `CONNECT` with fuzz bytes, then answers each request the
//! real `AgentClient` sends (hello, start, signal, wait, stats, …) with fuzz bytes; or it
//! answers a stdio stream's hello (`attach_stream`). Every host wait must end (the fake guest
//! hangs up as soon as its answer leaves the host nothing complete to read), and nothing the
//! guest says may crash the host.
#![no_main]

use std::io::Write;
use std::net::Shutdown;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::time::Duration;

use arbitrary::Arbitrary;
use husk::agent::vsock::connect_once;
use husk::agent::{attach_stream, AgentClient};
use husk_protocol::{
    read_frame, FrameDecoder, StreamHello, StreamKind, AGENT_VSOCK_PORT, PROTOCOL_VERSION,
};
use libfuzzer_sys::fuzz_target;

/// Bounds every host wait; the fake guest hangs up long before.
const TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Call {
    Hello,
    Start,
    Signal { all: bool, signal: i8 },
    Wait,
    Stats,
    Resize { rows: u16, cols: u16 },
    CloseStdin,
    Shutdown,
}

#[derive(Arbitrary, Debug)]
struct Input {
    /// The line (and whatever follows) answering `CONNECT <port>\n`.
    connect_reply: Vec<u8>,
    /// A stdio stream instead of a control connection.
    stream: Option<u8>,
    /// Host calls after the implicit first `Hello`.
    calls: Vec<Call>,
    /// The guest's answer to each request, in order (raw bytes: frames or not).
    replies: Vec<Vec<u8>>,
}

/// Reads the CONNECT line, answers, then answers each request frame with the next reply.
/// Hangs up once an answer leaves a partial frame or no frame at all (the host would wait).
fn fake_guest(listener: UnixListener, connect_reply: Vec<u8>, replies: Vec<Vec<u8>>) {
    let Ok((mut s, _)) = listener.accept() else {
        return;
    };
    let mut line = [0u8; 1];
    loop {
        match std::io::Read::read(&mut s, &mut line) {
            Ok(1) if line[0] != b'\n' => continue,
            Ok(1) => break,
            _ => return,
        }
    }
    if s.write_all(&connect_reply).is_err() {
        return;
    }
    // What the host has seen of our answers past the CONNECT line, to tell when it would
    // wait for more.
    let mut sent = FrameDecoder::new();
    match connect_reply.iter().position(|&b| b == b'\n') {
        Some(at) => sent.push(&connect_reply[at + 1..]),
        None => {
            // The host is still reading its line: hang up.
            let _ = s.shutdown(Shutdown::Write);
            let _ = std::io::copy(&mut s, &mut std::io::sink());
            return;
        }
    }
    for reply in replies {
        match read_frame(&mut s) {
            Ok(Some(_)) => {}
            _ => return,
        }
        if s.write_all(&reply).is_err() {
            return;
        }
        sent.push(&reply);
        let mut frames = 0;
        while let Ok(Some(_)) = sent.next_frame() {
            frames += 1;
        }
        if frames == 0 || sent.buffered() > 0 {
            break;
        }
    }
    let _ = s.shutdown(Shutdown::Write);
    // Drain until the host is done, so it never sees EPIPE mid-request.
    let _ = std::io::copy(&mut s, &mut std::io::sink());
}

fn control(uds: &Path, calls: &[Call]) {
    let Ok(stream) = connect_once(uds, AGENT_VSOCK_PORT, TIMEOUT) else {
        return;
    };
    let mut client = AgentClient::from_stream(uds, stream).expect("agent client");
    client.set_call_timeout(TIMEOUT);
    if client.hello().is_err() {
        return;
    }
    for call in calls.iter().take(16) {
        let r = match *call {
            Call::Hello => client.hello().map(drop),
            Call::Start => client.start_container("c").map(drop),
            Call::Signal { all: true, signal } => client.signal_all("c", signal.into()),
            Call::Signal { all: false, signal } => client.signal("c", Some("e"), signal.into()),
            Call::Wait => client.wait_timeout("c", None, Some(TIMEOUT)).map(drop),
            Call::Stats => client.stats("c").map(drop),
            Call::Resize { rows, cols } => client.resize_tty("c", None, rows, cols),
            Call::CloseStdin => client.close_stdin("c", Some("e")),
            Call::Shutdown => client.shutdown(),
        };
        if r.is_err() {
            return;
        }
    }
}

fuzz_target!(|input: Input| {
    let dir = tempfile::tempdir().expect("temp dir");
    let uds = dir.path().join("v.sock");
    let listener = UnixListener::bind(&uds).expect("bind");
    let replies = match input.stream {
        Some(_) => input.replies.into_iter().take(1).collect(),
        None => input.replies,
    };
    // A stream connection retries CONNECT until its deadline (as it must while a guest
    // boots), so its CONNECT is answered properly and the fuzz bytes follow the line; the
    // control connection (one attempt) gets the fuzz bytes as its answer line.
    let connect_reply = match input.stream {
        Some(_) => [&b"OK 1024\n"[..], &input.connect_reply].concat(),
        None => input.connect_reply,
    };
    let guest = std::thread::spawn(move || fake_guest(listener, connect_reply, replies));
    match input.stream {
        Some(k) => {
            let kind = [
                StreamKind::Stdin,
                StreamKind::Stdout,
                StreamKind::Stderr,
                StreamKind::Pty,
            ][usize::from(k % 4)];
            let hello = StreamHello {
                version: PROTOCOL_VERSION,
                container_id: "c".into(),
                exec_id: None,
                kind,
            };
            let _ = attach_stream(&uds, hello, TIMEOUT);
        }
        None => control(&uds, &input.calls),
    }
    // A host that gave up before connecting leaves the fake guest in accept(): wake it.
    drop(UnixStream::connect(&uds));
    guest.join().expect("fake guest");
});
