//! Pure chain validation: a tx chain in, a [`TxFrame`] out (a checked private copy of the
//! vnet header, the frame as guest memory slices); an rx chain in, the guest slices a
//! frame may be read into. No threads, no fds — unit tests drive it over plain guest
//! memory; the TAP reads and writes the slices directly (readv/writev), no frame copied.
//!
//! Chains are hostile. A chain is refused, before any byte of it is used, when it does not
//! end on its own (a loop, longer than the queue, a `next` outside the table), when a
//! descriptor points outside guest memory or has the wrong direction (device-writable in a
//! tx chain, device-readable in an rx chain), when a tx chain is longer than a vnet header
//! plus [`MAX_FRAME`] or shorter than a vnet header plus an Ethernet header, or when its
//! header asks for an offload that was not negotiated; an rx chain is refused when it cannot
//! hold a vnet header and an Ethernet header.

use virtio_queue::desc::split::Descriptor;
use virtio_queue::DescriptorChain;
use vm_memory::{Address, Bytes, GuestMemoryBackend};

use super::{features, hdr, ETH_HLEN, HDR_LEN, MAX_FRAME};
use crate::devices::virtio::GuestMemory;

/// A run of guest memory (no dirty bitmap).
pub type GuestSlice<'a> = vm_memory::VolatileSlice<'a, ()>;

/// Bytes a tx chain may carry: header plus the largest frame.
pub const MAX_TX_CHAIN: usize = HDR_LEN + MAX_FRAME;

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// Loop, chain longer than the queue, or a `next` outside the descriptor table.
    #[error("descriptor chain does not terminate")]
    Unterminated,
    /// The head index is outside the descriptor table: the chain has no descriptor at all.
    #[error("descriptor chain is empty")]
    Empty,
    #[error("device-writable descriptor in a tx chain")]
    WriteOnlyInTx,
    #[error("device-readable descriptor in an rx chain")]
    ReadOnlyInRx,
    #[error("descriptor {addr:#x}+{len:#x} is outside guest memory")]
    BadAddress { addr: u64, len: u32 },
    #[error("tx chain of {0} bytes or more exceeds the {MAX_TX_CHAIN}-byte limit")]
    TooLong(u64),
    #[error("tx chain of {0} bytes is shorter than a vnet header and an Ethernet header")]
    TooShort(u64),
    #[error("tx header asks for {0}, which was not negotiated")]
    Offload(&'static str),
    #[error("rx buffer of {cap} bytes cannot hold a {len}-byte frame")]
    BufferTooSmall { cap: u64, len: usize },
}

/// A validated tx chain, ready to be written without copying the frame: the vnet header
/// as a private copy (the guest cannot change it after the check) and the rest of the chain
/// as guest memory slices.
#[derive(Debug)]
pub struct TxFrame<'m> {
    pub hdr: [u8; HDR_LEN],
    /// The frame after the header, in chain order (empty slices left out).
    pub frame: Vec<GuestSlice<'m>>,
    /// Header + frame bytes.
    pub len: usize,
}

impl TxFrame<'_> {
    /// Header and frame in one buffer (tests, and backends without writev).
    pub fn to_vec(&self) -> Vec<u8> {
        let mut v = self.hdr.to_vec();
        for s in &self.frame {
            let start = v.len();
            v.resize(start + s.len(), 0);
            s.copy_to(&mut v[start..]);
        }
        v
    }
}

/// Validates tx `chain` and describes it as a [`TxFrame`]. `acked` are the negotiated
/// features the header is checked against.
pub fn parse_tx_frame<'m, M>(
    mem: &'m GuestMemory,
    chain: DescriptorChain<M>,
    acked: u64,
) -> Result<TxFrame<'m>, FrameError>
where
    M: std::ops::Deref<Target = GuestMemory>,
{
    let mut hdr = [0u8; HDR_LEN];
    let mut frame = Vec::new();
    let mut total = 0usize;
    let mut last_has_next = false;
    let mut n = 0usize;
    for d in chain {
        n += 1;
        last_has_next = d.has_next();
        if d.is_write_only() {
            return Err(FrameError::WriteOnlyInTx);
        }
        let len = d.len() as usize;
        let end = total + len;
        if end > MAX_TX_CHAIN {
            return Err(FrameError::TooLong(end as u64));
        }
        // The part of this descriptor that is still header goes into the private copy.
        let in_hdr = HDR_LEN.saturating_sub(total).min(len);
        if in_hdr > 0 {
            mem.read_slice(&mut hdr[total..total + in_hdr], d.addr())
                .map_err(|_| bad_address(&d))?;
        }
        if len > in_hdr {
            let addr = d
                .addr()
                .checked_add(in_hdr as u64)
                .ok_or_else(|| bad_address(&d))?;
            // A buffer may straddle two memory regions; get_slices splits it.
            for s in mem.get_slices(addr, len - in_hdr) {
                frame.push(s.map_err(|_| bad_address(&d))?);
            }
        } else if len > 0 && !mem.check_range(d.addr(), len) {
            return Err(bad_address(&d));
        }
        total = end;
    }
    if last_has_next {
        return Err(FrameError::Unterminated);
    }
    if n == 0 {
        return Err(FrameError::Empty);
    }
    if total < HDR_LEN + ETH_HLEN {
        return Err(FrameError::TooShort(total as u64));
    }
    check_tx_header(&hdr, acked)?;
    Ok(TxFrame {
        hdr,
        frame,
        len: total,
    })
}

/// Refuses header fields the driver may only use with features it did not negotiate; the
/// TAP would otherwise hand an offload request to the host stack the guest never agreed to.
pub fn check_tx_header(h: &[u8], acked: u64) -> Result<(), FrameError> {
    let (flags, gso_type) = (h[0], h[1]);
    if flags & hdr::F_NEEDS_CSUM != 0 && acked & features::CSUM == 0 {
        return Err(FrameError::Offload("checksum offload (CSUM)"));
    }
    if gso_type & hdr::GSO_ECN != 0 {
        return Err(FrameError::Offload("ECN segmentation (HOST_ECN)"));
    }
    let need = match gso_type {
        hdr::GSO_NONE => return Ok(()),
        hdr::GSO_TCPV4 => (features::HOST_TSO4, "TCPv4 segmentation (HOST_TSO4)"),
        hdr::GSO_TCPV6 => (features::HOST_TSO6, "TCPv6 segmentation (HOST_TSO6)"),
        _ => return Err(FrameError::Offload("an unknown segmentation type")),
    };
    if acked & need.0 == 0 {
        return Err(FrameError::Offload(need.1));
    }
    let gso_size = u16::from_le_bytes([h[4], h[5]]);
    if gso_size == 0 {
        return Err(FrameError::Offload("segmentation with gso_size 0"));
    }
    Ok(())
}

/// Validates rx `chain` and returns its buffers as guest slices, in chain order, cut at
/// [`MAX_TX_CHAIN`] bytes (no frame is longer); the frame is then read straight into
/// them. A chain that cannot hold a vnet header and an Ethernet header is refused.
pub fn parse_rx_chain<'m, M>(
    mem: &'m GuestMemory,
    chain: DescriptorChain<M>,
) -> Result<Vec<GuestSlice<'m>>, FrameError>
where
    M: std::ops::Deref<Target = GuestMemory>,
{
    let mut parts = Vec::new();
    let mut cap = 0usize;
    let mut last_has_next = false;
    let mut n = 0usize;
    for d in chain {
        n += 1;
        last_has_next = d.has_next();
        if !d.is_write_only() {
            return Err(FrameError::ReadOnlyInRx);
        }
        if !mem.check_range(d.addr(), d.len() as usize) {
            return Err(bad_address(&d));
        }
        let take = (d.len() as usize).min(MAX_TX_CHAIN - cap);
        if take > 0 {
            for s in mem.get_slices(d.addr(), take) {
                parts.push(s.map_err(|_| bad_address(&d))?);
            }
            cap += take;
        }
    }
    if last_has_next {
        return Err(FrameError::Unterminated);
    }
    if n == 0 {
        return Err(FrameError::Empty);
    }
    if cap < HDR_LEN + ETH_HLEN {
        return Err(FrameError::BufferTooSmall {
            cap: cap as u64,
            len: HDR_LEN + ETH_HLEN,
        });
    }
    Ok(parts)
}

/// Bytes `parts` can hold.
pub fn capacity(parts: &[GuestSlice<'_>]) -> usize {
    parts.iter().map(|p| p.len()).sum()
}

/// Writes `bytes` at byte `offset` of the buffers `parts` (across buffer boundaries);
/// false when they end first.
pub fn write_at(parts: &[GuestSlice<'_>], mut offset: usize, mut bytes: &[u8]) -> bool {
    for p in parts {
        if bytes.is_empty() {
            break;
        }
        if offset >= p.len() {
            offset -= p.len();
            continue;
        }
        let n = (p.len() - offset).min(bytes.len());
        match p.subslice(offset, n) {
            Ok(s) => s.copy_from(&bytes[..n]),
            Err(_) => return false,
        }
        bytes = &bytes[n..];
        offset = 0;
    }
    bytes.is_empty()
}

fn bad_address(d: &Descriptor) -> FrameError {
    FrameError::BadAddress {
        addr: d.addr().0,
        len: d.len(),
    }
}

#[cfg(test)]
#[path = "frame_tests.rs"]
mod tests;
