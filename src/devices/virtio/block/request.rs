//! Pure virtio-blk request processing: one descriptor chain in, a status byte and a used
//! length out. No threads, no eventfds — unit tests drive it over plain guest memory.
//!
//! The chain is hostile. We check, before touching the disk:
//! - the chain ended on its own (no NEXT flag on the last descriptor the queue yielded —
//!   otherwise it was a loop, ran past the queue size, or pointed outside the table);
//! - the last descriptor is device-writable and its last byte (the status) is in guest RAM;
//! - device-readable descriptors all come before device-writable ones;
//! - every buffer lies in guest memory; the 16-byte header is readable;
//! - data lengths are whole sectors, bounded, and inside the disk.
//!
//! A chain with no usable status byte is *dropped*: returned with used length 0. Every other
//! failure is *answered*: IOERR (or UNSUPP) in the status byte, used length 1.

use std::io;

use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_T_FLUSH,
    VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
};
use virtio_queue::desc::split::Descriptor;
use virtio_queue::DescriptorChain;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend};

use super::backend::{DiskBackend, GuestSlice, ID_BYTES, SECTOR_SIZE};
use crate::devices::virtio::GuestMemory;

/// Size of `struct virtio_blk_outhdr` (type, reserved/ioprio, sector).
pub const HEADER_LEN: usize = 16;
/// Largest data transfer one request may ask for (bounds the time a request holds the worker).
pub const MAX_REQUEST_BYTES: u64 = 32 << 20;

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// Loop, chain longer than the queue, or a `next` outside the table.
    #[error("descriptor chain does not terminate")]
    UnterminatedChain,
    /// No device-writable last byte to put the status in.
    #[error("no usable status descriptor")]
    NoStatus,
    #[error("device-readable descriptor after a device-writable one")]
    DescriptorOrder,
    #[error("descriptor {addr:#x}+{len:#x} is outside guest memory")]
    BadAddress { addr: u64, len: u64 },
    #[error("request header shorter than {HEADER_LEN} bytes")]
    ShortHeader,
    #[error("data length {0} is not a whole number of sectors")]
    UnalignedLength(u64),
    #[error("data length {0} exceeds the {MAX_REQUEST_BYTES}-byte request limit")]
    TooLarge(u64),
    #[error("sector {sector} + {len} bytes is past the end of the disk")]
    OutOfRange { sector: u64, len: u64 },
    #[error("write to a read-only disk")]
    ReadOnly,
    #[error("unsupported request type {0}")]
    Unsupported(u32),
    #[error("disk I/O: {0}")]
    Io(#[from] io::Error),
}

impl RequestError {
    fn status(&self) -> u8 {
        match self {
            RequestError::Unsupported(_) => VIRTIO_BLK_S_UNSUPP as u8,
            _ => VIRTIO_BLK_S_IOERR as u8,
        }
    }
}

/// A guest buffer: (address, length).
type Segment = (GuestAddress, u64);

/// The validated shape of a chain.
struct Request {
    readable: Vec<Segment>,
    /// Writable buffers, the status byte excluded.
    writable: Vec<Segment>,
    status: GuestAddress,
}

/// What processing a chain produced.
#[derive(Debug, PartialEq, Eq)]
pub struct Outcome {
    /// Value for `add_used`: bytes written into the chain.
    pub used_len: u32,
    /// Status byte written (`None` when the chain was dropped).
    pub status: Option<u8>,
}

/// Processes one chain against `disk`. Never panics on guest input.
pub fn process<M>(mem: &GuestMemory, chain: DescriptorChain<M>, disk: &dyn DiskBackend) -> Outcome
where
    M: std::ops::Deref<Target = GuestMemory>,
{
    let req = match parse(mem, chain) {
        Ok(r) => r,
        Err(e) => {
            tracing::debug!("virtio-blk: dropping request: {e}");
            return Outcome {
                used_len: 0,
                status: None,
            };
        }
    };
    let (status, data_written) = match execute(mem, &req, disk) {
        Ok(n) => (VIRTIO_BLK_S_OK as u8, n),
        Err(e) => {
            tracing::debug!("virtio-blk: request failed: {e}");
            (e.status(), 0)
        }
    };
    if mem.write_obj(status, req.status).is_err() {
        // parse() checked the address; only a concurrent memory change could get here.
        return Outcome {
            used_len: 0,
            status: None,
        };
    }
    // data_written ≤ MAX_REQUEST_BYTES, so this fits.
    Outcome {
        used_len: data_written as u32 + 1,
        status: Some(status),
    }
}

/// Validates the chain's shape and finds the status byte. Errors here drop the chain unless
/// a status byte was found, in which case the error is reported through [`Request`] later.
fn parse<M>(mem: &GuestMemory, chain: DescriptorChain<M>) -> Result<Request, RequestError>
where
    M: std::ops::Deref<Target = GuestMemory>,
{
    let descs: Vec<Descriptor> = chain.collect();
    let last = descs.last().ok_or(RequestError::NoStatus)?;
    if last.has_next() {
        return Err(RequestError::UnterminatedChain);
    }
    if !last.is_write_only() || last.len() == 0 {
        return Err(RequestError::NoStatus);
    }
    let status = last
        .addr()
        .checked_add(u64::from(last.len()) - 1)
        .filter(|a| mem.check_range(*a, 1))
        .ok_or(RequestError::NoStatus)?;

    let mut readable = Vec::new();
    let mut writable = Vec::new();
    let n = descs.len();
    for (i, d) in descs.into_iter().enumerate() {
        let len = if i + 1 == n {
            u64::from(d.len()) - 1
        } else {
            u64::from(d.len())
        };
        let seg = (d.addr(), len);
        if d.is_write_only() {
            writable.push(seg);
        } else if writable.is_empty() {
            readable.push(seg);
        } else {
            return Ok(Request::invalid(status, RequestError::DescriptorOrder));
        }
    }
    Ok(Request {
        readable,
        writable,
        status,
    })
}

impl Request {
    /// A request that can only be answered with an error: no buffers, so execute() fails
    /// on the header.
    fn invalid(status: GuestAddress, why: RequestError) -> Self {
        tracing::debug!("virtio-blk: malformed chain: {why}");
        Request {
            readable: Vec::new(),
            writable: Vec::new(),
            status,
        }
    }
}

/// Runs a validated request; returns the data bytes written into guest memory.
fn execute(mem: &GuestMemory, req: &Request, disk: &dyn DiskBackend) -> Result<u64, RequestError> {
    let mut hdr = [0u8; HEADER_LEN];
    let data_in = copy_prefix(mem, &req.readable, &mut hdr)?;
    let req_type = u32::from_le_bytes(hdr[0..4].try_into().unwrap_or_default());
    let sector = u64::from_le_bytes(hdr[8..16].try_into().unwrap_or_default());
    match req_type {
        VIRTIO_BLK_T_IN => {
            let slices = guest_slices(mem, &req.writable)?;
            let len = checked_range(disk, sector, &slices)?;
            let mut off = sector * SECTOR_SIZE;
            for s in &slices {
                disk.read_at(off, s)?;
                off += s.len() as u64;
            }
            Ok(len)
        }
        VIRTIO_BLK_T_OUT => {
            if disk.read_only() {
                return Err(RequestError::ReadOnly);
            }
            let slices = guest_slices(mem, &data_in)?;
            checked_range(disk, sector, &slices)?;
            let mut off = sector * SECTOR_SIZE;
            for s in &slices {
                disk.write_at(off, s)?;
                off += s.len() as u64;
            }
            Ok(0)
        }
        VIRTIO_BLK_T_FLUSH => {
            disk.flush()?;
            Ok(0)
        }
        VIRTIO_BLK_T_GET_ID => {
            let id = disk.id();
            let slices = guest_slices(mem, &req.writable)?;
            let mut written = 0usize;
            for s in &slices {
                if written == ID_BYTES {
                    break;
                }
                let n = s.len().min(ID_BYTES - written);
                s.subslice(0, n)
                    .map_err(|_| RequestError::ShortHeader)?
                    .copy_from(&id[written..written + n]);
                written += n;
            }
            Ok(written as u64)
        }
        t => Err(RequestError::Unsupported(t)),
    }
}

/// Copies the first `out.len()` readable bytes into `out`; returns the segments after them.
fn copy_prefix(
    mem: &GuestMemory,
    segs: &[Segment],
    out: &mut [u8],
) -> Result<Vec<Segment>, RequestError> {
    let mut got = 0usize;
    let mut rest = Vec::new();
    for &(addr, len) in segs {
        let want = (out.len() - got).min(usize::try_from(len).unwrap_or(usize::MAX));
        if want > 0 {
            mem.read_slice(&mut out[got..got + want], addr)
                .map_err(|_| RequestError::BadAddress { addr: addr.0, len })?;
            got += want;
        }
        if (want as u64) < len {
            let a = addr
                .checked_add(want as u64)
                .ok_or(RequestError::BadAddress { addr: addr.0, len })?;
            rest.push((a, len - want as u64));
        }
    }
    if got < out.len() {
        return Err(RequestError::ShortHeader);
    }
    Ok(rest)
}

/// Maps segments to guest memory, refusing any byte outside RAM and oversize transfers.
fn guest_slices<'m>(
    mem: &'m GuestMemory,
    segs: &[Segment],
) -> Result<Vec<GuestSlice<'m>>, RequestError> {
    let total: u64 = segs
        .iter()
        .try_fold(0u64, |acc, s| acc.checked_add(s.1))
        .unwrap_or(u64::MAX);
    if total > MAX_REQUEST_BYTES {
        return Err(RequestError::TooLarge(total));
    }
    let mut out = Vec::with_capacity(segs.len());
    for &(addr, len) in segs {
        if len == 0 {
            continue;
        }
        let bad = || RequestError::BadAddress { addr: addr.0, len };
        // A buffer may straddle two memory regions; get_slices splits it.
        for s in mem.get_slices(addr, len as usize) {
            out.push(s.map_err(|_| bad())?);
        }
    }
    Ok(out)
}

/// Checks sector alignment and bounds; returns the transfer length.
fn checked_range(
    disk: &dyn DiskBackend,
    sector: u64,
    slices: &[GuestSlice<'_>],
) -> Result<u64, RequestError> {
    let len: u64 = slices.iter().map(|s| s.len() as u64).sum();
    if !len.is_multiple_of(SECTOR_SIZE) {
        return Err(RequestError::UnalignedLength(len));
    }
    let end = sector
        .checked_mul(SECTOR_SIZE)
        .and_then(|start| start.checked_add(len))
        .ok_or(RequestError::OutOfRange { sector, len })?;
    if end > disk.capacity() {
        return Err(RequestError::OutOfRange { sector, len });
    }
    Ok(len)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
    use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;

    const W: u16 = VRING_DESC_F_WRITE as u16;
    const HDR: u64 = 0x10_0000;
    const DATA: u64 = 0x20_0000;
    const STATUS: u64 = 0x30_0000;

    /// An in-memory disk that records flushes.
    struct MemDisk {
        bytes: Mutex<Vec<u8>>,
        ro: bool,
        flushes: Mutex<u32>,
    }

    impl MemDisk {
        fn new(sectors: usize, ro: bool) -> Self {
            let bytes = (0..sectors * 512).map(|i| (i % 251) as u8).collect();
            Self {
                bytes: Mutex::new(bytes),
                ro,
                flushes: Mutex::new(0),
            }
        }
    }

    impl DiskBackend for MemDisk {
        fn capacity(&self) -> u64 {
            self.bytes.lock().unwrap().len() as u64
        }
        fn read_only(&self) -> bool {
            self.ro
        }
        fn id(&self) -> [u8; ID_BYTES] {
            *b"0123456789abcdefghij"
        }
        fn read_at(&self, offset: u64, buf: &GuestSlice<'_>) -> io::Result<()> {
            let b = self.bytes.lock().unwrap();
            buf.copy_from(&b[offset as usize..offset as usize + buf.len()]);
            Ok(())
        }
        fn write_at(&self, offset: u64, buf: &GuestSlice<'_>) -> io::Result<()> {
            let mut b = self.bytes.lock().unwrap();
            buf.copy_to(&mut b[offset as usize..offset as usize + buf.len()]);
            Ok(())
        }
        fn flush(&self) -> io::Result<()> {
            *self.flushes.lock().unwrap() += 1;
            Ok(())
        }
    }

    fn mem() -> GuestMemory {
        GuestMemory::from_ranges(&[(GuestAddress(0), 4 << 20)]).unwrap()
    }

    fn header(mem: &GuestMemory, t: u32, sector: u64) {
        let mut h = [0u8; 16];
        h[0..4].copy_from_slice(&t.to_le_bytes());
        h[8..16].copy_from_slice(&sector.to_le_bytes());
        mem.write_slice(&h, GuestAddress(HDR)).unwrap();
        mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
    }

    fn d(addr: u64, len: u32, flags: u16) -> RawDescriptor {
        RawDescriptor::from(SplitDescriptor::new(addr, len, flags, 0))
    }

    /// Runs `descs` as one chain against `disk`.
    fn run(mem: &GuestMemory, descs: &[RawDescriptor], disk: &dyn DiskBackend) -> Outcome {
        let vq = MockSplitQueue::new(mem, 16);
        let chain = vq.build_desc_chain(descs).unwrap();
        process(mem, chain, disk)
    }

    fn ok(used: u32) -> Outcome {
        Outcome {
            used_len: used,
            status: Some(VIRTIO_BLK_S_OK as u8),
        }
    }
    fn ioerr() -> Outcome {
        Outcome {
            used_len: 1,
            status: Some(VIRTIO_BLK_S_IOERR as u8),
        }
    }
    fn dropped() -> Outcome {
        Outcome {
            used_len: 0,
            status: None,
        }
    }

    #[test]
    fn read_copies_sectors_into_guest_memory() {
        let (m, disk) = (mem(), MemDisk::new(8, false));
        header(&m, VIRTIO_BLK_T_IN, 2);
        let out = run(
            &m,
            &[d(HDR, 16, 0), d(DATA, 1024, W), d(STATUS, 1, W)],
            &disk,
        );
        assert_eq!(out, ok(1025));
        let mut got = vec![0u8; 1024];
        m.read_slice(&mut got, GuestAddress(DATA)).unwrap();
        assert_eq!(got, disk.bytes.lock().unwrap()[1024..2048]);
        assert_eq!(m.read_obj::<u8>(GuestAddress(STATUS)).unwrap(), 0);
    }

    #[test]
    fn write_with_header_and_data_in_one_descriptor() {
        // VIRTIO_F_ANY_LAYOUT (implied by VERSION_1): framing is not tied to descriptors.
        let (m, disk) = (mem(), MemDisk::new(8, false));
        header(&m, VIRTIO_BLK_T_OUT, 1);
        m.write_slice(&[0x5a; 512], GuestAddress(HDR + 16)).unwrap();
        let out = run(&m, &[d(HDR, 16 + 512, 0), d(STATUS, 1, W)], &disk);
        assert_eq!(out, ok(1));
        assert_eq!(disk.bytes.lock().unwrap()[512..1024], [0x5a; 512]);
    }

    #[test]
    fn header_split_across_descriptors() {
        let (m, disk) = (mem(), MemDisk::new(8, false));
        header(&m, VIRTIO_BLK_T_IN, 0);
        // Copy the second half of the header elsewhere and chain it.
        let mut h = [0u8; 16];
        m.read_slice(&mut h, GuestAddress(HDR)).unwrap();
        m.write_slice(&h[8..], GuestAddress(HDR + 0x1000)).unwrap();
        let out = run(
            &m,
            &[
                d(HDR, 8, 0),
                d(HDR + 0x1000, 8, 0),
                d(DATA, 512, W),
                d(STATUS, 1, W),
            ],
            &disk,
        );
        assert_eq!(out, ok(513));
    }

    #[test]
    fn status_may_share_the_last_data_descriptor() {
        let (m, disk) = (mem(), MemDisk::new(8, false));
        header(&m, VIRTIO_BLK_T_IN, 0);
        let out = run(&m, &[d(HDR, 16, 0), d(DATA, 513, W)], &disk);
        assert_eq!(out, ok(513));
        assert_eq!(m.read_obj::<u8>(GuestAddress(DATA + 512)).unwrap(), 0);
    }

    #[test]
    fn flush_and_get_id() {
        let (m, disk) = (mem(), MemDisk::new(8, false));
        header(&m, VIRTIO_BLK_T_FLUSH, 0);
        assert_eq!(run(&m, &[d(HDR, 16, 0), d(STATUS, 1, W)], &disk), ok(1));
        assert_eq!(*disk.flushes.lock().unwrap(), 1);
        header(&m, VIRTIO_BLK_T_GET_ID, 0);
        assert_eq!(
            run(&m, &[d(HDR, 16, 0), d(DATA, 64, W), d(STATUS, 1, W)], &disk),
            ok(21)
        );
        let mut id = [0u8; 20];
        m.read_slice(&mut id, GuestAddress(DATA)).unwrap();
        assert_eq!(&id, b"0123456789abcdefghij");
        // A short id buffer gets a truncated id, never an overflow.
        m.write_slice(&[0xee; 8], GuestAddress(DATA)).unwrap();
        assert_eq!(
            run(&m, &[d(HDR, 16, 0), d(DATA, 4, W), d(STATUS, 1, W)], &disk),
            ok(5)
        );
        assert_eq!(m.read_obj::<u8>(GuestAddress(DATA + 4)).unwrap(), 0xee);
    }

    #[test]
    fn errors_map_to_status() {
        let (m, disk) = (mem(), MemDisk::new(8, false));
        header(&m, 0x1234, 0);
        assert_eq!(
            run(&m, &[d(HDR, 16, 0), d(STATUS, 1, W)], &disk),
            Outcome {
                used_len: 1,
                status: Some(VIRTIO_BLK_S_UNSUPP as u8)
            }
        );
        header(&m, VIRTIO_BLK_T_IN, 7);
        assert_eq!(
            run(
                &m,
                &[d(HDR, 16, 0), d(DATA, 1024, W), d(STATUS, 1, W)],
                &disk
            ),
            ioerr()
        );
        header(&m, VIRTIO_BLK_T_IN, 0);
        assert_eq!(
            run(
                &m,
                &[d(HDR, 16, 0), d(DATA, 511, W), d(STATUS, 1, W)],
                &disk
            ),
            ioerr()
        );
        header(&m, VIRTIO_BLK_T_IN, 0);
        assert_eq!(run(&m, &[d(HDR, 15, 0), d(STATUS, 1, W)], &disk), ioerr());
        let ro = MemDisk::new(8, true);
        header(&m, VIRTIO_BLK_T_OUT, 0);
        assert_eq!(
            run(&m, &[d(HDR, 16, 0), d(DATA, 512, 0), d(STATUS, 1, W)], &ro),
            ioerr()
        );
        assert_eq!(
            ro.bytes.lock().unwrap()[..512],
            MemDisk::new(1, true).bytes.lock().unwrap()[..]
        );
    }

    #[test]
    fn oversize_request_is_refused_before_io() {
        let m = GuestMemory::from_ranges(&[(GuestAddress(0), 64 << 20)]).unwrap();
        let disk = MemDisk::new(1, false);
        header(&m, VIRTIO_BLK_T_IN, 0);
        let big = (MAX_REQUEST_BYTES + 512) as u32;
        assert_eq!(
            run(
                &m,
                &[d(HDR, 16, 0), d(0x40_0000, big, W), d(STATUS, 1, W)],
                &disk
            ),
            ioerr()
        );
    }

    #[test]
    fn bad_status_drops_the_chain() {
        let (m, disk) = (mem(), MemDisk::new(8, false));
        header(&m, VIRTIO_BLK_T_IN, 0);
        assert_eq!(
            run(
                &m,
                &[d(HDR, 16, 0), d(DATA, 512, W), d(STATUS, 1, 0)],
                &disk
            ),
            dropped()
        );
        assert_eq!(
            run(
                &m,
                &[d(HDR, 16, 0), d(DATA, 512, W), d(STATUS, 0, W)],
                &disk
            ),
            dropped()
        );
        assert_eq!(
            run(&m, &[d(HDR, 16, 0), d(1 << 40, 1, W)], &disk),
            dropped()
        );
        assert_eq!(m.read_obj::<u8>(GuestAddress(STATUS)).unwrap(), 0xff);
    }

    #[test]
    fn unterminated_chain_is_dropped() {
        let (m, disk) = (mem(), MemDisk::new(8, false));
        header(&m, VIRTIO_BLK_T_IN, 0);
        let vq = MockSplitQueue::new(&m, 4);
        let n = VRING_DESC_F_NEXT as u16;
        let descs = [
            RawDescriptor::from(SplitDescriptor::new(HDR, 16, n, 1)),
            RawDescriptor::from(SplitDescriptor::new(DATA, 512, n | W, 2)),
            RawDescriptor::from(SplitDescriptor::new(STATUS, 1, n | W, 1)),
        ];
        let chain = vq.build_multiple_desc_chains(&descs).unwrap();
        assert_eq!(process(&m, chain, &disk), dropped());
        assert_eq!(m.read_obj::<u8>(GuestAddress(STATUS)).unwrap(), 0xff);
    }
}
