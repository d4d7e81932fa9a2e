//! The runtime's side of container networks ([`crate::network`]): attach before the VM
//! starts (recorded in the state before the VMM runs, so a crash from then on is found),
//! release when the VM has ended or the container is removed, and sweep what a `kill -9`
//! of the VMM and its monitor left behind.

use husk_protocol::NetworkConfig;

use super::lifecycle::Runtime;
use super::state::{State, STATE_FILE};
use super::Error;
use crate::backend::{VmHandle, VmSpec};
use crate::network::Wiring;
use crate::pod::proc::ProcessRef;
use crate::util::timings;

impl Runtime {
    /// Sets up `state`'s network, adds its NIC to `spec` and returns the rest of the set-up,
    /// which finishes beside the boot and gives the guest's side; `None` for `--network
    /// none`. The calling process becomes the monitor in the same state update, so no sweep
    /// takes the network of a container that is still booting.
    pub(super) fn attach_network(
        &self,
        state: &State,
        spec: &mut VmSpec,
    ) -> Result<Option<Wiring>, Error> {
        let root = self.store.root();
        let Some(a) = crate::network::attach(root, &state.id, &state.config.network)? else {
            return Ok(None);
        };
        let record = a.record;
        if let Err(e) = self.store.update(&state.id, |s| {
            s.network = Some(record.clone());
            s.monitor = ProcessRef::of(std::process::id());
        }) {
            // Its work done first: it holds the network lock the detach takes.
            drop(a.guest);
            let _ = crate::network::detach(root, &state.id, &record);
            return Err(e);
        }
        spec.taps.push(a.tap);
        Ok(Some(a.guest))
    }

    /// The guest's network once `wiring`, which ran beside the start of `vm`, is done (the
    /// guest boots on meanwhile). A failure leaves the container as it was: `vm` killed, the
    /// network released.
    pub(super) fn network_wired(
        &self,
        id: &str,
        vm: &dyn VmHandle,
        wiring: Option<Wiring>,
    ) -> Result<Option<NetworkConfig>, Error> {
        let Some(w) = wiring else { return Ok(None) };
        match w.wait() {
            Ok(net) => {
                timings::mark("waiting for the network");
                Ok(Some(net))
            }
            Err(e) => {
                let _ = vm.kill();
                self.release_network(id);
                Err(e.into())
            }
        }
    }

    /// Releases leases and rules of containers that no longer exist (those of containers
    /// whose VM and monitor died are released by [`Runtime::repair`]). Best effort: a
    /// failure is logged and left for the next command.
    pub(super) fn sweep_orphan_networks(&self) {
        let store = &self.store;
        let known = |id: &str| store.dir(id).join(STATE_FILE).is_file();
        if let Err(e) = crate::network::sweep_orphans(store.root(), known) {
            tracing::warn!("sweeping container networks: {e}");
        }
    }

    /// Detaches container `id`'s network as its state records it, then forgets it there.
    pub(super) fn release_network(&self, id: &str) {
        let Ok(s) = self.load(id) else { return };
        let Some(a) = &s.network else { return };
        if let Err(e) = crate::network::detach(self.store.root(), id, a) {
            tracing::warn!(id, "tearing down the network: {e}");
            return;
        }
        let _ = self.store.update(id, |s| s.network = None);
    }

    /// Everything container `id` may hold, whatever its state recorded (for `rm`).
    pub(super) fn release_all_network(&self, id: &str) {
        self.release_network(id);
        if let Err(e) = crate::network::release_all(self.store.root(), id) {
            tracing::warn!(id, "releasing the network: {e}");
        }
    }
}
