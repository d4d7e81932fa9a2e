//! nftables rules (Debian 12's default firewall; its `iptables` is iptables-nft anyway), all
//! in one table, `ip husk`, so husk never edits anyone else's rules:
//!
//! - per bridge, once: MASQUERADE for the subnet's outbound traffic, and for loopback
//!   sources leaving through the bridge (the localhost hairpin below);
//! - per container: a DNAT per published port in `prerouting` (traffic from elsewhere) and
//!   in `output` (traffic from this host, 127.0.0.1 included).
//!
//! Localhost publishing: DNAT in `output` plus `route_localnet` on the bridge (set by
//! [`super::bridge`]) and the loopback MASQUERADE, as docker does with
//! `--userland-proxy=false`. `route_localnet` would also let a guest that routes
//! 127.0.0.0/8 at its gateway reach the host's loopback-only services (kube-proxy's
//! CVE-2020-8558), so packets arriving from the bridge for 127.0.0.0/8 are dropped before
//! routing (`raw` priority). Chosen over a userspace proxy because it needs no process
//! that must outlive the command (a proxy in the monitor would die with a `kill -9` and
//! would copy every byte once more), and it is torn down like every other rule.
//!
//! Every rule carries a comment (`husk:<id>` or `husk-bridge:<name>:<subnet>`), and removal deletes
//! exactly the rules with that comment, by handle.

use std::net::Ipv4Addr;

use super::cmd;
use super::ipam::Subnet;
use super::ports::PortMapping;
use super::Error;

pub const TABLE: &str = "husk";

fn container_tag(id: &str) -> String {
    format!("husk:{id}")
}

/// Per bridge and subnet: a bridge moved to another subnet gets that subnet's rules too.
fn bridge_tag(bridge: &str, subnet: &Subnet) -> String {
    format!("husk-bridge:{bridge}:{subnet}")
}

fn nft(script: &str) -> Result<(), Error> {
    cmd::run(None, "nft", &[script]).map(|_| ())
}

/// The chains of the table, each hooked where its name says (`guard` filters at `raw`).
const CHAINS: [&str; 4] = ["prerouting", "output", "postrouting", "guard"];

/// The table, its chains and `bridge`'s MASQUERADE rules, unless already there: one `nft`
/// listing when they are (the usual case), one more run to add what is missing. Callers
/// hold the network lock.
pub fn ensure_bridge(bridge: &str, subnet: &Subnet) -> Result<(), Error> {
    let table = Table::read()?;
    let mut script = String::new();
    if !CHAINS
        .iter()
        .all(|c| table.chains.iter().any(|have| have == c))
    {
        script.push_str(&format!(
            "add table ip {TABLE}; \
             add chain ip {TABLE} prerouting {{ type nat hook prerouting priority dstnat; policy accept; }}; \
             add chain ip {TABLE} output {{ type nat hook output priority -100; policy accept; }}; \
             add chain ip {TABLE} postrouting {{ type nat hook postrouting priority srcnat; policy accept; }}; \
             add chain ip {TABLE} guard {{ type filter hook prerouting priority raw; policy accept; }}; "
        ));
    }
    let tag = bridge_tag(bridge, subnet);
    if !table.rules.iter().any(|(_, _, c)| *c == tag) {
        script.push_str(&format!(
            "add rule ip {TABLE} postrouting ip saddr {subnet} oifname != \"{bridge}\" masquerade comment \"{tag}\"; \
             add rule ip {TABLE} postrouting ip saddr 127.0.0.0/8 oifname \"{bridge}\" masquerade comment \"{tag}\"; \
             add rule ip {TABLE} guard iifname \"{bridge}\" ip daddr 127.0.0.0/8 drop comment \"{tag}\""
        ));
    }
    if script.is_empty() {
        return Ok(());
    }
    nft(&script)
}

/// DNAT rules publishing `ports` of the guest at `guest`.
pub fn publish(id: &str, guest: Ipv4Addr, ports: &[PortMapping]) -> Result<(), Error> {
    if ports.is_empty() {
        return Ok(());
    }
    let tag = container_tag(id);
    let mut script = String::new();
    for p in ports {
        let dst = match p.host_ip {
            Some(ip) => format!("ip daddr {ip}"),
            None => "fib daddr type local".to_string(),
        };
        let rule = format!(
            "{dst} {proto} dport {hp} dnat to {guest}:{gp} comment \"{tag}\"",
            proto = p.proto.as_str(),
            hp = p.host_port,
            gp = p.guest_port
        );
        for chain in ["prerouting", "output"] {
            script.push_str(&format!("add rule ip {TABLE} {chain} {rule}; "));
        }
    }
    nft(&script)
}

/// Deletes every rule of container `id`. No table (never set up, or flushed): nothing to do.
pub fn unpublish(id: &str) -> Result<(), Error> {
    // No table (never set up, or flushed) reads as no rules.
    let rules = rules_tagged(&container_tag(id))?;
    if rules.is_empty() {
        return Ok(());
    }
    let script: Vec<String> = rules
        .iter()
        .map(|(chain, handle)| format!("delete rule ip {TABLE} {chain} handle {handle}"))
        .collect();
    nft(&script.join("; "))
}

/// (chain, handle) of each rule whose comment is `tag`.
fn rules_tagged(tag: &str) -> Result<Vec<(String, u64)>, Error> {
    Ok(Table::read()?
        .rules
        .into_iter()
        .filter(|(_, _, c)| c == tag)
        .map(|(ch, h, _)| (ch, h))
        .collect())
}

/// What the table holds: its chains' names, and (chain, handle, comment) of each rule
/// with a comment. Empty when there is no table.
#[derive(Debug, Default, PartialEq)]
struct Table {
    chains: Vec<String>,
    rules: Vec<(String, u64, String)>,
}

impl Table {
    fn read() -> Result<Table, Error> {
        match cmd::run(None, "nft", &["-j", "-a", "list", "table", "ip", TABLE]) {
            Ok(out) => Ok(Table::parse(&out)),
            Err(Error::Tool { detail, .. }) if detail.contains("No such file") => {
                Ok(Table::default())
            }
            Err(e) => Err(e),
        }
    }

    fn parse(json: &str) -> Table {
        let v: serde_json::Value = serde_json::from_str(json).unwrap_or_default();
        let mut t = Table::default();
        let Some(items) = v.get("nftables").and_then(|n| n.as_array()) else {
            return t;
        };
        for i in items {
            if let Some(name) = i.get("chain").and_then(|c| c.get("name")?.as_str()) {
                t.chains.push(name.to_string());
            }
            let rule = i.get("rule").and_then(|r| {
                Some((
                    r.get("chain")?.as_str()?.to_string(),
                    r.get("handle")?.as_u64()?,
                    r.get("comment")?.as_str()?.to_string(),
                ))
            });
            t.rules.extend(rule);
        }
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_are_read_from_nft_json() {
        let j = r#"{"nftables":[{"metainfo":{"version":"1.0.6"}},
            {"table":{"family":"ip","name":"husk","handle":1}},
            {"chain":{"family":"ip","table":"husk","name":"output","handle":2}},
            {"rule":{"family":"ip","table":"husk","chain":"output","handle":7,"comment":"husk:abc","expr":[]}},
            {"rule":{"family":"ip","table":"husk","chain":"postrouting","handle":9,"expr":[]}}]}"#;
        assert_eq!(
            Table::parse(j),
            Table {
                chains: vec!["output".to_string()],
                rules: vec![("output".to_string(), 7, "husk:abc".to_string())],
            }
        );
        assert_eq!(Table::parse("not json"), Table::default());
    }
}
