//! Virtio devices and the virtio-mmio transport.
//!
//! The split follows vmm-reference and Firecracker:
//! - [`VirtioDevice`] is what a device (block, vsock, …) implements: its type, queue sizes,
//!   feature bits, config space, and `activate`/`reset`.
//! - [`mmio::MmioTransport`] is the virtio-mmio register file (a [`BusDevice`]); it owns the
//!   status handshake, feature negotiation and queue registers and calls into the device.
//! - [`mmio::attach_virtio_mmio`] is the one place that gives a device its MMIO window and
//!   GSI, wires ioeventfd/irqfd and writes `virtio_mmio.device=` on the kernel cmdline.
//!
//! # Threading model
//!
//! The vCPU threads only touch the transport registers (under the bus mutex). The data path
//! never runs on a vCPU thread: on [`VirtioDevice::activate`] a device starts **its own
//! named worker thread** (see [`worker::Worker`]) that runs its own
//! [`event_manager::EventManager`] with the device's subscriber(s): the queue notification
//! eventfds (ioeventfds under KVM, or signalled by the transport when no ioeventfd is
//! registered), backend fds (e.g. unix sockets for vsock) and a stop `EventFd`.
//! [`VirtioDevice::reset`] (and `Drop`) signals the stop `EventFd` and joins the thread, so a
//! reset device holds no queue, memory or fd of the old driver session.
//!
//! Interrupts go out through [`VirtioInterrupt`]: the worker sets the interrupt-status bit and
//! writes the irqfd `EventFd`; the guest reads/acks the bits through the transport.
//!
//! [`BusDevice`]: crate::devices::bus::BusDevice

pub mod block;
pub mod common;
pub mod fs;
pub mod mmio;
pub mod net;
pub mod testing;
pub mod vsock;
pub mod worker;

use std::io;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Guest memory as every device sees it.
pub type GuestMemory = GuestMemoryMmap<()>;

/// Virtio device ids (virtio 1.2, 5).
pub const TYPE_NET: u32 = 1;
pub const TYPE_BLOCK: u32 = 2;
pub const TYPE_VSOCK: u32 = 19;

/// `VIRTIO_F_VERSION_1`: every husk device is modern-only and must offer it.
pub const VIRTIO_F_VERSION_1: u64 = 1 << virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;

/// Interrupt-status bit: a used ring was updated.
pub const VIRTIO_INT_USED_RING: u32 = 0x1;
/// Interrupt-status bit: the configuration space changed.
pub const VIRTIO_INT_CONFIG_CHANGE: u32 = 0x2;

/// The interrupt line of one virtio-mmio device: the InterruptStatus register bits plus the
/// `EventFd` that raises the GSI (an irqfd under KVM; a test harness reads it directly).
#[derive(Debug)]
pub struct VirtioInterrupt {
    status: AtomicU32,
    config_generation: AtomicU32,
    irq_evt: EventFd,
}

impl VirtioInterrupt {
    pub fn new() -> io::Result<Self> {
        Ok(Self {
            status: AtomicU32::new(0),
            config_generation: AtomicU32::new(0),
            irq_evt: EventFd::new(EFD_NONBLOCK)?,
        })
    }

    /// Tells the driver that a used ring changed.
    pub fn signal_used_queue(&self) -> io::Result<()> {
        self.signal(VIRTIO_INT_USED_RING)
    }

    /// Tells the driver that the config space (or the device status) changed; bumps the
    /// ConfigGeneration register so a driver reading config mid-change retries.
    pub fn signal_config_change(&self) -> io::Result<()> {
        self.config_generation.fetch_add(1, Ordering::SeqCst);
        self.signal(VIRTIO_INT_CONFIG_CHANGE)
    }

    /// ConfigGeneration register value.
    pub fn config_generation(&self) -> u32 {
        self.config_generation.load(Ordering::SeqCst)
    }

    fn signal(&self, bit: u32) -> io::Result<()> {
        self.status.fetch_or(bit, Ordering::SeqCst);
        self.irq_evt.write(1)
    }

    /// Current InterruptStatus register value.
    pub fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }

    /// InterruptACK: clears the acknowledged bits.
    pub fn ack(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::SeqCst);
    }

    /// Clears every bit (device reset).
    pub fn clear(&self) {
        self.status.store(0, Ordering::SeqCst);
    }

    /// The `EventFd` that raises the interrupt (register it as an irqfd).
    pub fn irq_evt(&self) -> &EventFd {
        &self.irq_evt
    }
}

/// What a device receives when the driver sets DRIVER_OK.
pub struct ActivateContext {
    /// Guest memory (cheap clone of the region list).
    pub mem: GuestMemory,
    /// One queue per entry of [`VirtioDevice::queue_max_sizes`], configured and validated by
    /// the transport (`Queue::is_valid` held when activation was attempted).
    pub queues: Vec<virtio_queue::Queue>,
    /// One notification `EventFd` per queue (same order). Under KVM these are also registered
    /// as ioeventfds; without KVM the transport writes them on a QueueNotify write.
    pub queue_evts: Vec<EventFd>,
    /// The device's interrupt line.
    pub interrupt: Arc<VirtioInterrupt>,
}

/// Why a device refused to activate. The transport answers with DEVICE_NEEDS_RESET.
#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    /// The transport handed over a different number of queues than the device has.
    #[error("expected {expected} queues, got {got}")]
    QueueCount { expected: usize, got: usize },
    /// The device is already active (activate without reset in between).
    #[error("device is already active")]
    AlreadyActive,
    /// Creating an eventfd or cloning an fd failed.
    #[error("device activation I/O error: {0}")]
    Io(#[from] io::Error),
    /// The worker's event manager could not be created or a subscriber registered.
    #[error("device event manager: {0:?}")]
    EventManager(#[source] event_manager::Error),
    /// The worker thread could not be spawned.
    #[error("spawning device worker thread {name}: {source}")]
    Thread { name: String, source: io::Error },
    /// The backend cannot serve this session.
    #[error("device backend: {0}")]
    Backend(String),
    /// The backend (TAP, vsock muxer) failed to set up for this session.
    #[error("device backend: {0}")]
    BackendSetup(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// A virtio device behind a transport.
///
/// Methods are called by the transport from vCPU threads (under the transport's lock); the
/// data path runs on the worker thread the device starts in [`activate`](Self::activate).
pub trait VirtioDevice: Send {
    /// Virtio device id ([`TYPE_BLOCK`], [`TYPE_VSOCK`], …).
    fn device_type(&self) -> u32;

    /// Maximum size of each queue; the length is the number of queues. Each size must be a
    /// power of two ≤ 32768.
    fn queue_max_sizes(&self) -> &[u16];

    /// Feature bits the device offers (must include [`VIRTIO_F_VERSION_1`]).
    fn avail_features(&self) -> u64;

    /// Features the driver acknowledged; the transport only calls this with a subset of
    /// [`avail_features`](Self::avail_features) that includes `VIRTIO_F_VERSION_1`.
    fn set_acked_features(&mut self, features: u64);

    /// Reads the device config space; `offset` is relative to config space start (0x100).
    /// Out-of-range bytes must be left as they are (the transport pre-fills with zeros).
    fn read_config(&self, offset: u64, data: &mut [u8]);

    /// Writes the device config space; devices ignore writes they do not support.
    fn write_config(&mut self, offset: u64, data: &[u8]);

    /// Starts the data path (worker thread) with the driver's queues.
    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError>;

    /// Stops the data path and drops the driver session (queues, memory, pending requests).
    /// Returns true when the device is back in its pre-activation state and may be activated
    /// again; false leaves the transport in DEVICE_NEEDS_RESET-like failure.
    fn reset(&mut self) -> bool;
}
