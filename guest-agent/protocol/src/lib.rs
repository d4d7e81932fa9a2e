//! Host <-> guest agent protocol: versioned, length-prefixed messages.
//!
//! Both husk (the host client in `src/agent/`) and husk-agent (PID 1 in the guest) depend on
//! this crate, so the two sides cannot disagree about the wire format. Layers, bottom up:
//!
//! - [`frame`]: `[u32 big-endian length][payload]` with a hard cap, blocking and incremental;
//! - [`messages`]: the request/response envelope, every operation, the stdio stream handshake;
//! - [`validate`]: rules a decoded message must pass before anyone acts on it;
//! - [`codec`]: messages to and from frames (JSON), validation included.
//!
//! Every decode path returns an error value on bad input; nothing here panics on what a peer
//! sends.

pub mod codec;
pub mod frame;
pub mod limits;
pub mod messages;
pub mod validate;

pub use codec::{decode, encode, peek_request_id, read_message, write_message, CodecError, Message};
pub use frame::{read_frame, write_frame, FrameDecoder, FrameError};
pub use messages::*;
pub use validate::ValidationError;
