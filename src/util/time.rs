//! Time stamps: seconds since the epoch, RFC 3339 out (runc's `created` and log times) and
//! in (image `created` fields). The calendar arithmetic is chrono's.

use std::time::{SystemTime, UNIX_EPOCH};

use chrono::{DateTime, NaiveDateTime};

/// Seconds since the epoch now (0 if the clock is before it).
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Now as RFC 3339 with nanoseconds, UTC (what runc writes in `created` and its logs).
pub fn rfc3339_now() -> String {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    rfc3339(d.as_secs(), d.subsec_nanos())
}

/// Unix time → `YYYY-MM-DDTHH:MM:SS.nnnnnnnnnZ`.
pub fn rfc3339(secs: u64, nanos: u32) -> String {
    i64::try_from(secs)
        .ok()
        .and_then(|s| DateTime::from_timestamp(s, nanos))
        .unwrap_or_default()
        .format("%Y-%m-%dT%H:%M:%S.%9fZ")
        .to_string()
}

/// Unix time as docker's listings print it: `2024-01-01 00:00:00 +0000 UTC`.
pub fn docker_time(secs: u64) -> String {
    i64::try_from(secs)
        .ok()
        .and_then(|s| DateTime::from_timestamp(s, 0))
        .unwrap_or_default()
        .format("%Y-%m-%d %H:%M:%S +0000 UTC")
        .to_string()
}

/// Seconds since the epoch of `YYYY-MM-DDTHH:MM:SS…` (UTC; fractions and offsets ignored,
/// as a table column needs no more); `None` when unparsable or before 1970.
pub fn epoch_of(t: &str) -> Option<u64> {
    let t = NaiveDateTime::parse_from_str(t.get(..19)?, "%Y-%m-%dT%H:%M:%S").ok()?;
    u64::try_from(t.and_utc().timestamp()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_formats_known_instants() {
        assert_eq!(rfc3339(0, 0), "1970-01-01T00:00:00.000000000Z");
        assert_eq!(rfc3339(951_782_400, 5), "2000-02-29T00:00:00.000000005Z");
        assert_eq!(rfc3339(1_798_761_599, 0), "2026-12-31T23:59:59.000000000Z");
        assert!(rfc3339_now().ends_with('Z'));
        assert_eq!(docker_time(951_782_400), "2000-02-29 00:00:00 +0000 UTC");
    }

    #[test]
    fn epoch_of_reads_rfc3339() {
        assert_eq!(epoch_of("2023-11-14T22:13:20Z"), Some(1_700_000_000));
        assert_eq!(
            epoch_of("2023-11-14T22:13:20.123456789+02:00"),
            Some(1_700_000_000)
        );
        assert_eq!(epoch_of("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(epoch_of("1969-12-31T23:59:59Z"), None);
        assert_eq!(epoch_of("x"), None);
        assert_eq!(
            rfc3339(epoch_of("2000-02-29T00:00:00Z").unwrap(), 0),
            "2000-02-29T00:00:00.000000000Z"
        );
    }
}
