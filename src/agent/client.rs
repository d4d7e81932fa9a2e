//! The control connection: typed requests, answers matched by id.
//!
//! One reader thread owns the receiving half and hands each [`Response`] to the caller
//! waiting for its id, so a blocking `Wait` and a `Signal` can be in flight at once from two
//! threads. An answer for an id nobody asked for means the peer has lost track (or is
//! hostile): the connection is marked broken and every waiting call fails.

use std::collections::{HashMap, HashSet};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use husk_protocol::{
    read_message, write_message, ContainerSpec, ExitStatus, GuestStep, Hello, HelloReply,
    ProcessSpec, Request, RequestBody, Response, ResponseBody, Restored, StatsReply,
    AGENT_VSOCK_PORT, PROTOCOL_VERSION,
};

use super::{vsock, Error};

/// How long a request other than `Wait` may take by default.
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(30);

type Reply = Result<Response, String>;

#[derive(Default)]
struct Pending {
    waiting: HashMap<u64, mpsc::Sender<Reply>>,
    /// Ids whose caller gave up (timeout); a late answer to one is dropped, not an error.
    abandoned: HashSet<u64>,
    /// Set once the connection is unusable; every later call fails with it.
    broken: Option<String>,
}

impl Pending {
    fn fail_all(&mut self, why: String) {
        for (_, tx) in self.waiting.drain() {
            let _ = tx.send(Err(why.clone()));
        }
        self.broken.get_or_insert(why);
    }
}

/// A control connection to one guest's agent.
pub struct AgentClient {
    uds: PathBuf,
    writer: Mutex<UnixStream>,
    pending: Arc<Mutex<Pending>>,
    next_id: AtomicU64,
    reader: Option<JoinHandle<()>>,
    call_timeout: Duration,
    agent: Option<HelloReply>,
}

impl AgentClient {
    /// Connects to the agent behind `uds` (the VM's hybrid vsock socket), retrying until the
    /// agent listens or `timeout` has passed, then checks the protocol version with `Hello`
    /// within the same deadline.
    pub fn connect(uds: &Path, timeout: Duration) -> Result<AgentClient, Error> {
        AgentClient::connect_while(uds, timeout, || true)
    }

    /// [`connect`](Self::connect), giving up early once `worth_trying` says the VM is gone
    /// ([`vsock::connect_while`]).
    pub fn connect_while(
        uds: &Path,
        timeout: Duration,
        worth_trying: impl FnMut() -> bool,
    ) -> Result<AgentClient, Error> {
        let deadline = Instant::now() + timeout;
        let stream = vsock::connect_while(uds, AGENT_VSOCK_PORT, timeout, worth_trying)?;
        let mut client = AgentClient::from_stream(uds, stream)?;
        let left = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(100));
        client.hello_within(left)?;
        Ok(client)
    }

    /// Wraps an already connected control stream (the `CONNECT` exchange done) without
    /// saying hello.
    pub fn from_stream(uds: &Path, stream: UnixStream) -> Result<AgentClient, Error> {
        let io_err = |source| Error::Io {
            uds: uds.to_path_buf(),
            source,
        };
        let mut read_half = stream.try_clone().map_err(io_err)?;
        let pending = Arc::new(Mutex::new(Pending::default()));
        let reader = {
            let pending = pending.clone();
            std::thread::Builder::new()
                .name("husk-agent-reader".into())
                .spawn(move || read_loop(&mut read_half, &pending))
                .map_err(io_err)?
        };
        Ok(AgentClient {
            uds: uds.to_path_buf(),
            writer: Mutex::new(stream),
            pending,
            next_id: AtomicU64::new(1),
            reader: Some(reader),
            call_timeout: DEFAULT_CALL_TIMEOUT,
            agent: None,
        })
    }

    /// Changes how long calls other than `wait` may take.
    pub fn set_call_timeout(&mut self, timeout: Duration) {
        self.call_timeout = timeout;
    }

    /// What the agent said about itself in `Hello`, once it has been said.
    pub fn agent(&self) -> Option<&HelloReply> {
        self.agent.as_ref()
    }

    /// Sends `body` and waits for its answer (`None`: no time limit). An error reply
    /// becomes [`Error::Agent`].
    pub fn call(
        &self,
        body: RequestBody,
        timeout: Option<Duration>,
    ) -> Result<ResponseBody, Error> {
        self.send(body)?.answer(timeout)
    }

    /// Sends a request without waiting for its answer: once this returns, the request is on
    /// its way to the agent whatever becomes of this process. [`Sent::answer`] reads the
    /// answer.
    fn send(&self, body: RequestBody) -> Result<Sent<'_>, Error> {
        let request = body.name();
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel();
        {
            let mut p = lock(&self.pending);
            if let Some(why) = &p.broken {
                return Err(Error::Disconnected(why.clone()));
            }
            p.waiting.insert(id, tx);
        }
        let sent = {
            let mut w = lock(&self.writer);
            write_message(&mut *w, &Request::new(id, body))
        };
        if let Err(e) = sent {
            lock(&self.pending).waiting.remove(&id);
            return Err(Error::Codec { request, source: e });
        }
        Ok(Sent {
            pending: &self.pending,
            request,
            id,
            rx,
        })
    }

    fn call_default(&self, body: RequestBody) -> Result<ResponseBody, Error> {
        self.call(body, Some(self.call_timeout))
    }

    /// Exchanges `Hello` and checks the agent speaks this build's protocol version.
    pub fn hello(&mut self) -> Result<HelloReply, Error> {
        self.hello_within(self.call_timeout)
    }

    fn hello_within(&mut self, timeout: Duration) -> Result<HelloReply, Error> {
        let hello = Hello {
            version: PROTOCOL_VERSION,
            client: format!("husk {}", env!("CARGO_PKG_VERSION")),
        };
        match self.call(RequestBody::Hello(hello), Some(timeout))? {
            ResponseBody::Hello(h) => {
                husk_protocol::check_version(h.version).map_err(|_| Error::VersionMismatch {
                    agent: h.version,
                    agent_build: h.agent.clone(),
                })?;
                tracing::debug!(uds = %self.uds.display(), agent = %h.agent, "agent hello");
                self.agent = Some(h.clone());
                Ok(h)
            }
            other => Err(unexpected("hello", &other)),
        }
    }

    /// Returns the guest's steps in creating it and how long each took.
    pub fn create_container(&self, spec: ContainerSpec) -> Result<Vec<GuestStep>, Error> {
        match self.call_default(RequestBody::CreateContainer(Box::new(spec)))? {
            ResponseBody::Created { steps } => Ok(steps),
            other => Err(unexpected("create_container", &other)),
        }
    }

    /// Runs the container's process; returns its pid in the container's pid namespace.
    pub fn start_container(&self, container_id: &str) -> Result<u32, Error> {
        let body = RequestBody::StartContainer {
            container_id: container_id.into(),
        };
        expect_started("start_container", self.call_default(body)?)
    }

    pub fn exec_process(
        &self,
        container_id: &str,
        exec_id: &str,
        process: ProcessSpec,
    ) -> Result<u32, Error> {
        let body = RequestBody::ExecProcess {
            container_id: container_id.into(),
            exec_id: exec_id.into(),
            process: Box::new(process),
        };
        expect_started("exec_process", self.call_default(body)?)
    }

    pub fn signal(
        &self,
        container_id: &str,
        exec_id: Option<&str>,
        signal: i32,
    ) -> Result<(), Error> {
        let body = RequestBody::Signal {
            container_id: container_id.into(),
            exec_id: exec_id.map(Into::into),
            signal,
            all: false,
        };
        expect_done("signal", self.call_default(body)?)
    }

    /// Sends `signal` to every process of the container (its cgroup in the guest).
    pub fn signal_all(&self, container_id: &str, signal: i32) -> Result<(), Error> {
        let body = RequestBody::Signal {
            container_id: container_id.into(),
            exec_id: None,
            signal,
            all: true,
        };
        expect_done("signal", self.call_default(body)?)
    }

    /// Blocks, with no time limit, until the process exits.
    pub fn wait(&self, container_id: &str, exec_id: Option<&str>) -> Result<ExitStatus, Error> {
        self.wait_timeout(container_id, exec_id, None)
    }

    pub fn wait_timeout(
        &self,
        container_id: &str,
        exec_id: Option<&str>,
        timeout: Option<Duration>,
    ) -> Result<ExitStatus, Error> {
        self.send_wait(container_id, exec_id)?.exit(timeout)
    }

    /// Sends `Wait` for the process and returns at once; [`WaitSent::exit`] blocks for the
    /// answer. The agent holds a `Wait` it has received even if this process dies: it powers
    /// its VM off once every container's process has ended and been waited for.
    pub fn send_wait(
        &self,
        container_id: &str,
        exec_id: Option<&str>,
    ) -> Result<WaitSent<'_>, Error> {
        let body = RequestBody::Wait {
            container_id: container_id.into(),
            exec_id: exec_id.map(Into::into),
        };
        self.send(body).map(WaitSent)
    }

    pub fn resize_tty(
        &self,
        container_id: &str,
        exec_id: Option<&str>,
        rows: u16,
        cols: u16,
    ) -> Result<(), Error> {
        let body = RequestBody::ResizeTty {
            container_id: container_id.into(),
            exec_id: exec_id.map(Into::into),
            rows,
            cols,
        };
        expect_done("resize_tty", self.call_default(body)?)
    }

    pub fn close_stdin(&self, container_id: &str, exec_id: Option<&str>) -> Result<(), Error> {
        let body = RequestBody::CloseStdin {
            container_id: container_id.into(),
            exec_id: exec_id.map(Into::into),
        };
        expect_done("close_stdin", self.call_default(body)?)
    }

    /// Forgets a container whose process has ended (its root and cgroup in the guest).
    pub fn remove_container(&self, container_id: &str) -> Result<(), Error> {
        let body = RequestBody::RemoveContainer {
            container_id: container_id.into(),
        };
        expect_done("remove_container", self.call_default(body)?)
    }

    /// Freezes (`true`) or thaws every process of a container.
    pub fn freeze(&self, container_id: &str, frozen: bool) -> Result<(), Error> {
        let body = RequestBody::Freeze {
            container_id: container_id.into(),
            frozen,
        };
        expect_done("freeze", self.call_default(body)?)
    }

    pub fn stats(&self, container_id: &str) -> Result<StatsReply, Error> {
        match self.call_default(RequestBody::Stats {
            container_id: container_id.into(),
        })? {
            ResponseBody::Stats(s) => Ok(s),
            other => Err(unexpected("stats", &other)),
        }
    }

    /// Tells the agent of a VM restored from a template (right after `Hello`, before anything
    /// else) to become its own: mix in `restored.entropy` and reseed the guest's CRNG, set
    /// the clock to `restored`'s time, re-read every disk, give each NIC its new MAC. Build
    /// `restored` with [`restored_request`](super::restored_request) just before: its time
    /// is the guest's new clock.
    pub fn restored(&self, restored: Restored) -> Result<(), Error> {
        expect_done(
            "restored",
            self.call_default(RequestBody::Restored(Box::new(restored)))?,
        )
    }

    /// Asks the agent to sync and power the VM off. The agent answers and ends the VM at once,
    /// so the answer may be lost with it: the connection then closes as the VM goes down.
    pub fn shutdown(&self) -> Result<(), Error> {
        self.shutdown_within(self.call_timeout)
    }

    /// [`shutdown`](Self::shutdown), waiting at most `timeout` for the answer (a caller that
    /// watches the VM end does not need it).
    pub fn shutdown_within(&self, timeout: Duration) -> Result<(), Error> {
        expect_done("shutdown", self.call(RequestBody::Shutdown, Some(timeout))?)
    }
}

impl Drop for AgentClient {
    fn drop(&mut self) {
        // Wakes the reader out of its blocking read.
        let _ = lock(&self.writer).shutdown(Shutdown::Both);
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }
}

/// A request on its way to the agent, its answer not read yet.
struct Sent<'a> {
    pending: &'a Mutex<Pending>,
    request: &'static str,
    id: u64,
    rx: mpsc::Receiver<Reply>,
}

impl Sent<'_> {
    /// Blocks for the answer (`None`: with no time limit). On a timeout the request is
    /// abandoned: its late answer is dropped.
    fn answer(self, timeout: Option<Duration>) -> Result<ResponseBody, Error> {
        let Sent {
            pending,
            request,
            id,
            rx,
        } = self;
        let reply = match timeout {
            Some(t) => rx.recv_timeout(t),
            None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
        };
        match reply {
            Ok(Ok(resp)) => resp.body.map_err(|error| Error::Agent { request, error }),
            Ok(Err(why)) => Err(Error::Disconnected(why)),
            Err(RecvTimeoutError::Timeout) => {
                let mut p = lock(pending);
                if p.waiting.remove(&id).is_some() {
                    p.abandoned.insert(id);
                }
                Err(Error::Timeout {
                    request,
                    id,
                    secs: timeout.unwrap_or_default().as_secs_f64(),
                })
            }
            Err(RecvTimeoutError::Disconnected) => Err(Error::Disconnected(
                lock(pending)
                    .broken
                    .clone()
                    .unwrap_or_else(|| "reader stopped".into()),
            )),
        }
    }
}

/// A `Wait` on its way to the agent ([`AgentClient::send_wait`]).
pub struct WaitSent<'a>(Sent<'a>);

impl WaitSent<'_> {
    /// Blocks until the process has exited (`None`: with no time limit).
    pub fn exit(self, timeout: Option<Duration>) -> Result<ExitStatus, Error> {
        match self.0.answer(timeout)? {
            ResponseBody::Exited(s) => Ok(s),
            other => Err(unexpected("wait", &other)),
        }
    }
}

fn read_loop(stream: &mut UnixStream, pending: &Mutex<Pending>) {
    let why = loop {
        match read_message::<Response>(stream) {
            Ok(Some(resp)) => {
                let mut p = lock(pending);
                if let Some(tx) = p.waiting.remove(&resp.id) {
                    let _ = tx.send(Ok(resp));
                } else if p.abandoned.remove(&resp.id) {
                    tracing::debug!(
                        id = resp.id,
                        "dropping a late answer to a timed-out request"
                    );
                } else {
                    break format!(
                        "agent answered request id {}, which no request is waiting for",
                        resp.id
                    );
                }
            }
            Ok(None) => break "agent closed the connection".to_string(),
            Err(e) => break format!("reading from the agent failed: {e}"),
        }
    };
    tracing::debug!("agent control connection ends: {why}");
    lock(pending).fail_all(why);
    // Unblock any writer stuck on a peer that stopped reading.
    let _ = stream.shutdown(Shutdown::Both);
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn unexpected(request: &'static str, got: &ResponseBody) -> Error {
    let got = match got {
        ResponseBody::Hello(_) => "hello",
        ResponseBody::Done => "done",
        ResponseBody::Started { .. } => "started",
        ResponseBody::Exited(_) => "exited",
        ResponseBody::Stats(_) => "stats",
        ResponseBody::Created { .. } => "created",
    };
    Error::UnexpectedReply { request, got }
}

fn expect_done(request: &'static str, body: ResponseBody) -> Result<(), Error> {
    match body {
        ResponseBody::Done => Ok(()),
        other => Err(unexpected(request, &other)),
    }
}

fn expect_started(request: &'static str, body: ResponseBody) -> Result<u32, Error> {
    match body {
        ResponseBody::Started { pid } => Ok(pid),
        other => Err(unexpected(request, &other)),
    }
}
