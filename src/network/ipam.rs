//! Addresses on a bridge's subnet: one lease per container, kept in
//! `<root>/network/<bridge>.leases.json` and changed only under the flock of
//! `<root>/network/.lock` (which also serialises bridge and rule setup).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::ports::PortMapping;
use super::Error;

/// An IPv4 subnet such as 172.31.250.0/24.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subnet {
    pub addr: Ipv4Addr,
    pub prefix: u8,
}

impl Subnet {
    /// Parses `A.B.C.D/N` (host bits are cleared); a /31 or /32 has no room for guests.
    pub fn parse(s: &str) -> Result<Subnet, Error> {
        let bad = |why: &str| Error::BadSubnet {
            spec: s.to_string(),
            why: why.to_string(),
        };
        let (a, p) = s.split_once('/').ok_or_else(|| bad("use A.B.C.D/N"))?;
        let addr: Ipv4Addr = a.parse().map_err(|_| bad("not an IPv4 address"))?;
        let prefix: u8 = p.parse().map_err(|_| bad("not a prefix length"))?;
        if !(8..=30).contains(&prefix) {
            return Err(bad("the prefix must be from /8 to /30"));
        }
        let mask = u32::MAX << (32 - prefix);
        Ok(Subnet {
            addr: Ipv4Addr::from(u32::from(addr) & mask),
            prefix,
        })
    }

    /// The bridge's own address: the first host.
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) + 1)
    }

    /// Guest addresses: every host after the gateway, the broadcast address excluded.
    fn guests(&self) -> impl Iterator<Item = Ipv4Addr> {
        let base = u32::from(self.addr);
        let size = 1u32 << (32 - self.prefix);
        (2..size - 1).map(move |i| Ipv4Addr::from(base + i))
    }
}

impl std::fmt::Display for Subnet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// The lease files under one husk root.
#[derive(Debug, Clone)]
pub struct Ipam {
    dir: PathBuf,
}

/// Held while leases, bridges and rules change.
pub type NetLock = crate::flock::FileLock;

#[derive(Debug, Default, Serialize, Deserialize)]
struct Leases {
    /// Address → container id.
    leases: BTreeMap<Ipv4Addr, String>,
    /// Published host port (`tcp/8080`) → container id.
    #[serde(default)]
    ports: BTreeMap<String, String>,
}

impl Ipam {
    pub fn open(root: &Path) -> Result<Ipam, Error> {
        let dir = root.join("network");
        std::fs::create_dir_all(&dir).map_err(|source| Error::Io {
            path: dir.clone(),
            source,
        })?;
        Ok(Ipam { dir })
    }

    pub fn lock(&self) -> Result<NetLock, Error> {
        let path = self.dir.join(".lock");
        NetLock::exclusive(&path).map_err(|source| Error::Io { path, source })
    }

    fn file(&self, bridge: &str) -> PathBuf {
        self.dir.join(format!("{bridge}.leases.json"))
    }

    fn load(&self, bridge: &str) -> Result<Leases, Error> {
        let path = self.file(bridge);
        match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| Error::Io {
                path,
                source: std::io::Error::other(e),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Leases::default()),
            Err(source) => Err(Error::Io { path, source }),
        }
    }

    fn save(&self, bridge: &str, l: &Leases) -> Result<(), Error> {
        let path = self.file(bridge);
        let body = serde_json::to_vec_pretty(l).map_err(|e| Error::Io {
            path: path.clone(),
            source: std::io::Error::other(e),
        })?;
        crate::util::fs::write_atomic(&path, &body).map_err(|source| Error::Io { path, source })
    }

    /// The address of container `id` on `bridge`: its existing lease, or the lowest free one.
    pub fn allocate(
        &self,
        _lock: &NetLock,
        bridge: &str,
        subnet: &Subnet,
        id: &str,
    ) -> Result<Ipv4Addr, Error> {
        let mut l = self.load(bridge)?;
        if let Some((ip, _)) = l.leases.iter().find(|(_, o)| o.as_str() == id) {
            return Ok(*ip);
        }
        let ip = subnet
            .guests()
            .find(|a| !l.leases.contains_key(a))
            .ok_or_else(|| Error::PoolExhausted {
                bridge: bridge.to_string(),
                subnet: subnet.to_string(),
            })?;
        l.leases.insert(ip, id.to_string());
        self.save(bridge, &l)?;
        Ok(ip)
    }

    /// Drops every lease of container `id` on `bridge`.
    pub fn release(&self, _lock: &NetLock, bridge: &str, id: &str) -> Result<(), Error> {
        let mut l = self.load(bridge)?;
        let before = (l.leases.len(), l.ports.len());
        l.leases.retain(|_, o| o != id);
        l.ports.retain(|_, o| o != id);
        if (l.leases.len(), l.ports.len()) != before {
            self.save(bridge, &l)?;
        }
        Ok(())
    }

    /// Reserves `ports` for container `id`: refused when another container on `bridge`
    /// publishes one of them, or a host process listens on it (a DNAT rule would silently
    /// take its traffic).
    pub fn reserve_ports(
        &self,
        _lock: &NetLock,
        bridge: &str,
        id: &str,
        ports: &[PortMapping],
    ) -> Result<(), Error> {
        let mut l = self.load(bridge)?;
        let held = l.ports.len();
        for p in ports {
            let key = format!("{}/{}", p.proto.as_str(), p.host_port);
            match l.ports.get(&key) {
                Some(owner) if owner != id => {
                    return Err(Error::PortInUse {
                        port: key,
                        by: format!("container {}", &owner[..12.min(owner.len())]),
                    })
                }
                Some(_) => continue,
                None => {}
            }
            super::ports::check_free(p)?;
            l.ports.insert(key, id.to_string());
        }
        // Nothing new (no -p, or a restart's own ports): no write, no fsync.
        match l.ports.len() == held {
            true => Ok(()),
            false => self.save(bridge, &l),
        }
    }

    /// Every lease on `bridge` (address → container id).
    pub fn leases(&self, bridge: &str) -> Result<BTreeMap<Ipv4Addr, String>, Error> {
        Ok(self.load(bridge)?.leases)
    }

    /// Every container holding an address or a port on `bridge`.
    pub fn owners(&self, bridge: &str) -> Result<Vec<String>, Error> {
        let l = self.load(bridge)?;
        let mut ids: Vec<String> = l
            .leases
            .into_values()
            .chain(l.ports.into_values())
            .collect();
        ids.sort();
        ids.dedup();
        Ok(ids)
    }

    /// Whether container `id` holds a published port on any bridge. Only then can it have
    /// DNAT rules: they are added after the reservation and deleted before its release,
    /// under the lock, so a container without ports costs no `nft` run.
    pub fn holds_ports(&self, _lock: &NetLock, id: &str) -> Result<bool, Error> {
        for br in self.bridges() {
            if self.load(&br)?.ports.values().any(|o| o == id) {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Bridges that have a lease file.
    pub fn bridges(&self) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter_map(|e| {
                let n = e.file_name().to_string_lossy().into_owned();
                n.strip_suffix(".leases.json").map(str::to_string)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnets_parse_and_keep_the_gateway_and_broadcast_out() {
        let s = Subnet::parse("172.31.250.77/24").unwrap();
        assert_eq!(s.to_string(), "172.31.250.0/24");
        assert_eq!(s.gateway(), Ipv4Addr::new(172, 31, 250, 1));
        let g: Vec<_> = s.guests().collect();
        assert_eq!(g.len(), 253);
        assert_eq!(g[0], Ipv4Addr::new(172, 31, 250, 2));
        assert_eq!(g[252], Ipv4Addr::new(172, 31, 250, 254));
        for bad in [
            "10.0.0.0",
            "10.0.0.0/31",
            "10.0.0.0/4",
            "x/24",
            "10.0.0.0/x",
        ] {
            assert!(Subnet::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn leases_are_unique_stable_and_released() {
        let root = tempfile::tempdir().unwrap();
        let ipam = Ipam::open(root.path()).unwrap();
        let s = Subnet::parse("10.1.2.0/30").unwrap();
        let lock = ipam.lock().unwrap();
        let a = ipam.allocate(&lock, "br", &s, "a").unwrap();
        assert_eq!(a, Ipv4Addr::new(10, 1, 2, 2));
        assert_eq!(ipam.allocate(&lock, "br", &s, "a").unwrap(), a, "stable");
        let e = ipam.allocate(&lock, "br", &s, "b").unwrap_err();
        assert!(e.to_string().contains("10.1.2.0/30"), "{e}");
        ipam.release(&lock, "br", "a").unwrap();
        assert_eq!(ipam.allocate(&lock, "br", &s, "b").unwrap(), a);
        assert_eq!(ipam.leases("br").unwrap().len(), 1);
        assert_eq!(ipam.bridges(), ["br"]);
        let p = super::super::ports::parse_all(&["127.0.0.1:1:80".into()]).unwrap();
        ipam.reserve_ports(&lock, "br", "b", &p).unwrap();
        ipam.reserve_ports(&lock, "br", "b", &p).unwrap();
        let e = ipam.reserve_ports(&lock, "br", "c", &p).unwrap_err();
        assert!(e.to_string().contains("tcp/1"), "{e}");
        ipam.release(&lock, "br", "b").unwrap();
        ipam.reserve_ports(&lock, "br", "c", &p).unwrap();
    }
}
