//! The messages: an envelope carrying a request id, one body per operation, and the replies.
//!
//! Control traffic is strictly request/response on one connection: the host sends a
//! [`Request`] with a fresh `id` and the agent answers with a [`Response`] carrying the same
//! `id`. Ids let the host keep several requests in flight (a blocking `Wait` alongside a
//! `Signal`); the agent may answer out of order. Id 0 is reserved for the agent's reply to a
//! request too malformed to read an id from, so the host must start at 1.
//!
//! Compatibility: there is no negotiation; husk and husk-agent ship together and `Hello`
//! refuses a different [`PROTOCOL_VERSION`]. For that refusal to be readable across versions,
//! the envelope and the `Hello` body are frozen: never change them, only add to `Hello`
//! (unknown fields there are ignored, unlike everywhere else).

mod caps;
mod container;
mod network;
mod process;
mod reply;
mod restored;
mod rootfs;
mod seccomp;
mod stream;

pub use caps::Capability;
pub use container::{ContainerSpec, NamespaceKind, Resources};
pub use network::{
    format_mac, DnsConfig, HostEntry, InterfaceConfig, IpNet, NetworkConfig, RouteConfig,
};
pub use process::{Capabilities, ConsoleSize, ProcessSpec, Rlimit, RlimitKind, User};
pub use reply::{check_version, ErrorCode, ErrorReply};
pub use restored::{MacPair, Restored};
pub use rootfs::{DiskRef, FsType, LayerDisk, MountSpec, RootfsSpec, MAX_DISK_SERIAL_LEN};
pub use seccomp::{SeccompAction, SeccompOp, SeccompSpec, SyscallArg, SyscallRule};
pub use stream::{StreamHello, StreamKind, StreamReply};

use serde::{Deserialize, Serialize};

use crate::limits::{MAX_SIGNAL, MAX_TOKEN_LEN};
use crate::validate::{check_cstr, check_id, check_list, fail, Check};

/// The protocol version this build speaks. Bump on any change to a message's shape or
/// meaning. 2: `Shutdown` is answered once the guest's file systems are synced (the host
/// kills the VM on the answer instead of waiting for the guest's reset). 3: `CreateContainer`
/// answers [`ResponseBody::Created`] with the guest's own steps and their durations.
/// A new request no older peer sends is no bump (`Freeze`, `RemoveContainer`, `Restored`):
/// an agent that lacks it answers `invalid_request` naming the unknown variant.
pub const PROTOCOL_VERSION: u32 = 3;

/// The vsock port the agent listens on, for control and stream connections alike (the first
/// frame says which a connection is: a `Request` or a `StreamHello`).
pub const AGENT_VSOCK_PORT: u32 = 1024;

/// The line the agent prints on the console once the guest is up (every virtio driver
/// probed, and the agent serving). Hosts wait for it before the first `CONNECT`, so that a
/// VMM that died is an error with its last console line rather than an agent never answering.
pub const GUEST_READY_MARKER: &str = "HUSK-AGENT-READY";

/// The last line of the guest's boot facts (`FACT ...` lines, printed after
/// [`GUEST_READY_MARKER`] whenever the vCPU is otherwise idle). A VM template is saved only
/// once its guest printed it, so that no clone prints (and pays under TCG for) the facts again.
pub const GUEST_FACTS_END_MARKER: &str = "FACT end";

/// A host → agent request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Request {
    pub id: u64,
    pub body: RequestBody,
}

/// The agent's answer to the request with the same `id`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Response {
    pub id: u64,
    pub body: Result<ResponseBody, ErrorReply>,
}

/// What the host asks. `exec_id: None` always means the container's own (init) process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum RequestBody {
    /// First request on a control connection. → `Hello`.
    Hello(Hello),
    /// Prepare a container; run nothing yet. → `Done`.
    CreateContainer(Box<ContainerSpec>),
    /// Run the container's process. → `Started`.
    StartContainer { container_id: String },
    /// Run another process in a running container's namespaces. → `Started`.
    ExecProcess {
        container_id: String,
        exec_id: String,
        process: Box<ProcessSpec>,
    },
    /// Send `signal` to a process, or with `all` to every process in the container's
    /// cgroup (runc's `kill --all`; `exec_id` must then be `None`). → `Done`.
    Signal {
        container_id: String,
        exec_id: Option<String>,
        signal: i32,
        /// Absent from older hosts' requests: the one process only.
        #[serde(default)]
        all: bool,
    },
    /// Block until a process exits. → `Exited`.
    Wait {
        container_id: String,
        exec_id: Option<String>,
    },
    /// Resize a process's pty. → `Done`.
    ResizeTty {
        container_id: String,
        exec_id: Option<String>,
        rows: u16,
        cols: u16,
    },
    /// Close a process's stdin (pipe or pty), for hosts that keep the stdin stream open.
    /// → `Done`.
    CloseStdin {
        container_id: String,
        exec_id: Option<String>,
    },
    /// Resource usage of a container. → `Stats`.
    Stats { container_id: String },
    /// Freeze (`frozen: true`) or thaw every process of a container (its cgroup's
    /// `cgroup.freeze`): a shim's `Pause`/`Resume` of one container of a pod. → `Done`.
    Freeze { container_id: String, frozen: bool },
    /// Forget a container whose process has ended: unmount its root, remove its cgroup (a
    /// pod's containers come and go while its VM runs). → `Done`.
    RemoveContainer { container_id: String },
    /// Sync the guest's file systems, answer, then power the VM off: once the answer is
    /// sent nothing is left to lose, and the host may kill the VM instead of waiting for the
    /// guest's reset. → `Done`.
    Shutdown,
    /// The VM was restored from a template, not booted: set the clock, reseed the CRNG,
    /// re-read the disks and give the NICs their MACs (see [`Restored`]). Sent once, right
    /// after `Hello`. → `Done`.
    Restored(Box<Restored>),
}

/// `Hello`'s body. Deliberately without `deny_unknown_fields`: see the module docs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub version: u32,
    /// Who is asking, for the agent's log (e.g. `husk 0.1.0`).
    pub client: String,
}

/// A successful answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum ResponseBody {
    Hello(HelloReply),
    /// The request was carried out and has nothing to report.
    Done,
    /// The process is running with this pid (in the container's pid namespace).
    Started {
        pid: u32,
    },
    Exited(ExitStatus),
    Stats(StatsReply),
    /// The container exists, its process waits for `StartContainer`; how long each of the
    /// guest's steps took (for `husk run --timings`).
    Created {
        steps: Vec<GuestStep>,
    },
}

/// One step of the guest's work on a request and how long it took.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuestStep {
    pub name: String,
    pub micros: u64,
}

/// Most steps a `Created` reply may list.
pub const MAX_GUEST_STEPS: usize = 32;

/// Longest step name.
pub const MAX_GUEST_STEP_NAME_LEN: usize = 64;

/// The agent's half of the handshake. Like [`Hello`], frozen and tolerant of unknown fields,
/// so an older host can still read a newer agent's version and report the mismatch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HelloReply {
    pub version: u32,
    /// The agent's build, e.g. `husk-agent 0.1.0`.
    pub agent: String,
}

/// How a process ended. `code` is what a shell would report: the exit code, or 128+N for a
/// death by signal N, so the host can pass it straight on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExitStatus {
    pub code: i32,
    /// The signal that killed it, if one did.
    pub signal: Option<i32>,
}

impl ExitStatus {
    pub fn exited(code: i32) -> Self {
        Self { code, signal: None }
    }

    pub fn signaled(signal: i32) -> Self {
        Self {
            code: 128 + signal,
            signal: Some(signal),
        }
    }
}

/// A container's usage, from its cgroup in the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatsReply {
    pub cpu_usage_ns: u64,
    pub cpu_user_ns: u64,
    pub cpu_system_ns: u64,
    pub memory_usage_bytes: u64,
    /// `None` when unlimited.
    pub memory_limit_bytes: Option<u64>,
    pub pids: u64,
    /// How many of its processes the kernel's OOM killer ended (`memory.events`
    /// `oom_kill`). Added after version 1 shipped: absent means none.
    #[serde(default)]
    pub oom_kills: u64,
}

impl Request {
    pub fn new(id: u64, body: RequestBody) -> Self {
        Self { id, body }
    }

    pub fn validate(&self) -> Check {
        if self.id == 0 {
            return fail(
                "id",
                "0 is reserved for replies to unreadable requests; start at 1",
            );
        }
        self.body.validate().map_err(|e| e.within(self.body.name()))
    }
}

impl RequestBody {
    /// The wire name of the variant, for logs and error paths.
    pub fn name(&self) -> &'static str {
        match self {
            RequestBody::Hello(_) => "hello",
            RequestBody::CreateContainer(_) => "create_container",
            RequestBody::StartContainer { .. } => "start_container",
            RequestBody::ExecProcess { .. } => "exec_process",
            RequestBody::Signal { .. } => "signal",
            RequestBody::Wait { .. } => "wait",
            RequestBody::ResizeTty { .. } => "resize_tty",
            RequestBody::CloseStdin { .. } => "close_stdin",
            RequestBody::Stats { .. } => "stats",
            RequestBody::Freeze { .. } => "freeze",
            RequestBody::RemoveContainer { .. } => "remove_container",
            RequestBody::Shutdown => "shutdown",
            RequestBody::Restored(_) => "restored",
        }
    }

    fn validate(&self) -> Check {
        match self {
            // The version itself is checked by the agent with `check_version`, so a mismatch
            // gets its own error code rather than a generic invalid-request.
            RequestBody::Hello(h) => check_cstr("client", &h.client, MAX_TOKEN_LEN),
            RequestBody::CreateContainer(spec) => spec.validate(),
            RequestBody::StartContainer { container_id }
            | RequestBody::Stats { container_id }
            | RequestBody::Freeze { container_id, .. }
            | RequestBody::RemoveContainer { container_id } => {
                check_id("container_id", container_id)
            }
            RequestBody::ExecProcess {
                container_id,
                exec_id,
                process,
            } => {
                check_id("container_id", container_id)?;
                check_id("exec_id", exec_id)?;
                process.validate().map_err(|e| e.within("process"))
            }
            RequestBody::Signal {
                container_id,
                exec_id,
                signal,
                all,
            } => {
                check_target(container_id, exec_id)?;
                if *all && exec_id.is_some() {
                    return fail("all", "signalling all processes takes no exec_id");
                }
                if !(1..=MAX_SIGNAL).contains(signal) {
                    return fail(
                        "signal",
                        format!("{signal} is not a signal (1..={MAX_SIGNAL})"),
                    );
                }
                Ok(())
            }
            RequestBody::Wait {
                container_id,
                exec_id,
            }
            | RequestBody::CloseStdin {
                container_id,
                exec_id,
            } => check_target(container_id, exec_id),
            RequestBody::ResizeTty {
                container_id,
                exec_id,
                ..
            } => check_target(container_id, exec_id),
            RequestBody::Shutdown => Ok(()),
            RequestBody::Restored(r) => r.validate(),
        }
    }
}

fn check_target(container_id: &str, exec_id: &Option<String>) -> Check {
    check_id("container_id", container_id)?;
    match exec_id {
        Some(e) => check_id("exec_id", e),
        None => Ok(()),
    }
}

impl Response {
    pub fn ok(id: u64, body: ResponseBody) -> Self {
        Self { id, body: Ok(body) }
    }

    pub fn err(id: u64, error: ErrorReply) -> Self {
        Self {
            id,
            body: Err(error),
        }
    }

    /// The guest is untrusted from the host's side (a container can own its agent), so replies
    /// get bounded too.
    pub fn validate(&self) -> Check {
        match &self.body {
            Ok(ResponseBody::Hello(h)) => check_cstr("body.hello.agent", &h.agent, MAX_TOKEN_LEN),
            Ok(ResponseBody::Created { steps }) => {
                check_list("body.created.steps", steps, MAX_GUEST_STEPS, |s| {
                    check_cstr("name", &s.name, MAX_GUEST_STEP_NAME_LEN)?;
                    match s.name.chars().all(|c| c.is_ascii_graphic() || c == ' ') {
                        true => Ok(()),
                        false => fail("name", "not printable ASCII"),
                    }
                })
            }
            Ok(_) => Ok(()),
            Err(e) => e.validate().map_err(|e| e.within("body.error")),
        }
    }
}
