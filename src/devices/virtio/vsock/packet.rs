//! The virtio-vsock packet: a 44-byte little-endian header followed by `len` data bytes,
//! spread over the descriptors of one chain in any layout.
//!
//! Linux 6.12 sends tx packets of up to 64 KiB whose header sits alone in the first
//! descriptor and whose data spans several more (Linux commit 6693731487a8), and other
//! drivers put header and data in one descriptor; both layouts, and any split in between,
//! are read through [`Chain`]. Everything here treats the guest's bytes as hostile:
//! every length is bounded before it is used and nothing panics on bad input.

use virtio_queue::{desc::split::Descriptor, DescriptorChain};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemory, Permissions};

/// Size of the packet header on the wire.
pub const HDR_SIZE: usize = 44;
/// Largest data payload accepted or produced in one packet (Linux's
/// `VIRTIO_VSOCK_MAX_PKT_BUF_SIZE`).
pub const MAX_PKT_DATA: usize = 64 * 1024;
/// Most descriptors accepted in one chain; a longer chain is a hostile or broken driver.
pub const MAX_DESCS: usize = 1024;

/// The host's well-known CID.
pub const HOST_CID: u64 = 2;

pub const TYPE_STREAM: u16 = 1;

pub const OP_REQUEST: u16 = 1;
pub const OP_RESPONSE: u16 = 2;
pub const OP_RST: u16 = 3;
pub const OP_SHUTDOWN: u16 = 4;
pub const OP_RW: u16 = 5;
pub const OP_CREDIT_UPDATE: u16 = 6;
pub const OP_CREDIT_REQUEST: u16 = 7;

/// SHUTDOWN flag: the sender will receive no more data.
pub const SHUTDOWN_RCV: u32 = 1;
/// SHUTDOWN flag: the sender will send no more data.
pub const SHUTDOWN_SEND: u32 = 2;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    /// A descriptor points the wrong way (a device-writable one in a tx chain, or a
    /// read-only one in an rx chain).
    #[error("vsock: descriptor {index} of the chain has the wrong direction")]
    WrongDirection { index: usize },
    /// The chain has more descriptors than any driver sends.
    #[error("vsock: descriptor chain longer than {MAX_DESCS} descriptors")]
    TooManyDescriptors,
    /// The chain is too short to hold the 44-byte header.
    #[error("vsock: descriptor chain of {0} bytes cannot hold a packet header")]
    ChainTooShort(u64),
    /// The header's `len` is more than the chain holds or more than we accept.
    #[error("vsock: packet data length {len} exceeds the {avail} bytes available")]
    BadDataLen { len: u32, avail: u64 },
    /// A descriptor points outside guest memory.
    #[error("vsock: descriptor points outside guest memory: {0}")]
    GuestMemory(String),
}

/// The packet header, in host byte order.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Header {
    pub src_cid: u64,
    pub dst_cid: u64,
    pub src_port: u32,
    pub dst_port: u32,
    pub len: u32,
    pub type_: u16,
    pub op: u16,
    pub flags: u32,
    pub buf_alloc: u32,
    pub fwd_cnt: u32,
}

impl Header {
    pub fn from_bytes(b: &[u8; HDR_SIZE]) -> Self {
        let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap_or_default());
        let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap_or_default());
        let u16_at = |o: usize| u16::from_le_bytes(b[o..o + 2].try_into().unwrap_or_default());
        Header {
            src_cid: u64_at(0),
            dst_cid: u64_at(8),
            src_port: u32_at(16),
            dst_port: u32_at(20),
            len: u32_at(24),
            type_: u16_at(28),
            op: u16_at(30),
            flags: u32_at(32),
            buf_alloc: u32_at(36),
            fwd_cnt: u32_at(40),
        }
    }

    pub fn to_bytes(&self) -> [u8; HDR_SIZE] {
        let mut b = [0u8; HDR_SIZE];
        b[0..8].copy_from_slice(&self.src_cid.to_le_bytes());
        b[8..16].copy_from_slice(&self.dst_cid.to_le_bytes());
        b[16..20].copy_from_slice(&self.src_port.to_le_bytes());
        b[20..24].copy_from_slice(&self.dst_port.to_le_bytes());
        b[24..28].copy_from_slice(&self.len.to_le_bytes());
        b[28..30].copy_from_slice(&self.type_.to_le_bytes());
        b[30..32].copy_from_slice(&self.op.to_le_bytes());
        b[32..36].copy_from_slice(&self.flags.to_le_bytes());
        b[36..40].copy_from_slice(&self.buf_alloc.to_le_bytes());
        b[40..44].copy_from_slice(&self.fwd_cnt.to_le_bytes());
        b
    }
}

/// One buffer of a descriptor chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    pub addr: GuestAddress,
    pub len: u32,
}

/// The buffers of one descriptor chain, all of one direction, as a flat byte range.
#[derive(Debug, Default, Clone)]
pub struct Chain {
    segs: Vec<Segment>,
    total: u64,
}

impl Chain {
    /// Builds a chain from explicit segments (tests and callers that already walked it).
    pub fn from_segments(segs: Vec<Segment>) -> Result<Self, Error> {
        if segs.len() > MAX_DESCS {
            return Err(Error::TooManyDescriptors);
        }
        let total = segs.iter().map(|s| u64::from(s.len)).sum();
        Ok(Chain { segs, total })
    }

    /// Walks `chain`, requiring every descriptor to be device-writable (`writable`) or
    /// device-readable (`!writable`). The caller still owns the head index and must return
    /// it to the used ring whatever this returns.
    pub fn walk<M>(chain: DescriptorChain<M>, writable: bool) -> Result<Self, Error>
    where
        M: std::ops::Deref,
        M::Target: GuestMemory,
    {
        let descs: Vec<Descriptor> = chain.take(MAX_DESCS + 1).collect();
        if descs.len() > MAX_DESCS {
            return Err(Error::TooManyDescriptors);
        }
        let mut segs = Vec::with_capacity(descs.len());
        for (index, d) in descs.iter().enumerate() {
            if d.is_write_only() != writable {
                return Err(Error::WrongDirection { index });
            }
            segs.push(Segment {
                addr: GuestAddress(d.addr().0),
                len: d.len(),
            });
        }
        Self::from_segments(segs)
    }

    /// Checks that every buffer lies inside writable guest memory, so a later copy cannot fail
    /// half-way (an rx packet must be written whole or not taken from the muxer at all).
    pub fn check_memory<M: GuestMemory>(&self, mem: &M) -> Result<(), Error> {
        for s in &self.segs {
            if !mem.check_range(s.addr, s.len as usize, Permissions::Write) {
                return Err(Error::GuestMemory(format!("{:#x}+{:#x}", s.addr.0, s.len)));
            }
        }
        Ok(())
    }

    /// Total bytes the chain holds.
    pub fn len(&self) -> u64 {
        self.total
    }

    pub fn is_empty(&self) -> bool {
        self.total == 0
    }

    /// Visits the (address, length) pieces covering `[offset, offset + count)`.
    fn for_each_piece<F>(&self, offset: u64, count: usize, mut f: F) -> Result<(), Error>
    where
        F: FnMut(GuestAddress, usize, usize) -> Result<(), Error>,
    {
        let mut skip = offset;
        let mut done = 0usize;
        for s in &self.segs {
            if done == count {
                break;
            }
            let len = u64::from(s.len);
            if skip >= len {
                skip -= len;
                continue;
            }
            let n = ((len - skip) as usize).min(count - done);
            let addr = s
                .addr
                .checked_add(skip)
                .ok_or_else(|| Error::GuestMemory(format!("{:#x}+{skip:#x}", s.addr.0)))?;
            f(addr, done, n)?;
            done += n;
            skip = 0;
        }
        if done < count {
            return Err(Error::ChainTooShort(self.total));
        }
        Ok(())
    }

    /// Copies `buf.len()` bytes starting at `offset` of the chain out of guest memory.
    pub fn read_at<M: GuestMemory>(
        &self,
        mem: &M,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<(), Error> {
        let count = buf.len();
        self.for_each_piece(offset, count, |addr, at, n| {
            mem.read_slice(&mut buf[at..at + n], addr)
                .map_err(|e| Error::GuestMemory(e.to_string()))
        })
    }

    /// Copies `buf` into the chain starting at `offset`.
    pub fn write_at<M: GuestMemory>(&self, mem: &M, offset: u64, buf: &[u8]) -> Result<(), Error> {
        self.for_each_piece(offset, buf.len(), |addr, at, n| {
            mem.write_slice(&buf[at..at + n], addr)
                .map_err(|e| Error::GuestMemory(e.to_string()))
        })
    }

    /// Reads the header at the start of the chain.
    pub fn read_header<M: GuestMemory>(&self, mem: &M) -> Result<Header, Error> {
        if self.total < HDR_SIZE as u64 {
            return Err(Error::ChainTooShort(self.total));
        }
        let mut b = [0u8; HDR_SIZE];
        self.read_at(mem, 0, &mut b)?;
        Ok(Header::from_bytes(&b))
    }

    /// Reads a tx packet: the header and its `len` data bytes, appended to `data` (cleared
    /// first). The data length is checked against the chain and [`MAX_PKT_DATA`] before
    /// anything is copied.
    pub fn read_packet<M: GuestMemory>(
        &self,
        mem: &M,
        data: &mut Vec<u8>,
    ) -> Result<Header, Error> {
        let hdr = self.read_header(mem)?;
        let avail = self.total - HDR_SIZE as u64;
        if u64::from(hdr.len) > avail || hdr.len as usize > MAX_PKT_DATA {
            return Err(Error::BadDataLen {
                len: hdr.len,
                avail,
            });
        }
        data.clear();
        data.resize(hdr.len as usize, 0);
        self.read_at(mem, HDR_SIZE as u64, data)?;
        Ok(hdr)
    }

    /// Room for data in an rx chain after the header (0 if it cannot even hold a header).
    pub fn data_capacity(&self) -> usize {
        (self.total.saturating_sub(HDR_SIZE as u64) as usize).min(MAX_PKT_DATA)
    }

    /// Writes an rx packet; `hdr.len` must equal `data.len()`. Returns the bytes written
    /// (the used-ring length).
    pub fn write_packet<M: GuestMemory>(
        &self,
        mem: &M,
        hdr: &Header,
        data: &[u8],
    ) -> Result<u32, Error> {
        if self.total < HDR_SIZE as u64 {
            return Err(Error::ChainTooShort(self.total));
        }
        if data.len() > self.data_capacity() || hdr.len as usize != data.len() {
            return Err(Error::BadDataLen {
                len: hdr.len,
                avail: self.data_capacity() as u64,
            });
        }
        self.write_at(mem, 0, &hdr.to_bytes())?;
        self.write_at(mem, HDR_SIZE as u64, data)?;
        Ok((HDR_SIZE + data.len()) as u32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryMmap;

    fn mem() -> GuestMemoryMmap<()> {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap()
    }

    fn hdr(len: u32) -> Header {
        Header {
            src_cid: 3,
            dst_cid: HOST_CID,
            src_port: 1000,
            dst_port: 52,
            len,
            type_: TYPE_STREAM,
            op: OP_RW,
            flags: 0,
            buf_alloc: 65536,
            fwd_cnt: 7,
        }
    }

    fn seg(addr: u64, len: u32) -> Segment {
        Segment {
            addr: GuestAddress(addr),
            len,
        }
    }

    #[test]
    fn header_round_trips_little_endian() {
        let h = hdr(5);
        let b = h.to_bytes();
        assert_eq!(&b[0..8], &3u64.to_le_bytes());
        assert_eq!(&b[30..32], &OP_RW.to_le_bytes());
        assert_eq!(Header::from_bytes(&b), h);
    }

    #[test]
    fn header_and_data_split_over_many_descriptors() {
        let m = mem();
        let payload: Vec<u8> = (0..32 * 1024u32).map(|i| (i * 7 % 251) as u8).collect();
        // Header alone, then data over 4 descriptors of uneven sizes at scattered addresses.
        let segs = vec![
            seg(0x1000, 44),
            seg(0x8000, 10000),
            seg(0x20000, 3),
            seg(0x30000, 12000),
            seg(0x50000, 20000),
        ];
        let c = Chain::from_segments(segs).unwrap();
        let mut wire = hdr(payload.len() as u32).to_bytes().to_vec();
        wire.extend_from_slice(&payload);
        c.write_at(&m, 0, &wire).unwrap();
        let mut data = Vec::new();
        let h = c.read_packet(&m, &mut data).unwrap();
        assert_eq!(h.len as usize, payload.len());
        assert_eq!(data, payload);
    }

    #[test]
    fn header_and_data_in_one_descriptor_and_header_split() {
        let m = mem();
        for segs in [
            vec![seg(0x1000, 44 + 100)],
            vec![seg(0x1000, 20), seg(0x4000, 30), seg(0x9000, 94)],
        ] {
            let c = Chain::from_segments(segs).unwrap();
            let mut wire = hdr(100).to_bytes().to_vec();
            wire.extend((0..100u8).collect::<Vec<_>>());
            c.write_at(&m, 0, &wire).unwrap();
            let mut data = Vec::new();
            assert_eq!(c.read_packet(&m, &mut data).unwrap(), hdr(100));
            assert_eq!(data, (0..100u8).collect::<Vec<_>>());
        }
    }

    #[test]
    fn hostile_lengths_are_refused() {
        let m = mem();
        let c = Chain::from_segments(vec![seg(0x1000, 44), seg(0x2000, 100)]).unwrap();
        c.write_at(&m, 0, &hdr(101).to_bytes()).unwrap();
        let mut data = Vec::new();
        assert_eq!(
            c.read_packet(&m, &mut data),
            Err(Error::BadDataLen {
                len: 101,
                avail: 100
            })
        );
        c.write_at(&m, 0, &hdr(u32::MAX).to_bytes()).unwrap();
        assert!(c.read_packet(&m, &mut data).is_err());
        // Too big for MAX_PKT_DATA even though the chain holds it.
        let big = Chain::from_segments(vec![seg(0x1000, 44 + 70000)]).unwrap();
        big.write_at(&m, 0, &hdr(70000).to_bytes()).unwrap();
        assert!(matches!(
            big.read_packet(&m, &mut data),
            Err(Error::BadDataLen { .. })
        ));
        // Short header.
        let short = Chain::from_segments(vec![seg(0x1000, 43)]).unwrap();
        assert_eq!(
            short.read_packet(&m, &mut data),
            Err(Error::ChainTooShort(43))
        );
        // Outside guest memory.
        let out = Chain::from_segments(vec![seg(0xff_0000_0000, 44)]).unwrap();
        assert!(matches!(out.read_header(&m), Err(Error::GuestMemory(_))));
        assert!(out.check_memory(&m).is_err());
        let straddle = Chain::from_segments(vec![seg(0x1000, 44), seg(0x10_0000 - 8, 16)]).unwrap();
        assert!(straddle.check_memory(&m).is_err());
        assert!(c.check_memory(&m).is_ok());
        let wrap = Chain::from_segments(vec![seg(u64::MAX - 10, 44)]).unwrap();
        assert!(wrap.read_header(&m).is_err());
    }

    #[test]
    fn rx_write_respects_capacity() {
        let m = mem();
        let c =
            Chain::from_segments(vec![seg(0x1000, 44), seg(0x3000, 10), seg(0x5000, 6)]).unwrap();
        assert_eq!(c.data_capacity(), 16);
        assert_eq!(c.write_packet(&m, &hdr(16), &[9u8; 16]).unwrap(), 60);
        let mut back = [0u8; 60];
        c.read_at(&m, 0, &mut back).unwrap();
        assert_eq!(Header::from_bytes(back[..44].try_into().unwrap()), hdr(16));
        assert_eq!(&back[44..], &[9u8; 16]);
        assert!(c.write_packet(&m, &hdr(17), &[0u8; 17]).is_err());
        let tiny = Chain::from_segments(vec![seg(0x1000, 40)]).unwrap();
        assert_eq!(tiny.data_capacity(), 0);
        assert!(tiny.write_packet(&m, &hdr(0), &[]).is_err());
    }
}
