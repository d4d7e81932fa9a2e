//! virtio-mmio transport (virtio 1.x "modern", Version register 2).
//!
//! [`MmioTransport`] is the register file a vCPU sees at a device's MMIO window; it owns the
//! status handshake, feature negotiation, queue configuration and the interrupt status, and
//! hands the configured queues to the [`VirtioDevice`] on DRIVER_OK. [`attach`] is the one
//! place that places a transport in the guest (window, GSI, ioeventfd, irqfd, cmdline).
//!
//! Everything the driver writes is untrusted: malformed accesses are ignored, invalid
//! feature sets are refused by not setting FEATURES_OK, and an invalid queue setup makes
//! DRIVER_OK fail with DEVICE_NEEDS_RESET instead of activating the device.

pub mod attach;

use std::sync::Arc;

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestAddress;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::{ActivateContext, GuestMemory, VirtioDevice, VirtioInterrupt, VIRTIO_F_VERSION_1};
use crate::devices::bus::BusDevice;

pub use attach::{attach_virtio_mmio, AttachError, AttachedDevice, EventRegistrar, MmioAllocator};

/// Size of one virtio-mmio window.
pub const MMIO_WINDOW_SIZE: u64 = 0x1000;
/// "virt" in little endian.
pub const MMIO_MAGIC: u32 = 0x7472_6976;
/// Modern (virtio 1.x) virtio-mmio.
pub const MMIO_VERSION: u32 = 2;
/// Vendor id reported to the guest ("HUSK" is not registered anywhere; Linux ignores it).
pub const VENDOR_ID: u32 = 0x4b53_5548;

/// Register offsets (virtio 1.2, 4.2.2).
pub mod reg {
    pub const MAGIC: u64 = 0x000;
    pub const VERSION: u64 = 0x004;
    pub const DEVICE_ID: u64 = 0x008;
    pub const VENDOR_ID: u64 = 0x00c;
    pub const DEVICE_FEATURES: u64 = 0x010;
    pub const DEVICE_FEATURES_SEL: u64 = 0x014;
    pub const DRIVER_FEATURES: u64 = 0x020;
    pub const DRIVER_FEATURES_SEL: u64 = 0x024;
    pub const QUEUE_SEL: u64 = 0x030;
    pub const QUEUE_NUM_MAX: u64 = 0x034;
    pub const QUEUE_NUM: u64 = 0x038;
    pub const QUEUE_READY: u64 = 0x044;
    pub const QUEUE_NOTIFY: u64 = 0x050;
    pub const INTERRUPT_STATUS: u64 = 0x060;
    pub const INTERRUPT_ACK: u64 = 0x064;
    pub const STATUS: u64 = 0x070;
    pub const QUEUE_DESC_LOW: u64 = 0x080;
    pub const QUEUE_DESC_HIGH: u64 = 0x084;
    pub const QUEUE_AVAIL_LOW: u64 = 0x090;
    pub const QUEUE_AVAIL_HIGH: u64 = 0x094;
    pub const QUEUE_USED_LOW: u64 = 0x0a0;
    pub const QUEUE_USED_HIGH: u64 = 0x0a4;
    pub const SHM_SEL: u64 = 0x0ac;
    pub const SHM_LEN_LOW: u64 = 0x0b0;
    pub const SHM_LEN_HIGH: u64 = 0x0b4;
    pub const SHM_BASE_LOW: u64 = 0x0b8;
    pub const SHM_BASE_HIGH: u64 = 0x0bc;
    pub const CONFIG_GENERATION: u64 = 0x0fc;
    pub const CONFIG: u64 = 0x100;
}

/// Device status bits (virtio 1.2, 2.1).
pub mod status {
    pub const ACKNOWLEDGE: u32 = 1;
    pub const DRIVER: u32 = 2;
    pub const DRIVER_OK: u32 = 4;
    pub const FEATURES_OK: u32 = 8;
    pub const DEVICE_NEEDS_RESET: u32 = 64;
    pub const FAILED: u32 = 128;
}

/// Why a transport could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The device declared a queue size the virtio-queue crate refuses.
    #[error("device type {device_type} queue {index}: invalid max size {size}")]
    QueueMaxSize {
        device_type: u32,
        index: usize,
        size: u16,
    },
    /// The device does not offer VIRTIO_F_VERSION_1 (husk is modern-only).
    #[error("device type {0} does not offer VIRTIO_F_VERSION_1")]
    NotModern(u32),
    /// Creating an eventfd failed.
    #[error("creating virtio-mmio eventfd: {0}")]
    EventFd(#[from] std::io::Error),
}

/// Per-queue driver setup errors we must remember until DRIVER_OK (the virtio-queue setters
/// only log and keep the old value, which would make the device use a geometry the driver
/// never allocated).
#[derive(Clone, Copy, Default)]
struct QueueSetup {
    bad: bool,
}

/// The virtio-mmio register file of one device.
pub struct MmioTransport {
    device: Box<dyn VirtioDevice>,
    mem: GuestMemory,
    interrupt: Arc<VirtioInterrupt>,
    queues: Vec<Queue>,
    queue_setup: Vec<QueueSetup>,
    queue_evts: Vec<EventFd>,
    queue_select: u32,
    device_features_select: u32,
    driver_features_select: u32,
    driver_features: u64,
    unknown_features_acked: bool,
    status: u32,
    activated: bool,
}

impl MmioTransport {
    /// Wraps `device`; usable without KVM (a QueueNotify write signals the queue's EventFd).
    pub fn new(mem: GuestMemory, device: Box<dyn VirtioDevice>) -> Result<Self, TransportError> {
        let device_type = device.device_type();
        if device.avail_features() & VIRTIO_F_VERSION_1 == 0 {
            return Err(TransportError::NotModern(device_type));
        }
        let mut queues = Vec::new();
        let mut queue_evts = Vec::new();
        for (index, &size) in device.queue_max_sizes().iter().enumerate() {
            let q = Queue::new(size).map_err(|_| TransportError::QueueMaxSize {
                device_type,
                index,
                size,
            })?;
            queues.push(q);
            queue_evts.push(EventFd::new(EFD_NONBLOCK)?);
        }
        Ok(Self {
            device,
            mem,
            interrupt: Arc::new(VirtioInterrupt::new()?),
            queue_setup: vec![QueueSetup::default(); queues.len()],
            queues,
            queue_evts,
            queue_select: 0,
            device_features_select: 0,
            driver_features_select: 0,
            driver_features: 0,
            unknown_features_acked: false,
            status: 0,
            activated: false,
        })
    }

    /// The device's interrupt line (register `irq_evt()` as an irqfd).
    pub fn interrupt(&self) -> &Arc<VirtioInterrupt> {
        &self.interrupt
    }

    /// Queue notification EventFds, one per queue (register them as ioeventfds).
    pub fn queue_evts(&self) -> &[EventFd] {
        &self.queue_evts
    }

    pub fn device(&self) -> &dyn VirtioDevice {
        self.device.as_ref()
    }

    pub fn device_mut(&mut self) -> &mut dyn VirtioDevice {
        self.device.as_mut()
    }

    /// Current device status register.
    pub fn status(&self) -> u32 {
        self.status
    }

    pub fn is_activated(&self) -> bool {
        self.activated
    }

    fn has(&self, bits: u32) -> bool {
        self.status & bits == bits
    }

    /// Queue registers may change between FEATURES_OK and DRIVER_OK only.
    fn queue_config_allowed(&self) -> bool {
        self.has(status::FEATURES_OK) && !self.has(status::DRIVER_OK) && !self.failed()
    }

    fn failed(&self) -> bool {
        self.status & (status::FAILED | status::DEVICE_NEEDS_RESET) != 0
    }

    fn selected_queue(&mut self) -> Option<(&mut Queue, &mut QueueSetup)> {
        let i = self.queue_select as usize;
        self.queues.get_mut(i).zip(self.queue_setup.get_mut(i))
    }

    fn read_reg(&self, offset: u64) -> u32 {
        let q = self.queues.get(self.queue_select as usize);
        match offset {
            reg::MAGIC => MMIO_MAGIC,
            reg::VERSION => MMIO_VERSION,
            reg::DEVICE_ID => self.device.device_type(),
            reg::VENDOR_ID => VENDOR_ID,
            reg::DEVICE_FEATURES => match self.device_features_select {
                0 => self.device.avail_features() as u32,
                1 => (self.device.avail_features() >> 32) as u32,
                _ => 0,
            },
            reg::QUEUE_NUM_MAX => q.map_or(0, |q| u32::from(q.max_size())),
            reg::QUEUE_READY => q.map_or(0, |q| u32::from(q.ready())),
            reg::INTERRUPT_STATUS => self.interrupt.status(),
            reg::STATUS => self.status,
            // No shared memory regions: length reads as all ones ("no such region").
            reg::SHM_LEN_LOW | reg::SHM_LEN_HIGH => u32::MAX,
            reg::SHM_BASE_LOW | reg::SHM_BASE_HIGH => u32::MAX,
            reg::CONFIG_GENERATION => self.interrupt.config_generation(),
            _ => {
                tracing::debug!("virtio-mmio: read of write-only/unknown register {offset:#x}");
                0
            }
        }
    }

    fn write_reg(&mut self, offset: u64, v: u32) {
        match offset {
            reg::DEVICE_FEATURES_SEL => self.device_features_select = v,
            reg::DRIVER_FEATURES_SEL => self.driver_features_select = v,
            reg::DRIVER_FEATURES => {
                if !self.has(status::DRIVER) || self.has(status::FEATURES_OK) || self.failed() {
                    tracing::warn!(
                        "virtio-mmio: driver features written in status {:#x}",
                        self.status
                    );
                    return;
                }
                match self.driver_features_select {
                    0 => {
                        self.driver_features = (self.driver_features & !0xffff_ffff) | u64::from(v)
                    }
                    1 => {
                        self.driver_features =
                            (self.driver_features & 0xffff_ffff) | (u64::from(v) << 32)
                    }
                    // Bits above 63 do not exist: acking any of them is acking an unoffered
                    // feature, so remember it and refuse FEATURES_OK.
                    _ => self.unknown_features_acked |= v != 0,
                }
            }
            reg::QUEUE_SEL => self.queue_select = v,
            reg::QUEUE_NUM => self.with_queue(|q, s| {
                let ok = u16::try_from(v)
                    .ok()
                    .is_some_and(|n| q.try_set_size(n).is_ok());
                s.bad |= !ok;
            }),
            reg::QUEUE_READY => self.with_queue(|q, _| q.set_ready(v == 1)),
            reg::QUEUE_DESC_LOW | reg::QUEUE_DESC_HIGH => self.with_queue(|q, s| {
                let a = merge(q.desc_table(), offset == reg::QUEUE_DESC_HIGH, v);
                s.bad |= q.try_set_desc_table_address(GuestAddress(a)).is_err();
            }),
            reg::QUEUE_AVAIL_LOW | reg::QUEUE_AVAIL_HIGH => self.with_queue(|q, s| {
                let a = merge(q.avail_ring(), offset == reg::QUEUE_AVAIL_HIGH, v);
                s.bad |= q.try_set_avail_ring_address(GuestAddress(a)).is_err();
            }),
            reg::QUEUE_USED_LOW | reg::QUEUE_USED_HIGH => self.with_queue(|q, s| {
                let a = merge(q.used_ring(), offset == reg::QUEUE_USED_HIGH, v);
                s.bad |= q.try_set_used_ring_address(GuestAddress(a)).is_err();
            }),
            reg::QUEUE_NOTIFY => self.notify(v),
            reg::INTERRUPT_ACK => self.interrupt.ack(v),
            reg::STATUS => self.set_status(v),
            reg::SHM_SEL => {}
            _ => tracing::debug!("virtio-mmio: write of read-only/unknown register {offset:#x}"),
        }
    }

    /// Applies `f` to the selected queue if queue configuration is allowed now and the queue
    /// is not live (the driver must clear QueueReady before reconfiguring).
    fn with_queue(&mut self, f: impl FnOnce(&mut Queue, &mut QueueSetup)) {
        if !self.queue_config_allowed() {
            tracing::warn!(
                "virtio-mmio: queue register written in status {:#x}",
                self.status
            );
            return;
        }
        match self.selected_queue() {
            Some((q, s)) => f(q, s),
            None => tracing::warn!("virtio-mmio: queue register written for a missing queue"),
        }
    }

    /// A QueueNotify that reached the bus (no ioeventfd caught it): forward it.
    fn notify(&mut self, index: u32) {
        if !self.activated {
            return;
        }
        if let Some(evt) = self.queue_evts.get(index as usize) {
            if let Err(e) = evt.write(1) {
                tracing::error!("virtio-mmio: signalling queue {index}: {e}");
            }
        }
    }

    fn set_status(&mut self, v: u32) {
        use status::*;
        if v == 0 {
            self.reset();
            return;
        }
        if v & !self.status & FAILED != 0 {
            // The driver gave up; keep the device as it is until reset.
            self.status |= FAILED;
            return;
        }
        // Otherwise exactly one new bit, in order, with every earlier bit kept.
        let old = self.status;
        if v & old != old || self.failed() {
            tracing::warn!("virtio-mmio: status {old:#x} -> {v:#x} refused");
            return;
        }
        match v & !old {
            ACKNOWLEDGE if old == 0 => self.status = v,
            DRIVER if old == ACKNOWLEDGE => self.status = v,
            FEATURES_OK if old == ACKNOWLEDGE | DRIVER => {
                if self.features_acceptable() {
                    self.device.set_acked_features(self.driver_features);
                    self.status = v;
                } else {
                    // The driver reads FEATURES_OK back and sees it unset (virtio 3.1.1).
                    tracing::warn!(
                        "virtio-mmio: driver features {:#x} refused (offered {:#x})",
                        self.driver_features,
                        self.device.avail_features()
                    );
                }
            }
            DRIVER_OK if old == ACKNOWLEDGE | DRIVER | FEATURES_OK => self.activate(v),
            _ => tracing::warn!("virtio-mmio: status {old:#x} -> {v:#x} refused"),
        }
    }

    fn features_acceptable(&self) -> bool {
        let f = self.driver_features;
        !self.unknown_features_acked
            && f & !self.device.avail_features() == 0
            && f & VIRTIO_F_VERSION_1 != 0
    }

    fn activate(&mut self, new_status: u32) {
        let event_idx = self.driver_features
            & (1 << virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX)
            != 0;
        let mut queues = Vec::with_capacity(self.queues.len());
        for (i, (q, s)) in self.queues.iter().zip(&self.queue_setup).enumerate() {
            if s.bad || !q.is_valid(&self.mem) {
                tracing::warn!("virtio-mmio: queue {i} has an invalid setup; needs reset");
                self.needs_reset();
                return;
            }
            let mut state = q.state();
            state.event_idx_enabled = event_idx;
            match Queue::try_from(state) {
                Ok(q) => queues.push(q),
                Err(e) => {
                    tracing::warn!("virtio-mmio: queue {i}: {e}; needs reset");
                    self.needs_reset();
                    return;
                }
            }
        }
        let mut queue_evts = Vec::with_capacity(self.queue_evts.len());
        for evt in &self.queue_evts {
            // Drop notifications from before activation; the device looks at the rings anyway.
            let _ = evt.read();
            match evt.try_clone() {
                Ok(e) => queue_evts.push(e),
                Err(e) => {
                    tracing::error!("virtio-mmio: cloning queue eventfd: {e}");
                    self.needs_reset();
                    return;
                }
            }
        }
        let ctx = ActivateContext {
            mem: self.mem.clone(),
            queues,
            queue_evts,
            interrupt: self.interrupt.clone(),
        };
        match self.device.activate(ctx) {
            Ok(()) => {
                self.activated = true;
                self.status = new_status;
            }
            Err(e) => {
                tracing::error!(
                    "virtio-mmio: device type {} activation failed: {e}",
                    self.device.device_type()
                );
                self.needs_reset();
            }
        }
    }

    fn needs_reset(&mut self) {
        self.status |= status::DEVICE_NEEDS_RESET;
        if let Err(e) = self.interrupt.signal_config_change() {
            tracing::error!("virtio-mmio: raising config-change interrupt: {e}");
        }
    }

    /// Status 0: back to the power-on state. The device stops its worker first, so the
    /// queues it used are gone before the driver may reuse the memory.
    fn reset(&mut self) {
        if self.activated && !self.device.reset() {
            tracing::error!(
                "virtio-mmio: device type {} cannot reset",
                self.device.device_type()
            );
            self.status |= status::FAILED;
            return;
        }
        self.activated = false;
        self.status = 0;
        self.queue_select = 0;
        self.device_features_select = 0;
        self.driver_features_select = 0;
        self.driver_features = 0;
        self.unknown_features_acked = false;
        for q in &mut self.queues {
            q.reset();
        }
        self.queue_setup.fill(QueueSetup::default());
        for evt in &self.queue_evts {
            let _ = evt.read();
        }
        self.interrupt.clear();
    }
}

/// Replaces the low or high half of a 64-bit address register.
fn merge(old: u64, high: bool, v: u32) -> u64 {
    if high {
        (old & 0xffff_ffff) | (u64::from(v) << 32)
    } else {
        (old & !0xffff_ffff) | u64::from(v)
    }
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if offset >= reg::CONFIG {
            self.device.read_config(offset - reg::CONFIG, data);
        } else if data.len() == 4 && offset.is_multiple_of(4) {
            data.copy_from_slice(&self.read_reg(offset).to_le_bytes());
        } else {
            tracing::warn!(
                "virtio-mmio: {}-byte read at {offset:#x} ignored",
                data.len()
            );
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= reg::CONFIG {
            if self.failed() {
                return;
            }
            self.device.write_config(offset - reg::CONFIG, data);
        } else if let (Ok(bytes), true) = (<[u8; 4]>::try_from(data), offset.is_multiple_of(4)) {
            self.write_reg(offset, u32::from_le_bytes(bytes));
        } else {
            tracing::warn!(
                "virtio-mmio: {}-byte write at {offset:#x} ignored",
                data.len()
            );
        }
    }
}

impl Drop for MmioTransport {
    fn drop(&mut self) {
        if self.activated {
            self.device.reset();
        }
    }
}
