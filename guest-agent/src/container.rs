//! The agent's containers and processes, and the request handlers over them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use husk_protocol::{
    check_version, ContainerSpec, ErrorCode, ErrorReply, Hello, HelloReply, ProcessSpec,
    RequestBody, ResponseBody, StreamKind, PROTOCOL_VERSION,
};

use crate::process::{self, InitConfig, Mode, Spawned};
use crate::reaper::{self, ExitCell};
use crate::seccomp::{self, Filter};
use crate::stdio::Stdio;
use crate::steps::Steps;
use crate::vsock::VsockStream;
use crate::{cgroup, net, rootfs};

/// What to do once a reply has gone out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum After {
    Nothing,
    /// The host asked (`Shutdown`, synced before the answer): it needs nothing more, so the
    /// VM ends at once.
    PowerOff,
    /// Every container's status was collected: the VM ends once that last reply, which the
    /// host does need, has had time to leave (unless the host's `Shutdown` comes first).
    PowerOffWhenDelivered,
}

pub struct Process {
    pub pid: i32,
    pub stdio: Stdio,
    pub exit: Arc<ExitCell>,
    /// Set until `StartContainer` lets the process exec.
    gate: Mutex<Option<Spawned>>,
}

pub struct Container {
    spec: ContainerSpec,
    init: Arc<Process>,
    execs: Mutex<HashMap<String, Arc<Process>>>,
    seccomp: Option<Filter>,
    /// The init's status has been handed to a `Wait`.
    collected: Mutex<bool>,
}

#[derive(Default)]
pub struct Agent {
    containers: Mutex<HashMap<String, Arc<Container>>>,
}

type Reply = Result<ResponseBody, ErrorReply>;

fn err(code: ErrorCode, msg: impl Into<String>) -> ErrorReply {
    ErrorReply::new(code, msg)
}

impl Agent {
    pub fn handle(&self, body: RequestBody) -> (Reply, After) {
        let mut after = After::Nothing;
        let reply = match body {
            RequestBody::Hello(h) => hello(&h),
            RequestBody::CreateContainer(spec) => self.create(*spec),
            RequestBody::StartContainer { container_id } => self.start(&container_id),
            RequestBody::ExecProcess {
                container_id,
                exec_id,
                process,
            } => self.exec(&container_id, &exec_id, *process),
            RequestBody::Signal {
                container_id,
                signal,
                all: true,
                ..
            } => self.signal_all(&container_id, signal),
            RequestBody::Signal {
                container_id,
                exec_id,
                signal,
                all: false,
            } => self
                .process(&container_id, exec_id.as_deref())
                .and_then(|p| signal_process(&p, signal)),
            RequestBody::Wait {
                container_id,
                exec_id,
            } => self.wait(&container_id, exec_id.as_deref(), &mut after),
            RequestBody::ResizeTty {
                container_id,
                exec_id,
                rows,
                cols,
            } => self
                .process(&container_id, exec_id.as_deref())
                .and_then(|p| p.stdio.resize(rows, cols).map(|()| ResponseBody::Done)),
            RequestBody::CloseStdin {
                container_id,
                exec_id,
            } => self
                .process(&container_id, exec_id.as_deref())
                .and_then(|p| {
                    p.stdio
                        .close_stdin()
                        .map(|()| ResponseBody::Done)
                        .map_err(|e| err(ErrorCode::Internal, format!("closing stdin: {e}")))
                }),
            RequestBody::Stats { container_id } => self.stats(&container_id),
            RequestBody::RemoveContainer { container_id } => self.remove(&container_id),
            RequestBody::Freeze {
                container_id,
                frozen,
            } => self.container(&container_id).and_then(|_| {
                cgroup::set_frozen(&container_id, frozen)
                    .map(|()| ResponseBody::Done)
                    .map_err(|e| {
                        err(
                            ErrorCode::Unsupported,
                            format!("freezing {container_id} needs its cgroup: {e}"),
                        )
                    })
            }),
            RequestBody::Shutdown => {
                // Synced before the answer: the host may kill the VM as soon as it has it.
                crate::power::sync();
                after = After::PowerOff;
                Ok(ResponseBody::Done)
            }
            RequestBody::Restored(r) => crate::restore::handle(&r),
        };
        (reply, after)
    }

    fn container(&self, id: &str) -> Result<Arc<Container>, ErrorReply> {
        lock(&self.containers)
            .get(id)
            .cloned()
            .ok_or_else(|| err(ErrorCode::NotFound, format!("no container {id:?}")))
    }

    fn process(&self, id: &str, exec_id: Option<&str>) -> Result<Arc<Process>, ErrorReply> {
        let c = self.container(id)?;
        match exec_id {
            None => Ok(c.init.clone()),
            Some(e) => lock(&c.execs).get(e).cloned().ok_or_else(|| {
                err(
                    ErrorCode::NotFound,
                    format!("no exec {e:?} in container {id:?}"),
                )
            }),
        }
    }

    fn create(&self, spec: ContainerSpec) -> Reply {
        let id = spec.container_id.clone();
        if lock(&self.containers).contains_key(&id) {
            return Err(err(
                ErrorCode::AlreadyExists,
                format!("container {id:?} already exists"),
            ));
        }
        let mut steps = Steps::start();
        cgroup::limit(&id, &spec.resources).map_err(|e| {
            err(
                ErrorCode::Unsupported,
                format!("container {id}: cgroup limits: {e}"),
            )
        })?;
        let filter = match &spec.seccomp {
            Some(s) => {
                Some(seccomp::compile(s).map_err(|e| err(ErrorCode::Unsupported, e.to_string()))?)
            }
            None => None,
        };
        steps.mark("cgroup and seccomp");
        // The init helper starts first and comes up while the root filesystem is mounted; it
        // gets its configuration, which names that root, once it is there.
        let (stdio, child) = Stdio::new(spec.process.terminal)
            .map_err(|e| err(ErrorCode::Internal, format!("stdio for {id}: {e}")))?;
        let helper = process::Helper::start(child)
            .map_err(|e| err(ErrorCode::Internal, format!("container {id}: {e}")))?;
        steps.mark("init helper spawned");
        let root = rootfs::assemble(&id, &spec.rootfs, &mut steps)
            .map_err(|e| err(ErrorCode::Internal, format!("container {id}: rootfs: {e}")))?;
        if let Some(n) = &spec.network {
            let applied = net::configure(Some(n))
                .map(|()| steps.mark("network interfaces"))
                .and_then(|()| net::write_files(&root, n, spec.hostname.as_deref()));
            if let Err(e) = applied {
                rootfs::teardown(&id);
                return Err(err(
                    ErrorCode::Internal,
                    format!("container {id}: network: {e}"),
                ));
            }
            steps.mark("/etc/hosts and resolv.conf");
            say!("husk-agent: {id}: network up: {}", net::summary(n));
        }
        let cfg = InitConfig {
            mode: Mode::Create {
                spec: Box::new(spec.clone()),
                rootfs: root,
            },
            process: spec.process.clone(),
            seccomp: filter.clone(),
        };
        let proc = match watch_process(helper.configure(&cfg), stdio, &id) {
            Ok(p) => p,
            Err(e) => {
                rootfs::teardown(&id);
                return Err(e);
            }
        };
        steps.mark("init helper set-up");
        let c = Container {
            spec,
            init: Arc::new(proc),
            execs: Mutex::default(),
            seccomp: filter,
            collected: Mutex::new(false),
        };
        lock(&self.containers).insert(id, Arc::new(c));
        Ok(ResponseBody::Created {
            steps: steps.into_vec(),
        })
    }

    fn start(&self, id: &str) -> Reply {
        let c = self.container(id)?;
        let gate = lock(&c.init.gate).take();
        let Some(gate) = gate else {
            return Err(err(
                ErrorCode::InvalidState,
                format!("container {id:?} was already started"),
            ));
        };
        gate.start()
            .map_err(|e| err(ErrorCode::Internal, format!("starting container {id}: {e}")))?;
        Ok(ResponseBody::Started {
            pid: process::ns_pid(c.init.pid),
        })
    }

    fn exec(&self, id: &str, exec_id: &str, spec: ProcessSpec) -> Reply {
        let c = self.container(id)?;
        if lock(&c.init.gate).is_some() || c.init.exit.get().is_some() {
            return Err(err(
                ErrorCode::InvalidState,
                format!("container {id:?} is not running"),
            ));
        }
        if lock(&c.execs).contains_key(exec_id) {
            return Err(err(
                ErrorCode::AlreadyExists,
                format!("exec {exec_id:?} already exists in {id:?}"),
            ));
        }
        let cfg = InitConfig {
            mode: Mode::Exec {
                target: c.init.pid,
                namespaces: c.spec.namespaces.clone(),
            },
            process: spec,
            seccomp: c.seccomp.clone(),
        };
        let p = spawn_process(cfg, id)?;
        let gate = lock(&p.gate).take();
        if let Some(g) = gate {
            g.start()
                .map_err(|e| err(ErrorCode::Internal, format!("exec {exec_id} in {id}: {e}")))?;
        }
        let pid = process::ns_pid(p.pid);
        lock(&c.execs).insert(exec_id.to_string(), Arc::new(p));
        Ok(ResponseBody::Started { pid })
    }

    /// Forgets container `id` once its process has ended: its root is unmounted and its
    /// cgroup removed (what is left of its processes killed first).
    fn remove(&self, id: &str) -> Reply {
        let c = self.container(id)?;
        if c.init.exit.get().is_none() {
            return Err(err(
                ErrorCode::InvalidState,
                format!("container {id} is still running"),
            ));
        }
        let _ = cgroup::signal_all(id, libc::SIGKILL);
        lock(&self.containers).remove(id);
        rootfs::teardown(id);
        cgroup::remove(id);
        Ok(ResponseBody::Done)
    }

    fn wait(&self, id: &str, exec_id: Option<&str>, after: &mut After) -> Reply {
        let p = self.process(id, exec_id)?;
        let status = p.exit.wait();
        if exec_id.is_none() {
            *lock(&self.container(id)?.collected) = true;
            let all = lock(&self.containers).values().all(|c| *lock(&c.collected));
            if all {
                *after = After::PowerOffWhenDelivered;
            }
        }
        Ok(ResponseBody::Exited(status))
    }

    /// Every process in the container's cgroup: its init, execs and their children.
    fn signal_all(&self, id: &str, signal: i32) -> Reply {
        self.container(id)?;
        cgroup::signal_all(id, signal)
            .map(|_| ResponseBody::Done)
            .map_err(|e| {
                err(
                    ErrorCode::Unsupported,
                    format!("signalling every process of {id} needs its cgroup: {e}"),
                )
            })
    }

    fn stats(&self, id: &str) -> Reply {
        self.container(id)?;
        cgroup::stats(id)
            .map(ResponseBody::Stats)
            .map_err(|e| err(ErrorCode::Internal, format!("stats of {id}: {e}")))
    }

    /// Attaches a stdio stream; `ready` sends the handshake's `Ready`.
    pub fn attach(
        &self,
        id: &str,
        exec_id: Option<&str>,
        kind: StreamKind,
        stream: VsockStream,
        ready: impl FnOnce(&VsockStream) -> std::io::Result<()>,
    ) -> Result<(), ErrorReply> {
        self.process(id, exec_id)?.stdio.attach(kind, stream, ready)
    }
}

fn hello(h: &Hello) -> Reply {
    check_version(h.version)?;
    Ok(ResponseBody::Hello(HelloReply {
        version: PROTOCOL_VERSION,
        agent: format!("husk-agent {}", env!("CARGO_PKG_VERSION")),
    }))
}

/// Runs the init helper for `cfg` with fresh stdio, up to the start gate.
fn spawn_process(cfg: InitConfig, id: &str) -> Result<Process, ErrorReply> {
    let (stdio, child) = Stdio::new(cfg.process.terminal)
        .map_err(|e| err(ErrorCode::Internal, format!("stdio for {id}: {e}")))?;
    watch_process(process::spawn(&cfg, child), stdio, id)
}

/// The process a helper set up (`spawned`), its stdio relayed by `stdio`, reaped when it
/// ends and counted in the container's cgroup.
fn watch_process(
    spawned: Result<process::Spawned, process::SpawnError>,
    stdio: Stdio,
    id: &str,
) -> Result<Process, ErrorReply> {
    let mut spawned =
        spawned.map_err(|e| err(ErrorCode::Internal, format!("container {id}: {e}")))?;
    if let Some(m) = spawned.pty.take() {
        stdio.set_pty_master(m);
    }
    let exit = reaper::watch(spawned.pid);
    cgroup::add(id, spawned.pid);
    Ok(Process {
        pid: spawned.pid,
        stdio,
        exit,
        gate: Mutex::new(Some(spawned)),
    })
}

fn signal_process(p: &Process, signal: i32) -> Reply {
    if p.exit.get().is_some() {
        return Err(err(
            ErrorCode::InvalidState,
            "the process has already exited",
        ));
    }
    // SAFETY: kill() touches no memory; `p.pid` is our child and not yet reaped (its exit is
    // unset, checked above), so the pid cannot have been reused.
    if unsafe { libc::kill(p.pid, signal) } < 0 {
        return Err(err(
            ErrorCode::Internal,
            format!(
                "kill({}, {signal}): {}",
                p.pid,
                std::io::Error::last_os_error()
            ),
        ));
    }
    Ok(ResponseBody::Done)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
