//! Where devices live: the PIO and MMIO buses, and the allocator of virtio-mmio windows and
//! GSIs (the devices module's [`MmioAllocator`], configured with husk-vmm's layout), which
//! `attach_virtio_mmio` uses to place a device, wire its ioeventfds and irqfd and announce
//! it on the command line in one step, so the guest's view and the buses never disagree.

use std::ops::RangeInclusive;
use std::sync::{Arc, Mutex};

use event_manager::{EventManager, MutEventSubscriber};
use kvm_ioctls::VmFd;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::arch::x86_64::layout;
use crate::devices::bus::{Bus, BusError, SharedDevice};
use crate::devices::legacy::i8042::I8042_KBD_IRQ;
use crate::devices::legacy::serial::COM1_IRQ;
use crate::devices::virtio::mmio::MmioAllocator;

/// Interrupt lines wired by legacy devices at fixed numbers.
const LEGACY_IRQS: [u32; 2] = [I8042_KBD_IRQ, COM1_IRQ];

/// GSIs for virtio-mmio devices: `IRQ_BASE..=IRQ_MAX`, starting above every legacy line so
/// no two devices ever share one.
fn virtio_irqs() -> RangeInclusive<u32> {
    let first_free = LEGACY_IRQS
        .iter()
        .map(|i| i + 1)
        .fold(layout::IRQ_BASE, u32::max);
    first_free..=layout::IRQ_MAX
}

#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// A device's range collides with another one.
    #[error("cannot place device: {0}")]
    Bus(#[from] BusError),
    /// eventfd or irqfd set-up failed.
    #[error("cannot wire IRQ {gsi}: {source}")]
    Irq { gsi: u32, source: std::io::Error },
}

/// The event loop's subscriber type: devices shared with vCPU threads sit behind a mutex.
pub type Subscriber = Arc<Mutex<dyn MutEventSubscriber + Send>>;
pub type EventLoop = EventManager<Subscriber>;

/// Buses plus the virtio-mmio allocator. Cloned buses go to each vCPU thread once building
/// is done.
pub struct DeviceManager {
    pub pio: Bus,
    pub mmio: Bus,
    /// virtio-mmio windows and GSIs: the only allocator of either. Devices are attached
    /// through [`attach_virtio_mmio`](crate::devices::virtio::mmio::attach_virtio_mmio) with
    /// it, which also wires ioeventfds, the irqfd and the `virtio_mmio.device=` entry.
    pub virtio: MmioAllocator,
}

impl Default for DeviceManager {
    fn default() -> Self {
        Self::new()
    }
}

impl DeviceManager {
    pub fn new() -> Self {
        Self {
            pio: Bus::new(),
            mmio: Bus::new(),
            virtio: MmioAllocator::new(
                layout::VIRTIO_MMIO_BASE,
                layout::VIRTIO_MMIO_WINDOW,
                virtio_irqs(),
            ),
        }
    }

    /// Places a port-I/O device (legacy devices at fixed ports).
    pub fn register_pio(
        &mut self,
        device: SharedDevice,
        port: u64,
        len: u64,
    ) -> Result<(), DeviceError> {
        Ok(self.pio.insert(device, port, len)?)
    }
}

/// An eventfd that raises `gsi` in the in-kernel irqchip when written: devices signal
/// interrupts without a trip through the VMM.
pub fn irqfd(vm: &VmFd, gsi: u32) -> Result<EventFd, DeviceError> {
    let evt = EventFd::new(EFD_NONBLOCK).map_err(|source| DeviceError::Irq { gsi, source })?;
    vm.register_irqfd(&evt, gsi).map_err(|e| DeviceError::Irq {
        gsi,
        source: e.into(),
    })?;
    Ok(evt)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn virtio_slots_follow_husk_vmm_layout_and_skip_legacy_irqs() {
        let mut dm = DeviceManager::new();
        let n = dm.virtio.capacity();
        assert_eq!(n, (layout::IRQ_MAX - layout::IRQ_BASE + 1) as usize);
        let mut seen = Vec::new();
        for i in 0..n {
            let (base, gsi) = dm.virtio.allocate().unwrap();
            assert_eq!(
                base,
                layout::VIRTIO_MMIO_BASE + i as u64 * layout::VIRTIO_MMIO_WINDOW
            );
            assert!(!LEGACY_IRQS.contains(&gsi), "GSI {gsi} is a legacy line");
            assert!(base + layout::VIRTIO_MMIO_WINDOW <= layout::MMIO_GAP_END);
            seen.push(gsi);
        }
        assert_eq!(seen.first(), Some(&layout::IRQ_BASE));
        assert_eq!(seen.last(), Some(&layout::IRQ_MAX));
        assert!(dm.virtio.allocate().is_err());
    }
}
