//! The "guest" of the virtio-net harness tests: a [`Harness`] driving the device on a TAP
//! in a test namespace, rx/tx buffer bookkeeping, and a hand-made TCP handshake.

use std::collections::HashMap;
use std::net::UdpSocket;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use husk::devices::virtio::net::{features as f, hdr, Net, NetStats, Tap, HDR_LEN};
use husk::devices::virtio::testing::{Buf, Harness};
use husk::devices::virtio::TYPE_NET;
use vm_memory::GuestAddress;

use super::common;
use super::netns::{self, Netns};
use super::packets::*;

pub const TAP: &str = "hnt0";
pub const HOST_IP: [u8; 4] = [10, 77, 0, 1];
pub const GUEST_IP: [u8; 4] = [10, 77, 0, 2];
pub const GUEST_MAC: [u8; 6] = [2, 0, 0, 0x77, 0, 2];
pub const RXQ: usize = 0;
pub const TXQ: usize = 1;
pub const QSIZE: u16 = 256;
pub const RX_BUF: u32 = 2048;
/// Room for a 64 KiB GSO frame per tx slot.
pub const TX_SLOT: u64 = 68 << 10;
pub const WAIT: Duration = Duration::from_secs(5);

/// The "guest": a harness driving the device, and the namespace holding the TAP.
pub struct Guest {
    pub h: Harness,
    pub ns: Netns,
    pub stats: Arc<NetStats>,
    pub host_mac: [u8; 6],
    /// rx chain head → its buffer and length.
    pub rx_bufs: HashMap<u16, (GuestAddress, u32)>,
    pub tx_base: GuestAddress,
    pub tx_next: u64,
}

pub fn skip(test: &str) -> bool {
    match netns::unavailable() {
        Some(why) => {
            common::not_run(test, &why, true);
            true
        }
        None => false,
    }
}

pub fn payload(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(13).wrapping_add(seed))
        .collect()
}

/// A namespace with TAP `hnt0` (opened in it, handed back as an fd) at 10.77.0.1/24, the
/// guest's address as a permanent neighbour (no ARP), and no IPv6 chatter.
pub fn host_side() -> (Netns, Tap) {
    let ns = Netns::new();
    ns.disable_ipv6();
    let tap = ns
        .enter(|| Tap::open(TAP))
        .expect("open TAP in the namespace");
    ns.ip(&["addr", "add", "10.77.0.1/24", "dev", TAP]);
    ns.ip(&["link", "set", TAP, "up"]);
    ns.ip(&[
        "neigh",
        "add",
        "10.77.0.2",
        "lladdr",
        "02:00:00:77:00:02",
        "dev",
        TAP,
        "nud",
        "permanent",
    ]);
    (ns, tap)
}

impl Guest {
    /// Device on a fresh TAP, features ∩ `want` negotiated, `rx` buffers posted.
    pub fn new(want: u64, rx: usize) -> Guest {
        Self::with_mem(want, rx, 64 << 20)
    }

    pub fn with_mem(want: u64, rx: usize, mem: usize) -> Guest {
        let (ns, tap) = host_side();
        let host_mac = ns.mac_of(TAP);
        let dev = Net::new(tap, GUEST_MAC, 0);
        let stats = dev.stats();
        let mut h = Harness::with_mem_size(Box::new(dev), mem);
        assert_eq!(h.probe(), TYPE_NET);
        h.init(want | f::MAC | f::STATUS, 2, QSIZE);
        let tx_base = h.alloc(TX_SLOT * u64::from(QSIZE));
        let mut g = Guest {
            h,
            ns,
            stats,
            host_mac,
            rx_bufs: HashMap::new(),
            tx_base,
            tx_next: 0,
        };
        for _ in 0..rx {
            let a = g.h.alloc(u64::from(RX_BUF));
            g.post_rx(a);
        }
        g.h.notify(RXQ);
        g
    }

    pub fn post_rx(&mut self, a: GuestAddress) {
        self.post_rx_len(a, RX_BUF);
    }

    pub fn post_rx_len(&mut self, a: GuestAddress, len: u32) {
        let head = self.h.add_chain(RXQ, &[Buf::w(a, len)]);
        self.rx_bufs.insert(head, (a, len));
    }

    /// Every frame received within `wait` (at least one, or none), buffers posted again.
    pub fn poll_frames(&mut self, wait: Duration) -> Vec<Vec<u8>> {
        let Some(first) = self.h.wait_used(RXQ, 1, wait) else {
            return Vec::new();
        };
        let mut used = first;
        // Whatever else is already there.
        while let Some(more) = self.h.wait_used(RXQ, 1, Duration::ZERO) {
            used.extend(more);
        }
        let mut out = Vec::with_capacity(used.len());
        for (id, len) in used {
            let (a, buf_len) = self.rx_bufs[&(id as u16)];
            out.push(self.h.read(a, len as usize));
            self.post_rx_len(a, buf_len);
        }
        self.h.notify(RXQ);
        out
    }

    /// Next received frame (vnet header included) that `want` accepts; its buffer is
    /// posted again.
    pub fn recv(&mut self, want: impl Fn(&[u8]) -> bool) -> Vec<u8> {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let (id, len) = self
                .h
                .wait_used(RXQ, 1, left)
                .expect("no frame reached the guest")[0];
            let (a, buf_len) = self.rx_bufs[&(id as u16)];
            let frame = self.h.read(a, len as usize);
            self.post_rx_len(a, buf_len);
            self.h.notify(RXQ);
            if len as usize > HDR_LEN && want(&frame[HDR_LEN..]) {
                return frame;
            }
        }
    }

    /// Places one frame (vnet header `vh` + `frame`) on the tx queue as one descriptor,
    /// without notifying (a full queue of frames fits the descriptor table).
    pub fn queue_tx(&mut self, vh: [u8; HDR_LEN], frame: &[u8]) {
        let a = GuestAddress(self.tx_base.0 + (self.tx_next % u64::from(QSIZE)) * TX_SLOT);
        self.tx_next += 1;
        self.h.write(a, &vh);
        self.h.write(GuestAddress(a.0 + HDR_LEN as u64), frame);
        self.h
            .add_chain(TXQ, &[Buf::r(a, (HDR_LEN + frame.len()) as u32)]);
    }

    /// Places one frame on the tx queue as two descriptors, header apart.
    pub fn queue_tx_split(&mut self, vh: [u8; HDR_LEN], frame: &[u8]) {
        let a = GuestAddress(self.tx_base.0 + (self.tx_next % u64::from(QSIZE)) * TX_SLOT);
        self.tx_next += 1;
        self.h.write(a, &vh);
        self.h.write(GuestAddress(a.0 + HDR_LEN as u64), frame);
        // Header and frame in separate descriptors, as Linux lays them out.
        self.h.add_chain(
            TXQ,
            &[
                Buf::r(a, HDR_LEN as u32),
                Buf::r(GuestAddress(a.0 + HDR_LEN as u64), frame.len() as u32),
            ],
        );
    }

    pub fn send(&mut self, vh: [u8; HDR_LEN], frame: &[u8]) {
        self.queue_tx_split(vh, frame);
        self.h.notify(TXQ);
        self.h.wait_one(TXQ).expect("tx chain not completed");
    }

    pub fn udp_frame(&self, sport: u16, dport: u16, data: &[u8], partial: bool) -> Vec<u8> {
        let u = udp(GUEST_IP, HOST_IP, sport, dport, data, partial);
        eth(
            self.host_mac,
            GUEST_MAC,
            ETH_IP,
            &ipv4(GUEST_IP, HOST_IP, PROTO_UDP, &u),
        )
    }

    pub fn host_udp(&self, port: u16) -> UdpSocket {
        let s = self
            .ns
            .enter(move || UdpSocket::bind(("10.77.0.1", port)))
            .expect("bind in the namespace");
        s.set_read_timeout(Some(WAIT)).unwrap();
        let big: libc::c_int = 8 << 20;
        // SAFETY: setsockopt with a valid int option value.
        unsafe {
            libc::setsockopt(
                s.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUFFORCE,
                (&big as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as u32,
            );
        }
        s
    }

    pub fn stat(&self, c: impl Fn(&NetStats) -> &AtomicU64) -> u64 {
        c(&self.stats).load(Ordering::Relaxed)
    }
}

pub fn no_offload() -> [u8; HDR_LEN] {
    [0; HDR_LEN]
}

/// A UDP frame to `port` on the guest, parsed.
pub fn is_udp_to(port: u16) -> impl Fn(&[u8]) -> bool {
    move |fr: &[u8]| {
        parse_ipv4(fr).is_some_and(|ip| {
            ip.proto == PROTO_UDP && ip.payload.len() >= 8 && ip.payload[2..4] == port.to_be_bytes()
        })
    }
}

pub fn is_tcp(fr: &[u8]) -> bool {
    parse_ipv4(fr).is_some_and(|ip| ip.proto == PROTO_TCP)
}

pub fn tcp_frame(
    g: &Guest,
    ports: (u16, u16),
    seq: u32,
    ack: u32,
    flags: u8,
    data: &[u8],
    partial: bool,
) -> Vec<u8> {
    let t = tcp(
        GUEST_IP,
        HOST_IP,
        ports,
        seq,
        ack,
        flags,
        &[],
        data,
        partial,
    );
    eth(
        g.host_mac,
        GUEST_MAC,
        ETH_IP,
        &ipv4(GUEST_IP, HOST_IP, PROTO_TCP, &t),
    )
}

/// The vnet header of a TCPv4 GSO frame with Ethernet + IPv4 + 20-byte TCP headers.
pub fn tso_header(mss: u16) -> [u8; HDR_LEN] {
    let mut vh = no_offload();
    vh[0] = hdr::F_NEEDS_CSUM;
    vh[1] = hdr::GSO_TCPV4;
    vh[2..4].copy_from_slice(&54u16.to_le_bytes()); // hdr_len
    vh[4..6].copy_from_slice(&mss.to_le_bytes()); // gso_size
    vh[6..8].copy_from_slice(&34u16.to_le_bytes()); // csum_start
    vh[8..10].copy_from_slice(&16u16.to_le_bytes()); // csum_offset
    vh
}

/// The guest's window scale: 65535 << 4 ≈ 1 MiB in flight, below what its rx buffers and
/// the TAP's queue hold, so the host never has to retransmit to it.
pub const GUEST_WSCALE: u8 = 4;

/// A connection the "guest" opened by hand to a host listener.
pub struct Tcp {
    pub conn: std::net::TcpStream,
    pub ports: (u16, u16),
    pub isn: u32,
    pub host_isn: u32,
    pub host_wscale: u8,
}

/// Connects the "guest" to a host listener on 10.77.0.1:`ports.1` by a hand-made
/// handshake (MSS 1460, window scale [`GUEST_WSCALE`]).
pub fn tcp_open(g: &mut Guest, ports: (u16, u16)) -> Tcp {
    let listener =
        g.ns.enter(move || std::net::TcpListener::bind(("10.77.0.1", ports.1)))
            .unwrap();
    let isn = 1_000_000u32;
    let opts = [2, 4, 0x05, 0xb4, 1, 3, 3, GUEST_WSCALE];
    let t = tcp(GUEST_IP, HOST_IP, ports, isn, 0, TCP_SYN, &opts, &[], false);
    let fr = eth(
        g.host_mac,
        GUEST_MAC,
        ETH_IP,
        &ipv4(GUEST_IP, HOST_IP, PROTO_TCP, &t),
    );
    g.send(no_offload(), &fr);
    let synack = g.recv(is_tcp);
    let ip = parse_ipv4(&synack[HDR_LEN..]).unwrap();
    let th = ip.payload;
    assert_eq!(th[13] & (TCP_SYN | TCP_ACK), TCP_SYN | TCP_ACK);
    let host_isn = u32::from_be_bytes(th[4..8].try_into().unwrap());
    let mut host_wscale = 0;
    let mut o = &th[20..usize::from(th[12] >> 4) * 4];
    while let [kind, rest @ ..] = o {
        match (*kind, rest) {
            (0, _) => break,
            (1, _) => o = rest,
            (3, [3, shift, ..]) => {
                host_wscale = *shift;
                o = &rest[2..];
            }
            (_, [len, ..]) if *len >= 2 && usize::from(*len) - 1 <= rest.len() => {
                o = &rest[usize::from(*len) - 1..]
            }
            _ => break,
        }
    }
    let fr = tcp_frame(g, ports, isn + 1, host_isn + 1, TCP_ACK, &[], false);
    g.send(no_offload(), &fr);
    let (conn, _) = listener.accept().expect("host accepts");
    conn.set_read_timeout(Some(WAIT)).unwrap();
    Tcp {
        conn,
        ports,
        isn,
        host_isn,
        host_wscale,
    }
}
