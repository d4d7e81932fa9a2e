//! Container networking on the host.
//!
//! - `bridge` (the default): a TAP per VM on a host bridge (`husk0`, 172.31.250.0/24 unless
//!   `HUSK_NETWORK_BRIDGE` / `HUSK_NETWORK_SUBNET` say otherwise), an address per container
//!   from [`ipam`], MASQUERADE for outbound traffic and DNAT for `-p` ([`nat`]);
//! - `none`: the guest gets only `lo`;
//! - `ns:PATH`: an existing network namespace holding an engine's veth ([`netns`]).
//!
//! `host` and `container:X` are refused: a VM has its own kernel and network stack.
//!
//! What is set up is recorded in the container's state ([`Attachment`]) and torn down by
//! [`detach`] when the VM ends or the container is removed; after a `kill -9` of the VMM and
//! its monitor the next husk command finds the attachment of a dead container and detaches
//! it ([`sweep_orphans`] catches leases and rules whose container is gone altogether). TAPs
//! need no sweep: they live exactly as long as the VMM's fd ([`tap`]).

mod bridge;
mod cmd;
pub mod ipam;
pub mod nat;
pub mod netns;
pub mod ports;
pub mod resolv;
pub mod tap;
mod wiring;

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use husk_protocol::{InterfaceConfig, IpNet, NetworkConfig, RouteConfig};
use serde::{Deserialize, Serialize};

pub use ipam::Subnet;
pub use ports::{PortMapping, Proto};
pub use wiring::Wiring;

use crate::backend::{TapFd, TapSpec};

/// The bridge `husk run` uses (env override).
pub const BRIDGE_ENV: &str = "HUSK_NETWORK_BRIDGE";
/// Its subnet, `A.B.C.D/N` (env override).
pub const SUBNET_ENV: &str = "HUSK_NETWORK_SUBNET";
pub const DEFAULT_BRIDGE: &str = "husk0";
/// Not podman's 10.88.0.0/16 nor docker's 172.17.0.0/16.
pub const DEFAULT_SUBNET: &str = "172.31.250.0/24";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot run {tool} ({source}); husk's networking needs iproute2 and nftables (Debian: apt-get install iproute2 nftables)")]
    ToolMissing {
        tool: String,
        source: std::io::Error,
    },
    #[error("`{command}` failed: {detail}")]
    Tool { command: String, detail: String },
    #[error("invalid --publish {spec:?}: {why}")]
    BadPort { spec: String, why: String },
    #[error("invalid subnet {spec:?} (${SUBNET_ENV}): {why}")]
    BadSubnet { spec: String, why: String },
    #[error(
        "invalid bridge name {0:?} (${BRIDGE_ENV}): use 1 to 15 characters from [A-Za-z0-9_.-]"
    )]
    BadBridge(String),
    #[error("no free address left on {bridge} ({subnet}); remove stopped containers or set ${SUBNET_ENV} to a larger subnet")]
    PoolExhausted { bridge: String, subnet: String },
    #[error("{0} exists but is not a bridge; set ${BRIDGE_ENV} to another name")]
    NotABridge(String),
    #[error("host port {port} is already published by {by}; pick another -p host port")]
    PortInUse { port: String, by: String },
    #[error("TAP {name}: {source}")]
    Tap {
        name: String,
        source: std::io::Error,
    },
    #[error("the network namespace {netns} has no Ethernet interface (veth) to attach to")]
    NoEngineLink { netns: PathBuf },
    #[error("--network {0}: a husk container is a VM with its own kernel and network stack, so it cannot share another network namespace; use the default bridge with -p to publish ports")]
    SharedStack(String),
    #[error("--network {0:?}: use bridge, none or ns:PATH")]
    BadMode(String),
    #[error("--publish needs a bridge network; --network {0} has no host side to publish from")]
    PortsWithoutBridge(String),
    #[error("putting {tap} on bridge {bridge}: {source}")]
    Join {
        tap: String,
        bridge: String,
        source: std::io::Error,
    },
    #[error("cannot start the thread that sets up the network: {0}")]
    Thread(#[source] std::io::Error),
    #[error("the thread setting up the network ended without an answer (it panicked)")]
    WiringLost,
}

/// `--network`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum NetworkMode {
    #[default]
    None,
    Bridge,
    /// An existing network namespace (podman's `ns:PATH`).
    Netns(PathBuf),
}

impl NetworkMode {
    pub fn parse(s: &str) -> Result<NetworkMode, Error> {
        match s {
            "bridge" | "default" => Ok(NetworkMode::Bridge),
            "none" => Ok(NetworkMode::None),
            "host" | "private" => Err(Error::SharedStack(s.to_string())),
            _ if s.starts_with("container:") => Err(Error::SharedStack(s.to_string())),
            _ => match s.strip_prefix("ns:") {
                Some(p) if p.starts_with('/') => Ok(NetworkMode::Netns(PathBuf::from(p))),
                _ => Err(Error::BadMode(s.to_string())),
            },
        }
    }

    pub fn name(&self) -> String {
        match self {
            NetworkMode::None => "none".into(),
            NetworkMode::Bridge => "bridge".into(),
            NetworkMode::Netns(p) => format!("ns:{}", p.display()),
        }
    }
}

/// A container's network settings, fixed at `husk run`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetworkSettings {
    #[serde(default)]
    pub mode: NetworkMode,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PortMapping>,
}

impl NetworkSettings {
    /// Checks `--network` and `-p` together.
    pub fn new(mode: NetworkMode, ports: Vec<PortMapping>) -> Result<Self, Error> {
        if !ports.is_empty() && mode != NetworkMode::Bridge {
            return Err(Error::PortsWithoutBridge(mode.name()));
        }
        Ok(NetworkSettings { mode, ports })
    }
}

/// What is set up on the host for a running container (saved in its state).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Attachment {
    pub tap: String,
    pub mac: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bridge: Option<BridgeLease>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<netns::NetnsLink>,
    /// The guest's addresses (for `ps` / `inspect`).
    #[serde(default)]
    pub addresses: Vec<String>,
}

/// A container's place on a bridge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BridgeLease {
    pub name: String,
    pub subnet: Subnet,
    pub ip: Ipv4Addr,
}

/// [`attach`]'s result: the record, the NIC for the VM (all it needs to start) and the rest
/// of the set-up, finishing beside the boot, which gives the guest's configuration.
pub struct Attached {
    pub record: Attachment,
    pub tap: TapSpec,
    pub guest: Wiring,
}

/// The bridge and subnet from the environment (or the defaults).
pub fn bridge_from_env() -> Result<(String, Subnet), Error> {
    let name = std::env::var(BRIDGE_ENV).unwrap_or_else(|_| DEFAULT_BRIDGE.into());
    if !crate::backend::valid_ifname(&name) {
        return Err(Error::BadBridge(name));
    }
    let subnet =
        Subnet::parse(&std::env::var(SUBNET_ENV).unwrap_or_else(|_| DEFAULT_SUBNET.into()))?;
    Ok((name, subnet))
}

/// Sets up container `id`'s network under husk root `root`; `None` for `--network none`.
pub fn attach(root: &Path, id: &str, s: &NetworkSettings) -> Result<Option<Attached>, Error> {
    let tap_name = tap::name_for(id);
    match &s.mode {
        NetworkMode::None => Ok(None),
        NetworkMode::Netns(path) => {
            let e = netns::attach(path, &tap_name)?;
            let record = Attachment {
                tap: tap_name,
                mac: husk_protocol::format_mac(&e.tap.mac),
                bridge: None,
                netns: Some(e.link.clone()),
                addresses: e.addresses.iter().map(|a| a.addr.to_string()).collect(),
            };
            Ok(Some(Attached {
                record,
                tap: e.tap,
                guest: e.guest,
            }))
        }
        NetworkMode::Bridge => attach_bridge(root, id, &tap_name, &s.ports).map(Some),
    }
}

/// What the bridge's [`attach`] took under the network lock, for container `id` on
/// `bridge`: given back (its port rules and its lease, still under the lock) when dropped
/// before [`keep`](Self::keep), by whichever thread drops it, a thread that never started
/// included.
struct Lease {
    ipam: ipam::Ipam,
    lock: ipam::NetLock,
    id: String,
    bridge: String,
    /// Whether DNAT rules of `id` may exist (ports published now, or left by a crash).
    rules: bool,
    kept: bool,
}

impl Lease {
    fn keep(mut self) {
        self.kept = true;
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if self.kept {
            return;
        }
        if self.rules {
            let _ = nat::unpublish(&self.id);
        }
        let _ = self.ipam.release(&self.lock, &self.bridge, &self.id);
    }
}

/// The bridge's part of [`attach`]: the address and the TAP now, under the network lock;
/// the bridge, its NAT, the TAP joining it and the published ports on a [`Wiring`] that
/// keeps the lock until it is done (a failure gives the rules and the lease back).
fn attach_bridge(
    root: &Path,
    id: &str,
    tap_name: &str,
    ports: &[PortMapping],
) -> Result<Attached, Error> {
    let (br, subnet) = bridge_from_env()?;
    // Cheap, and says so before a VM boots for nothing.
    bridge::refuse_non_bridge(&br)?;
    let ipam = ipam::Ipam::open(root)?;
    let lock = ipam.lock()?;
    // A start after a crash may find the last boot's rules.
    let stale_rules = ipam.holds_ports(&lock, id)?;
    ipam.reserve_ports(&lock, &br, id, ports)?;
    let lease = Lease {
        ipam,
        lock,
        id: id.to_string(),
        bridge: br.clone(),
        rules: stale_rules || !ports.is_empty(),
        kept: false,
    };
    let ip = lease.ipam.allocate(&lease.lock, &br, &subnet, id)?;
    let fd = tap::open(tap_name)?;
    let mac = tap::mac_for(ip);
    let guest = NetworkConfig {
        interfaces: vec![InterfaceConfig {
            mac,
            mtu: None,
            addresses: vec![IpNet::new(IpAddr::V4(ip), subnet.prefix)],
        }],
        routes: vec![RouteConfig {
            destination: IpNet::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0),
            gateway: Some(IpAddr::V4(subnet.gateway())),
            mac: None,
        }],
        dns: resolv::host(),
        hosts: Vec::new(),
    };
    let record = Attachment {
        tap: tap_name.to_string(),
        mac: husk_protocol::format_mac(&mac),
        bridge: Some(BridgeLease {
            name: br.clone(),
            subnet,
            ip,
        }),
        netns: None,
        addresses: vec![ip.to_string()],
    };
    let (tap, ports) = (tap_name.to_string(), ports.to_vec());
    let wiring = Wiring::spawn(move || {
        bridge::ensure(&br, &subnet)?;
        nat::ensure_bridge(&br, &subnet)?;
        bridge::join(&tap, &br)?;
        if stale_rules {
            nat::unpublish(&lease.id)?;
        }
        nat::publish(&lease.id, ip, &ports)?;
        lease.keep();
        Ok(guest)
    })?;
    Ok(Attached {
        record,
        tap: TapSpec {
            tap_name: tap_name.to_string(),
            mac,
            fd: Some(TapFd(Arc::new(fd))),
        },
        guest: wiring,
    })
}

/// Tears down what [`attach`] set up for container `id` (idempotent).
pub fn detach(root: &Path, id: &str, a: &Attachment) -> Result<(), Error> {
    if let Some(link) = &a.netns {
        netns::detach(link)?;
    }
    if let Some(b) = &a.bridge {
        let ipam = ipam::Ipam::open(root)?;
        let lock = ipam.lock()?;
        if ipam.holds_ports(&lock, id)? {
            nat::unpublish(id)?;
        }
        ipam.release(&lock, &b.name, id)?;
        // Normally gone with the VMM's fd already.
        if bridge::exists(&a.tap) {
            let _ = cmd::run(None, "ip", &["link", "del", &a.tap]);
        }
    }
    Ok(())
}

/// Drops every lease and rule container `id` may hold, whatever its state recorded (for
/// `rm`, after a crash between setting them up and recording them).
pub fn release_all(root: &Path, id: &str) -> Result<(), Error> {
    if !root.join("network").is_dir() {
        return Ok(());
    }
    let ipam = ipam::Ipam::open(root)?;
    let lock = ipam.lock()?;
    if ipam.holds_ports(&lock, id)? {
        nat::unpublish(id)?;
    }
    for br in ipam.bridges() {
        ipam.release(&lock, &br, id)?;
    }
    Ok(())
}

/// Releases leases and rules of containers `known` says no longer exist (their state was
/// removed while something was half done). A root that never networked costs nothing.
pub fn sweep_orphans(root: &Path, known: impl Fn(&str) -> bool) -> Result<(), Error> {
    if !root.join("network").is_dir() {
        return Ok(());
    }
    let ipam = ipam::Ipam::open(root)?;
    let lock = ipam.lock()?;
    for br in ipam.bridges() {
        for id in ipam.owners(&br)? {
            if !known(&id) {
                tracing::info!(
                    id,
                    bridge = br,
                    "releasing the network of a removed container"
                );
                // Its ports stay reserved while its rules could not be deleted: the next
                // sweep tries again.
                if ipam.holds_ports(&lock, &id)? && nat::unpublish(&id).is_err() {
                    continue;
                }
                ipam.release(&lock, &br, &id)?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_parse_and_shared_stacks_are_refused_clearly() {
        assert_eq!(NetworkMode::parse("bridge").unwrap(), NetworkMode::Bridge);
        assert_eq!(NetworkMode::parse("none").unwrap(), NetworkMode::None);
        assert_eq!(
            NetworkMode::parse("ns:/run/netns/x").unwrap(),
            NetworkMode::Netns("/run/netns/x".into())
        );
        for s in ["host", "container:web"] {
            let e = NetworkMode::parse(s).unwrap_err().to_string();
            assert!(e.contains("own kernel and network stack"), "{e}");
        }
        assert!(NetworkMode::parse("ns:relative").is_err());
        assert!(NetworkMode::parse("macvlan").is_err());
        let p = ports::parse_all(&["8080:80".into()]).unwrap();
        assert!(NetworkSettings::new(NetworkMode::None, p.clone()).is_err());
        assert!(NetworkSettings::new(NetworkMode::Bridge, p).is_ok());
    }
}
