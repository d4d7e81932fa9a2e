//! The container core every front-end drives: one microVM (a pod) holding one or more
//! containers, whatever created it (`husk`'s [`crate::runtime`], `husk-runtime`'s
//! [`crate::ociruntime`], and the containerd shim to come).
//!
//! - [`assets`]: where the guest kernel and the agent initramfs are;
//! - [`vm`]: the base [`VmSpec`](crate::backend::VmSpec) of a pod, and [`PodVm`], a started
//!   VM with its agent: connect, create containers, power off;
//! - [`attach`]: host stdio to a process's streams (pipes, pty, log file), signal forwarding,
//!   and the wait for the process with its output drained;
//! - [`exec`]: another process in a running container;
//! - [`proc`]: processes known by pid and start time, liveness from `/proc`;
//! - [`state_store`]: the one atomic JSON store of per-container records;
//! - [`ready_pipe`]: a front-end re-executing itself as the process that holds a VM (or an
//!   exec), told `ok` or why not on an inherited pipe.
//!
//! What stays with each front-end: its state record and command-line behaviour, and how it
//! gets a VM started (its image or bundle, its network) and drives a started container
//! (husk's monitor, husk-runtime's VM holder and control socket).

pub mod assets;
pub mod attach;
pub mod exec;
pub mod proc;
pub mod ready_pipe;
pub mod state_store;
pub mod vm;

use std::time::Duration;

pub use assets::{GuestAssets, MissingAsset};
pub use state_store::{StateStore, StoreError};
pub use vm::{base_spec, BootError, PodVm, PoweredOff};

/// How long a booting guest may take until its agent answers. TCG boots in about a second;
/// the margin is for a loaded host starting many VMs at once.
pub const AGENT_CONNECT_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a running agent may take to accept a new connection (exec, stop, kill).
pub const AGENT_REACH_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the VM may take to power off once asked.
pub const VM_EXIT_TIMEOUT: Duration = Duration::from_secs(10);
/// The exit code recorded when the VM died under the process (`kill -9` of the VMM).
pub const VM_DIED_EXIT_CODE: i32 = 137;
/// The first guest vsock context id handed out (0-2 are reserved by vsock).
pub const FIRST_CID: u32 = 3;

/// The lowest vsock CID at or above [`FIRST_CID`] that `used` does not hold.
pub fn free_cid(used: impl IntoIterator<Item = u32>) -> u32 {
    let used: std::collections::HashSet<u32> = used.into_iter().collect();
    (FIRST_CID..u32::MAX)
        .find(|c| !used.contains(c))
        .unwrap_or(FIRST_CID)
}

/// A fresh id: 64 hex digits from the kernel's random source.
pub fn new_id() -> std::io::Result<String> {
    use std::io::Read;
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    #[test]
    fn cids_start_above_the_reserved_ones_and_fill_gaps() {
        assert_eq!(super::free_cid([]), 3);
        assert_eq!(super::free_cid([3, 4, 6]), 5);
        assert_eq!(super::free_cid([0, 1, 2]), 3);
    }

    #[test]
    fn ids_are_64_hex_digits_and_differ() {
        let (a, b) = (super::new_id().unwrap(), super::new_id().unwrap());
        assert_eq!(a.len(), 64);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }
}
