//! The `Restored` request for a VM restored from a template, filled from the host: its wall
//! clock and fresh entropy.

use std::fs::File;
use std::io::Read;
use std::time::{SystemTime, UNIX_EPOCH};

use husk_protocol::{MacPair, Restored};

use super::Error;

/// Bytes of host entropy each request carries: two ChaCha20 keys' worth, well inside the
/// protocol's 32..=256.
pub const RESTORED_ENTROPY_LEN: usize = 64;

pub(super) const URANDOM: &str = "/dev/urandom";

/// A `Restored` with the host's `CLOCK_REALTIME` now, [`RESTORED_ENTROPY_LEN`] fresh bytes
/// from the host's CRNG and `macs` (each NIC's MAC in the template and the one it gets in this
/// clone). Build it right before sending: the guest's clock is set to the time it holds.
///
/// `/dev/urandom` rather than a crate: nothing else in the workspace needs one, and on Linux
/// it never blocks once the host's CRNG is seeded, which it is long before husk runs.
pub fn restored_request(macs: Vec<MacPair>) -> Result<Restored, Error> {
    let mut entropy = vec![0u8; RESTORED_ENTROPY_LEN];
    File::open(URANDOM)
        .and_then(|mut f| f.read_exact(&mut entropy))
        .map_err(|source| Error::HostEntropy { source })?;
    // A host clock before 1970 is broken beyond what a clone's clock can fix; 0 makes the
    // mistake visible in the guest rather than failing the start.
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    Ok(Restored::new(now, entropy, macs))
}
