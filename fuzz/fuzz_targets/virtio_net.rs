//! virtio-net chain validation: hostile tx and rx queues drained by the real `NetHandler`
//! (tx chains parsed and checked before a frame reaches the TAP; rx chains checked before a
//! frame is read into them), with an in-memory TAP double.
#![no_main]

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;

use arbitrary::Arbitrary;
use husk::devices::virtio::block::backend::GuestSlice;
use husk::devices::virtio::net::frame::{TxFrame, MAX_TX_CHAIN};
use husk::devices::virtio::net::handler::{NetBackend, NetHandler, RxStop, RXQ, TXQ};
use husk::devices::virtio::net::{features, NetStats, HDR_LEN};
use husk::devices::virtio::VirtioInterrupt;
use husk_fuzz::guest::{self, QueueInput};
use libfuzzer_sys::fuzz_target;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

#[derive(Arbitrary, Debug)]
struct Input {
    rx: QueueInput,
    tx: QueueInput,
    /// Feature bits the driver acked (masked to what the device offers).
    acked: u64,
    /// Frames the TAP has for the guest (vnet header first).
    to_guest: Vec<Vec<u8>>,
    data: Vec<u8>,
}

/// A TAP: hands out `to_guest` frame by frame, checks what the handler writes.
struct Fake {
    to_guest: VecDeque<Vec<u8>>,
    evt: EventFd,
}

impl AsRawFd for Fake {
    fn as_raw_fd(&self) -> RawFd {
        self.evt.as_raw_fd()
    }
}

impl NetBackend for Fake {
    fn read_frame_into(&mut self, parts: &[GuestSlice<'_>], spill: &mut [u8]) -> io::Result<usize> {
        let f = self
            .to_guest
            .pop_front()
            .ok_or_else(|| io::Error::from(io::ErrorKind::WouldBlock))?;
        let mut rest = &f[..];
        for p in parts {
            let n = p.len().min(rest.len());
            p.subslice(0, n)
                .expect("prefix of a guest slice")
                .copy_from(&rest[..n]);
            rest = &rest[n..];
        }
        let n = spill.len().min(rest.len());
        spill[..n].copy_from_slice(&rest[..n]);
        Ok(f.len() - rest.len() + n)
    }

    fn write_frame(&mut self, frame: &TxFrame<'_>) -> io::Result<usize> {
        let total: usize = frame.frame.iter().map(|s| s.len()).sum();
        assert_eq!(
            frame.len,
            HDR_LEN + total,
            "tx frame length disagrees with its parts"
        );
        assert!(
            frame.len <= MAX_TX_CHAIN,
            "tx frame of {} bytes passed validation",
            frame.len
        );
        Ok(frame.len)
    }
}

fuzz_target!(|input: Input| {
    let mem = guest::memory(&input.data);
    let rxq = guest::queue(&mem, RXQ, &input.rx);
    let txq = guest::queue(&mem, TXQ, &input.tx);
    let offered = features::CSUM
        | features::GUEST_CSUM
        | features::GUEST_TSO4
        | features::GUEST_TSO6
        | features::HOST_TSO4
        | features::HOST_TSO6
        | features::MRG_RXBUF
        | features::RING_EVENT_IDX;
    let backend = Fake {
        to_guest: input.to_guest.iter().take(256).cloned().collect(),
        evt: EventFd::new(EFD_NONBLOCK).expect("eventfd"),
    };
    let mut h = NetHandler::new(
        mem,
        rxq,
        txq,
        EventFd::new(EFD_NONBLOCK).expect("eventfd"),
        EventFd::new(EFD_NONBLOCK).expect("eventfd"),
        Arc::new(VirtioInterrupt::new().expect("eventfd")),
        backend,
        input.acked & offered,
        Arc::new(NetStats::default()),
    );
    // Budgeted passes until the tx ring is drained: never more chains than were published.
    let mut sent = 0usize;
    for _ in 0..8 {
        match h.process_tx() {
            0 => break,
            n => sent += n,
        }
    }
    assert!(
        sent <= usize::from(input.tx.avail_idx()),
        "{sent} tx chains consumed"
    );
    for _ in 0..8 {
        if !matches!(h.process_rx(), RxStop::Budget) {
            break;
        }
    }
});
