//! Hook point for devices: everything a device needs while the VM is being built, in one
//! struct, and one `attach_*` function per device kind, called by `Vmm::new` in order.
//!
//! A virtio device is attached with [`attach_virtio`]: it builds the device, and
//! [`attach_virtio_mmio`] (the devices module's single attach path) takes the next window
//! and GSI from `env.devices.virtio`, puts the transport on the MMIO bus, registers one
//! ioeventfd per queue on QueueNotify, the irqfd, and the `virtio_mmio.device=` entry. The
//! data path runs on the device's own worker thread from DRIVER_OK on, so nothing is added
//! to the VMM's event loop.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use kvm_ioctls::VmFd;
use linux_loader::cmdline::Cmdline;
use vm_memory::GuestMemoryMmap;

use super::config::{ConsoleConfig, DiskConfig, FsConfig, LayerDiskConfig, NetConfig, VsockConfig};
use super::console::{ConsoleError, SerialInput};
use super::device_manager::{irqfd, DeviceError, DeviceManager, EventLoop};
use super::exit::{ExitReason, VmExit};
use crate::devices::legacy::i8042::{I8042Device, I8042_KBD_IRQ, I8042_PORT, I8042_PORT_LEN};
use crate::devices::legacy::serial::{SerialDevice, COM1_IRQ, COM1_PORT, COM1_PORT_LEN};
use crate::devices::legacy::EventFdTrigger;
use crate::devices::virtio::block::composite::{self, CompositeDisk, CompositeError};
use crate::devices::virtio::block::{BackendError, Block, RawFile};
use crate::devices::virtio::fs::{self, VhostUserFs};
use crate::devices::virtio::mmio::{self, attach_virtio_mmio, AttachedDevice};
use crate::devices::virtio::net::{Net, Tap, TapError};
use crate::devices::virtio::vsock::{self, Vsock};
use crate::devices::virtio::VirtioDevice;
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
    /// Device set-up failed.
    #[error(transparent)]
    Device(#[from] DeviceError),
    /// The console's host side failed.
    #[error(transparent)]
    Console(#[from] ConsoleError),
    /// A --disk image could not be opened.
    #[error("--disk: {0}")]
    Disk(#[from] BackendError),
    /// The layer disk could not be built from its layers.
    #[error("layer disk: {0}")]
    LayerDisk(#[from] CompositeError),
    /// The vsock device could not be created (CID, socket path).
    #[error(transparent)]
    Vsock(#[from] vsock::Error),
    /// A virtio-fs backend could not be reached or negotiated with.
    #[error(transparent)]
    Fs(#[from] fs::Error),
    /// The directory that should hold the vsock socket does not exist.
    #[error("vsock: directory {dir} for the socket {uds} does not exist; create it first")]
    VsockDir { uds: PathBuf, dir: PathBuf },
    /// A --net TAP could not be opened or set up.
    #[error("--net: {0}")]
    Tap(#[from] TapError),
    /// An inherited TAP fd is another interface than the name given beside it.
    #[error("--net: fd {fd} is TAP {actual}, not {expected}")]
    TapMismatch {
        fd: i32,
        actual: String,
        expected: String,
    },
    /// Placing a virtio device (window, GSI, ioeventfd, irqfd, cmdline) failed.
    #[error(transparent)]
    Virtio(#[from] mmio::AttachError),
}

/// Places one virtio device: window + GSI, bus, ioeventfds, irqfd and cmdline entry.
pub fn attach_virtio(
    env: &mut DeviceEnv,
    device: Box<dyn VirtioDevice>,
) -> Result<AttachedDevice, AttachError> {
    let kind = device.device_type();
    let a = attach_virtio_mmio(
        env.vm,
        &mut env.devices.mmio,
        env.cmdline,
        env.mem,
        &mut env.devices.virtio,
        device,
    )?;
    tracing::debug!(
        "virtio device type {kind} at {:#x}+{:#x}, GSI {}",
        a.base,
        a.size,
        a.gsi
    );
    Ok(a)
}

/// The image layers' composite disk (read-only, one virtio-blk device), when configured.
pub fn attach_layer_disk(
    env: &mut DeviceEnv,
    layers: Option<&LayerDiskConfig>,
) -> Result<(), AttachError> {
    let Some(cfg) = layers else {
        return Ok(());
    };
    let mut disk = CompositeDisk::open(&composite::indexed_layers(&cfg.layers))?;
    if let Some(id) = &cfg.serial {
        disk = disk.with_id(id);
    }
    attach_virtio(env, Box::new(Block::new("husk-layers", Arc::new(disk))))?;
    Ok(())
}

/// virtio-blk devices, in the order given (the guest sees them as vda, vdb, …). Read-only
/// disks are opened O_RDONLY and offer VIRTIO_BLK_F_RO.
pub fn attach_block_devices(env: &mut DeviceEnv, disks: &[DiskConfig]) -> Result<(), AttachError> {
    for (i, disk) in disks.iter().enumerate() {
        let dev = block_device(i, disk)?;
        attach_virtio(env, Box::new(dev))?;
    }
    Ok(())
}

/// The virtio-blk device for the `index`th disk: its image opened (O_RDONLY when read-only)
/// and, when the config names one, GET_ID answering `disk.serial` — how the guest agent finds
/// a disk in `/sys/block/*/serial`. The serial is assumed checked ([`DiskConfig::check`],
/// part of `VmmConfig::validate`).
pub fn block_device(index: usize, disk: &DiskConfig) -> Result<Block, AttachError> {
    let mut file = RawFile::open(&disk.path, disk.read_only)?;
    if let Some(id) = &disk.serial {
        file = file.with_id(id);
    }
    // Worker thread names are capped at 15 bytes; "husk-blk18" fits.
    Ok(Block::new(&format!("husk-blk{index}"), Arc::new(file)))
}

/// The virtio-vsock device bridged to host unix sockets.
pub fn attach_vsock(env: &mut DeviceEnv, vsock: Option<&VsockConfig>) -> Result<(), AttachError> {
    let Some(cfg) = vsock else {
        return Ok(());
    };
    // bind(2) would only say ENOENT; name the directory that is missing.
    let dir = match cfg.uds.parent() {
        Some(d) if d.as_os_str().is_empty() => Path::new("."),
        Some(d) => d,
        None => Path::new("/"),
    };
    if !dir.is_dir() {
        return Err(AttachError::VsockDir {
            uds: cfg.uds.clone(),
            dir: dir.to_path_buf(),
        });
    }
    let dev = Vsock::new(cfg.cid.into(), cfg.uds.clone())?;
    attach_virtio(env, Box::new(dev))?;
    Ok(())
}

/// One virtio-fs device per share, each the frontend of the virtiofsd listening on its
/// socket. A backend that hangs up later ends the VM with a host error naming the share:
/// the guest's requests on that device would otherwise never complete.
pub fn attach_fs_devices(env: &mut DeviceEnv, shares: &[FsConfig]) -> Result<(), AttachError> {
    for share in shares {
        let exit = env.exit.clone();
        let on_gone = Arc::new(move |why: String| {
            tracing::error!("{why}; stopping the VM");
            exit.request(ExitReason::HostError(why));
        });
        let dev = VhostUserFs::connect(&share.tag, &share.socket, on_gone)?;
        attach_virtio(env, Box::new(dev))?;
    }
    Ok(())
}

/// One virtio-net device per NIC, on its TAP (opened by name, or the inherited fd).
pub fn attach_net_devices(env: &mut DeviceEnv, nics: &[NetConfig]) -> Result<(), AttachError> {
    for (i, nic) in nics.iter().enumerate() {
        let tap = match (nic.fd, &nic.tap) {
            (Some(fd), name) => {
                let tap = Tap::from_raw_fd_checked(fd)?;
                if let Some(n) = name.as_ref().filter(|n| n.as_str() != tap.name()) {
                    return Err(AttachError::TapMismatch {
                        fd,
                        actual: tap.name().to_string(),
                        expected: n.clone(),
                    });
                }
                tap
            }
            (None, Some(name)) => Tap::open(name)?,
            // validate() refuses this; a config built in code may not have been validated.
            (None, None) => return Err(TapError::InvalidName(String::new()).into()),
        };
        tracing::debug!(
            "virtio-net {i}: TAP {} offloads {:#x}",
            tap.name(),
            tap.supported_offloads()
        );
        attach_virtio(env, Box::new(Net::new(tap, nic.guest_mac().0, i)))?;
    }
    Ok(())
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
