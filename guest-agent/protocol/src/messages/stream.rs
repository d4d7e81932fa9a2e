//! The stdio stream handshake.
//!
//! Each stdio stream (stdin, stdout, stderr, or one pty) gets its own vsock connection, so a
//! process flooding stdout can never hold up a `Signal` or `Wait` on the control connection.
//! A stream connection opens with one [`StreamHello`] frame; the agent answers with one
//! [`StreamReply`] frame; after `Ready` the connection carries raw bytes in both directions
//! with no framing (binary-safe). A half-close ends the stream: the host shutting down its
//! write side of `Stdin`/`Pty` closes the process's stdin; the agent closing `Stdout`/`Stderr`
//! means the process closed that stream.
//!
//! Streams may attach any time after `CreateContainer`/`ExecProcess` has been answered. Output
//! produced before the attach waits in the agent's pipe (the process blocks when it fills), so
//! attaching before `StartContainer` loses nothing.

use serde::{Deserialize, Serialize};

use super::reply::ErrorReply;
use crate::validate::{check_id, Check};

/// First frame on a stream connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamHello {
    /// Checked like `Hello`'s, since a stream connection may be the first thing to reach a
    /// freshly booted agent.
    pub version: u32,
    pub container_id: String,
    /// `None` for the container's own process.
    pub exec_id: Option<String>,
    pub kind: StreamKind,
}

/// Which stream a connection carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StreamKind {
    Stdin,
    Stdout,
    Stderr,
    /// Both directions of a `terminal: true` process.
    Pty,
}

/// The agent's answer to a [`StreamHello`]; raw bytes follow only after `Ready`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum StreamReply {
    Ready,
    Refused(ErrorReply),
}

impl StreamHello {
    pub fn validate(&self) -> Check {
        check_id("container_id", &self.container_id)?;
        if let Some(e) = &self.exec_id {
            check_id("exec_id", e)?;
        }
        Ok(())
    }
}

impl StreamReply {
    pub fn validate(&self) -> Check {
        match self {
            StreamReply::Ready => Ok(()),
            StreamReply::Refused(e) => e.validate().map_err(|e| e.within("refused")),
        }
    }
}
