//! `Restored`: the host's first request to an agent whose VM was restored from a template
//! (a snapshot of a VM that booted the same kernel and agent up to the agent's `Hello`)
//! instead of booted.
//!
//! Every clone of a template wakes up with the template's guest state, and some of that state
//! must differ per clone: the wall clock (stale by however long ago the template was saved),
//! the kernel's CRNG (identical in every clone: every clone would draw the same "random"
//! numbers, a security bug), the disks' page cache and partition tables (a clone's layer disk
//! has the template's capacity but its own content), and the NICs' MAC addresses. The host
//! sends this right after `Hello` and before anything else; the agent answers `Done` once all
//! of it is fixed.
//!
//! No [`PROTOCOL_VERSION`](super::PROTOCOL_VERSION) bump: nothing about an existing message
//! changed, and an agent that does not know `restored` refuses it as an `invalid_request`
//! naming the unknown variant (as `freeze` and `remove_container` were added). The host only
//! sends it to a clone of a template it built from the very initramfs it would boot, so in
//! practice the agent always knows it.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::network::{check_mac, format_mac};
use crate::limits::{MAX_RESTORE_ENTROPY, MAX_RESTORE_MACS, MIN_RESTORE_ENTROPY};
use crate::validate::{check_list, fail, Check};

/// What a clone needs from the host to stop being a copy of its template.
///
/// `Debug` leaves the entropy out: those bytes are all that tells one clone's CRNG from
/// another's, so they must not end up in a log.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Restored {
    /// The host's `CLOCK_REALTIME` when it built the request: whole seconds since the epoch.
    pub realtime_secs: u64,
    /// ... and the nanoseconds past them (below 1e9).
    pub realtime_nanos: u32,
    /// Fresh random bytes from the host, mixed into the guest kernel's pool before its CRNG
    /// is reseeded: [`MIN_RESTORE_ENTROPY`]..=[`MAX_RESTORE_ENTROPY`] bytes.
    pub entropy: Vec<u8>,
    /// The NICs to give a new MAC, each found by the MAC it had in the template. At most
    /// [`MAX_RESTORE_MACS`]; no MAC twice on either side.
    pub macs: Vec<MacPair>,
}

/// One NIC's MAC in the template, and the one it gets in this clone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MacPair {
    pub template: [u8; 6],
    pub new: [u8; 6],
}

impl Restored {
    /// A request for the wall-clock time `since_epoch` (a `SystemTime` past `UNIX_EPOCH`).
    pub fn new(since_epoch: Duration, entropy: Vec<u8>, macs: Vec<MacPair>) -> Restored {
        Restored {
            realtime_secs: since_epoch.as_secs(),
            realtime_nanos: since_epoch.subsec_nanos(),
            entropy,
            macs,
        }
    }

    /// The host's wall-clock time as a duration since the epoch.
    pub fn realtime(&self) -> Duration {
        Duration::new(self.realtime_secs, self.realtime_nanos)
    }

    pub(crate) fn validate(&self) -> Check {
        if self.realtime_nanos >= 1_000_000_000 {
            return fail(
                "realtime_nanos",
                format!("{} is not below 1000000000", self.realtime_nanos),
            );
        }
        // The guest's `time_t` is an i64.
        if i64::try_from(self.realtime_secs).is_err() {
            return fail(
                "realtime_secs",
                format!("{} does not fit a time_t", self.realtime_secs),
            );
        }
        let n = self.entropy.len();
        if !(MIN_RESTORE_ENTROPY..=MAX_RESTORE_ENTROPY).contains(&n) {
            return fail(
                "entropy",
                format!("{n} bytes, must be {MIN_RESTORE_ENTROPY} to {MAX_RESTORE_ENTROPY} bytes"),
            );
        }
        check_list("macs", &self.macs, MAX_RESTORE_MACS, |p| {
            check_mac("template", &p.template)?;
            check_mac("new", &p.new)
        })?;
        // The agent resolves every template MAC before changing any; a MAC named twice
        // on either side would make that lookup or its result ambiguous.
        for (i, p) in self.macs.iter().enumerate() {
            let earlier = &self.macs[..i];
            if earlier.iter().any(|q| q.template == p.template) {
                return fail(
                    &format!("macs[{i}].template"),
                    format!("{} is listed twice", format_mac(&p.template)),
                );
            }
            if earlier.iter().any(|q| q.new == p.new) {
                return fail(
                    &format!("macs[{i}].new"),
                    format!("{} is given to two NICs", format_mac(&p.new)),
                );
            }
        }
        Ok(())
    }
}

impl fmt::Debug for Restored {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Restored")
            .field("realtime_secs", &self.realtime_secs)
            .field("realtime_nanos", &self.realtime_nanos)
            .field("entropy", &format_args!("<{} bytes>", self.entropy.len()))
            .field("macs", &self.macs)
            .finish()
    }
}

impl fmt::Display for MacPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} -> {}",
            format_mac(&self.template),
            format_mac(&self.new)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{decode, encode, CodecError};
    use crate::messages::{Request, RequestBody};

    fn pair(t: u8, n: u8) -> MacPair {
        MacPair {
            template: [0x02, 0x68, 0x6b, 0, 0, t],
            new: [0x02, 0x68, 0x6b, 1, 0, n],
        }
    }

    fn sample() -> Restored {
        Restored::new(
            Duration::new(1_750_000_000, 123_456_789),
            vec![0xa5; 64],
            vec![pair(1, 1), pair(2, 2)],
        )
    }

    fn request(r: Restored) -> Request {
        Request::new(7, RequestBody::Restored(Box::new(r)))
    }

    #[test]
    fn round_trips_with_its_time_entropy_and_macs() {
        let req = request(sample());
        let bytes = encode(&req).expect("encode");
        let back: Request = decode(&bytes).expect("decode");
        assert_eq!(back, req);
        let RequestBody::Restored(r) = back.body else {
            panic!("decoded {:?}", back.body)
        };
        assert_eq!(r.realtime(), Duration::new(1_750_000_000, 123_456_789));
        let text = String::from_utf8(bytes).unwrap();
        assert!(
            text.starts_with(r#"{"id":7,"body":{"restored":{"realtime_secs":1750000000,"#),
            "{text}"
        );
    }

    #[test]
    fn the_bounds_on_entropy_are_inclusive() {
        for n in [MIN_RESTORE_ENTROPY, MAX_RESTORE_ENTROPY] {
            let mut r = sample();
            r.entropy = vec![1; n];
            r.validate().unwrap_or_else(|e| panic!("{n} bytes: {e}"));
        }
        let mut r = sample();
        r.macs = (1..=MAX_RESTORE_MACS as u8).map(|i| pair(i, i)).collect();
        r.validate().unwrap();
        r.macs.clear();
        r.validate().unwrap();
    }

    /// Each mutation must be refused by the agent's decode (and by the host's encode) at the
    /// named field.
    #[test]
    fn bad_requests_are_refused_with_the_field() {
        type Breaker = fn(&mut Restored);
        let cases: Vec<(Breaker, &str)> = vec![
            (|r| r.entropy.clear(), "restored.entropy"),
            (
                |r| r.entropy = vec![1; MIN_RESTORE_ENTROPY - 1],
                "restored.entropy",
            ),
            (
                |r| r.entropy = vec![1; MAX_RESTORE_ENTROPY + 1],
                "restored.entropy",
            ),
            (
                |r| r.macs = (0..=MAX_RESTORE_MACS as u8).map(|i| pair(i, i)).collect(),
                "restored.macs",
            ),
            (
                |r| r.macs[1].template[0] = 0x03,
                "restored.macs[1].template",
            ),
            (|r| r.macs[0].new = [0; 6], "restored.macs[0].new"),
            (
                |r| r.macs[1].template = r.macs[0].template,
                "restored.macs[1].template",
            ),
            (|r| r.macs[1].new = r.macs[0].new, "restored.macs[1].new"),
            (
                |r| r.realtime_nanos = 1_000_000_000,
                "restored.realtime_nanos",
            ),
            (|r| r.realtime_secs = u64::MAX, "restored.realtime_secs"),
        ];
        for (break_it, field) in cases {
            let mut r = sample();
            break_it(&mut r);
            let req = request(r);
            assert!(
                matches!(encode(&req), Err(CodecError::Invalid { .. })),
                "{field}: encode accepted"
            );
            let bytes = serde_json::to_vec(&req).expect("serialize");
            match decode::<Request>(&bytes) {
                Err(CodecError::Invalid { error, .. }) => assert_eq!(error.field, field, "{error}"),
                other => panic!("{field}: expected Invalid, got {other:?}"),
            }
        }
    }

    #[test]
    fn unknown_fields_and_oversized_bytes_are_malformed() {
        let text = String::from_utf8(encode(&request(sample())).unwrap()).unwrap();
        let extra = text.replace(r#""macs":"#, r#""later":1,"macs":"#);
        assert!(matches!(
            decode::<Request>(extra.as_bytes()),
            Err(CodecError::Malformed { .. })
        ));
        let big = text.replacen("[165,", "[256,", 1);
        assert_ne!(big, text);
        assert!(matches!(
            decode::<Request>(big.as_bytes()),
            Err(CodecError::Malformed { .. })
        ));
    }

    #[test]
    fn debug_output_leaves_the_entropy_out() {
        let text = format!("{:?}", request(sample()));
        assert!(text.contains("<64 bytes>"), "{text}");
        assert!(!text.contains("165"), "{text}");
        assert_eq!(
            pair(1, 2).to_string(),
            "02:68:6b:00:00:01 -> 02:68:6b:01:00:02"
        );
    }
}
