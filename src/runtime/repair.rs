//! What a crash left behind, repaired by the next command: a container recorded running
//! whose VM and monitor are both gone (`kill -9` of the monitor, then the VM ended) still
//! has its helper daemons (husk-agent-mux, husk-layer-disk, virtiofsd), its network and
//! no exit recorded; a container whose monitor died before its process started has a VM
//! running nothing. Any `husk` command finds such containers when it opens the runtime,
//! ends what is left of them and records their end, as the monitor would have.

use super::lifecycle::{kill_processes_in, Runtime};
use super::state::Status;

/// How long the repair waits, in all, for processes that are exiting to finish.
const SETTLE_EXITS: std::time::Duration = std::time::Duration::from_secs(10);

impl Runtime {
    /// Repairs every container a crash left half-ended, then sweeps networks whose owners
    /// are gone. Best effort: a failure is logged and left for the next command.
    pub(super) fn repair(&self) {
        // One listing for both: every command starts here.
        let all = self.store.list().unwrap_or_default();
        // A VM or monitor killed a moment ago may still be exiting: a killed multi-threaded
        // VMM's leader is a zombie, its TAP and sockets closed, while its other threads tear
        // down guest memory. Read then, "VM alive, monitor dead" looks like a running
        // container that lost its monitor, and nothing would be released. So wait for such
        // processes to finish first, bounded for the whole listing.
        let deadline = std::time::Instant::now() + SETTLE_EXITS;
        for s in &all {
            for p in [&s.pid, &s.monitor].into_iter().flatten() {
                if !p.settle_exit(deadline) {
                    tracing::warn!(
                        id = s.id,
                        pid = p.pid,
                        "a process still exiting after {SETTLE_EXITS:?}"
                    );
                }
            }
        }
        for s in &all {
            if s.status == Status::Running && s.booting && !s.monitor_alive() && s.vm_alive() {
                // Its monitor died with the command that asked for the boot (`run -d` and
                // its monitor killed together, a `kill -9` of a foreground `run`).
                self.end_abandoned_boot(&s.id);
                continue;
            }
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
        // And the cgroups and helper socket directories of VMs whose launcher was killed
        // (this root's or another's: they are keyed by id lease, not by container).
        crate::confine::launch::sweep_dead_leases();
    }
}

impl Runtime {
    /// Ends what a monitor that died while it booted container `id` left running (`run -d`
    /// and `start` see it go without an answer): its VM and helpers would run on with no
    /// process started in them and nobody to record an end, so `ps` would say "Up" forever.
    /// Records the end; a container whose end is recorded, or whose monitor lives, is left.
    pub(super) fn end_abandoned_boot(&self, id: &str) {
        let Ok(s) = self.load(id) else { return };
        if s.monitor_alive() || matches!(s.status, Status::Exited | Status::Stopped) {
            return;
        }
        tracing::info!(
            id,
            "its monitor died while booting it; ending what it started"
        );
        if let Some(vm) = &s.pid {
            vm.signal(libc::SIGKILL);
        }
        // Helpers started before the VM (and so before anything was recorded) too.
        kill_processes_in(&self.dirs_of(&s));
        if s.status == Status::Running {
            if let Err(e) = self.record_exit(&s, None) {
                tracing::warn!(id, "recording the end of an abandoned boot: {e}");
            }
        }
    }
}
