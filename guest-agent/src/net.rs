//! The guest's network from the host's [`NetworkConfig`]: `lo` up, each NIC (found by MAC
//! in `/sys/class/net`) up with its MTU and addresses, then the routes; and the container's
//! `/etc/hosts` and `/etc/resolv.conf`. No DHCP: the host already knows every answer.

use std::fs;
use std::io::{self, Write};
use std::net::IpAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use husk_protocol::{format_mac, NetworkConfig};

use crate::netlink::Netlink;

pub(crate) const SYS_NET: &str = "/sys/class/net";

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("netlink socket: {0}")]
    Socket(io::Error),
    #[error("no network interface has MAC {0} (is virtio-net in the guest kernel?)")]
    NoSuchNic(String),
    #[error("{what} on {dev}: {source}")]
    Netlink {
        what: String,
        dev: String,
        source: io::Error,
    },
    #[error("writing {path}: {source}")]
    File { path: PathBuf, source: io::Error },
}

/// A NIC as the guest kernel knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Nic {
    pub name: String,
    pub index: u32,
}

/// Brings `lo` up (always, so `localhost` works even with no network) and applies `cfg`.
pub fn configure(cfg: Option<&NetworkConfig>) -> Result<(), NetError> {
    let mut nl = Netlink::open().map_err(NetError::Socket)?;
    let lo = find(|name, _| name == "lo").ok_or_else(|| NetError::NoSuchNic("lo".into()))?;
    nl.link_up(lo.index, None).map_err(nl_err("link up", &lo))?;
    let Some(cfg) = cfg else { return Ok(()) };
    let mut nics = Vec::new();
    for iface in &cfg.interfaces {
        let nic = find_by_mac(Path::new(SYS_NET), &iface.mac)
            .ok_or_else(|| NetError::NoSuchNic(format_mac(&iface.mac)))?;
        nl.link_up(nic.index, iface.mtu)
            .map_err(nl_err("link up", &nic))?;
        for a in &iface.addresses {
            nl.add_address(nic.index, &a.addr, a.prefix)
                .map_err(nl_err(&format!("adding {a}"), &nic))?;
        }
        nics.push((iface.mac, nic));
    }
    // On-link routes first: a gateway must be reachable before a route can use it.
    let mut routes: Vec<_> = cfg.routes.iter().collect();
    routes.sort_by_key(|r| r.gateway.is_some());
    for r in routes {
        // Validation guarantees a NIC exists for every route.
        let Some((_, nic)) = nics.iter().find(|(mac, _)| r.mac.is_none_or(|m| m == *mac)) else {
            continue;
        };
        let what = match &r.gateway {
            Some(g) => format!("route {} via {g}", r.destination),
            None => format!("route {}", r.destination),
        };
        nl.add_route(
            nic.index,
            &r.destination.addr,
            r.destination.prefix,
            r.gateway.as_ref(),
        )
        .map_err(nl_err(&what, nic))?;
    }
    Ok(())
}

fn nl_err<'a>(what: &'a str, nic: &'a Nic) -> impl FnOnce(io::Error) -> NetError + 'a {
    move |source| NetError::Netlink {
        what: what.to_string(),
        dev: nic.name.clone(),
        source,
    }
}

/// The first interface in `/sys/class/net` for which `pred(name, mac)` holds.
fn find(pred: impl Fn(&str, &str) -> bool) -> Option<Nic> {
    find_in(Path::new(SYS_NET), pred)
}

/// The interface in `sys_net` (`/sys/class/net`, or a fake one in tests) whose `address` is
/// `mac`.
pub(crate) fn find_by_mac(sys_net: &Path, mac: &[u8; 6]) -> Option<Nic> {
    let want = format_mac(mac);
    find_in(sys_net, |_, m| m == want)
}

/// [`find`] in the directory `sys_net`.
fn find_in(sys_net: &Path, pred: impl Fn(&str, &str) -> bool) -> Option<Nic> {
    let entries = fs::read_dir(sys_net).ok()?;
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let mac = fs::read_to_string(e.path().join("address")).unwrap_or_default();
        if !pred(&name, mac.trim()) {
            continue;
        }
        let index = fs::read_to_string(e.path().join("ifindex"))
            .ok()
            .and_then(|s| s.trim().parse().ok())?;
        return Some(Nic { name, index });
    }
    None
}

/// `/etc/hosts`: localhost, the container's own name on its first address, then the extra
/// entries.
pub fn hosts_file(cfg: &NetworkConfig, hostname: Option<&str>) -> String {
    let mut s = String::from("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n");
    let first = cfg
        .interfaces
        .iter()
        .flat_map(|i| &i.addresses)
        .map(|a| a.addr)
        .next();
    if let (Some(h), Some(a)) = (hostname, first) {
        s.push_str(&format!("{a}\t{h}\n"));
    }
    for h in &cfg.hosts {
        s.push_str(&format!("{}\t{}\n", h.addr, h.names.join(" ")));
    }
    s
}

/// `/etc/resolv.conf`, or `None` when the host sent no DNS settings (the image's file
/// stays).
pub fn resolv_conf(cfg: &NetworkConfig) -> Option<String> {
    let d = &cfg.dns;
    if d.servers.is_empty() && d.search.is_empty() && d.options.is_empty() {
        return None;
    }
    let mut s = String::new();
    for n in &d.servers {
        s.push_str(&format!("nameserver {n}\n"));
    }
    if !d.search.is_empty() {
        s.push_str(&format!("search {}\n", d.search.join(" ")));
    }
    if !d.options.is_empty() {
        s.push_str(&format!("options {}\n", d.options.join(" ")));
    }
    Some(s)
}

/// Writes `/etc/hosts` (and `/etc/resolv.conf` if DNS was sent) into the container root.
/// The image's files are replaced, never written through: a symlink there (many images
/// point resolv.conf at /run) is unlinked, not followed.
pub fn write_files(
    root: &Path,
    cfg: &NetworkConfig,
    hostname: Option<&str>,
) -> Result<(), NetError> {
    let etc = root.join("etc");
    let meta = fs::symlink_metadata(&etc);
    if !meta.as_ref().is_ok_and(|m| m.is_dir()) {
        // A missing /etc is created; a symlinked or non-directory one is left alone.
        if meta.is_ok() {
            return Err(NetError::File {
                path: etc,
                source: io::Error::other("not a directory (a symlink?)"),
            });
        }
        fs::create_dir(&etc).map_err(|source| NetError::File {
            path: etc.clone(),
            source,
        })?;
    }
    replace(&etc.join("hosts"), &hosts_file(cfg, hostname))?;
    if let Some(r) = resolv_conf(cfg) {
        replace(&etc.join("resolv.conf"), &r)?;
    }
    Ok(())
}

fn replace(path: &Path, content: &str) -> Result<(), NetError> {
    let err = |source| NetError::File {
        path: path.to_path_buf(),
        source,
    };
    match fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e)),
    }
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(err)?;
    f.write_all(content.as_bytes()).map_err(err)
}

/// Whether the guest has any address in `cfg` (for logs).
pub fn summary(cfg: &NetworkConfig) -> String {
    let addrs: Vec<String> = cfg
        .interfaces
        .iter()
        .flat_map(|i| i.addresses.iter().map(|a| a.to_string()))
        .collect();
    let gw: Vec<IpAddr> = cfg.routes.iter().filter_map(|r| r.gateway).collect();
    format!("addresses {addrs:?}, gateways {gw:?}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use husk_protocol::{DnsConfig, HostEntry, InterfaceConfig, IpNet};

    fn cfg() -> NetworkConfig {
        NetworkConfig {
            interfaces: vec![InterfaceConfig {
                mac: [2, 0x68, 0x6b, 1, 2, 3],
                mtu: None,
                addresses: vec![IpNet::new("172.31.250.2".parse().unwrap(), 24)],
            }],
            routes: vec![],
            dns: DnsConfig {
                servers: vec!["172.31.250.1".parse().unwrap()],
                search: vec!["lan".into()],
                options: vec![],
            },
            hosts: vec![HostEntry {
                addr: "172.31.250.3".parse().unwrap(),
                names: vec!["db".into(), "db.lan".into()],
            }],
        }
    }

    #[test]
    fn files_list_the_container_and_the_extra_hosts() {
        let h = hosts_file(&cfg(), Some("web"));
        assert!(h.starts_with("127.0.0.1\tlocalhost\n"), "{h}");
        assert!(h.contains("172.31.250.2\tweb\n"), "{h}");
        assert!(h.ends_with("172.31.250.3\tdb db.lan\n"), "{h}");
        assert_eq!(
            resolv_conf(&cfg()).unwrap(),
            "nameserver 172.31.250.1\nsearch lan\n"
        );
        let mut none = cfg();
        none.dns = DnsConfig::default();
        assert!(resolv_conf(&none).is_none());
    }

    #[test]
    fn files_replace_symlinks_instead_of_following_them() {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let target = outside.path().join("resolv.conf");
        fs::write(&target, "keep").unwrap();
        fs::create_dir(root.path().join("etc")).unwrap();
        std::os::unix::fs::symlink(&target, root.path().join("etc/resolv.conf")).unwrap();
        write_files(root.path(), &cfg(), Some("web")).unwrap();
        assert_eq!(fs::read_to_string(&target).unwrap(), "keep");
        let r = fs::read_to_string(root.path().join("etc/resolv.conf")).unwrap();
        assert!(r.starts_with("nameserver"), "{r}");
        assert!(fs::read_to_string(root.path().join("etc/hosts"))
            .unwrap()
            .contains("web"));
    }

    #[test]
    fn a_symlinked_etc_is_refused() {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), root.path().join("etc")).unwrap();
        assert!(write_files(root.path(), &cfg(), None).is_err());
        assert!(!outside.path().join("hosts").exists());
    }
}
