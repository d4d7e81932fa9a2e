//! `-p [IP:]HOST:GUEST[/tcp|udp]`: which host port forwards to which guest port.

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use super::Error;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    pub fn as_str(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }
}

/// One published port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PortMapping {
    /// Only connections to this host address are forwarded; `None`: any local address.
    #[serde(default)]
    pub host_ip: Option<Ipv4Addr>,
    pub host_port: u16,
    pub guest_port: u16,
    pub proto: Proto,
}

impl std::fmt::Display for PortMapping {
    /// docker's `0.0.0.0:8080->80/tcp`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ip = self.host_ip.unwrap_or(Ipv4Addr::UNSPECIFIED);
        write!(
            f,
            "{ip}:{}->{}/{}",
            self.host_port,
            self.guest_port,
            self.proto.as_str()
        )
    }
}

/// Fails when something on this host already listens on `p`'s host port.
pub fn check_free(p: &PortMapping) -> Result<(), Error> {
    let ip = p.host_ip.unwrap_or(Ipv4Addr::UNSPECIFIED);
    let bound = match p.proto {
        Proto::Tcp => std::net::TcpListener::bind((ip, p.host_port)).map(drop),
        Proto::Udp => std::net::UdpSocket::bind((ip, p.host_port)).map(drop),
    };
    match bound {
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => Err(Error::PortInUse {
            port: format!("{}/{}", p.proto.as_str(), p.host_port),
            by: "a process on this host".into(),
        }),
        // Any other failure (an address not on this host, say) is for the rule to meet.
        _ => Ok(()),
    }
}

/// Parses every `-p`, refusing a host port published twice for the same protocol.
pub fn parse_all(specs: &[String]) -> Result<Vec<PortMapping>, Error> {
    let mut out: Vec<PortMapping> = Vec::new();
    for s in specs {
        let p = parse(s)?;
        if out
            .iter()
            .any(|o| o.host_port == p.host_port && o.proto == p.proto)
        {
            return Err(bad(s, "this host port is already published"));
        }
        out.push(p);
    }
    Ok(out)
}

fn bad(spec: &str, why: &str) -> Error {
    Error::BadPort {
        spec: spec.to_string(),
        why: why.to_string(),
    }
}

pub fn parse(spec: &str) -> Result<PortMapping, Error> {
    let (rest, proto) = match spec.rsplit_once('/') {
        Some((r, "tcp")) => (r, Proto::Tcp),
        Some((r, "udp")) => (r, Proto::Udp),
        Some(_) => return Err(bad(spec, "the protocol must be tcp or udp")),
        None => (spec, Proto::Tcp),
    };
    let parts: Vec<&str> = rest.split(':').collect();
    let (ip, host, guest) = match parts.as_slice() {
        [h, g] => (None, *h, *g),
        [ip, h, g] => {
            let ip: Ipv4Addr = ip
                .parse()
                .map_err(|_| bad(spec, "the host address must be an IPv4 address"))?;
            (Some(ip).filter(|a| !a.is_unspecified()), *h, *g)
        }
        _ => {
            return Err(bad(
                spec,
                "use [IP:]HOST:GUEST[/tcp|udp], e.g. 8080:80 or 127.0.0.1:8080:80/tcp",
            ))
        }
    };
    let port = |s: &str, what: &str| -> Result<u16, Error> {
        match s.parse::<u16>() {
            Ok(p) if p > 0 => Ok(p),
            _ => Err(bad(
                spec,
                &format!("{what} port {s:?} is not a number from 1 to 65535"),
            )),
        }
    };
    Ok(PortMapping {
        host_ip: ip,
        host_port: port(host, "host")?,
        guest_port: port(guest, "container")?,
        proto,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms_docker_accepts() {
        let p = parse("18080:80").unwrap();
        assert_eq!(
            (p.host_ip, p.host_port, p.guest_port, p.proto),
            (None, 18080, 80, Proto::Tcp)
        );
        let p = parse("127.0.0.1:5353:53/udp").unwrap();
        assert_eq!(p.host_ip, Some(Ipv4Addr::LOCALHOST));
        assert_eq!(p.proto, Proto::Udp);
        assert_eq!(p.to_string(), "127.0.0.1:5353->53/udp");
        assert_eq!(parse("0.0.0.0:1:2").unwrap().host_ip, None);
    }

    #[test]
    fn mistakes_say_what_is_wrong() {
        for (s, why) in [
            ("80", "use [IP:]HOST"),
            ("0:80", "host port"),
            ("8080:70000", "container port"),
            ("8080:80/sctp", "tcp or udp"),
            ("::1:8080:80", "use [IP:]HOST"),
            ("example.com:1:2", "IPv4"),
        ] {
            let e = parse(s).unwrap_err().to_string();
            assert!(e.contains(why) && e.contains(s), "{s}: {e}");
        }
        let dup = parse_all(&["1:2".into(), "1:3".into()]).unwrap_err();
        assert!(dup.to_string().contains("already published"));
        assert_eq!(
            parse_all(&["1:2".into(), "1:2/udp".into()]).unwrap().len(),
            2
        );
        let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = busy.local_addr().unwrap().port();
        let p = parse(&format!("127.0.0.1:{port}:80")).unwrap();
        assert!(check_free(&p)
            .unwrap_err()
            .to_string()
            .contains("a process on this host"));
        drop(busy);
        check_free(&p).unwrap();
    }
}
