//! husk-mux: many byte streams over one serial link, for husk's QEMU backend, whose agent
//! channel is a virtio-serial port (QEMU 7.2 cannot migrate a vhost-user vsock device, and
//! this host has no kernel vhost-vsock; a virtio-serial port migrates).
//!
//! The host side ([`host::run`]) serves Firecracker's hybrid vsock protocol on a unix socket
//! (`CONNECT <port>\n` → `OK <port>\n`, then the stream's bytes), so every husk client reaches
//! the agent the same way on every backend. The guest side ([`guest::start`]) hands the agent
//! one end of a unix socket pair per stream, the way a vsock listener hands out connections.
//!
//! Each stream has its own flow control (a [`frame::WINDOW`] of credit each way), so a stream
//! whose reader stalls holds up no other: the link is always read, and a stream's bytes are
//! only read from its local end while its peer has room for them. Everything the peer sends is
//! bounded and checked; a frame no peer may send ends the link ([`Error::BadFrame`]), a
//! stream that overruns its credit is reset.

#![deny(clippy::undocumented_unsafe_blocks)]

pub mod frame;
pub mod guest;
pub mod host;
mod link;
mod queue;
mod role;
mod stream;
mod sys;

pub use link::MAX_STREAMS;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("mux link: frame for stream {stream} has a bad {what} ({value})")]
    BadFrame {
        stream: u32,
        what: &'static str,
        value: u64,
    },
    #[error("mux link: peer {what} (stream {stream})")]
    Protocol { stream: u32, what: &'static str },
    #[error("mux link: {what}")]
    Io {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
}
