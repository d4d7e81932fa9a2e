//! `husk-runtime`: a runc-compatible OCI runtime whose containers each run in a microVM.
//!
//! The process model is gVisor runsc's (which calls it the sandbox): `create` starts a host
//! *VM holder* process ([`vm_holder`]) that owns the VM, keeps the stdio it inherited (or a pty it
//! sent over `--console-socket`), relays it to the container's process through the agent and
//! exits with that process's status. The other commands find it through the state under
//! `--root` ([`state`]) and talk to it over its control socket ([`control`]) or to the agent.
//!
//! - [`bundle`]: `config.json` → the VM and the guest container (what is honoured, what is
//!   refused); [`process`]: the OCI process (also `exec --process`); [`mounts`]: mounts and
//!   the host directories they share;
//! - [`network`]: the engine's network namespace → the VM's NIC (attach/detach);
//! - [`hooks`]: OCI hooks, run on the host with the state on stdin;
//! - [`console`]: the host pty and SCM_RIGHTS for `--console-socket`;
//! - [`runc_log`]: runc's `--log`/`--log-format` (JSON lines);
//! - [`commands`]: one function per subcommand.

pub mod bundle;
pub mod commands;
pub mod console;
pub mod control;
pub mod exec_check;
pub mod hooks;
pub mod mounts;
pub mod network;
pub mod process;
pub mod runc_log;
pub mod state;
pub mod vm_holder;

use std::path::PathBuf;

/// Why a husk-runtime command failed. Each message is one line naming the container, file or
/// field at fault.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Usage(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} not found: the bundle has no config.json")]
    NoConfig { path: PathBuf },
    #[error("{path}: {detail}")]
    BadConfig { path: PathBuf, detail: String },
    #[error("{path}: {source}")]
    BadProcess {
        path: PathBuf,
        #[source]
        source: process::ProcessError,
    },
    #[error("{path}: {source}")]
    BadJson {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("the bundle's rootfs {path} is not a directory")]
    NoRootfs { path: PathBuf },
    #[error("config.json: {0}: a VM runtime cannot honour this")]
    Unsupported(String),
    #[error("container {0} does not exist")]
    NoSuchContainer(String),
    #[error("container {0} already exists")]
    Exists(String),
    #[error("invalid container id {0:?}: use [a-zA-Z0-9][a-zA-Z0-9_.-]* (at most 128 bytes)")]
    BadId(String),
    #[error("container {id} is {status}: {what}")]
    WrongState {
        id: String,
        status: &'static str,
        what: String,
    },
    #[error("invalid signal {0:?}: use a name (TERM, SIGKILL) or a number 1..=64")]
    BadSignal(String),
    #[error("{path} is not valid state ({source}); remove it with `husk-runtime delete --force`")]
    CorruptState {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("{0}")]
    Assets(#[from] crate::pod::MissingAsset),
    #[error("container {id}: cannot start its VM: {source}")]
    Vm {
        id: String,
        source: Box<crate::backend::Error>,
    },
    #[error("container {id}: {source} (console log: {console})")]
    Agent {
        id: String,
        console: PathBuf,
        source: Box<crate::agent::Error>,
    },
    #[error("container {id}: network namespace {netns} (linux.namespaces): {source}")]
    Network {
        id: String,
        netns: String,
        source: Box<crate::network::Error>,
    },
    #[error("container {id}: making its network namespace (linux.namespaces: network without a path): {source}")]
    NewNetns { id: String, source: std::io::Error },
    /// The VM holder (or the control socket to it) failed.
    #[error("container {id}: the VM holder process failed: {detail}")]
    VmHolder { id: String, detail: String },
    /// A detached exec's holder did not come up.
    #[error("container {id}: the exec holder process failed: {detail}")]
    ExecHolder { id: String, detail: String },
    #[error("{kind} hook {path} failed: {detail}")]
    Hook {
        kind: &'static str,
        path: String,
        detail: String,
    },
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { path, source }
    }
}

impl From<crate::pod::StoreError> for Error {
    fn from(e: crate::pod::StoreError) -> Error {
        use crate::pod::StoreError;
        match e {
            StoreError::NotFound(id) => Error::NoSuchContainer(id),
            StoreError::Io { path, source } => Error::Io { path, source },
            StoreError::Corrupt { path, source } => Error::CorruptState { path, source },
        }
    }
}
