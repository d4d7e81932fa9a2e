//! Engines' network namespaces (podman/netavark, CNI): the namespace already holds a veth
//! with the container's MAC, addresses and routes. A TAP is created next to it and tc
//! mirrors every frame between the two (ingress qdisc + `u32 match u8 0 0` + `mirred egress
//! redirect`, as Kata's tcfilter mode does), and the guest is given the veth's identity, so
//! the engine's bridge, port publishing and DNS work unchanged. The veth keeps its
//! addresses; nothing reaches the namespace's own stack any more.
//!
//! This is the library the OCI runtime (husk-runtime) calls: [`attach`] before the VM
//! starts, [`detach`] after it is gone. See /work/notes/netns-api.md.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use husk_protocol::{InterfaceConfig, IpNet, NetworkConfig, RouteConfig};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{cmd, tap, Error, Wiring};
use crate::backend::{TapFd, TapSpec};

/// What [`attach`] set up in a namespace; keep it (it is serialisable) to [`detach`] later.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetnsLink {
    pub netns: PathBuf,
    pub veth: String,
    pub tap: String,
}

/// The result of [`attach`]: the NIC for the VM spec (its TAP fd open, from inside the
/// namespace), the veth's addresses, what to detach, and the rest of the set-up (the
/// mirroring and the routes read), which gives the guest's network for
/// `ContainerSpec::network` once done.
pub struct EngineNetwork {
    pub tap: TapSpec,
    pub addresses: Vec<IpNet>,
    pub link: NetnsLink,
    pub guest: Wiring,
}

/// Sets up the TAP named `tap_name` beside the namespace's veth (or other Ethernet link)
/// and returns what the VM and the guest need. The TAP lives as long as its fd: give
/// `EngineNetwork::tap` to the VM spec and drop every other copy once the VMM runs. Only
/// what the VMM needs is done before this returns: one read of the links and the TAP;
/// the mirroring and the routes follow on [`EngineNetwork::guest`] (which detaches again
/// if it fails).
pub fn attach(netns: &Path, tap_name: &str) -> Result<EngineNetwork, Error> {
    let ns = Some(netns);
    // Links with their addresses (`addr show` lists every link, with `-d` its kind too).
    let links: Value = json(cmd::run(ns, "ip", &["-j", "-d", "addr", "show"])?)?;
    let (veth, mac, mtu) = pick_link(&links, tap_name).ok_or_else(|| Error::NoEngineLink {
        netns: netns.to_path_buf(),
    })?;
    let addresses = links
        .as_array()
        .into_iter()
        .flatten()
        .find(|l| l.get("ifname").and_then(Value::as_str) == Some(veth.as_str()))
        .map(parse_addresses)
        .unwrap_or_default();
    let fd = tap::open_in(netns, tap_name)?;
    let link = NetnsLink {
        netns: netns.to_path_buf(),
        veth: veth.clone(),
        tap: tap_name.to_string(),
    };
    let interface = InterfaceConfig {
        mac,
        mtu: Some(mtu),
        addresses: addresses.clone(),
    };
    let wired = link.clone();
    let guest = Wiring::spawn(move || {
        let done = mirror(&wired.netns, &wired.veth, &wired.tap, mtu)
            .and_then(|()| routes(&wired.netns, &wired.veth));
        match done {
            Ok(routes) => Ok(NetworkConfig {
                interfaces: vec![interface],
                routes,
                ..NetworkConfig::default()
            }),
            Err(e) => {
                let _ = detach(&wired);
                Err(e)
            }
        }
    });
    let guest = match guest {
        Ok(g) => g,
        Err(e) => {
            let _ = detach(&link);
            return Err(e);
        }
    };
    Ok(EngineNetwork {
        tap: TapSpec {
            tap_name: tap_name.to_string(),
            mac,
            fd: Some(TapFd(Arc::new(fd))),
        },
        addresses,
        link,
        guest,
    })
}

/// The routes the engine gave `veth`, IPv4 and IPv6.
fn routes(netns: &Path, veth: &str) -> Result<Vec<RouteConfig>, Error> {
    let mut routes = Vec::new();
    for family in ["-4", "-6"] {
        let r: Value = json(cmd::run(
            Some(netns),
            "ip",
            &["-j", family, "route", "show", "dev", veth],
        )?)?;
        routes.extend(parse_routes(&r));
    }
    Ok(routes)
}

/// Removes the mirroring from the veth (the TAP goes with its last fd; deleted here too in
/// case it was made persistent). A namespace that is gone already is not an error.
pub fn detach(link: &NetnsLink) -> Result<(), Error> {
    if !link.netns.exists() {
        return Ok(());
    }
    let ns = Some(link.netns.as_path());
    let _ = cmd::run(ns, "tc", &["qdisc", "del", "dev", &link.veth, "ingress"]);
    let _ = cmd::run(ns, "ip", &["link", "del", &link.tap]);
    Ok(())
}

fn mirror(netns: &Path, veth: &str, tap: &str, mtu: u32) -> Result<(), Error> {
    let ns = Some(netns);
    let mtu = mtu.to_string();
    cmd::run(ns, "ip", &["link", "set", tap, "mtu", &mtu, "up"])?;
    for (from, to) in [(veth, tap), (tap, veth)] {
        // A leftover from an earlier container in the same namespace goes first.
        let _ = cmd::run(ns, "tc", &["qdisc", "del", "dev", from, "ingress"]);
        cmd::run(ns, "tc", &["qdisc", "add", "dev", from, "ingress"])?;
        cmd::run(
            ns,
            "tc",
            &[
                "filter", "add", "dev", from, "parent", "ffff:", "protocol", "all", "u32", "match",
                "u8", "0", "0", "action", "mirred", "egress", "redirect", "dev", to,
            ],
        )?;
    }
    Ok(())
}

fn json(s: String) -> Result<Value, Error> {
    serde_json::from_str(&s).map_err(|e| Error::Tool {
        command: "ip -j".into(),
        detail: format!("unreadable JSON: {e}"),
    })
}

/// The engine's link: the first Ethernet link that is not loopback or a TUN/TAP (a veth
/// first). Returns its name, MAC and MTU.
fn pick_link(links: &Value, skip: &str) -> Option<(String, [u8; 6], u32)> {
    let all = links.as_array()?;
    let kind = |l: &Value| {
        l.pointer("/linkinfo/info_kind")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    };
    let usable = |l: &&Value| {
        l.get("link_type").and_then(Value::as_str) == Some("ether")
            && l.get("ifname").and_then(Value::as_str) != Some(skip)
            && kind(l) != "tun"
    };
    let l = all
        .iter()
        .filter(usable)
        .find(|l| kind(l) == "veth")
        .or_else(|| all.iter().find(usable))?;
    let name = l.get("ifname")?.as_str()?.to_string();
    let mac = parse_mac(l.get("address")?.as_str()?)?;
    let mtu = l.get("mtu").and_then(Value::as_u64).unwrap_or(1500) as u32;
    Some((name, mac, mtu))
}

fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() != 6 {
        return None;
    }
    for (m, p) in mac.iter_mut().zip(parts) {
        *m = u8::from_str_radix(p, 16).ok()?;
    }
    Some(mac)
}

/// A link's global addresses (link-local ones the guest derives itself from the same MAC).
fn parse_addresses(link: &Value) -> Vec<IpNet> {
    let Some(info) = link.get("addr_info").and_then(Value::as_array) else {
        return Vec::new();
    };
    info.iter()
        .filter(|a| a.get("scope").and_then(Value::as_str) != Some("link"))
        .filter_map(|a| {
            let addr: IpAddr = a.get("local")?.as_str()?.parse().ok()?;
            let prefix = a.get("prefixlen")?.as_u64()? as u8;
            Some(IpNet::new(addr, prefix))
        })
        .collect()
}

/// Routes the engine added (the kernel's own prefix routes come back in the guest when
/// the addresses are added).
fn parse_routes(v: &Value) -> Vec<RouteConfig> {
    let Some(all) = v.as_array() else {
        return Vec::new();
    };
    all.iter()
        .filter(|r| r.get("protocol").and_then(Value::as_str) != Some("kernel"))
        .filter_map(|r| {
            let gateway: Option<IpAddr> = r
                .get("gateway")
                .and_then(Value::as_str)
                .and_then(|g| g.parse().ok());
            let dst = r.get("dst")?.as_str()?;
            let destination = if dst == "default" {
                let any: IpAddr = match gateway {
                    Some(IpAddr::V6(_)) => "::".parse().ok()?,
                    _ => "0.0.0.0".parse().ok()?,
                };
                IpNet::new(any, 0)
            } else {
                let (a, p) = dst.split_once('/').unwrap_or((dst, ""));
                let addr: IpAddr = a.parse().ok()?;
                let prefix = match p {
                    "" if addr.is_ipv4() => 32,
                    "" => 128,
                    p => p.parse().ok()?,
                };
                IpNet::new(addr, prefix)
            };
            if destination.addr.is_ipv6() && destination.to_string().starts_with("fe80") {
                return None;
            }
            Some(RouteConfig {
                destination,
                gateway,
                mac: None,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_veth_is_picked_and_read() {
        let links: Value = serde_json::from_str(
            r#"[{"ifname":"lo","link_type":"loopback","address":"00:00:00:00:00:00","mtu":65536},
                {"ifname":"tap0","link_type":"ether","address":"aa:aa:aa:aa:aa:aa","mtu":1500,
                 "linkinfo":{"info_kind":"tun"}},
                {"ifname":"eth0","link_type":"ether","address":"0a:58:0a:58:00:05","mtu":1450,
                 "linkinfo":{"info_kind":"veth"}}]"#,
        )
        .unwrap();
        let (name, mac, mtu) = pick_link(&links, "tap0").unwrap();
        assert_eq!((name.as_str(), mtu), ("eth0", 1450));
        assert_eq!(mac, [0x0a, 0x58, 0x0a, 0x58, 0, 5]);
        let addrs: Value = serde_json::from_str(
            r#"{"addr_info":[{"family":"inet","local":"10.88.0.5","prefixlen":16,"scope":"global"},
                {"family":"inet6","local":"fe80::1","prefixlen":64,"scope":"link"},
                {"family":"inet6","local":"fd00::5","prefixlen":64,"scope":"global"}]}"#,
        )
        .unwrap();
        let a: Vec<String> = parse_addresses(&addrs)
            .iter()
            .map(|a| a.to_string())
            .collect();
        assert_eq!(a, ["10.88.0.5/16", "fd00::5/64"]);
        let routes: Value = serde_json::from_str(
            r#"[{"dst":"default","gateway":"10.88.0.1","flags":[]},
                {"dst":"10.88.0.0/16","protocol":"kernel","scope":"link","prefsrc":"10.88.0.5"},
                {"dst":"192.0.2.0/24","gateway":"10.88.0.1"}]"#,
        )
        .unwrap();
        let r = parse_routes(&routes);
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].destination.to_string(), "0.0.0.0/0");
        assert_eq!(r[1].destination.to_string(), "192.0.2.0/24");
    }
}
