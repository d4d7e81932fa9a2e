//! `containerd-shim-husk-v2`: containerd's runtime v2 shim (runtime type
//! `io.containerd.husk.v2`), the third front-end of [`crate::pod`]: one shim and one microVM
//! per Kubernetes pod, as Kata's shim does.
//!
//! - [`launch`]: the `start` and `delete` actions containerd runs the binary with: which
//!   shim serves a task (the pod's, by the CRI annotations) and the clean-up after a shim
//!   that died;
//! - [`service`]: the Task service's operations on [`pod`] and the record of its containers;
//! - [`task_api`]: containerd's Task API (ttrpc) onto [`service`];
//! - [`pod`]: the pod's VM, its share and its network; containers added and removed while it
//!   runs;
//! - [`share`]: the host side of the pod's one virtio-fs share, which holds every
//!   container's root and volumes (a running VM cannot be given new devices);
//! - [`rootfs`]: containerd's snapshot mounts for a task, at `<bundle>/rootfs`;
//! - [`process`]: a container's processes as containerd sees them: status, exit, waiters;
//! - [`metrics`]: the guest's cgroup numbers as containerd's cgroup metrics.

pub mod launch;
pub mod metrics;
pub mod pod;
pub mod process;
pub mod rootfs;
pub mod service;
pub mod share;
pub mod task_api;

use containerd_shim::protos::ttrpc;

/// The runtime type containerd knows the shim by.
pub const RUNTIME_ID: &str = "io.containerd.husk.v2";
/// The CRI annotation naming a container's pod (its sandbox's container id).
pub const SANDBOX_ID_ANNOTATION: &str = "io.kubernetes.cri.sandbox-id";
/// The CRI annotation saying whether a container is its pod's sandbox or a member.
pub const CONTAINER_TYPE_ANNOTATION: &str = "io.kubernetes.cri.container-type";
/// Where each shim keeps its pods' working directories (shares, sockets, console logs).
pub const RUN_DIR: &str = "/run/husk-shim";

/// Why a request failed; each maps to the gRPC code containerd acts on.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0} already exists")]
    Exists(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}: husk cannot do this")]
    Unimplemented(&'static str),
    #[error(transparent)]
    Bundle(#[from] crate::ociruntime::Error),
    #[error(transparent)]
    Share(#[from] share::ShareError),
    #[error(transparent)]
    Rootfs(#[from] rootfs::RootfsError),
    #[error("pod {pod}: {source}")]
    Boot {
        pod: String,
        #[source]
        source: crate::pod::BootError,
    },
    #[error("pod {pod}: its network: {source}")]
    Network {
        pod: String,
        #[source]
        source: crate::network::Error,
    },
    #[error("pod {pod}: {source}")]
    Vm {
        pod: String,
        #[source]
        source: crate::backend::Error,
    },
    #[error("{what}: {source}")]
    Agent {
        what: String,
        #[source]
        source: crate::agent::Error,
    },
    #[error(transparent)]
    Assets(#[from] crate::pod::MissingAsset),
}

impl Error {
    fn code(&self) -> ttrpc::Code {
        match self {
            Error::NotFound(_) => ttrpc::Code::NOT_FOUND,
            Error::Exists(_) => ttrpc::Code::ALREADY_EXISTS,
            Error::FailedPrecondition(_) => ttrpc::Code::FAILED_PRECONDITION,
            Error::InvalidArgument(_) | Error::Bundle(_) => ttrpc::Code::INVALID_ARGUMENT,
            Error::Unimplemented(_) => ttrpc::Code::UNIMPLEMENTED,
            _ => ttrpc::Code::INTERNAL,
        }
    }
}

impl From<Error> for ttrpc::Error {
    fn from(e: Error) -> ttrpc::Error {
        ttrpc::Error::RpcStatus(ttrpc::get_status(e.code(), e.to_string()))
    }
}
