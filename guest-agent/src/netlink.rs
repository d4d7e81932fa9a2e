//! Just enough rtnetlink to configure a NIC: link up + MTU, its MAC, add an address, add a
//! route.
//!
//! The guest has no `ip` binary (the initramfs holds only the agent), and the ioctl
//! interface has no IPv6 routes worth using, so the agent speaks netlink itself: one
//! `NETLINK_ROUTE` socket, one request at a time, each acknowledged (`NLM_F_ACK`) so a
//! refusal comes back as the kernel's errno.

use std::io;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

const NLMSG_HDR: usize = 16;
const NLMSG_ERROR: u16 = 2;
const RTM_NEWLINK: u16 = 16;
const RTM_NEWADDR: u16 = 20;
const RTM_NEWROUTE: u16 = 24;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_REPLACE: u16 = 0x100;
const NLM_F_CREATE: u16 = 0x400;

const IFLA_ADDRESS: u16 = 1;
const IFLA_MTU: u16 = 4;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const IFA_F_NODAD: u8 = 0x02;
const RTA_DST: u16 = 1;
const RTA_OIF: u16 = 4;
const RTA_GATEWAY: u16 = 5;
const RT_TABLE_MAIN: u8 = 254;
const RTPROT_BOOT: u8 = 3;
const RT_SCOPE_UNIVERSE: u8 = 0;
const RT_SCOPE_LINK: u8 = 253;
const RT_SCOPE_HOST: u8 = 254;
const RTN_UNICAST: u8 = 1;

/// A `NETLINK_ROUTE` socket.
pub struct Netlink {
    fd: OwnedFd,
    seq: u32,
}

/// One request being built: header, fixed body, then attributes.
struct Msg {
    buf: Vec<u8>,
}

impl Msg {
    fn new(kind: u16, flags: u16, body: &[u8]) -> Msg {
        let mut buf = vec![0u8; NLMSG_HDR];
        buf[4..6].copy_from_slice(&kind.to_ne_bytes());
        buf[6..8].copy_from_slice(&(flags | NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
        buf.extend_from_slice(body);
        Msg { buf }
    }

    fn attr(&mut self, kind: u16, data: &[u8]) {
        let len = 4 + data.len();
        self.buf.extend_from_slice(&(len as u16).to_ne_bytes());
        self.buf.extend_from_slice(&kind.to_ne_bytes());
        self.buf.extend_from_slice(data);
        while !self.buf.len().is_multiple_of(4) {
            self.buf.push(0);
        }
    }

    fn finish(mut self, seq: u32) -> Vec<u8> {
        let len = self.buf.len() as u32;
        self.buf[0..4].copy_from_slice(&len.to_ne_bytes());
        self.buf[8..12].copy_from_slice(&seq.to_ne_bytes());
        self.buf
    }
}

fn ip_bytes(a: &IpAddr) -> Vec<u8> {
    match a {
        IpAddr::V4(v) => v.octets().to_vec(),
        IpAddr::V6(v) => v.octets().to_vec(),
    }
}

fn family(a: &IpAddr) -> u8 {
    if a.is_ipv4() {
        libc::AF_INET as u8
    } else {
        libc::AF_INET6 as u8
    }
}

impl Netlink {
    pub fn open() -> io::Result<Netlink> {
        // SAFETY: plain socket(2); the fd is owned at once.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_ROUTE,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Netlink {
            // SAFETY: socket() just returned `fd` (checked non-negative above); nothing else
            // owns it, so the OwnedFd is its only owner.
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
            seq: 0,
        })
    }

    /// Sets the link up, and its MTU when given.
    pub fn link_up(&mut self, index: u32, mtu: Option<u32>) -> io::Result<()> {
        // struct ifinfomsg: family, pad, type, index, flags, change.
        let mut body = vec![0u8; 16];
        body[4..8].copy_from_slice(&(index as i32).to_ne_bytes());
        body[8..12].copy_from_slice(&(libc::IFF_UP as u32).to_ne_bytes());
        body[12..16].copy_from_slice(&(libc::IFF_UP as u32).to_ne_bytes());
        let mut m = Msg::new(RTM_NEWLINK, 0, &body);
        if let Some(mtu) = mtu {
            m.attr(IFLA_MTU, &mtu.to_ne_bytes());
        }
        self.request(m)
    }

    /// Sets the link's hardware address (a clone of a VM template giving its NIC the MAC the
    /// host chose for it). The kernel refuses a device that cannot change it with its errno.
    pub fn set_mac(&mut self, index: u32, mac: &[u8; 6]) -> io::Result<()> {
        // struct ifinfomsg with no flags to change: only the attribute is applied.
        let mut body = vec![0u8; 16];
        body[4..8].copy_from_slice(&(index as i32).to_ne_bytes());
        let mut m = Msg::new(RTM_NEWLINK, 0, &body);
        m.attr(IFLA_ADDRESS, mac);
        self.request(m)
    }

    /// Adds `addr/prefix` to the link (replacing an identical one). IPv6 addresses skip
    /// duplicate address detection: the host picked them, and DAD would leave them unusable
    /// for the first second of the container's life.
    pub fn add_address(&mut self, index: u32, addr: &IpAddr, prefix: u8) -> io::Result<()> {
        // struct ifaddrmsg: family, prefixlen, flags, scope, index.
        let mut body = vec![0u8; 8];
        body[0] = family(addr);
        body[1] = prefix;
        body[2] = if addr.is_ipv6() { IFA_F_NODAD } else { 0 };
        body[3] = if addr.is_loopback() {
            RT_SCOPE_HOST
        } else {
            RT_SCOPE_UNIVERSE
        };
        body[4..8].copy_from_slice(&index.to_ne_bytes());
        let mut m = Msg::new(RTM_NEWADDR, NLM_F_CREATE | NLM_F_REPLACE, &body);
        let bytes = ip_bytes(addr);
        m.attr(IFA_LOCAL, &bytes);
        m.attr(IFA_ADDRESS, &bytes);
        self.request(m)
    }

    /// Adds a route to `dst/prefix` out of link `index`, via `gateway` or on-link.
    pub fn add_route(
        &mut self,
        index: u32,
        dst: &IpAddr,
        prefix: u8,
        gateway: Option<&IpAddr>,
    ) -> io::Result<()> {
        // struct rtmsg: family, dst_len, src_len, tos, table, protocol, scope, type, flags.
        let mut body = vec![0u8; 12];
        body[0] = family(dst);
        body[1] = prefix;
        body[4] = RT_TABLE_MAIN;
        body[5] = RTPROT_BOOT;
        body[6] = if gateway.is_some() {
            RT_SCOPE_UNIVERSE
        } else {
            RT_SCOPE_LINK
        };
        body[7] = RTN_UNICAST;
        let mut m = Msg::new(RTM_NEWROUTE, NLM_F_CREATE | NLM_F_REPLACE, &body);
        if prefix > 0 {
            m.attr(RTA_DST, &ip_bytes(dst));
        }
        if let Some(g) = gateway {
            m.attr(RTA_GATEWAY, &ip_bytes(g));
        }
        m.attr(RTA_OIF, &index.to_ne_bytes());
        self.request(m)
    }

    /// Sends one request and waits for its acknowledgement.
    fn request(&mut self, m: Msg) -> io::Result<()> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let buf = m.finish(seq);
        // SAFETY: buf is a valid readable buffer of its length; the kernel address is
        // implied for an unbound netlink socket's send.
        let n = unsafe { libc::send(self.fd.as_raw_fd(), buf.as_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut reply = vec![0u8; 8192];
        loop {
            // SAFETY: reply is a writable buffer of its length.
            let n = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    reply.as_mut_ptr().cast(),
                    reply.len(),
                    0,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            if let Some(result) = parse_ack(&reply[..n as usize], seq) {
                return result;
            }
        }
    }
}

/// The acknowledgement for `seq` in a datagram, if it holds one.
fn parse_ack(mut data: &[u8], seq: u32) -> Option<io::Result<()>> {
    while data.len() >= NLMSG_HDR {
        let len = u32::from_ne_bytes([data[0], data[1], data[2], data[3]]) as usize;
        let kind = u16::from_ne_bytes([data[4], data[5]]);
        let msg_seq = u32::from_ne_bytes([data[8], data[9], data[10], data[11]]);
        if len < NLMSG_HDR || len > data.len() {
            return Some(Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "truncated netlink reply",
            )));
        }
        if kind == NLMSG_ERROR && msg_seq == seq && len >= NLMSG_HDR + 4 {
            let b = &data[NLMSG_HDR..NLMSG_HDR + 4];
            let errno = i32::from_ne_bytes([b[0], b[1], b[2], b[3]]);
            return Some(if errno == 0 {
                Ok(())
            } else {
                Err(io::Error::from_raw_os_error(-errno))
            });
        }
        let aligned = (len + 3) & !3;
        data = &data[aligned.min(data.len())..];
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_length_prefixed_and_attributes_aligned() {
        let mut m = Msg::new(RTM_NEWADDR, NLM_F_CREATE, &[0u8; 8]);
        m.attr(IFA_LOCAL, &[10, 0, 0, 1]);
        m.attr(7, &[1, 2, 3]);
        let b = m.finish(9);
        assert_eq!(b.len(), 16 + 8 + 8 + 8);
        assert_eq!(
            u32::from_ne_bytes(b[0..4].try_into().unwrap()),
            b.len() as u32
        );
        assert_eq!(u32::from_ne_bytes(b[8..12].try_into().unwrap()), 9);
        assert_eq!(u16::from_ne_bytes(b[32..34].try_into().unwrap()), 7);
    }

    #[test]
    fn acks_carry_the_kernel_errno() {
        let mut d = vec![0u8; 20];
        d[0..4].copy_from_slice(&20u32.to_ne_bytes());
        d[4..6].copy_from_slice(&NLMSG_ERROR.to_ne_bytes());
        d[8..12].copy_from_slice(&5u32.to_ne_bytes());
        d[16..20].copy_from_slice(&(-libc::EEXIST).to_ne_bytes());
        let e = parse_ack(&d, 5).unwrap().unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EEXIST));
        assert!(parse_ack(&d, 6).is_none(), "another request's ack");
        d[0..4].copy_from_slice(&4000u32.to_ne_bytes());
        assert!(parse_ack(&d, 5).unwrap().is_err(), "hostile length");
    }

    /// The hardware address of interface `name` (NUL-terminated) in this thread's network
    /// namespace (its sysfs is the host's), read back with SIOCGIFHWADDR.
    fn hw_addr(name: &[u8]) -> [u8; 6] {
        // SAFETY: plain socket(2); the fd is owned at once below.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        assert!(fd >= 0, "socket: {}", io::Error::last_os_error());
        // SAFETY: socket() just returned `fd`, checked above; nothing else owns it.
        let sock = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: ifreq is a plain C struct (a union of plain fields); all-zero is valid.
        let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
        for (dst, src) in req.ifr_name.iter_mut().zip(name) {
            *dst = *src as libc::c_char;
        }
        // SAFETY: SIOCGIFHWADDR reads the name from and writes the address into `req`, a
        // live ifreq; the socket is held open by `sock`.
        let r = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFHWADDR, &mut req) };
        assert_eq!(r, 0, "SIOCGIFHWADDR: {}", io::Error::last_os_error());
        // SAFETY: SIOCGIFHWADDR just wrote `ifru_hwaddr`, a plain sockaddr.
        let data = unsafe { req.ifr_ifru.ifru_hwaddr.sa_data };
        std::array::from_fn(|i| data[i] as u8)
    }

    /// Runs the real requests against `lo` in a fresh network namespace of this thread
    /// (root only; elsewhere it says so and checks nothing).
    #[test]
    fn requests_configure_a_fresh_namespace() {
        let t = std::thread::spawn(|| {
            // SAFETY: unshare affects only this thread, which ends with the test.
            if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                eprintln!(
                    "NOT RUN: netlink in a netns: unshare: {}",
                    io::Error::last_os_error()
                );
                return;
            }
            let idx: u32 = std::fs::read_to_string("/proc/thread-self/net/dev_snmp6/lo")
                .ok()
                .and_then(|s| {
                    s.lines()
                        .find(|l| l.starts_with("ifIndex"))
                        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
                })
                .unwrap_or(1);
            let mut nl = Netlink::open().unwrap();
            nl.link_up(idx, None).unwrap();
            nl.add_address(idx, &"127.0.0.7".parse().unwrap(), 8)
                .unwrap();
            nl.add_address(idx, &"fd00::7".parse().unwrap(), 64)
                .unwrap();
            nl.add_route(idx, &"10.9.0.0".parse().unwrap(), 16, None)
                .unwrap();
            nl.add_route(
                idx,
                &"0.0.0.0".parse().unwrap(),
                0,
                Some(&"10.9.0.1".parse().unwrap()),
            )
            .unwrap();
            let routes = std::fs::read_to_string("/proc/thread-self/net/route").unwrap();
            assert!(routes.contains("0000090A"), "{routes}");
            assert!(
                routes.contains("\t00000000\t0100090A\t"),
                "default via 10.9.0.1: {routes}"
            );
            let v6 = std::fs::read_to_string("/proc/thread-self/net/if_inet6").unwrap();
            assert!(v6.contains("fd000000000000000000000000000007"), "{v6}");
            let e = nl.link_up(9999, None).unwrap_err();
            assert_eq!(e.raw_os_error(), Some(libc::ENODEV));
            // `lo` takes an Ethernet address too, even while up.
            let mac = [2, 0x68, 0x6b, 0, 0, 1];
            nl.set_mac(idx, &mac).unwrap();
            assert_eq!(hw_addr(b"lo\0"), mac);
            let e = nl.set_mac(idx, &[1, 0, 0, 0, 0, 1]).unwrap_err();
            assert_eq!(
                e.raw_os_error(),
                Some(libc::EADDRNOTAVAIL),
                "multicast: {e}"
            );
            let e = nl.set_mac(9999, &mac).unwrap_err();
            assert_eq!(e.raw_os_error(), Some(libc::ENODEV));
        });
        t.join().unwrap();
    }
}
