//! The shim's operations: every Task request (see [`super::task_api`]) becomes an operation on the
//! pod (see [`super::pod`]) and the record of its containers and processes.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use containerd_shim::api;
use containerd_shim::protos::events::task::{
    TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskExit, TaskIO, TaskOOM, TaskPaused,
    TaskResumed, TaskStart,
};
use containerd_shim::protos::protobuf::{MessageDyn, MessageField};
use containerd_shim::protos::topics;
use containerd_shim::protos::ttrpc::context::with_timeout;
use containerd_shim::publisher::RemotePublisher;
use containerd_shim::ExitSignal;

use super::pod::{self, Pod};
use super::process::{Process, Status, StdioPaths};
use super::{rootfs, Error, CONTAINER_TYPE_ANNOTATION, SANDBOX_ID_ANNOTATION};
use crate::agent::AgentClient;
use crate::ociruntime::bundle::{self, Namespaces};
use crate::pod::{attach, exec, VM_DIED_EXIT_CODE};

/// The shim's Task service.
#[derive(Clone)]
pub struct Service {
    inner: Arc<Inner>,
}

struct Inner {
    namespace: String,
    publisher: RemotePublisher,
    exit: Arc<ExitSignal>,
    state: Mutex<State>,
    /// Signalled whenever a process ends.
    ended: Condvar,
}

#[derive(Default)]
struct State {
    pod: Option<Pod>,
    containers: HashMap<String, Container>,
}

struct Container {
    bundle: PathBuf,
    /// containerd's rootfs mounts, mounted here at `<bundle>/rootfs`.
    mounted_rootfs: bool,
    /// Its entries in the pod's share.
    entries: Vec<String>,
    /// It booted the pod: the VM goes when it is deleted.
    sandbox: bool,
    init: Process,
    execs: HashMap<String, Process>,
}

impl Container {
    fn process(&self, exec_id: &str) -> Result<&Process, Error> {
        if exec_id.is_empty() {
            return Ok(&self.init);
        }
        self.execs
            .get(exec_id)
            .ok_or_else(|| Error::NotFound(format!("exec {exec_id}")))
    }

    fn process_mut(&mut self, exec_id: &str) -> Result<&mut Process, Error> {
        if exec_id.is_empty() {
            return Ok(&mut self.init);
        }
        self.execs
            .get_mut(exec_id)
            .ok_or_else(|| Error::NotFound(format!("exec {exec_id}")))
    }
}

/// `Some(id)` for an exec, `None` for the container's own process.
pub(super) fn exec_ref(exec_id: &str) -> Option<&str> {
    (!exec_id.is_empty()).then_some(exec_id)
}

impl Service {
    pub fn new(namespace: &str, publisher: RemotePublisher, exit: Arc<ExitSignal>) -> Service {
        Service {
            inner: Arc::new(Inner {
                namespace: namespace.to_string(),
                publisher,
                exit,
                state: Mutex::default(),
                ended: Condvar::new(),
            }),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.inner.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn publish(&self, topic: &str, event: Box<dyn MessageDyn>) {
        let ctx = with_timeout(5_000_000_000);
        if let Err(e) = self
            .inner
            .publisher
            .publish(ctx, topic, &self.inner.namespace, event)
        {
            tracing::warn!("publishing {topic}: {e}");
        }
    }

    /// The pod's agent and VM pid, for calls made without holding the state.
    fn agent(&self) -> Result<(Arc<AgentClient>, PathBuf), Error> {
        let st = self.state();
        let pod = st
            .pod
            .as_ref()
            .ok_or_else(|| Error::FailedPrecondition("the pod's VM is not running".into()))?;
        Ok((pod.vm.agent.clone(), pod.vm.vsock_uds().to_path_buf()))
    }

    fn vm_pid(st: &State) -> u32 {
        st.pod.as_ref().map(Pod::vm_pid).unwrap_or(0)
    }

    pub(super) fn create_task(&self, req: &api::CreateTaskRequest) -> Result<u32, Error> {
        if !req.checkpoint.is_empty() {
            return Err(Error::Unimplemented("restoring a checkpoint"));
        }
        let id = req.id.clone();
        let bundle_dir = PathBuf::from(&req.bundle);
        let spec = bundle::load_spec(&bundle_dir)?;
        let annotations = spec.annotations().clone().unwrap_or_default();
        let member = annotations
            .get(CONTAINER_TYPE_ANNOTATION)
            .map(String::as_str)
            == Some("container");
        let mut st = self.state();
        if st.containers.contains_key(&id) {
            return Err(Error::Exists(format!("container {id}")));
        }
        if member {
            let pod_id = annotations
                .get(SANDBOX_ID_ANNOTATION)
                .cloned()
                .unwrap_or_default();
            match &st.pod {
                Some(p) if p.id == pod_id => {}
                _ => {
                    return Err(Error::FailedPrecondition(format!(
                        "container {id} belongs to pod {pod_id:?}, which this shim does not run"
                    )))
                }
            }
        } else if let Some(p) = &st.pod {
            return Err(Error::FailedPrecondition(format!(
                "this shim already runs pod {}; container {id} is not one of its containers",
                p.id
            )));
        }

        let mounted_rootfs = rootfs::mount_all(&bundle_dir, &req.rootfs)?;
        let undo_rootfs = || {
            if mounted_rootfs {
                rootfs::unmount(&bundle_dir);
            }
        };
        let mut plan = match bundle::plan_with(&id, &bundle_dir, Namespaces::Pod) {
            Ok(p) => p,
            Err(e) => {
                undo_rootfs();
                return Err(e.into());
            }
        };
        if !member {
            match Pod::boot(&id, &pod::dir_of(&self.inner.namespace, &id), &mut plan) {
                Ok(p) => st.pod = Some(p),
                Err(e) => {
                    undo_rootfs();
                    return Err(e);
                }
            }
        }
        let stdio = StdioPaths {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        };
        let Some(pod) = st.pod.as_ref() else {
            undo_rootfs();
            return Err(Error::FailedPrecondition(
                "the pod's VM is not running".into(),
            ));
        };
        let created = pod.place(&id, &mut plan).and_then(|entries| {
            let made = pod.create(plan.container.clone()).and_then(|()| {
                attach::attach(
                    &pod.vm.agent,
                    pod.vm.vsock_uds(),
                    &id,
                    None,
                    &stdio.to_stdio(),
                )
                .map_err(|source| Error::Agent {
                    what: format!("attaching the stdio of container {id}"),
                    source,
                })
            });
            match made {
                Ok(a) => Ok((entries, a)),
                Err(e) => {
                    pod.release(&entries);
                    Err(e)
                }
            }
        });
        let (entries, attached) = match created {
            Ok(c) => c,
            Err(e) => {
                undo_rootfs();
                if !member {
                    if let Some(p) = st.pod.take() {
                        drop(st);
                        p.shut_down();
                    }
                }
                return Err(e);
            }
        };
        let pid = pod.vm_pid();
        let mut init = Process::new(stdio.clone());
        init.attached = Some(attached);
        st.containers.insert(
            id.clone(),
            Container {
                bundle: bundle_dir,
                mounted_rootfs,
                entries,
                sandbox: !member,
                init,
                execs: HashMap::new(),
            },
        );
        drop(st);
        self.publish(
            topics::TASK_CREATE_EVENT_TOPIC,
            Box::new(TaskCreate {
                container_id: id,
                bundle: req.bundle.clone(),
                rootfs: req.rootfs.clone(),
                io: MessageField::some(TaskIO {
                    stdin: stdio.stdin,
                    stdout: stdio.stdout,
                    stderr: stdio.stderr,
                    terminal: stdio.terminal,
                    ..Default::default()
                }),
                pid,
                ..Default::default()
            }),
        );
        Ok(pid)
    }

    pub(super) fn start_task(&self, id: &str, exec_id: &str) -> Result<u32, Error> {
        let (agent, uds) = self.agent()?;
        let mut st = self.state();
        let vm_pid = Self::vm_pid(&st);
        let c = st
            .containers
            .get_mut(id)
            .ok_or_else(|| Error::NotFound(format!("container {id}")))?;
        let p = c.process_mut(exec_id)?;
        if p.status != Status::Created {
            return Err(Error::FailedPrecondition(format!(
                "{id} {exec_id}: already started"
            )));
        }
        if exec_id.is_empty() {
            let attached = p.attached.take();
            match agent.start_container(id) {
                Ok(guest_pid) => {
                    p.guest_pid = guest_pid;
                    p.status = Status::Running;
                }
                Err(source) => {
                    let why = format!("starting the process of container {id}: {source}");
                    p.exited(crate::ociruntime::vm_holder::start_failure_code(&why));
                    self.inner.ended.notify_all();
                    return Err(Error::FailedPrecondition(why));
                }
            }
            drop(st);
            self.publish(
                topics::TASK_START_EVENT_TOPIC,
                Box::new(TaskStart {
                    container_id: id.to_string(),
                    pid: vm_pid,
                    ..Default::default()
                }),
            );
            let (svc, id) = (self.clone(), id.to_string());
            std::thread::spawn(move || {
                let code = match attached {
                    Some(a) => a.wait(&agent, &id, None, None),
                    None => agent.wait(&id, None),
                }
                .map(|s| s.code)
                .unwrap_or(VM_DIED_EXIT_CODE);
                svc.report_oom(&agent, &id, code);
                svc.ended(&id, "", code);
            });
        } else {
            let spec = p.spec.take().ok_or_else(|| {
                Error::FailedPrecondition(format!("exec {exec_id} has nothing to run"))
            })?;
            let stdio = p.stdio.to_stdio();
            let running = match exec::start(agent, &uds, id, exec_id, spec, &stdio) {
                Ok(r) => r,
                Err(source) => {
                    let why = format!("starting exec {exec_id} in container {id}: {source}");
                    p.exited(crate::ociruntime::vm_holder::start_failure_code(&why));
                    self.inner.ended.notify_all();
                    return Err(Error::FailedPrecondition(why));
                }
            };
            p.guest_pid = running.pid();
            p.status = Status::Running;
            drop(st);
            self.publish(
                topics::TASK_EXEC_STARTED_EVENT_TOPIC,
                Box::new(TaskExecStarted {
                    container_id: id.to_string(),
                    exec_id: exec_id.to_string(),
                    pid: vm_pid,
                    ..Default::default()
                }),
            );
            let (svc, id, exec_id) = (self.clone(), id.to_string(), exec_id.to_string());
            std::thread::spawn(move || {
                let code = running
                    .wait(None)
                    .map(|s| s.code)
                    .unwrap_or(VM_DIED_EXIT_CODE);
                svc.ended(&id, &exec_id, code);
            });
        }
        Ok(vm_pid)
    }

    /// Tells containerd (before the exit, as its CRI plugin wants it) that container `id`'s
    /// process, ended by SIGKILL, was the guest OOM killer's victim.
    fn report_oom(&self, agent: &AgentClient, id: &str, code: i32) {
        if code != 128 + libc::SIGKILL {
            return;
        }
        if agent.stats(id).is_ok_and(|s| s.oom_kills > 0) {
            self.publish(
                topics::TASK_OOM_EVENT_TOPIC,
                Box::new(TaskOOM {
                    container_id: id.to_string(),
                    ..Default::default()
                }),
            );
        }
    }

    /// Records that a process ended with `code` and tells containerd and the waiters.
    fn ended(&self, id: &str, exec_id: &str, code: i32) {
        let mut st = self.state();
        let vm_pid = Self::vm_pid(&st);
        let Some(p) = st
            .containers
            .get_mut(id)
            .and_then(|c| c.process_mut(exec_id).ok())
        else {
            return;
        };
        if p.exit.is_some() {
            return;
        }
        let exit = p.exited(code);
        drop(st);
        self.inner.ended.notify_all();
        self.publish(
            topics::TASK_EXIT_EVENT_TOPIC,
            Box::new(TaskExit {
                container_id: id.to_string(),
                id: if exec_id.is_empty() { id } else { exec_id }.to_string(),
                pid: vm_pid,
                exit_status: exit.code,
                exited_at: exit.timestamp(),
                ..Default::default()
            }),
        );
    }

    pub(super) fn kill_task(&self, req: &api::KillRequest) -> Result<(), Error> {
        let sig = i32::try_from(req.signal)
            .ok()
            .filter(|s| (1..=64).contains(s))
            .ok_or_else(|| Error::InvalidArgument(format!("signal {}", req.signal)))?;
        let (agent, _) = self.agent()?;
        let status = {
            let st = self.state();
            let c = st
                .containers
                .get(&req.id)
                .ok_or_else(|| Error::NotFound(format!("container {}", req.id)))?;
            c.process(&req.exec_id)?.status
        };
        match status {
            Status::Stopped => Err(Error::NotFound(format!(
                "{} {}: process already finished",
                req.id, req.exec_id
            ))),
            // Never started: it ends without having run.
            Status::Created => {
                self.ended(&req.id, &req.exec_id, 128 + sig);
                Ok(())
            }
            Status::Running | Status::Paused => {
                let sent = if req.all && req.exec_id.is_empty() {
                    agent.signal_all(&req.id, sig)
                } else {
                    agent.signal(&req.id, exec_ref(&req.exec_id), sig)
                };
                sent.map_err(|source| {
                    // It ended between our record and the guest's: containerd's "already
                    // finished", which it takes as done.
                    if source.agent_code() == Some(husk_protocol::ErrorCode::InvalidState) {
                        Error::NotFound(format!(
                            "{} {}: process already finished",
                            req.id, req.exec_id
                        ))
                    } else {
                        Error::Agent {
                            what: format!("signalling {} {}", req.id, req.exec_id),
                            source,
                        }
                    }
                })
            }
        }
    }

    pub(super) fn delete_task(
        &self,
        req: &api::DeleteRequest,
    ) -> Result<api::DeleteResponse, Error> {
        let mut st = self.state();
        let vm_pid = Self::vm_pid(&st);
        let c = st
            .containers
            .get_mut(&req.id)
            .ok_or_else(|| Error::NotFound(format!("container {}", req.id)))?;
        let p = c.process(&req.exec_id)?;
        if matches!(p.status, Status::Running | Status::Paused) {
            return Err(Error::FailedPrecondition(format!(
                "{} {}: still running",
                req.id, req.exec_id
            )));
        }
        let exit = p.exit.unwrap_or_else(|| super::process::Exit::now(0));
        let response = api::DeleteResponse {
            pid: vm_pid,
            exit_status: exit.code,
            exited_at: exit.timestamp(),
            ..Default::default()
        };
        if !req.exec_id.is_empty() {
            c.execs.remove(&req.exec_id);
            return Ok(response);
        }
        let Some(c) = st.containers.remove(&req.id) else {
            return Ok(response);
        };
        if let Some(pod) = &st.pod {
            // The guest lets go of its root before the host takes it away.
            if !c.sandbox {
                if let Err(e) = pod.vm.agent.remove_container(&req.id) {
                    tracing::warn!("container {}: removing it in the guest: {e}", req.id);
                }
            }
            pod.release(&c.entries);
        }
        if c.mounted_rootfs {
            rootfs::unmount(&c.bundle);
        }
        let pod = if c.sandbox { st.pod.take() } else { None };
        // The VM goes with its sandbox: whatever still ran in it has ended.
        let orphans: Vec<String> = if c.sandbox {
            st.containers.keys().cloned().collect()
        } else {
            Vec::new()
        };
        drop(st);
        for o in orphans {
            self.ended(&o, "", VM_DIED_EXIT_CODE);
        }
        if let Some(p) = pod {
            p.shut_down();
        }
        self.publish(
            topics::TASK_DELETE_EVENT_TOPIC,
            Box::new(TaskDelete {
                container_id: req.id.clone(),
                id: req.id.clone(),
                pid: vm_pid,
                exit_status: exit.code,
                exited_at: exit.timestamp(),
                ..Default::default()
            }),
        );
        Ok(response)
    }

    pub(super) fn add_exec(&self, req: &api::ExecProcessRequest) -> Result<(), Error> {
        let process: oci_spec::runtime::Process =
            serde_json::from_slice(&req.spec.value).map_err(|e| {
                Error::InvalidArgument(format!("exec {}: process spec: {e}", req.exec_id))
            })?;
        let spec = crate::ociruntime::process::convert(&process, (24, 80))
            .map_err(|e| Error::InvalidArgument(format!("exec {}: {e}", req.exec_id)))?;
        let mut st = self.state();
        let c = st
            .containers
            .get_mut(&req.id)
            .ok_or_else(|| Error::NotFound(format!("container {}", req.id)))?;
        if c.init.status != Status::Running {
            return Err(Error::FailedPrecondition(format!(
                "container {} is not running",
                req.id
            )));
        }
        if req.exec_id.is_empty() || c.execs.contains_key(&req.exec_id) {
            return Err(Error::Exists(format!("exec {:?}", req.exec_id)));
        }
        let mut p = Process::new(StdioPaths {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        });
        p.spec = Some(spec);
        c.execs.insert(req.exec_id.clone(), p);
        drop(st);
        self.publish(
            topics::TASK_EXEC_ADDED_EVENT_TOPIC,
            Box::new(TaskExecAdded {
                container_id: req.id.clone(),
                exec_id: req.exec_id.clone(),
                ..Default::default()
            }),
        );
        Ok(())
    }

    pub(super) fn wait_task(&self, id: &str, exec_id: &str) -> Result<api::WaitResponse, Error> {
        let mut st = self.state();
        loop {
            let c = st
                .containers
                .get(id)
                .ok_or_else(|| Error::NotFound(format!("container {id}")))?;
            if let Some(exit) = c.process(exec_id)?.exit {
                return Ok(api::WaitResponse {
                    exit_status: exit.code,
                    exited_at: exit.timestamp(),
                    ..Default::default()
                });
            }
            st = self.inner.ended.wait(st).unwrap_or_else(|p| p.into_inner());
        }
    }

    pub(super) fn task_state(&self, id: &str, exec_id: &str) -> Result<api::StateResponse, Error> {
        let st = self.state();
        let vm_pid = Self::vm_pid(&st);
        let c = st
            .containers
            .get(id)
            .ok_or_else(|| Error::NotFound(format!("container {id}")))?;
        let p = c.process(exec_id)?;
        Ok(api::StateResponse {
            id: id.to_string(),
            exec_id: exec_id.to_string(),
            bundle: c.bundle.display().to_string(),
            pid: vm_pid,
            status: p.task_status().into(),
            stdin: p.stdio.stdin.clone(),
            stdout: p.stdio.stdout.clone(),
            stderr: p.stdio.stderr.clone(),
            terminal: p.stdio.terminal,
            exit_status: p.exit.map(|e| e.code).unwrap_or(0),
            exited_at: p.exit.map(|e| e.timestamp()).unwrap_or_default(),
            ..Default::default()
        })
    }

    /// Freezes (`Pause`) or thaws (`Resume`) every process of container `id` in the guest.
    pub(super) fn set_paused(&self, id: &str, paused: bool) -> Result<(), Error> {
        let (from, to, topic) = if paused {
            (
                Status::Running,
                Status::Paused,
                topics::TASK_PAUSED_EVENT_TOPIC,
            )
        } else {
            (
                Status::Paused,
                Status::Running,
                topics::TASK_RESUMED_EVENT_TOPIC,
            )
        };
        let (agent, _) = self.agent()?;
        let mut st = self.state();
        let c = st
            .containers
            .get_mut(id)
            .ok_or_else(|| Error::NotFound(format!("container {id}")))?;
        if c.init.status != from {
            return Err(Error::FailedPrecondition(format!(
                "container {id} is {:?}, not {from:?}",
                c.init.status
            )));
        }
        agent.freeze(id, paused).map_err(|source| Error::Agent {
            what: format!(
                "{} container {id}",
                if paused { "freezing" } else { "thawing" }
            ),
            source,
        })?;
        c.init.status = to;
        for e in c.execs.values_mut().filter(|e| e.status == from) {
            e.status = to;
        }
        drop(st);
        let event: Box<dyn MessageDyn> = if paused {
            Box::new(TaskPaused {
                container_id: id.to_string(),
                ..Default::default()
            })
        } else {
            Box::new(TaskResumed {
                container_id: id.to_string(),
                ..Default::default()
            })
        };
        self.publish(topic, event);
        Ok(())
    }

    /// The guest pids of a container's live processes.
    pub(super) fn guest_pids(&self, id: &str) -> Result<Vec<u32>, Error> {
        let st = self.state();
        let c = st
            .containers
            .get(id)
            .ok_or_else(|| Error::NotFound(format!("container {id}")))?;
        Ok(std::iter::once(&c.init)
            .chain(c.execs.values())
            .filter(|p| matches!(p.status, Status::Running | Status::Paused))
            .map(|p| p.guest_pid)
            .collect())
    }

    /// The pod VM's host pid (0 before it boots and after it went).
    pub(super) fn task_pid(&self) -> u32 {
        Self::vm_pid(&self.state())
    }

    /// Ends the shim once it holds nothing: one shim serves the whole pod, and goes when its
    /// last container has.
    pub(super) fn shutdown_if_idle(&self) {
        let st = self.state();
        if st.containers.is_empty() && st.pod.is_none() {
            self.inner.exit.signal();
        }
    }

    pub(super) fn with_agent<T>(
        &self,
        what: String,
        f: impl FnOnce(&AgentClient) -> Result<T, crate::agent::Error>,
    ) -> Result<T, Error> {
        let (agent, _) = self.agent()?;
        f(&agent).map_err(|source| Error::Agent { what, source })
    }
}
