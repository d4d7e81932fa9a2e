//! The host side of the guest agent protocol (`husk-protocol`), over the VM's hybrid vsock
//! unix socket, identical on both VM backends.
//!
//! - [`vsock`]: the `CONNECT <port>` / `OK` exchange, retried while the guest boots;
//! - [`AgentClient`]: the control connection, typed calls, answers matched by id;
//! - [`attach_stream`] and [`Pump`]: stdio on connections of their own;
//! - [`restored_request`]: the `Restored` request for a VM restored from a template.
//!
//! The transport differs per backend and clients rely on what both give: husk-vmm's own
//! virtio-vsock device, and on QEMU a virtio-serial port carrying every connection through
//! husk-agent-mux (per-stream credit, so one stalled stream holds up no other). A host
//! half-close (`shutdown(Write)`) is an EOF the guest reads on both, but clients do not rely
//! on the guest still being able to send after it: a `Pty` stream's end of input goes through
//! `CloseStdin`. Streams are one-way (stdin, stdout, stderr each on its own connection), so
//! only a pty carries both directions, at interactive rates. Writes are kept at
//! [`stream::CHUNK`] (16 KiB) so no single write holds a stream for long.

mod client;
mod restored;
pub mod stream;
pub mod vsock;

use std::io;
use std::path::PathBuf;

pub use client::{AgentClient, WaitSent, DEFAULT_CALL_TIMEOUT};
pub use husk_protocol::{ErrorCode, ErrorReply, MacPair, Restored, StreamKind};
pub use restored::{restored_request, RESTORED_ENTROPY_LEN};
pub use stream::{attach_stream, copy_from_stream, copy_to_stream, Pump};

/// Why talking to the agent failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "agent not reachable through {uds} (vsock port {port}) within {secs:.1} s after \
         {attempts} attempts; last error: {last} (is the VM running and its agent started? see \
         its console log)"
    )]
    ConnectTimeout {
        uds: PathBuf,
        port: u32,
        secs: f64,
        attempts: u32,
        last: String,
    },
    #[error("agent connection through {uds}: {source}")]
    Io { uds: PathBuf, source: io::Error },
    #[error("{request}: {source}")]
    Codec {
        request: &'static str,
        source: husk_protocol::CodecError,
    },
    #[error(
        "the guest agent ({agent_build}) speaks protocol version {agent}, husk speaks {}; \
         rebuild the guest initramfs from this release",
        husk_protocol::PROTOCOL_VERSION
    )]
    VersionMismatch { agent: u32, agent_build: String },
    #[error("{request} failed in the guest: {error}")]
    Agent {
        request: &'static str,
        error: ErrorReply,
    },
    #[error("agent answered {request} with an unexpected {got} reply")]
    UnexpectedReply {
        request: &'static str,
        got: &'static str,
    },
    #[error("agent did not answer {request} (id {id}) within {secs:.1} s")]
    Timeout {
        request: &'static str,
        id: u64,
        secs: f64,
    },
    #[error(
        "reading {RESTORED_ENTROPY_LEN} bytes of entropy for a restored VM from {}: {source}",
        restored::URANDOM
    )]
    HostEntropy {
        #[source]
        source: io::Error,
    },
    #[error("agent connection lost: {0}")]
    Disconnected(String),
    #[error("agent refused the {kind:?} stream of container {container_id}: {error}")]
    StreamRefused {
        kind: StreamKind,
        container_id: String,
        error: ErrorReply,
    },
}

impl Error {
    /// The guest's error code, when the agent answered with an error.
    pub fn agent_code(&self) -> Option<ErrorCode> {
        match self {
            Error::Agent { error, .. } | Error::StreamRefused { error, .. } => Some(error.code),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests;
