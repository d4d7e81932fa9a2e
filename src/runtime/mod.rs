//! The `husk` CLI's containers: one container = one microVM, its state under
//! `<root>/containers/<id>/`.
//!
//! This is `husk`'s own half: its record, docker's image/flag merge, the VM and container
//! spec built from the record, starting the VM with its network, the detached monitor. The
//! agent connection, container creation and power-off, exec, stdio and the store's file
//! handling are the container core's ([`crate::pod`]), shared with `husk-runtime`.
//!
//! - [`state`]: `state.json` (camelCase) and the status guards;
//! - [`store`]: container directories, id/name/prefix lookup, unique names and CIDs;
//! - [`spec`]: image config + `husk run` flags, merged as docker merges them;
//! - [`guest_spec`]: the VM spec and the agent's container spec from the record;
//! - [`lifecycle`]: create, boot, finish, stop, kill, remove;
//! - [`exec`]: `husk exec`'s process spec;
//! - `network`: attach a container's network before boot, release it after, sweep crashes;
//! - [`monitor`]: the foreground drive and the detached `husk` process of a `-d` container.

pub mod exec;
pub mod guest_spec;
pub mod lifecycle;
mod lost;
pub mod monitor;
mod network;
mod repair;
pub mod spec;
pub mod state;
pub mod store;
#[cfg(test)]
mod vm_args_tests;

use std::path::PathBuf;

pub use lifecycle::{RunOptions, Runtime};
pub use state::{ContainerConfig, State, Status, Volume};
pub use store::ContainerStore;

/// Why a container operation failed. Each message names the container or path and what to do.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{path} is not valid container state ({source}); remove the container with `husk rm -f`"
    )]
    CorruptState {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("no such container: {0} (see `husk ps -a`)")]
    NoSuchContainer(String),
    #[error("{count} containers match the prefix {query:?}; give more of the id")]
    Ambiguous { query: String, count: usize },
    #[error("the name {name:?} is already used by container {id}; remove it (`husk rm {name}`) or pick another --name", id = &id[..12])]
    NameInUse { name: String, id: String },
    #[error("invalid container name {0:?}: use [a-zA-Z0-9][a-zA-Z0-9_.-]*")]
    InvalidName(String),
    #[error("container {id} is {status}: {what}")]
    WrongState {
        id: String,
        status: &'static str,
        what: String,
    },
    #[error("no command: the image has no Entrypoint or Cmd; give one after the image name")]
    NoCommand,
    #[error("invalid environment entry {0:?}: use KEY=VALUE or KEY")]
    BadEnv(String),
    #[error("the working directory {0:?} is invalid: it must be an absolute path")]
    RelativeWorkdir(String),
    #[error("user {0:?}: not a numeric UID[:GID]; names are looked up in the image's /etc/passwd and /etc/group")]
    UserName(String),
    #[error("invalid --volume {spec:?}: {why}")]
    BadVolume { spec: String, why: String },
    #[error("invalid --memory {0:?}: use a size such as 256m or 1g")]
    BadMemory(String),
    #[error("invalid --cpus {0:?}: use a number of vCPUs from 1 to 255")]
    BadCpus(String),
    #[error("invalid --storage-opt {opt:?}: {why}")]
    BadStorageOpt { opt: String, why: String },
    #[error(transparent)]
    MissingAsset(#[from] crate::pod::MissingAsset),
    #[error("{tool} failed: {detail}")]
    Tool { tool: &'static str, detail: String },
    #[error(transparent)]
    Scratch(#[from] crate::image::scratch::ScratchError),
    #[error(transparent)]
    Image(#[from] crate::image::SourceError),
    #[error("container {id}: cannot start its VM: {source}")]
    Vm {
        id: String,
        source: Box<crate::backend::Error>,
    },
    /// The VM ended for a reason of its own (a helper such as virtiofsd died under it).
    /// (`cause`, not `source`: the message already carries it, and `{:#}` would repeat it.)
    #[error("container {id}: {cause}")]
    VmFailed {
        id: String,
        cause: Box<crate::backend::Error>,
    },
    #[error("container {id}: {source} (console log: {console})")]
    Agent {
        id: String,
        console: PathBuf,
        source: Box<crate::agent::Error>,
    },
    /// `husk exec` lost its agent before its process ended; `cause` says what ended it
    /// (the container stopped or removed under it, the VM gone, a silent agent).
    #[error("container {id}: the exec lost its process before it exited: {cause} ({source})")]
    ExecCut {
        id: String,
        cause: String,
        source: Box<crate::agent::Error>,
    },
    #[error(transparent)]
    Network(#[from] crate::network::Error),
    #[error("container {id}: the monitor process failed: {detail} (see {log})")]
    Monitor {
        id: String,
        detail: String,
        log: PathBuf,
    },
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
