//! The host's `/etc/resolv.conf` as a guest's [`DnsConfig`]: one parser for `husk` (bridge
//! networks) and `husk-runtime` (specs that bind no resolv.conf of their own).

use std::net::IpAddr;

use husk_protocol::DnsConfig;

/// The host file the guest's resolvers come from.
pub const HOST_RESOLV_CONF: &str = "/etc/resolv.conf";

/// At most this many nameservers: all a libc resolver reads (glibc's `MAXNS`).
const MAX_SERVERS: usize = 3;

/// The host's resolvers a guest can reach ([`parse`] of [`HOST_RESOLV_CONF`]); empty when
/// the file is missing or names none.
pub fn host() -> DnsConfig {
    parse(&std::fs::read_to_string(HOST_RESOLV_CONF).unwrap_or_default())
}

/// Nameservers, search domains and options of a resolv.conf. Nameservers on the host's
/// loopback (systemd-resolved's 127.0.0.53 answers only the host itself), unspecified
/// ones and repeats are left out, and at most [`MAX_SERVERS`] kept; `search` or `domain`
/// (the last one wins, as in libc) gives the search list; `options` lines add up. Without a
/// usable nameserver the result is empty: a search list alone would only confuse the
/// resolver, and the image's own file is better than a half one.
pub fn parse(text: &str) -> DnsConfig {
    let mut dns = DnsConfig::default();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        match words.next() {
            Some("nameserver") => {
                if let Some(ip) = words.next().and_then(|w| w.parse::<IpAddr>().ok()) {
                    if !ip.is_loopback()
                        && !ip.is_unspecified()
                        && !dns.servers.contains(&ip)
                        && dns.servers.len() < MAX_SERVERS
                    {
                        dns.servers.push(ip);
                    }
                }
            }
            Some("search" | "domain") => {
                dns.search = words
                    .filter(|s| {
                        s.chars()
                            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
                    })
                    .map(str::to_string)
                    .collect();
            }
            Some("options") => dns.options.extend(words.map(str::to_string)),
            _ => {}
        }
    }
    if dns.servers.is_empty() {
        return DnsConfig::default();
    }
    dns
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_unspecified_and_repeated_servers_are_left_out() {
        let d = parse(
            "# comment\nnameserver 127.0.0.53\nnameserver 192.0.2.1\nnameserver ::1\n\
             nameserver 0.0.0.0\nnameserver 192.0.2.1\n\
             nameserver 2001:db8::1\nnameserver bogus\nsearch a.example b.example\n\
             options ndots:2 edns0\n",
        );
        let servers: Vec<String> = d.servers.iter().map(|s| s.to_string()).collect();
        assert_eq!(servers, ["192.0.2.1", "2001:db8::1"]);
        assert_eq!(d.search, ["a.example", "b.example"]);
        assert_eq!(d.options, ["ndots:2", "edns0"]);
    }

    #[test]
    fn only_a_local_stub_resolver_gives_nothing() {
        assert_eq!(
            parse("nameserver 127.0.0.53\nsearch x\noptions edns0\n"),
            DnsConfig::default()
        );
        assert_eq!(parse(""), DnsConfig::default());
    }

    #[test]
    fn three_servers_at_most_and_domain_is_a_search_list() {
        let d = parse(
            "nameserver 192.0.2.1\nnameserver 192.0.2.2\nnameserver 192.0.2.3\n\
             nameserver 192.0.2.4\ndomain corp.example\n",
        );
        assert_eq!(d.servers.len(), 3);
        assert_eq!(d.search, ["corp.example"]);
        // A word a resolv.conf could not mean is dropped, the rest kept.
        assert_eq!(
            parse("nameserver 192.0.2.1\nsearch ok.example b@d\n").search,
            ["ok.example"]
        );
    }
}
