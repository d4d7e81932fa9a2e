//! The `Restored` handler against the real kernel: what a clone of a VM template runs first
//! (host entropy into the CRNG, the wall clock, every virtio disk's cache and partition
//! table, the NICs' MACs).

use std::fs;
use std::io::Read;
use std::time::{Duration, Instant, SystemTime};

use husk_protocol::{MacPair, Request, RequestBody, Restored};

use super::{fail, io_fail, Check, Fail};
use crate::net::SYS_NET;
use crate::restore;

const HOUR: Duration = Duration::from_secs(3600);

/// Applies a `Restored` one hour ahead that gives every NIC a new MAC, checks the clock and
/// the MACs moved, then applies one that puts both back. Outside PID 1 the clock, disks and
/// NICs are the host's: only the request is built and checked.
pub(super) fn restored(pid1: bool) -> Check {
    let nics = guest_nics()?;
    let there: Vec<MacPair> = nics
        .iter()
        .map(|(_, mac)| MacPair {
            template: *mac,
            new: other(mac),
        })
        .collect();
    let back: Vec<MacPair> = there
        .iter()
        .map(|p| MacPair {
            template: p.new,
            new: p.template,
        })
        .collect();
    let start = Instant::now();
    let before = since_epoch()?;
    let ahead = Restored::new(before + HOUR, entropy()?, there);
    Request::new(1, RequestBody::Restored(Box::new(ahead.clone())))
        .validate()
        .map_err(|e| fail(libc::EINVAL, format!("the request: {e}")))?;
    if !pid1 {
        return Ok(());
    }
    let first = apply(&ahead, "1 h ahead");
    let moved = since_epoch()?.saturating_sub(before);
    let renamed = guest_nics()?;
    // Put the clock and the MACs back whatever happened above.
    let undo = Restored::new(before + start.elapsed(), entropy()?, back);
    let second = apply(&undo, "back");
    first?;
    if !(HOUR - Duration::from_secs(1)..=HOUR + Duration::from_secs(60)).contains(&moved) {
        return Err(fail(
            libc::EINVAL,
            format!("CLOCK_REALTIME moved {moved:?}, not 1 h"),
        ));
    }
    for (name, mac) in &nics {
        let now = renamed.iter().find(|(n, _)| n == name).map(|(_, m)| *m);
        if now != Some(other(mac)) {
            return Err(fail(
                libc::EINVAL,
                format!(
                    "{name} has MAC {now:?} after the rename, not {:?}",
                    other(mac)
                ),
            ));
        }
    }
    second?;
    let restored = guest_nics()?;
    if restored != nics {
        return Err(fail(
            libc::EINVAL,
            format!("MACs {restored:?} after renaming back, not {nics:?}"),
        ));
    }
    Ok(())
}

fn apply(r: &Restored, what: &str) -> Check {
    restore::apply(r).map(|_| ()).map_err(|e| {
        let errno = std::error::Error::source(&e)
            .and_then(|s| s.downcast_ref::<std::io::Error>())
            .and_then(|s| s.raw_os_error())
            .unwrap_or(libc::EIO);
        fail(errno, format!("Restored {what}: {e}"))
    })
}

/// The same MAC with its locally-administered bit flipped: still unicast, and distinct
/// templates stay distinct.
fn other(mac: &[u8; 6]) -> [u8; 6] {
    let mut m = *mac;
    m[0] ^= 0x02;
    m
}

/// Every NIC with a unicast, non-zero MAC (not `lo`), by name.
fn guest_nics() -> Result<Vec<(String, [u8; 6])>, Fail> {
    let entries = fs::read_dir(SYS_NET).map_err(|e| io_fail(e, SYS_NET))?;
    let mut out: Vec<(String, [u8; 6])> = entries
        .flatten()
        .filter_map(|e| {
            let text = fs::read_to_string(e.path().join("address")).ok()?;
            let mac = parse_mac(text.trim())?;
            let usable = mac[0] & 1 == 0 && mac != [0; 6];
            usable.then(|| (e.file_name().to_string_lossy().into_owned(), mac))
        })
        .collect();
    out.sort();
    Ok(out)
}

fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut mac {
        *b = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

fn since_epoch() -> Result<Duration, Fail> {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_err(|_| fail(libc::EINVAL, "CLOCK_REALTIME is before 1970"))
}

/// 64 bytes from the guest's own CRNG, standing in for the host's.
fn entropy() -> Result<Vec<u8>, Fail> {
    let mut buf = vec![0u8; 64];
    fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .map_err(|e| io_fail(e, "read /dev/urandom"))?;
    Ok(buf)
}
