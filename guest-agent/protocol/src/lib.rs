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
//!
//! A control exchange, both sides over an in-memory "connection":
//!
//! ```
//! use husk_protocol::*;
//!
//! // Host: say hello.
//! let mut wire = Vec::new();
//! let hello = Hello { version: PROTOCOL_VERSION, client: "husk 0.1.0".into() };
//! write_message(&mut wire, &Request::new(1, RequestBody::Hello(hello)))?;
//!
//! // Agent: read the first frame, check the version, answer.
//! let payload = read_frame(&mut wire.as_slice())?.expect("a frame");
//! let reply = match codec::decode_opening(&payload) {
//!     Ok(codec::Opening::Control(Request { id, body: RequestBody::Hello(h) })) => {
//!         match check_version(h.version) {
//!             Ok(()) => Response::ok(id, ResponseBody::Hello(HelloReply {
//!                 version: PROTOCOL_VERSION,
//!                 agent: "husk-agent 0.1.0".into(),
//!             })),
//!             Err(e) => Response::err(id, e),
//!         }
//!     }
//!     Ok(_) => unreachable!("this example only sends Hello"),
//!     // Malformed: reply to the request's id if it can still be read, and keep serving.
//!     Err(e) => Response::err(peek_request_id(&payload).unwrap_or(0), e.to_reply()),
//! };
//! let mut back = Vec::new();
//! write_message(&mut back, &reply)?;
//!
//! // Host: read the answer.
//! let resp: Response = read_message(&mut back.as_slice())?.expect("a response");
//! assert!(matches!(resp.body, Ok(ResponseBody::Hello(_))));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![deny(clippy::undocumented_unsafe_blocks)]

pub mod codec;
pub mod frame;
pub mod limits;
pub mod messages;
pub mod validate;

pub use codec::{
    decode, encode, peek_request_id, read_message, write_message, CodecError, Message,
};
pub use frame::{read_frame, write_frame, FrameDecoder, FrameError};
pub use messages::*;
pub use validate::ValidationError;
