//! The vsock server: one thread per connection; the first frame says whether it is a control
//! connection (requests, each answered from a thread of its own so a blocking `Wait` holds up
//! nothing) or a stdio stream.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use husk_protocol::codec::{decode_opening, Opening};
use husk_protocol::{
    check_version, decode, peek_request_id, read_frame, write_message, Request, Response,
    StreamHello, StreamReply, AGENT_VSOCK_PORT,
};

use crate::channel::{self, Listener};
use crate::container::{After, Agent};
use crate::power;
use crate::vsock::{self, VsockStream};

/// Listens where the host connects: the agent's serial port under QEMU (see [`channel`]),
/// else the vsock port (retrying until the vsock transport lets it bind).
pub fn listen() -> Listener {
    if let Some(dev) = channel::serial_port() {
        match channel::open_serial(&dev) {
            Ok(l) => return l,
            Err(e) => say!("husk-agent: cannot serve on {}: {e}", dev.display()),
        }
    }
    loop {
        match vsock::Listener::bind(AGENT_VSOCK_PORT) {
            Ok(l) => return Listener::Vsock(l),
            Err(e) => {
                say!("husk-agent: cannot listen on vsock port {AGENT_VSOCK_PORT}: {e}; retrying");
                std::thread::sleep(Duration::from_secs(1));
            }
        }
    }
}

/// Serves the connections `listener` accepts, forever.
pub fn run(listener: Listener, agent: Arc<Agent>) -> ! {
    loop {
        match listener.accept() {
            Ok(conn) => {
                let agent = agent.clone();
                let r = std::thread::Builder::new()
                    .name("conn".into())
                    .spawn(move || connection(&agent, conn));
                if let Err(e) = r {
                    say!("husk-agent: cannot start a connection thread: {e}");
                }
            }
            Err(e) => {
                say!("husk-agent: accept: {e}");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

fn connection(agent: &Arc<Agent>, conn: VsockStream) {
    let payload = match read_frame(&mut &conn) {
        Ok(Some(p)) => p,
        Ok(None) => return,
        Err(e) => {
            say!("husk-agent: connection dropped before its first frame: {e}");
            return;
        }
    };
    match decode_opening(&payload) {
        Ok(Opening::Stream(hello)) => stream(agent, conn, hello),
        Ok(Opening::Control(req)) => control(agent, conn, Some(req)),
        Err(e) => {
            let reply = Response::err(peek_request_id(&payload).unwrap_or(0), e.to_reply());
            if write_message(&mut &conn, &reply).is_ok() && e.is_recoverable() {
                control(agent, conn, None);
            }
        }
    }
}

fn control(agent: &Arc<Agent>, conn: VsockStream, first: Option<Request>) {
    let writer = match conn.try_clone() {
        Ok(w) => Arc::new(Mutex::new(w)),
        Err(e) => {
            say!("husk-agent: control connection: {e}");
            return;
        }
    };
    if let Some(req) = first {
        dispatch(agent, &writer, req);
    }
    loop {
        let payload = match read_frame(&mut &conn) {
            Ok(Some(p)) => p,
            Ok(None) => return,
            Err(e) => {
                // The stream lost its place; nothing after this can be trusted.
                say!("husk-agent: control connection: {e}");
                return;
            }
        };
        match decode::<Request>(&payload) {
            Ok(req) => dispatch(agent, &writer, req),
            Err(e) => {
                let reply = Response::err(peek_request_id(&payload).unwrap_or(0), e.to_reply());
                send(&writer, &reply);
            }
        }
    }
}

fn send(writer: &Mutex<VsockStream>, resp: &Response) {
    let mut w = writer.lock().unwrap_or_else(|p| p.into_inner());
    if let Err(e) = write_message(&mut *w, resp) {
        say!("husk-agent: sending the reply to request {}: {e}", resp.id);
    }
}

fn dispatch(agent: &Arc<Agent>, writer: &Arc<Mutex<VsockStream>>, req: Request) {
    let (agent, writer) = (agent.clone(), writer.clone());
    let r = std::thread::Builder::new()
        .name("request".into())
        .spawn(move || {
            let (body, after) = agent.handle(req.body);
            send(&writer, &Response { id: req.id, body });
            match after {
                After::Nothing => {}
                // `Shutdown` synced before its answer.
                After::PowerOff => {
                    channel::flush();
                    power::reset()
                }
                After::PowerOffWhenDelivered => {
                    // Give the reply a moment to leave through the vsock device before the
                    // reset; the host's `Shutdown`, sent once it has the reply and the
                    // process's output, usually ends the VM first.
                    channel::flush();
                    std::thread::sleep(Duration::from_millis(250));
                    power::off();
                }
            }
        });
    if let Err(e) = r {
        say!("husk-agent: cannot start a request thread: {e}");
    }
}

fn stream(agent: &Agent, conn: VsockStream, hello: StreamHello) {
    let refuse = |conn: &VsockStream, e| {
        let _ = write_message(&mut &*conn, &StreamReply::Refused(e));
    };
    if let Err(e) = check_version(hello.version) {
        refuse(&conn, e);
        return;
    }
    let probe = match conn.try_clone() {
        Ok(c) => c,
        Err(_) => return,
    };
    let ready = |c: &VsockStream| {
        write_message(&mut &*c, &StreamReply::Ready)
            .map_err(|e| std::io::Error::other(e.to_string()))
    };
    if let Err(e) = agent.attach(
        &hello.container_id,
        hello.exec_id.as_deref(),
        hello.kind,
        conn,
        ready,
    ) {
        refuse(&probe, e);
    }
}
