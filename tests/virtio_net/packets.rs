//! Just enough Ethernet/ARP/IPv4/UDP/ICMP to play a guest's network stack.

pub const ETH_IP: u16 = 0x0800;
pub const PROTO_ICMP: u8 = 1;
pub const PROTO_UDP: u8 = 17;

pub fn csum_add(mut sum: u32, data: &[u8]) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [b] = chunks.remainder() {
        sum += u32::from(*b) << 8;
    }
    sum
}

pub fn csum_fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

pub fn eth(dst: [u8; 6], src: [u8; 6], ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(14 + payload.len());
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

pub fn ipv4(src: [u8; 4], dst: [u8; 4], proto: u8, payload: &[u8]) -> Vec<u8> {
    let mut h = vec![0x45, 0];
    h.extend_from_slice(&((20 + payload.len()) as u16).to_be_bytes());
    h.extend_from_slice(&[0, 0, 0x40, 0, 64, proto, 0, 0]);
    h.extend_from_slice(&src);
    h.extend_from_slice(&dst);
    let c = !csum_fold(csum_add(0, &h));
    h[10..12].copy_from_slice(&c.to_be_bytes());
    h.extend_from_slice(payload);
    h
}

fn pseudo(src: [u8; 4], dst: [u8; 4], proto: u8, len: usize) -> u32 {
    let mut p = Vec::with_capacity(12);
    p.extend_from_slice(&src);
    p.extend_from_slice(&dst);
    p.extend_from_slice(&[0, proto]);
    p.extend_from_slice(&(len as u16).to_be_bytes());
    csum_add(0, &p)
}

/// A UDP datagram (header + payload). `partial`: the checksum field holds only the
/// pseudo-header sum, for a device that completes it (VIRTIO_NET_HDR_F_NEEDS_CSUM).
pub fn udp(
    src: [u8; 4],
    dst: [u8; 4],
    sport: u16,
    dport: u16,
    data: &[u8],
    partial: bool,
) -> Vec<u8> {
    let len = 8 + data.len();
    let mut u = Vec::with_capacity(len);
    u.extend_from_slice(&sport.to_be_bytes());
    u.extend_from_slice(&dport.to_be_bytes());
    u.extend_from_slice(&(len as u16).to_be_bytes());
    u.extend_from_slice(&[0, 0]);
    u.extend_from_slice(data);
    let ph = pseudo(src, dst, PROTO_UDP, len);
    let c = if partial {
        csum_fold(ph)
    } else {
        match !csum_fold(csum_add(ph, &u)) {
            0 => 0xffff,
            c => c,
        }
    };
    u[6..8].copy_from_slice(&c.to_be_bytes());
    u
}

pub fn icmp_echo_request(id: u16, seq: u16, data: &[u8]) -> Vec<u8> {
    let mut m = vec![8, 0, 0, 0];
    m.extend_from_slice(&id.to_be_bytes());
    m.extend_from_slice(&seq.to_be_bytes());
    m.extend_from_slice(data);
    let c = !csum_fold(csum_add(0, &m));
    m[2..4].copy_from_slice(&c.to_be_bytes());
    m
}

/// A parsed IPv4 frame: (ethernet dst, ip src, ip dst, proto, ip payload).
pub struct Ip<'a> {
    pub eth_dst: [u8; 6],
    pub src: [u8; 4],
    pub dst: [u8; 4],
    pub proto: u8,
    pub payload: &'a [u8],
    pub header_ok: bool,
}

pub fn parse_ipv4(frame: &[u8]) -> Option<Ip<'_>> {
    if frame.len() < 34 || u16::from_be_bytes([frame[12], frame[13]]) != ETH_IP {
        return None;
    }
    let ip = &frame[14..];
    let ihl = usize::from(ip[0] & 0xf) * 4;
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    if ip.len() < total || total < ihl {
        return None;
    }
    Some(Ip {
        eth_dst: frame[..6].try_into().ok()?,
        src: ip[12..16].try_into().ok()?,
        dst: ip[16..20].try_into().ok()?,
        proto: ip[9],
        payload: &ip[ihl..total],
        header_ok: csum_fold(csum_add(0, &ip[..ihl])) == 0xffff,
    })
}

/// Verifies a UDP checksum in full (zero means "none" on IPv4).
pub fn udp_checksum_ok(ip: &Ip<'_>) -> bool {
    let u = ip.payload;
    if u.len() < 8 || u[6..8] == [0, 0] {
        return u.len() >= 8;
    }
    csum_fold(csum_add(pseudo(ip.src, ip.dst, PROTO_UDP, u.len()), u)) == 0xffff
}

pub const PROTO_TCP: u8 = 6;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_ACK: u8 = 0x10;
pub const TCP_PSH: u8 = 0x08;

/// A TCP segment (header + `opts` + data). `partial`: the checksum field holds only the
/// pseudo-header sum (over the full TCP length), as a device offloading it expects.
#[allow(clippy::too_many_arguments)]
pub fn tcp(
    src: [u8; 4],
    dst: [u8; 4],
    ports: (u16, u16),
    seq: u32,
    ack: u32,
    flags: u8,
    opts: &[u8],
    data: &[u8],
    partial: bool,
) -> Vec<u8> {
    let hlen = 20 + opts.len();
    let mut t = Vec::with_capacity(hlen + data.len());
    t.extend_from_slice(&ports.0.to_be_bytes());
    t.extend_from_slice(&ports.1.to_be_bytes());
    t.extend_from_slice(&seq.to_be_bytes());
    t.extend_from_slice(&ack.to_be_bytes());
    t.push(((hlen / 4) as u8) << 4);
    t.push(flags);
    t.extend_from_slice(&65535u16.to_be_bytes());
    t.extend_from_slice(&[0, 0, 0, 0]);
    t.extend_from_slice(opts);
    t.extend_from_slice(data);
    let ph = pseudo(src, dst, PROTO_TCP, t.len());
    let c = if partial {
        csum_fold(ph)
    } else {
        !csum_fold(csum_add(ph, &t))
    };
    t[16..18].copy_from_slice(&c.to_be_bytes());
    t
}
