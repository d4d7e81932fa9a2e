//! What a crash left behind, repaired by the next command: a container recorded running
//! whose VM and monitor are both gone (`kill -9` of the monitor, then the VM ended) still
//! has its helper daemons (vhost-device-vsock, husk-vhost-blk, virtiofsd), its network and
//! no exit recorded. Any `husk` command finds such containers when it opens the runtime,
//! ends what is left of them and records their end, as the monitor would have.

use super::lifecycle::{kill_processes_in, Runtime};
use super::state::Status;

impl Runtime {
    /// Repairs every container a crash left half-ended, then sweeps networks whose owners
    /// are gone. Best effort: a failure is logged and left for the next command.
    pub(super) fn repair(&self) {
        // One listing for both: every command starts here.
        let all = self.store.list().unwrap_or_default();
        for s in &all {
            if s.vm_alive() || s.monitor_alive() {
                continue;
            }
            if s.status == Status::Running {
                tracing::info!(
                    id = s.id,
                    "the container's VM and monitor are gone; recording its end"
                );
                kill_processes_in(&self.dirs_of(s));
                // Its network goes with the recorded end.
                if let Err(e) = self.record_exit(s, None) {
                    tracing::warn!(id = s.id, "recording the end of a crashed container: {e}");
                }
            } else if s.network.is_some() {
                self.release_network(&s.id);
            }
        }
        self.sweep_orphan_networks();
    }
}
