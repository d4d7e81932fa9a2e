//! Messages to and from frame payloads.
//!
//! The payload is JSON (serde_json): the crate is "std + serde only", the messages are small
//! and rare next to the stdio streams (which never pass through here), and a readable wire
//! format is worth more in agent logs than the bytes a binary codec would save.
//!
//! Both directions validate: `encode` refuses to send what the peer would reject, so host bugs
//! surface on the host with a field path; `decode` refuses to hand a message to the caller
//! until it passed [`Message::validate`].

use std::fmt;
use std::io::{Read, Write};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::frame::{check_len, read_frame, write_frame, FrameError};
use crate::messages::{ErrorCode, ErrorReply, Request, Response, StreamHello, StreamReply};
use crate::validate::ValidationError;

/// A message that travels in a frame of its own.
pub trait Message: Serialize + DeserializeOwned {
    /// Name used in error messages.
    const NAME: &'static str;
    fn validate(&self) -> Result<(), ValidationError>;
}

impl Message for Request {
    const NAME: &'static str = "request";
    fn validate(&self) -> Result<(), ValidationError> {
        Request::validate(self)
    }
}

impl Message for Response {
    const NAME: &'static str = "response";
    fn validate(&self) -> Result<(), ValidationError> {
        Response::validate(self)
    }
}

impl Message for StreamHello {
    const NAME: &'static str = "stream hello";
    fn validate(&self) -> Result<(), ValidationError> {
        StreamHello::validate(self)
    }
}

impl Message for StreamReply {
    const NAME: &'static str = "stream reply";
    fn validate(&self) -> Result<(), ValidationError> {
        StreamReply::validate(self)
    }
}

/// Why a message could not be sent or received.
#[derive(Debug)]
pub enum CodecError {
    /// The framing failed; the connection has lost its place.
    Frame(FrameError),
    /// The payload is not a well-formed message of the expected kind: bad JSON, invalid
    /// UTF-8, an unknown variant or field, a wrong type, trailing bytes.
    Malformed {
        what: &'static str,
        source: serde_json::Error,
    },
    /// The message decoded but breaks a rule (a cap, a NUL byte, a relative path, ...).
    Invalid {
        what: &'static str,
        error: ValidationError,
    },
    /// Serialising failed; only possible through a bug, kept as a value all the same.
    Encode {
        what: &'static str,
        source: serde_json::Error,
    },
}

impl CodecError {
    /// The reply the agent sends for a request that failed to decode. The connection stays
    /// usable after `Malformed` and `Invalid` (the frame boundary held), not after `Frame`.
    pub fn to_reply(&self) -> ErrorReply {
        ErrorReply::new(ErrorCode::InvalidRequest, self.to_string())
    }

    /// Whether the stream still has its place, so the caller can reply and keep serving.
    pub fn is_recoverable(&self) -> bool {
        !matches!(self, CodecError::Frame(_))
    }
}

impl fmt::Display for CodecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CodecError::Frame(e) => write!(f, "{e}"),
            CodecError::Malformed { what, source } => write!(f, "malformed {what}: {source}"),
            CodecError::Invalid { what, error } => write!(f, "invalid {what}: {error}"),
            CodecError::Encode { what, source } => write!(f, "cannot encode {what}: {source}"),
        }
    }
}

impl std::error::Error for CodecError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            CodecError::Frame(e) => Some(e),
            CodecError::Malformed { source, .. } | CodecError::Encode { source, .. } => {
                Some(source)
            }
            CodecError::Invalid { error, .. } => Some(error),
        }
    }
}

impl From<FrameError> for CodecError {
    fn from(e: FrameError) -> Self {
        CodecError::Frame(e)
    }
}

/// Validates and serialises a message into one frame payload (within the frame cap).
pub fn encode<M: Message>(msg: &M) -> Result<Vec<u8>, CodecError> {
    msg.validate().map_err(|error| CodecError::Invalid {
        what: M::NAME,
        error,
    })?;
    let bytes = serde_json::to_vec(msg).map_err(|source| CodecError::Encode {
        what: M::NAME,
        source,
    })?;
    check_len(bytes.len())?;
    Ok(bytes)
}

/// Parses and validates one frame payload.
pub fn decode<M: Message>(payload: &[u8]) -> Result<M, CodecError> {
    check_len(payload.len())?;
    let msg: M = serde_json::from_slice(payload).map_err(|source| CodecError::Malformed {
        what: M::NAME,
        source,
    })?;
    msg.validate().map_err(|error| CodecError::Invalid {
        what: M::NAME,
        error,
    })?;
    Ok(msg)
}

/// Encodes `msg` and writes it as one frame.
pub fn write_message<M: Message>(w: &mut impl Write, msg: &M) -> Result<(), CodecError> {
    let bytes = encode(msg)?;
    write_frame(w, &bytes)?;
    Ok(())
}

/// Reads one frame and decodes it; `Ok(None)` on a clean end of stream between frames.
pub fn read_message<M: Message>(r: &mut impl Read) -> Result<Option<M>, CodecError> {
    match read_frame(r)? {
        Some(payload) => decode(&payload).map(Some),
        None => Ok(None),
    }
}

/// The request id in a payload that failed to decode, if one can still be read, so the
/// agent's error reply reaches the request that caused it. `None` means reply with id 0.
pub fn peek_request_id(payload: &[u8]) -> Option<u64> {
    #[derive(Deserialize)]
    struct IdOnly {
        id: u64,
    }
    serde_json::from_slice::<IdOnly>(payload).ok().map(|m| m.id)
}

/// What the first frame on a new agent connection was: both kinds share the agent's port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Opening {
    /// A control connection; this is its first request (a `Hello`, if the host is polite).
    Control(Request),
    /// A stdio stream connection.
    Stream(StreamHello),
}

/// Decodes the first frame on a connection. A `StreamHello` is told apart by its `kind`
/// field, which a `Request` envelope never has; anything else is decoded as a request, so
/// malformed input gets the request's error messages.
pub fn decode_opening(payload: &[u8]) -> Result<Opening, CodecError> {
    #[derive(Deserialize)]
    struct Probe {
        kind: Option<serde::de::IgnoredAny>,
    }
    check_len(payload.len())?;
    let is_stream = serde_json::from_slice::<Probe>(payload).is_ok_and(|p| p.kind.is_some());
    if is_stream {
        decode(payload).map(Opening::Stream)
    } else {
        decode(payload).map(Opening::Control)
    }
}

#[cfg(test)]
mod tests;
