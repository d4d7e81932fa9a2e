//! virtio-mmio register sequences: a hostile driver's reads and writes (status handshake in
//! any order, feature words, queue registers with random sizes and ring addresses, notify,
//! interrupt ack, config space, reset) against the real `MmioTransport`. The device behind
//! it checks what the transport promises at activation (valid, ready queues of allowed sizes;
//! acked features offered and modern; no double activation) and then serves its first queue
//! with the real block request path, so random queue setups reach descriptor processing.
#![no_main]

use std::sync::{Arc, Mutex};

use arbitrary::Arbitrary;
use husk::devices::bus::BusDevice;
use husk::devices::virtio::block::handler::BlockHandler;
use husk::devices::virtio::mmio::{reg, MmioTransport, MMIO_MAGIC};
use husk::devices::virtio::{
    common, ActivateContext, ActivateError, VirtioDevice, TYPE_BLOCK, VIRTIO_F_VERSION_1,
};
use husk_fuzz::MemDisk;
use libfuzzer_sys::fuzz_target;
use virtio_queue::QueueT;
use vm_memory::{Bytes, GuestAddress};

const MAX_SIZES: [u16; 2] = [256, 16];
const FEATURES: u64 =
    VIRTIO_F_VERSION_1 | (1 << virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX) | 1 << 5;
const CONFIG: [u8; 12] = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12];

#[derive(Default)]
struct Seen {
    active: bool,
    acked: u64,
    activations: u32,
}

/// A two-queue block-like device that checks the transport's promises.
struct Probe {
    seen: Arc<Mutex<Seen>>,
}

impl VirtioDevice for Probe {
    fn device_type(&self) -> u32 {
        TYPE_BLOCK
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &MAX_SIZES
    }
    fn avail_features(&self) -> u64 {
        FEATURES
    }
    fn set_acked_features(&mut self, features: u64) {
        let mut s = self.seen.lock().unwrap();
        assert!(!s.active, "features acked while the device is active");
        assert_eq!(
            features & !FEATURES,
            0,
            "unoffered features {features:#x} acked"
        );
        assert_ne!(features & VIRTIO_F_VERSION_1, 0, "legacy driver accepted");
        s.acked = features;
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        common::read_config(&CONFIG, offset, data);
    }
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        {
            let mut s = self.seen.lock().unwrap();
            assert!(!s.active, "activated twice without a reset");
            assert_eq!(ctx.queues.len(), MAX_SIZES.len());
            assert_eq!(ctx.queue_evts.len(), MAX_SIZES.len());
            for (q, &max) in ctx.queues.iter().zip(&MAX_SIZES) {
                assert!(q.is_valid(&ctx.mem), "invalid queue handed to the device");
                assert!(q.ready(), "queue not ready at activation");
                assert!(
                    q.size() <= max && q.size().is_power_of_two(),
                    "queue size {}",
                    q.size()
                );
            }
            s.active = true;
            s.activations += 1;
        }
        let mut queues = ctx.queues;
        let disk = Arc::new(MemDisk::new(8, false));
        let mut h = BlockHandler::new(
            ctx.mem,
            queues.swap_remove(0),
            ctx.queue_evts
                .into_iter()
                .next()
                .expect("one eventfd per queue"),
            ctx.interrupt,
            disk,
        );
        h.process_queue();
        Ok(())
    }
    fn reset(&mut self) -> bool {
        self.seen.lock().unwrap().active = false;
        true
    }
}

#[derive(Arbitrary, Debug)]
enum Op {
    Read {
        offset: u16,
        len: u8,
    },
    Write {
        offset: u16,
        value: u32,
        len: u8,
    },
    Status(u8),
    Features {
        select: u8,
        value: u32,
    },
    Queue {
        select: u8,
        num: u16,
        desc: u32,
        avail: u32,
        used: u32,
        ready: bool,
    },
    Notify(u8),
}

#[derive(Arbitrary, Debug)]
struct Input {
    ops: Vec<Op>,
    /// Initial guest RAM (rings and buffers wherever the queue registers point).
    ram: Vec<u8>,
}

const RAM: usize = 0x2_0000;

fn w32(t: &mut MmioTransport, offset: u64, v: u32) {
    t.write(offset, &v.to_le_bytes());
}

fn r32(t: &mut MmioTransport, offset: u64) -> u32 {
    let mut b = [0u8; 4];
    t.read(offset, &mut b);
    u32::from_le_bytes(b)
}

fuzz_target!(|input: Input| {
    let mem = husk::devices::virtio::GuestMemory::from_ranges(&[(GuestAddress(0), RAM)])
        .expect("guest memory");
    let n = input.ram.len().min(RAM);
    mem.write_slice(&input.ram[..n], GuestAddress(0))
        .expect("in RAM");
    let seen = Arc::new(Mutex::new(Seen::default()));
    let mut t = MmioTransport::new(mem, Box::new(Probe { seen: seen.clone() })).expect("transport");
    for op in input.ops.iter().take(256) {
        match *op {
            Op::Read { offset, len } => {
                let mut b = vec![0u8; [1, 2, 4, 8][usize::from(len % 4)]];
                t.read(u64::from(offset % 0x200), &mut b);
            }
            Op::Write { offset, value, len } => {
                let b = value.to_le_bytes();
                t.write(
                    u64::from(offset % 0x200),
                    &b[..[1, 2, 4, 4][usize::from(len % 4)]],
                );
            }
            Op::Status(v) => {
                w32(&mut t, reg::STATUS, v.into());
                if v == 0 {
                    assert_eq!(
                        r32(&mut t, reg::STATUS),
                        0,
                        "reset did not clear the status"
                    );
                    assert!(!seen.lock().unwrap().active, "reset left the device active");
                }
            }
            Op::Features { select, value } => {
                w32(&mut t, reg::DRIVER_FEATURES_SEL, u32::from(select % 3));
                w32(&mut t, reg::DRIVER_FEATURES, value);
            }
            Op::Queue {
                select,
                num,
                desc,
                avail,
                used,
                ready,
            } => {
                w32(&mut t, reg::QUEUE_SEL, u32::from(select % 3));
                w32(&mut t, reg::QUEUE_NUM, num.into());
                w32(&mut t, reg::QUEUE_DESC_LOW, desc % (RAM as u32 + 0x100));
                w32(&mut t, reg::QUEUE_DESC_HIGH, 0);
                w32(&mut t, reg::QUEUE_AVAIL_LOW, avail % (RAM as u32 + 0x100));
                w32(&mut t, reg::QUEUE_AVAIL_HIGH, 0);
                w32(&mut t, reg::QUEUE_USED_LOW, used % (RAM as u32 + 0x100));
                w32(&mut t, reg::QUEUE_USED_HIGH, 0);
                w32(&mut t, reg::QUEUE_READY, ready.into());
            }
            Op::Notify(q) => w32(&mut t, reg::QUEUE_NOTIFY, q.into()),
        }
        assert_eq!(r32(&mut t, reg::MAGIC), MMIO_MAGIC);
        assert_eq!(
            t.is_activated(),
            seen.lock().unwrap().active,
            "transport and device disagree"
        );
    }
});
