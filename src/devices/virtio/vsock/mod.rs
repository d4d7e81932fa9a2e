//! virtio-vsock in userspace, bridged to host unix sockets (Firecracker's hybrid vsock
//! protocol, see `unix.rs`).
//!
//! - `packet`: the header and reading/writing packets over a descriptor chain in any layout;
//! - `connection`: one stream's state machine, credit accounting and bounded tx buffer;
//! - `muxer`: all streams of a device, the host listener, timeouts and RSTs;
//! - `unix`: the host-side CONNECT/OK protocol;
//! - `handler`: the worker-thread subscriber moving packets between queues and muxer;
//! - `device`: [`Vsock`], the `VirtioDevice`.

pub mod connection;
pub mod device;
pub mod handler;
pub mod muxer;
#[cfg(test)]
mod muxer_tests;
pub mod packet;
pub mod unix;

pub use device::{Error, Vsock};
