//! The one place that hands out device resources: the PIO and MMIO buses, legacy IRQ lines,
//! virtio-mmio windows, and the `virtio_mmio.device=` command-line entries that announce
//! them — allocated together so the guest's view and the buses can never disagree.

use std::sync::{Arc, Mutex};

use event_manager::{EventManager, MutEventSubscriber};
use kvm_ioctls::VmFd;
use linux_loader::cmdline::Cmdline;
use vm_memory::GuestAddress;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::arch::x86_64::layout;
use crate::devices::bus::{Bus, BusError, SharedDevice};

#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// A device's range collides with another one.
    #[error("cannot place device: {0}")]
    Bus(#[from] BusError),
    /// Every interrupt line for devices is taken.
    #[error("out of device IRQs (lines {first}..={last} are all in use)")]
    NoIrq { first: u32, last: u32 },
    /// The MMIO gap has no room for another virtio-mmio window.
    #[error("out of virtio-mmio windows in the MMIO gap")]
    NoMmioWindow,
    /// The command line cannot take the device's entry (too long, usually).
    #[error("cannot add {what} to the kernel command line: {err:?}")]
    Cmdline {
        what: String,
        err: linux_loader::cmdline::Error,
    },
    /// eventfd or irqfd set-up failed.
    #[error("cannot wire IRQ {gsi}: {source}")]
    Irq { gsi: u32, source: std::io::Error },
    /// A device's host-side resource (file, socket) failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Where a virtio-mmio device was placed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MmioSlot {
    pub base: u64,
    pub len: u64,
    pub irq: u32,
}

/// The event loop's subscriber type: devices shared with vCPU threads sit behind a mutex.
pub type Subscriber = Arc<Mutex<dyn MutEventSubscriber + Send>>;
pub type EventLoop = EventManager<Subscriber>;

/// Buses plus allocators. Cloned buses go to each vCPU thread once building is done.
pub struct DeviceManager {
    pub pio: Bus,
    pub mmio: Bus,
    next_irq: u32,
    next_mmio: u64,
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
            next_irq: layout::IRQ_BASE,
            next_mmio: layout::VIRTIO_MMIO_BASE,
        }
    }

    /// The next free interrupt line for a device (GSI = IOAPIC pin).
    pub fn allocate_irq(&mut self) -> Result<u32, DeviceError> {
        if self.next_irq > layout::IRQ_MAX {
            return Err(DeviceError::NoIrq {
                first: layout::IRQ_BASE,
                last: layout::IRQ_MAX,
            });
        }
        let irq = self.next_irq;
        self.next_irq += 1;
        Ok(irq)
    }

    fn allocate_mmio_window(&mut self) -> Result<u64, DeviceError> {
        let base = self.next_mmio;
        let end = base
            .checked_add(layout::VIRTIO_MMIO_WINDOW)
            .ok_or(DeviceError::NoMmioWindow)?;
        if end > layout::MMIO_GAP_START + layout::MMIO_GAP_SIZE {
            return Err(DeviceError::NoMmioWindow);
        }
        self.next_mmio = end;
        Ok(base)
    }

    /// Puts a virtio-mmio transport on the MMIO bus with its own window and IRQ, and tells
    /// the guest kernel about it on the command line. The caller wires the returned IRQ
    /// with [`irqfd`] and its queue notifications with ioeventfds on `slot.base + 0x50`.
    pub fn register_virtio_mmio(
        &mut self,
        cmdline: &mut Cmdline,
        device: SharedDevice,
    ) -> Result<MmioSlot, DeviceError> {
        let base = self.allocate_mmio_window()?;
        let irq = self.allocate_irq()?;
        let len = layout::VIRTIO_MMIO_WINDOW;
        self.mmio.insert(device, base, len)?;
        cmdline
            .add_virtio_mmio_device(len, GuestAddress(base), irq, None)
            .map_err(|err| DeviceError::Cmdline {
                what: format!("virtio-mmio@{base:#x}"),
                err,
            })?;
        Ok(MmioSlot { base, len, irq })
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
    use crate::devices::bus::BusDevice;

    struct Nop;
    impl BusDevice for Nop {
        fn read(&mut self, _: u64, d: &mut [u8]) {
            d.fill(0);
        }
        fn write(&mut self, _: u64, _: &[u8]) {}
    }

    #[test]
    fn virtio_slots_match_the_cmdline() {
        let mut dm = DeviceManager::new();
        let mut cl = Cmdline::new(4096).unwrap();
        cl.insert_str("console=ttyS0").unwrap();
        let a = dm
            .register_virtio_mmio(&mut cl, Arc::new(Mutex::new(Nop)))
            .unwrap();
        let b = dm
            .register_virtio_mmio(&mut cl, Arc::new(Mutex::new(Nop)))
            .unwrap();
        assert_eq!(a.base, layout::VIRTIO_MMIO_BASE);
        assert_eq!(b.base, a.base + layout::VIRTIO_MMIO_WINDOW);
        assert_eq!(b.irq, a.irq + 1);
        let s = cl.as_cstring().unwrap().into_string().unwrap();
        assert!(s.contains(&format!("@0x{:x}:{}", a.base, a.irq)), "{s}");
        assert!(s.contains(&format!("@0x{:x}:{}", b.base, b.irq)), "{s}");
        let mut d = [0xffu8; 4];
        assert!(dm.mmio.read(b.base + 0x10, &mut d));
    }

    #[test]
    fn irqs_run_out_with_an_error() {
        let mut dm = DeviceManager::new();
        let n = layout::IRQ_MAX - layout::IRQ_BASE + 1;
        for _ in 0..n {
            dm.allocate_irq().unwrap();
        }
        assert!(matches!(dm.allocate_irq(), Err(DeviceError::NoIrq { .. })));
    }
}
