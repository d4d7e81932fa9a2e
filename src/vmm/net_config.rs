//! `--net tap=NAME[,mac=XX:XX:XX:XX:XX:XX][,fd=N]`: one virtio-net device on a host TAP.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::devices::virtio::net::tap;

/// A MAC address, written `aa:bb:cc:dd:ee:ff` in flags and JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// A stable locally administered unicast address derived from `seed` (FNV-1a), for a
    /// NIC configured without one: the same TAP name gives the same MAC on every boot.
    pub fn derived(seed: &str) -> MacAddr {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in seed.bytes() {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        let b = h.to_le_bytes();
        MacAddr([0x02, b[0], b[1], b[2], b[3], b[4]])
    }

    /// A guest NIC needs a unicast, non-zero address.
    pub fn is_valid_unicast(&self) -> bool {
        self.0[0] & 1 == 0 && self.0 != [0; 6]
    }
}

impl FromStr for MacAddr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad =
            || format!("invalid MAC address {s:?}: expected six hex pairs like 02:00:00:00:00:01");
        let mut out = [0u8; 6];
        let mut parts = s.split(':');
        for o in out.iter_mut() {
            let p = parts.next().filter(|p| p.len() == 2).ok_or_else(bad)?;
            *o = u8::from_str_radix(p, 16).map_err(|_| bad())?;
        }
        if parts.next().is_some() {
            return Err(bad());
        }
        Ok(MacAddr(out))
    }
}

impl TryFrom<String> for MacAddr {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

impl From<MacAddr> for String {
    fn from(m: MacAddr) -> String {
        m.to_string()
    }
}

/// One guest NIC. JSON: `{"tap": "husk-tap0", "mac": "02:…", "fd": 3}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetConfig {
    /// TAP interface to open (created if missing) — or, with `fd`, the name the fd is
    /// expected to have.
    #[serde(default)]
    pub tap: Option<String>,
    /// An inherited, already-open TAP fd (IFF_TAP|IFF_NO_PI|IFF_VNET_HDR), e.g. one opened
    /// inside another network namespace; husk-vmm takes ownership of it.
    #[serde(default)]
    pub fd: Option<i32>,
    /// The guest's MAC; derived from the TAP name when absent.
    #[serde(default)]
    pub mac: Option<MacAddr>,
}

impl NetConfig {
    /// Checks the fields; the message says what is wrong (the caller names the flag).
    pub fn check(&self) -> Result<(), String> {
        match (&self.tap, self.fd) {
            (None, None) => return Err("give tap=NAME or fd=N".into()),
            (Some(t), _) if !tap::valid_name(t) => {
                return Err(format!(
                    "TAP name {t:?} must be 1 to {} bytes without '/', ':', '%' or whitespace",
                    tap::MAX_NAME_LEN
                ))
            }
            (_, Some(fd)) if fd < 3 => {
                return Err(format!(
                    "fd={fd} is stdin/stdout/stderr or invalid; pass an fd >= 3"
                ))
            }
            _ => {}
        }
        if let Some(m) = self.mac {
            if !m.is_valid_unicast() {
                return Err(format!(
                    "MAC {m} is multicast or zero; use a unicast address"
                ));
            }
        }
        Ok(())
    }

    /// The MAC the guest gets.
    pub fn guest_mac(&self) -> MacAddr {
        self.mac.unwrap_or_else(|| {
            let seed = match (&self.tap, self.fd) {
                (Some(t), _) => t.clone(),
                (None, fd) => format!("fd{}", fd.unwrap_or(0)),
            };
            MacAddr::derived(&seed)
        })
    }
}

impl FromStr for NetConfig {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let mut c = NetConfig {
            tap: None,
            fd: None,
            mac: None,
        };
        for kv in s.split(',') {
            match kv.split_once('=') {
                Some(("tap", v)) => c.tap = Some(v.to_string()),
                Some(("mac", v)) => c.mac = Some(v.parse()?),
                Some(("fd", v)) => {
                    c.fd = Some(v.parse().map_err(|_| format!("fd={v:?} is not a number"))?)
                }
                _ => {
                    return Err(format!(
                        "unknown part {kv:?}; expected tap=NAME[,mac=XX:XX:XX:XX:XX:XX][,fd=N]"
                    ))
                }
            }
        }
        c.check()?;
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn net_flags_parse() {
        let n: NetConfig = "tap=husk0,mac=02:aa:bb:cc:dd:0e".parse().unwrap();
        assert_eq!(n.tap.as_deref(), Some("husk0"));
        assert_eq!(n.guest_mac().0, [2, 0xaa, 0xbb, 0xcc, 0xdd, 0x0e]);
        let n: NetConfig = "fd=7".parse().unwrap();
        assert_eq!((n.fd, n.tap), (Some(7), None));
        let n: NetConfig = "tap=t0".parse().unwrap();
        assert!(n.guest_mac().is_valid_unicast());
        assert_eq!(n.guest_mac(), MacAddr::derived("t0"));
        assert_ne!(n.guest_mac(), MacAddr::derived("t1"));
        for bad in [
            "",
            "tap=",
            "tap=a/b",
            "tap=t,mac=01:00:00:00:00:01",
            "tap=t,mac=00:00:00:00:00:00",
            "tap=t,mac=02:00:00:00:00",
            "tap=t,mac=02:00:00:00:00:0g",
            "tap=t,fd=1",
            "tap=t,fd=x",
            "tap=t,queues=2",
        ] {
            assert!(bad.parse::<NetConfig>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn mac_round_trips_through_json() {
        let n: NetConfig =
            serde_json::from_str(r#"{"tap":"t0","mac":"02:00:00:00:00:01"}"#).unwrap();
        assert_eq!(n.mac, Some(MacAddr([2, 0, 0, 0, 0, 1])));
        let back: NetConfig = serde_json::from_str(&serde_json::to_string(&n).unwrap()).unwrap();
        assert_eq!(back, n);
        assert!(serde_json::from_str::<NetConfig>(r#"{"tap":"t0","mac":"zz"}"#).is_err());
    }
}
