//! The one place that puts a virtio-mmio device into a VM.
//!
//! [`attach_virtio_mmio`] allocates the device's MMIO window and GSI from [`MmioAllocator`],
//! puts the transport on the MMIO bus, registers one ioeventfd per queue (QueueNotify with
//! the queue index as datamatch) and the irqfd, and appends the matching
//! `virtio_mmio.device=4K@0x…:GSI` to the kernel cmdline — so the guest's view and the
//! VMM's wiring are written from the same numbers and cannot disagree.
//!
//! The KVM calls go through [`EventRegistrar`], implemented for `kvm_ioctls::VmFd` and for
//! [`NoKvm`] (tests, harness): without ioeventfds a QueueNotify write reaches the transport,
//! which signals the queue's EventFd itself.

use std::io;
use std::ops::RangeInclusive;
use std::sync::{Arc, Mutex};

use kvm_ioctls::{IoEventAddress, VmFd};
use linux_loader::cmdline::Cmdline;
use vm_memory::GuestAddress;
use vmm_sys_util::eventfd::EventFd;

use super::{reg, MmioTransport, TransportError};
use crate::devices::bus::{Bus, BusError};
use crate::devices::virtio::{GuestMemory, VirtioDevice};

/// Why a device could not be attached. Any of these leaves the VM half-wired: abort the boot.
#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    /// Every GSI of the virtio range is taken.
    #[error("no free virtio-mmio slot: all {0} GSIs in use (attach fewer devices, or use a composite disk for many read-only layers)")]
    OutOfSlots(usize),
    /// The next window would wrap the address space.
    #[error("virtio-mmio window at {0:#x} overflows the address space")]
    AddressOverflow(u64),
    #[error("virtio-mmio transport: {0}")]
    Transport(#[from] TransportError),
    #[error("placing virtio-mmio device on the bus: {0}")]
    Bus(#[from] BusError),
    #[error("registering ioeventfd for queue {queue} at {addr:#x}: {source}")]
    IoEvent {
        queue: usize,
        addr: u64,
        source: io::Error,
    },
    #[error("registering irqfd for GSI {gsi}: {source}")]
    IrqFd { gsi: u32, source: io::Error },
    #[error("adding virtio_mmio.device to the kernel cmdline: {0}")]
    Cmdline(linux_loader::cmdline::Error),
}

/// The KVM side of attaching: ioeventfd and irqfd registration.
pub trait EventRegistrar {
    /// A 4-byte write of `datamatch` at MMIO `addr` signals `evt` (and never exits to us).
    fn register_ioevent(&self, evt: &EventFd, addr: u64, datamatch: u32) -> io::Result<()>;
    /// Writing `evt` raises `gsi`.
    fn register_irqfd(&self, evt: &EventFd, gsi: u32) -> io::Result<()>;
}

impl EventRegistrar for VmFd {
    fn register_ioevent(&self, evt: &EventFd, addr: u64, datamatch: u32) -> io::Result<()> {
        VmFd::register_ioevent(self, evt, &IoEventAddress::Mmio(addr), datamatch)
            .map_err(|e| io::Error::from_raw_os_error(e.errno()))
    }

    fn register_irqfd(&self, evt: &EventFd, gsi: u32) -> io::Result<()> {
        VmFd::register_irqfd(self, evt, gsi).map_err(|e| io::Error::from_raw_os_error(e.errno()))
    }
}

/// No KVM: the transport forwards QueueNotify writes; the interrupt stays on its EventFd.
pub struct NoKvm;

impl EventRegistrar for NoKvm {
    fn register_ioevent(&self, _: &EventFd, _: u64, _: u32) -> io::Result<()> {
        Ok(())
    }
    fn register_irqfd(&self, _: &EventFd, _: u32) -> io::Result<()> {
        Ok(())
    }
}

/// Hands out MMIO windows and GSIs, one pair per device, in order.
#[derive(Debug, Clone)]
pub struct MmioAllocator {
    next_addr: u64,
    window: u64,
    irqs: RangeInclusive<u32>,
    next_irq: u32,
}

impl MmioAllocator {
    /// Windows of `window` bytes from `base` upwards, GSIs from `irqs` (husk-vmm on x86_64:
    /// `0xd000_0000`, `0x1000`, `5..=23`).
    pub fn new(base: u64, window: u64, irqs: RangeInclusive<u32>) -> Self {
        let next_irq = *irqs.start();
        Self {
            next_addr: base,
            window,
            irqs,
            next_irq,
        }
    }

    /// Number of devices the GSI range allows.
    pub fn capacity(&self) -> usize {
        self.irqs.clone().count()
    }

    /// The next (base address, GSI) pair.
    pub fn allocate(&mut self) -> Result<(u64, u32), AttachError> {
        if !self.irqs.contains(&self.next_irq) {
            return Err(AttachError::OutOfSlots(self.capacity()));
        }
        let base = self.next_addr;
        let next = base
            .checked_add(self.window)
            .ok_or(AttachError::AddressOverflow(base))?;
        let gsi = self.next_irq;
        self.next_addr = next;
        self.next_irq += 1;
        Ok((base, gsi))
    }
}

/// Where a device ended up.
#[derive(Clone)]
pub struct AttachedDevice {
    pub base: u64,
    pub size: u64,
    pub gsi: u32,
    pub transport: Arc<Mutex<MmioTransport>>,
}

/// Attaches `device` to the VM: MMIO window + GSI, bus, ioeventfds, irqfd, cmdline.
pub fn attach_virtio_mmio<V: EventRegistrar + ?Sized>(
    vm: &V,
    bus: &mut Bus,
    cmdline: &mut Cmdline,
    mem: &GuestMemory,
    alloc: &mut MmioAllocator,
    device: Box<dyn VirtioDevice>,
) -> Result<AttachedDevice, AttachError> {
    let (base, gsi) = alloc.allocate()?;
    let size = alloc.window;
    let transport = MmioTransport::new(mem.clone(), device)?;
    let notify = base + reg::QUEUE_NOTIFY;
    for (queue, evt) in transport.queue_evts().iter().enumerate() {
        vm.register_ioevent(evt, notify, queue as u32)
            .map_err(|source| AttachError::IoEvent {
                queue,
                addr: notify,
                source,
            })?;
    }
    vm.register_irqfd(transport.interrupt().irq_evt(), gsi)
        .map_err(|source| AttachError::IrqFd { gsi, source })?;
    cmdline
        .add_virtio_mmio_device(size, GuestAddress(base), gsi, None)
        .map_err(AttachError::Cmdline)?;
    let transport = Arc::new(Mutex::new(transport));
    bus.insert(transport.clone(), base, size)?;
    Ok(AttachedDevice {
        base,
        size,
        gsi,
        transport,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::bus::BusDevice;
    use crate::devices::virtio::{ActivateContext, ActivateError, VIRTIO_F_VERSION_1};
    use std::cell::RefCell;
    use std::os::unix::io::AsRawFd;

    /// Records what would be registered with KVM.
    #[derive(Default)]
    struct Recorder {
        ioevents: RefCell<Vec<(i32, u64, u32)>>,
        irqfds: RefCell<Vec<(i32, u32)>>,
    }
    impl EventRegistrar for Recorder {
        fn register_ioevent(&self, evt: &EventFd, addr: u64, datamatch: u32) -> io::Result<()> {
            self.ioevents
                .borrow_mut()
                .push((evt.as_raw_fd(), addr, datamatch));
            Ok(())
        }
        fn register_irqfd(&self, evt: &EventFd, gsi: u32) -> io::Result<()> {
            self.irqfds.borrow_mut().push((evt.as_raw_fd(), gsi));
            Ok(())
        }
    }

    struct ThreeQueues;
    impl VirtioDevice for ThreeQueues {
        fn device_type(&self) -> u32 {
            19
        }
        fn queue_max_sizes(&self) -> &[u16] {
            &[128, 128, 64]
        }
        fn avail_features(&self) -> u64 {
            VIRTIO_F_VERSION_1
        }
        fn set_acked_features(&mut self, _: u64) {}
        fn read_config(&self, _: u64, _: &mut [u8]) {}
        fn write_config(&mut self, _: u64, _: &[u8]) {}
        fn activate(&mut self, _: ActivateContext) -> Result<(), ActivateError> {
            Ok(())
        }
        fn reset(&mut self) -> bool {
            true
        }
    }

    #[test]
    fn allocator_hands_out_windows_and_gsis_in_order() {
        let mut a = MmioAllocator::new(0xd000_0000, 0x1000, 5..=7);
        assert_eq!(a.capacity(), 3);
        assert_eq!(a.allocate().unwrap(), (0xd000_0000, 5));
        assert_eq!(a.allocate().unwrap(), (0xd000_1000, 6));
        assert_eq!(a.allocate().unwrap(), (0xd000_2000, 7));
        assert!(matches!(a.allocate(), Err(AttachError::OutOfSlots(3))));
        let mut top = MmioAllocator::new(u64::MAX - 0xfff, 0x1000, 5..=6);
        assert!(matches!(
            top.allocate(),
            Err(AttachError::AddressOverflow(_))
        ));
    }

    #[test]
    fn attach_registers_one_ioeventfd_per_queue_and_the_irqfd() {
        let mem = GuestMemory::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let (mut bus, mut cmdline) = (Bus::new(), Cmdline::new(512).unwrap());
        let mut alloc = MmioAllocator::new(0xd000_0000, 0x1000, 5..=23);
        let vm = Recorder::default();
        alloc.allocate().unwrap(); // someone else took the first slot
        let a = attach_virtio_mmio(
            &vm,
            &mut bus,
            &mut cmdline,
            &mem,
            &mut alloc,
            Box::new(ThreeQueues),
        )
        .unwrap();
        assert_eq!((a.base, a.gsi, a.size), (0xd000_1000, 6, 0x1000));
        let t = a.transport.lock().unwrap();
        let want: Vec<_> = t
            .queue_evts()
            .iter()
            .enumerate()
            .map(|(i, e)| (e.as_raw_fd(), 0xd000_1050, i as u32))
            .collect();
        assert_eq!(*vm.ioevents.borrow(), want);
        assert_eq!(
            *vm.irqfds.borrow(),
            vec![(t.interrupt().irq_evt().as_raw_fd(), 6)]
        );
        assert_eq!(
            cmdline.as_cstring().unwrap().to_str().unwrap(),
            "virtio_mmio.device=4K@0xd0001000:6"
        );
        drop(t);
        let mut b = [0u8; 4];
        assert!(bus.read(0xd000_1000 + reg::DEVICE_ID, &mut b));
        assert_eq!(u32::from_le_bytes(b), 19);
    }

    #[test]
    fn misaligned_and_odd_width_register_accesses_are_ignored() {
        let mem = GuestMemory::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let mut t = MmioTransport::new(mem, Box::new(ThreeQueues)).unwrap();
        let mut b = [0xaau8; 2];
        t.read(reg::MAGIC, &mut b);
        assert_eq!(b, [0, 0]);
        let mut b = [0u8; 4];
        t.read(reg::MAGIC + 1, &mut b);
        assert_eq!(b, [0; 4]);
        t.write(reg::STATUS, &[1]);
        t.write(reg::STATUS + 2, &1u32.to_le_bytes());
        assert_eq!(t.status(), 0);
        t.write(reg::STATUS, &1u32.to_le_bytes());
        assert_eq!(t.status(), 1);
        // Unknown registers read as zero, SHM regions as absent.
        t.read(0x0c8, &mut b);
        assert_eq!(b, [0; 4]);
        t.read(reg::SHM_LEN_LOW, &mut b);
        assert_eq!(u32::from_le_bytes(b), u32::MAX);
    }

    #[test]
    fn device_without_version_1_is_rejected() {
        struct Legacy;
        impl VirtioDevice for Legacy {
            fn device_type(&self) -> u32 {
                2
            }
            fn queue_max_sizes(&self) -> &[u16] {
                &[8]
            }
            fn avail_features(&self) -> u64 {
                0
            }
            fn set_acked_features(&mut self, _: u64) {}
            fn read_config(&self, _: u64, _: &mut [u8]) {}
            fn write_config(&mut self, _: u64, _: &[u8]) {}
            fn activate(&mut self, _: ActivateContext) -> Result<(), ActivateError> {
                Ok(())
            }
            fn reset(&mut self) -> bool {
                true
            }
        }
        let mem = GuestMemory::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        assert!(matches!(
            MmioTransport::new(mem, Box::new(Legacy)),
            Err(TransportError::NotModern(2))
        ));
    }
}
