//! Hook point for devices: everything a device needs while the VM is being built, in one
//! struct, and one `attach_*` function per device kind, called by `Vmm::new` in order.
//!
//! A virtio device is attached by (1) building its transport as a `BusDevice`,
//! (2) `env.devices.register_virtio_mmio(env.cmdline, dev)` → `MmioSlot { base, len, irq }`
//! (MMIO window on the bus + `virtio_mmio.device=` entry), (3) `device_manager::irqfd(env.vm,
//! slot.irq)` for its interrupt, `env.vm.register_ioevent(..)` on `slot.base + 0x50` for queue
//! notifications, and (4) `env.event_loop.add_subscriber(..)` for its host-side fds.

use std::sync::{Arc, Mutex};

use kvm_ioctls::VmFd;
use linux_loader::cmdline::Cmdline;
use vm_memory::GuestMemoryMmap;

use super::config::{ConsoleConfig, DiskConfig, VsockConfig};
use super::console::{ConsoleError, SerialInput};
use super::device_manager::{irqfd, DeviceError, DeviceManager, EventLoop};
use super::exit::{ExitReason, VmExit};
use crate::devices::legacy::i8042::{I8042Device, I8042_KBD_IRQ, I8042_PORT, I8042_PORT_LEN};
use crate::devices::legacy::serial::{SerialDevice, COM1_IRQ, COM1_PORT, COM1_PORT_LEN};
use crate::devices::legacy::EventFdTrigger;
use event_manager::SubscriberOps;

/// What device set-up may use and change while the VM is built.
pub struct DeviceEnv<'a> {
    pub vm: &'a VmFd,
    /// Guest memory; clone it (cheap, Arc'd regions) to keep it in a device.
    pub mem: &'a GuestMemoryMmap,
    /// The kernel command line, not yet written to guest memory.
    pub cmdline: &'a mut Cmdline,
    pub devices: &'a mut DeviceManager,
    pub event_loop: &'a mut EventLoop,
    /// To end the VM from a device (with an `ExitReason`).
    pub exit: &'a Arc<VmExit>,
}

#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    /// The device kind is accepted by the config but not wired into husk-vmm yet.
    #[error("{0} is not supported by husk-vmm yet")]
    NotSupported(&'static str),
    /// Device set-up failed.
    #[error(transparent)]
    Device(#[from] DeviceError),
    /// The console's host side failed.
    #[error(transparent)]
    Console(#[from] ConsoleError),
}

/// virtio-blk devices, in the order given (the guest sees them as vda, vdb, …).
pub fn attach_block_devices(_env: &mut DeviceEnv, disks: &[DiskConfig]) -> Result<(), AttachError> {
    if disks.is_empty() {
        return Ok(());
    }
    Err(AttachError::NotSupported("--disk (virtio-blk)"))
}

/// The virtio-vsock device bridged to host unix sockets.
pub fn attach_vsock(_env: &mut DeviceEnv, vsock: Option<&VsockConfig>) -> Result<(), AttachError> {
    match vsock {
        None => Ok(()),
        Some(_) => Err(AttachError::NotSupported("--vsock (virtio-vsock)")),
    }
}

/// COM1 at 0x3f8, IRQ 4, output per `console`; stdin feeds it when the console is stdout.
pub fn attach_serial(env: &mut DeviceEnv, console: &ConsoleConfig) -> Result<(), AttachError> {
    let out = super::console::output(console)?;
    let irq = irqfd(env.vm, COM1_IRQ)?;
    let serial = Arc::new(Mutex::new(SerialDevice::new(EventFdTrigger::new(irq), out)));
    env.devices
        .register_pio(serial.clone(), COM1_PORT, COM1_PORT_LEN)?;
    if *console == ConsoleConfig::Stdout {
        env.event_loop
            .add_subscriber(Arc::new(Mutex::new(SerialInput::stdin(serial))));
    }
    Ok(())
}

/// The i8042 at 0x60/0x64, whose reset line ends the VM cleanly.
pub fn attach_i8042(env: &mut DeviceEnv) -> Result<(), AttachError> {
    let exit = env.exit.clone();
    let kbd_irq = irqfd(env.vm, I8042_KBD_IRQ)?;
    let dev = I8042Device::new(
        move || {
            exit.request(ExitReason::Reset);
        },
        Some(EventFdTrigger::new(kbd_irq)),
    );
    env.devices
        .register_pio(Arc::new(Mutex::new(dev)), I8042_PORT, I8042_PORT_LEN)?;
    Ok(())
}
