//! Error replies and the version handshake rule both sides enforce.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::PROTOCOL_VERSION;
use crate::limits::MAX_ERROR_MESSAGE_LEN;
use crate::validate::{fail, Check};

/// A request that failed: a machine-readable code and a sentence for the person reading logs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErrorReply {
    pub code: ErrorCode,
    pub message: String,
}

/// Broad classes of failure the host reacts to differently (retry, report, give up).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The peers speak different protocol versions; nothing else will work.
    VersionMismatch,
    /// The request did not decode or broke a rule; the host sent something wrong.
    InvalidRequest,
    /// No such container or exec id.
    NotFound,
    /// The container or exec id is already in use.
    AlreadyExists,
    /// Valid request, wrong moment (start before create, exec into a stopped container...).
    InvalidState,
    /// A setting this agent cannot apply.
    Unsupported,
    /// The guest failed doing what was asked (mount, exec, ...).
    Internal,
}

impl ErrorReply {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    /// The reply to a peer speaking `peer_version`.
    pub fn version_mismatch(peer_version: u32) -> Self {
        Self::new(
            ErrorCode::VersionMismatch,
            format!(
                "protocol version mismatch: peer speaks version {peer_version}, this side \
                 speaks {PROTOCOL_VERSION}; husk and husk-agent must come from the same \
                 release (rebuild the guest initramfs)"
            ),
        )
    }

    pub(crate) fn validate(&self) -> Check {
        if self.message.len() > MAX_ERROR_MESSAGE_LEN {
            return fail(
                "message",
                format!(
                    "{} bytes long, at most {MAX_ERROR_MESSAGE_LEN} allowed",
                    self.message.len()
                ),
            );
        }
        Ok(())
    }
}

impl fmt::Display for ErrorReply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}: {}", self.code, self.message)
    }
}

impl std::error::Error for ErrorReply {}

/// The one version rule, used by the agent on `Hello` and by the host on the reply: versions
/// must be equal, since husk and its agent ship together and there is no negotiation.
pub fn check_version(peer_version: u32) -> Result<(), ErrorReply> {
    if peer_version == PROTOCOL_VERSION {
        Ok(())
    } else {
        Err(ErrorReply::version_mismatch(peer_version))
    }
}
