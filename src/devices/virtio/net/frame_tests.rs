use super::*;
use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::GuestAddress;

const W: u16 = VRING_DESC_F_WRITE as u16;
const N: u16 = VRING_DESC_F_NEXT as u16;
const A: u64 = 0x10_0000;
const B: u64 = 0x20_0000;
const C: u64 = 0x30_0000;
const MEM: usize = 4 << 20;

fn mem() -> GuestMemory {
    GuestMemory::from_ranges(&[(GuestAddress(0), MEM)]).unwrap()
}

fn d(addr: u64, len: u32, flags: u16) -> RawDescriptor {
    RawDescriptor::from(SplitDescriptor::new(addr, len, flags, 0))
}

fn hdr(flags: u8, gso: u8, gso_size: u16) -> [u8; HDR_LEN] {
    let mut h = [0u8; HDR_LEN];
    h[0] = flags;
    h[1] = gso;
    h[4..6].copy_from_slice(&gso_size.to_le_bytes());
    h
}

fn pattern(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

fn tx(
    m: &GuestMemory,
    descs: &[RawDescriptor],
    acked: u64,
) -> Result<(usize, Vec<u8>), FrameError> {
    let vq = MockSplitQueue::new(m, 16);
    let chain = vq.build_desc_chain(descs).unwrap();
    parse_tx_frame(m, chain, acked).map(|f| {
        let v = f.to_vec();
        assert_eq!(v.len(), f.len);
        (f.len, v)
    })
}

fn rx(m: &GuestMemory, descs: &[RawDescriptor], frame: &[u8]) -> Result<u32, FrameError> {
    let vq = MockSplitQueue::new(m, 16);
    let chain = vq.build_desc_chain(descs).unwrap();
    let parts = parse_rx_chain(m, chain)?;
    let cap = capacity(&parts);
    if frame.len() > cap {
        return Err(FrameError::BufferTooSmall {
            cap: cap as u64,
            len: frame.len(),
        });
    }
    assert!(write_at(&parts, 0, frame));
    Ok(frame.len() as u32)
}

#[test]
fn tx_gathers_header_and_frame_from_any_layout() {
    let m = mem();
    let frame = pattern(1500, 7);
    m.write_slice(&hdr(0, 0, 0), GuestAddress(A)).unwrap();
    m.write_slice(&frame[..100], GuestAddress(B)).unwrap();
    m.write_slice(&frame[100..], GuestAddress(C)).unwrap();
    let (n, got) = tx(&m, &[d(A, 12, 0), d(B, 100, 0), d(C, 1400, 0)], 0).unwrap();
    assert_eq!(n, HDR_LEN + 1500);
    assert_eq!(&got[HDR_LEN..], &frame[..]);
    // Header and frame in one descriptor, as Linux sends with ANY_LAYOUT semantics.
    let mut one = hdr(0, 0, 0).to_vec();
    one.extend_from_slice(&frame[..60]);
    m.write_slice(&one, GuestAddress(A)).unwrap();
    let (n, got) = tx(&m, &[d(A, 72, 0)], 0).unwrap();
    assert_eq!((n, &got[..]), (72, &one[..]));
}

#[test]
fn tx_header_split_over_descriptors_is_checked_on_a_private_copy() {
    let m = mem();
    let mut all = hdr(hdr::F_NEEDS_CSUM, 0, 0).to_vec();
    all.extend_from_slice(&pattern(100, 9));
    // 5 header bytes, then 7 header bytes + 20 frame bytes, then the rest.
    m.write_slice(&all[..5], GuestAddress(A)).unwrap();
    m.write_slice(&all[5..32], GuestAddress(B)).unwrap();
    m.write_slice(&all[32..], GuestAddress(C)).unwrap();
    let vq = MockSplitQueue::new(&m, 16);
    let chain = vq
        .build_desc_chain(&[d(A, 5, 0), d(B, 27, 0), d(C, 80, 0)])
        .unwrap();
    let f = parse_tx_frame(&m, chain, features::CSUM).unwrap();
    assert_eq!((f.len, f.to_vec()), (all.len(), all.clone()));
    assert_eq!(f.frame.len(), 2, "frame slices start after the header");
    // The guest rewrites its header after the check: what is sent keeps the checked one.
    m.write_slice(&[0xff; 5], GuestAddress(A)).unwrap();
    assert_eq!(f.hdr[0], hdr::F_NEEDS_CSUM);
    // Unnegotiated, the same chain is refused.
    let vq = MockSplitQueue::new(&m, 16);
    m.write_slice(&all[..5], GuestAddress(A)).unwrap();
    let chain = vq
        .build_desc_chain(&[d(A, 5, 0), d(B, 27, 0), d(C, 80, 0)])
        .unwrap();
    assert!(matches!(
        parse_tx_frame(&m, chain, 0),
        Err(FrameError::Offload(_))
    ));
}

#[test]
fn hostile_tx_chains_are_refused() {
    let m = mem();
    m.write_slice(&hdr(0, 0, 0), GuestAddress(A)).unwrap();
    assert_eq!(
        tx(&m, &[d(A, 12, 0), d(B, 60, W)], 0).unwrap_err(),
        FrameError::WriteOnlyInTx
    );
    assert_eq!(
        tx(&m, &[d(A, 12, 0)], 0).unwrap_err(),
        FrameError::TooShort(12)
    );
    assert_eq!(
        tx(&m, &[d(A, 12, 0), d(B, 13, 0)], 0).unwrap_err(),
        FrameError::TooShort(25)
    );
    assert_eq!(
        tx(&m, &[d(A, 12, 0), d(B, 65536, 0), d(C, 65536, 0)], 0).unwrap_err(),
        FrameError::TooLong(12 + 2 * 65536)
    );
    // A length of u32::MAX is refused on size before any read is tried.
    assert!(matches!(
        tx(&m, &[d(A, u32::MAX, 0)], 0),
        Err(FrameError::TooLong(_))
    ));
    assert_eq!(
        tx(&m, &[d(A, 12, 0), d(MEM as u64 - 10, 60, 0)], 0).unwrap_err(),
        FrameError::BadAddress {
            addr: MEM as u64 - 10,
            len: 60
        }
    );
    assert!(matches!(
        tx(&m, &[d(A, 12, 0), d(1 << 40, 60, 0)], 0),
        Err(FrameError::BadAddress { .. })
    ));
}

#[test]
fn looping_and_runaway_tx_chains_are_refused() {
    let m = mem();
    m.write_slice(&hdr(0, 0, 0), GuestAddress(A)).unwrap();
    let vq = MockSplitQueue::new(&m, 4);
    // 0 -> 1 -> 0 -> ...: the iterator gives up after the queue size.
    let descs = [
        RawDescriptor::from(SplitDescriptor::new(A, 12, N, 1)),
        RawDescriptor::from(SplitDescriptor::new(B, 60, N, 0)),
    ];
    let chain = vq.build_multiple_desc_chains(&descs).unwrap();
    assert_eq!(
        parse_tx_frame(&m, chain, 0).unwrap_err(),
        FrameError::Unterminated
    );
    // A `next` outside the table.
    let vq = MockSplitQueue::new(&m, 4);
    let descs = [
        RawDescriptor::from(SplitDescriptor::new(A, 12, N, 9)),
        RawDescriptor::from(SplitDescriptor::new(B, 60, 0, 0)),
    ];
    let chain = vq.build_multiple_desc_chains(&descs).unwrap();
    assert_eq!(
        parse_tx_frame(&m, chain, 0).unwrap_err(),
        FrameError::Unterminated
    );
}

#[test]
fn tx_offloads_need_their_features() {
    let m = mem();
    let run = |h: [u8; HDR_LEN], acked: u64| {
        m.write_slice(&h, GuestAddress(A)).unwrap();
        tx(&m, &[d(A, 12, 0), d(B, 1500, 0)], acked).map(|_| ())
    };
    let csum = hdr(hdr::F_NEEDS_CSUM, 0, 0);
    assert!(matches!(run(csum, 0), Err(FrameError::Offload(_))));
    run(csum, features::CSUM).unwrap();
    let tso4 = hdr(hdr::F_NEEDS_CSUM, hdr::GSO_TCPV4, 1448);
    assert!(matches!(
        run(tso4, features::CSUM),
        Err(FrameError::Offload(_))
    ));
    run(tso4, features::CSUM | features::HOST_TSO4).unwrap();
    let tso6 = hdr(hdr::F_NEEDS_CSUM, hdr::GSO_TCPV6, 1428);
    assert!(matches!(
        run(tso6, features::CSUM | features::HOST_TSO4),
        Err(FrameError::Offload(_))
    ));
    run(tso6, features::CSUM | features::HOST_TSO6).unwrap();
    let all = features::CSUM | features::HOST_TSO4 | features::HOST_TSO6;
    for bad in [
        hdr(hdr::F_NEEDS_CSUM, hdr::GSO_TCPV4, 0),
        hdr(hdr::F_NEEDS_CSUM, hdr::GSO_TCPV4 | hdr::GSO_ECN, 1448),
        hdr(0, hdr::GSO_UDP, 1448),
        hdr(0, 0x42, 1448),
    ] {
        assert!(
            matches!(run(bad, all), Err(FrameError::Offload(_))),
            "{bad:?}"
        );
    }
    // DATA_VALID is meaningless on tx and harmless.
    run(hdr(hdr::F_DATA_VALID, 0, 0), 0).unwrap();
}

#[test]
fn rx_scatters_a_frame_over_writable_buffers() {
    let m = mem();
    let frame = pattern(HDR_LEN + 1514, 3);
    let n = rx(&m, &[d(A, 12, W), d(B, 1000, W), d(C, 4096, W)], &frame).unwrap();
    assert_eq!(n as usize, frame.len());
    let mut got = vec![0u8; frame.len()];
    m.read_slice(&mut got[..12], GuestAddress(A)).unwrap();
    m.read_slice(&mut got[12..1012], GuestAddress(B)).unwrap();
    m.read_slice(&mut got[1012..], GuestAddress(C)).unwrap();
    assert_eq!(got, frame);
    // An exact fit works too.
    assert_eq!(rx(&m, &[d(A, 74, W)], &frame[..74]).unwrap(), 74);
}

#[test]
fn hostile_rx_chains_are_refused_before_any_write() {
    let m = mem();
    let frame = pattern(HDR_LEN + 60, 5);
    m.write_slice(&[0xee; 16], GuestAddress(A)).unwrap();
    assert_eq!(
        rx(&m, &[d(A, 12, W), d(B, 2000, 0)], &frame).unwrap_err(),
        FrameError::ReadOnlyInRx
    );
    assert_eq!(
        rx(&m, &[d(A, 12, W), d(MEM as u64 - 8, 2000, W)], &frame).unwrap_err(),
        FrameError::BadAddress {
            addr: MEM as u64 - 8,
            len: 2000
        }
    );
    assert_eq!(
        rx(&m, &[d(A, 12, W), d(B, 59, W)], &frame).unwrap_err(),
        FrameError::BufferTooSmall { cap: 71, len: 72 }
    );
    let vq = MockSplitQueue::new(&m, 4);
    let descs = [
        RawDescriptor::from(SplitDescriptor::new(A, 12, N | W, 1)),
        RawDescriptor::from(SplitDescriptor::new(B, 4096, N | W, 0)),
    ];
    let chain = vq.build_multiple_desc_chains(&descs).unwrap();
    assert_eq!(
        parse_rx_chain(&m, chain).unwrap_err(),
        FrameError::Unterminated
    );
    // Nothing was written by any refused chain.
    let mut a = [0u8; 16];
    m.read_slice(&mut a, GuestAddress(A)).unwrap();
    assert_eq!(a, [0xee; 16]);
}

#[test]
fn rx_chains_are_cut_at_the_largest_frame_and_small_ones_refused() {
    let m = mem();
    let vq = MockSplitQueue::new(&m, 16);
    let chain = vq
        .build_desc_chain(&[d(A, 0x8_0000, W), d(B, 0x8_0000, W)])
        .unwrap();
    let parts = parse_rx_chain(&m, chain).unwrap();
    assert_eq!(capacity(&parts), MAX_TX_CHAIN);
    assert_eq!(parts.len(), 1, "the second buffer is not needed");
    let vq = MockSplitQueue::new(&m, 16);
    let chain = vq.build_desc_chain(&[d(A, 25, W)]).unwrap();
    assert!(matches!(
        parse_rx_chain(&m, chain),
        Err(FrameError::BufferTooSmall { cap: 25, .. })
    ));
}

#[test]
fn write_at_crosses_buffer_boundaries() {
    let m = mem();
    let vq = MockSplitQueue::new(&m, 16);
    // num_buffers (header bytes 10..12) split over two descriptors.
    let chain = vq.build_desc_chain(&[d(A, 11, W), d(B, 100, W)]).unwrap();
    let parts = parse_rx_chain(&m, chain).unwrap();
    assert!(write_at(&parts, 10, &[0x34, 0x12]));
    assert_eq!(m.read_obj::<u8>(GuestAddress(A + 10)).unwrap(), 0x34);
    assert_eq!(m.read_obj::<u8>(GuestAddress(B)).unwrap(), 0x12);
    assert!(!write_at(&parts, 110, &[1, 2]), "past the end");
}
