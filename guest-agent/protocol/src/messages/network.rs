//! The guest's network: the NICs the agent configures (found by MAC), routes, DNS and the
//! extra `/etc/hosts` lines. There is no DHCP in a husk guest: the host knows the answer and
//! sends it with `CreateContainer`.
//!
//! Everything here comes from the host, but is still checked before the agent hands it to
//! netlink or writes it into the container's `/etc`: prefixes within the family's width, no
//! multicast or unspecified addresses where they make no sense, names that cannot break a
//! line of `/etc/hosts` or `resolv.conf`.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::limits::{MAX_HOSTNAME_LEN, MAX_NET_ENTRIES};
use crate::validate::{check_list, fail, Check};

/// Lowest MTU a Linux IPv4 interface takes (`IPV4_MIN_MTU`), and the largest sane one.
pub const MIN_MTU: u32 = 68;
pub const MAX_MTU: u32 = 65535;

/// The network part of a container's setup. Applied to the guest's (root) network
/// namespace: a husk VM is the container's network sandbox.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkConfig {
    /// NICs to bring up (`lo` always comes up, listed or not).
    #[serde(default)]
    pub interfaces: Vec<InterfaceConfig>,
    /// Routes, the default one included (`destination` 0.0.0.0/0 or ::/0).
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
    /// Written to the container's `/etc/resolv.conf` when any of these is set.
    #[serde(default)]
    pub dns: DnsConfig,
    /// Lines appended to the container's `/etc/hosts` after `localhost` and the hostname.
    #[serde(default)]
    pub hosts: Vec<HostEntry>,
}

/// One NIC, identified by the MAC the host gave its virtio-net device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InterfaceConfig {
    pub mac: [u8; 6],
    /// `None`: leave the driver's default (1500).
    #[serde(default)]
    pub mtu: Option<u32>,
    #[serde(default)]
    pub addresses: Vec<IpNet>,
}

/// An address with its prefix length, e.g. 172.31.250.2/24.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IpNet {
    pub addr: IpAddr,
    pub prefix: u8,
}

/// A route: `destination` via `gateway` (or on-link when `None`) out of the NIC with `mac`
/// (or the first configured NIC when `None`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    pub destination: IpNet,
    #[serde(default)]
    pub gateway: Option<IpAddr>,
    #[serde(default)]
    pub mac: Option<[u8; 6]>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnsConfig {
    #[serde(default)]
    pub servers: Vec<IpAddr>,
    #[serde(default)]
    pub search: Vec<String>,
    /// `options` line entries, e.g. `ndots:5`.
    #[serde(default)]
    pub options: Vec<String>,
}

/// One `/etc/hosts` line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostEntry {
    pub addr: IpAddr,
    pub names: Vec<String>,
}

impl IpNet {
    pub fn new(addr: IpAddr, prefix: u8) -> Self {
        IpNet { addr, prefix }
    }

    pub fn max_prefix(&self) -> u8 {
        if self.addr.is_ipv4() {
            32
        } else {
            128
        }
    }

    fn check(&self, field: &str) -> Check {
        if self.prefix > self.max_prefix() {
            return fail(
                field,
                format!(
                    "prefix /{} is longer than {} bits",
                    self.prefix,
                    self.max_prefix()
                ),
            );
        }
        Ok(())
    }
}

impl std::fmt::Display for IpNet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// Formats a MAC the usual way (`02:68:6b:ac:1f:02`).
pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// A MAC a NIC can have: unicast and not all zeroes.
pub(crate) fn check_mac(field: &str, mac: &[u8; 6]) -> Check {
    if mac[0] & 1 != 0 {
        return fail(field, format!("{} is a multicast address", format_mac(mac)));
    }
    if *mac == [0; 6] {
        return fail(field, "00:00:00:00:00:00 is not a NIC address");
    }
    Ok(())
}

fn check_unicast(field: &str, a: &IpAddr) -> Check {
    if a.is_unspecified() || a.is_multicast() {
        return fail(field, format!("{a} is not a unicast address"));
    }
    if let IpAddr::V4(v4) = a {
        if v4.is_broadcast() {
            return fail(field, format!("{a} is the broadcast address"));
        }
    }
    Ok(())
}

/// A DNS name or label list entry: letters, digits, `-`, `.` and `_`, so it cannot end a
/// line or start a new keyword in a generated file.
fn check_dns_name(field: &str, s: &str) -> Check {
    if s.is_empty() || s.len() > MAX_HOSTNAME_LEN * 4 {
        return fail(
            field,
            format!("must be 1 to {} bytes", MAX_HOSTNAME_LEN * 4),
        );
    }
    let ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_');
    if !s.chars().all(ok) || s.starts_with('-') || s.starts_with('.') {
        return fail(field, format!("{s:?} is not a host or domain name"));
    }
    Ok(())
}

fn check_option(field: &str, s: &str) -> Check {
    let ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | ':' | '.');
    if s.is_empty() || s.len() > 64 || !s.chars().all(ok) {
        return fail(field, format!("{s:?} is not a resolv.conf option"));
    }
    Ok(())
}

impl NetworkConfig {
    pub fn validate(&self) -> Check {
        check_list(
            "interfaces",
            &self.interfaces,
            MAX_NET_ENTRIES,
            InterfaceConfig::validate,
        )?;
        for (i, a) in self.interfaces.iter().enumerate() {
            if self.interfaces[..i].iter().any(|b| b.mac == a.mac) {
                return fail(
                    &format!("interfaces[{i}].mac"),
                    format!("{} is listed twice", format_mac(&a.mac)),
                );
            }
        }
        check_list("routes", &self.routes, MAX_NET_ENTRIES, |r| {
            r.destination.check("destination")?;
            if let Some(g) = &r.gateway {
                check_unicast("gateway", g)?;
                if g.is_ipv4() != r.destination.addr.is_ipv4() {
                    return fail("gateway", "is not of the destination's address family");
                }
            }
            match &r.mac {
                Some(m) if !self.interfaces.iter().any(|i| i.mac == *m) => {
                    fail("mac", format!("{} names no interface", format_mac(m)))
                }
                None if self.interfaces.is_empty() => fail("", "a route needs an interface"),
                _ => Ok(()),
            }
        })?;
        check_list("dns.servers", &self.dns.servers, MAX_NET_ENTRIES, |a| {
            check_unicast("", a)
        })?;
        check_list("dns.search", &self.dns.search, MAX_NET_ENTRIES, |s| {
            check_dns_name("", s)
        })?;
        check_list("dns.options", &self.dns.options, MAX_NET_ENTRIES, |s| {
            check_option("", s)
        })?;
        check_list("hosts", &self.hosts, MAX_NET_ENTRIES, |h| {
            if h.names.is_empty() {
                return fail("names", "must not be empty");
            }
            check_list("names", &h.names, MAX_NET_ENTRIES, |n| {
                check_dns_name("", n)
            })
        })
    }
}

impl InterfaceConfig {
    fn validate(&self) -> Check {
        check_mac("mac", &self.mac)?;
        if let Some(m) = self.mtu {
            if !(MIN_MTU..=MAX_MTU).contains(&m) {
                return fail("mtu", format!("{m} is outside {MIN_MTU}..={MAX_MTU}"));
            }
        }
        check_list("addresses", &self.addresses, MAX_NET_ENTRIES, |a| {
            a.check("")?;
            check_unicast("", &a.addr)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> NetworkConfig {
        let mac = [0x02, 0x68, 0x6b, 1, 2, 3];
        NetworkConfig {
            interfaces: vec![InterfaceConfig {
                mac,
                mtu: Some(1500),
                addresses: vec![
                    IpNet::new("172.31.250.2".parse().unwrap(), 24),
                    IpNet::new("fd00::2".parse().unwrap(), 64),
                ],
            }],
            routes: vec![RouteConfig {
                destination: IpNet::new("0.0.0.0".parse().unwrap(), 0),
                gateway: Some("172.31.250.1".parse().unwrap()),
                mac: None,
            }],
            dns: DnsConfig {
                servers: vec!["172.31.250.1".parse().unwrap()],
                search: vec!["example.internal".into()],
                options: vec!["ndots:1".into()],
            },
            hosts: vec![HostEntry {
                addr: "172.31.250.3".parse().unwrap(),
                names: vec!["db".into()],
            }],
        }
    }

    #[test]
    fn a_full_config_is_valid() {
        sample().validate().unwrap();
    }

    #[test]
    fn hostile_values_are_refused_with_the_field() {
        type Breaker = fn(&mut NetworkConfig);
        let cases: Vec<(Breaker, &str)> = vec![
            (
                |c| c.interfaces[0].mac = [1, 0, 0, 0, 0, 1],
                "interfaces[0].mac",
            ),
            (|c| c.interfaces[0].mtu = Some(10), "interfaces[0].mtu"),
            (
                |c| c.interfaces[0].addresses[0].prefix = 33,
                "interfaces[0].addresses[0]",
            ),
            (
                |c| c.interfaces[0].addresses[1].addr = "ff02::1".parse().unwrap(),
                "interfaces[0].addresses[1]",
            ),
            (
                |c| c.routes[0].gateway = Some("fd00::1".parse().unwrap()),
                "routes[0].gateway",
            ),
            (
                |c| c.routes[0].mac = Some([2, 0, 0, 0, 0, 9]),
                "routes[0].mac",
            ),
            (
                |c| c.dns.search[0] = "a\nnameserver 1.2.3.4".into(),
                "dns.search[0]",
            ),
            (|c| c.dns.options[0] = "x y".into(), "dns.options[0]"),
            (|c| c.hosts[0].names = vec![], "hosts[0].names"),
            (
                |c| c.hosts[0].names[0] = "db # x".into(),
                "hosts[0].names[0]",
            ),
            (
                |c| c.interfaces.push(c.interfaces[0].clone()),
                "interfaces[1].mac",
            ),
        ];
        for (break_it, field) in cases {
            let mut c = sample();
            break_it(&mut c);
            let e = c.validate().expect_err(field);
            assert_eq!(e.field, field, "{e}");
        }
    }

    #[test]
    fn old_messages_without_the_new_fields_decode() {
        let c: NetworkConfig = serde_json::from_str("{}").unwrap();
        assert_eq!(c, NetworkConfig::default());
    }
}
