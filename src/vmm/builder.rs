//! The boot path, top to bottom in [`Vmm::new`], and the run loop in [`Vmm::run`].

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use event_manager::SubscriberOps;
use kvm_bindings::{kvm_pit_config, KVM_MAX_CPUID_ENTRIES, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Cap, Kvm, VmFd};
use std::os::fd::AsRawFd;
use std::sync::Mutex;
use vm_memory::{GuestAddress, GuestMemoryMmap};

use crate::confine::seccomp::{self, ThreadKind};
use crate::confine::{jail, threads};

use super::arch::{
    self,
    x86_64::{boot_params, cpuid, layout, mptable},
};
use super::attach::{self, AttachError, DeviceEnv};
use super::config::{ConfigError, VmmConfig};
use super::console::ExitListener;
use super::device_manager::{DeviceManager, EventLoop};
use super::exit::{ExitReason, VmExit};
use super::kvm::{self, KvmError};
use super::loader::{self, LoaderError};
use super::memory::{self, MemoryError};
use super::vcpu::{self, Vcpu, VcpuError};

/// Where KVM puts the 3-page TSS that VMX needs for real-mode emulation: just below the
/// 4 GiB boundary, inside the MMIO gap, where no RAM or device lives.
const KVM_TSS_ADDRESS: usize = 0xfffb_d000;

#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    /// Invalid configuration.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// /dev/kvm is unusable.
    #[error(transparent)]
    Kvm(#[from] KvmError),
    /// A VM-level KVM ioctl failed.
    #[error("{what}: {source}")]
    KvmIoctl {
        what: &'static str,
        source: kvm_ioctls::Error,
    },
    /// Guest memory set-up failed.
    #[error(transparent)]
    Memory(#[from] MemoryError),
    /// Loading kernel, initramfs or command line failed.
    #[error(transparent)]
    Loader(#[from] LoaderError),
    /// A device could not be attached.
    #[error(transparent)]
    Attach(#[from] AttachError),
    /// x86 boot structures (boot_params, MP table, vCPU registers) could not be set up.
    #[error("{what}: {err}")]
    Arch {
        what: String,
        #[source]
        err: Box<dyn std::error::Error + Send + Sync>,
    },
    /// vCPU threads could not start.
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
    /// The jail could not be entered.
    #[error(transparent)]
    Jail(#[from] jail::Error),
    /// The event loop failed.
    #[error("event loop: {0:?}")]
    EventLoop(event_manager::Error),
    /// Host resource (eventfd) failure.
    #[error("{what}: {source}")]
    Io {
        what: &'static str,
        source: std::io::Error,
    },
}

fn ioctl(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmmError {
    move |source| VmmError::KvmIoctl { what, source }
}

fn arch_err<E: std::error::Error + Send + Sync + 'static>(
    what: impl Into<String>,
) -> impl FnOnce(E) -> VmmError {
    let what = what.into();
    move |e| VmmError::Arch {
        what,
        err: Box::new(e),
    }
}

/// A built VM, ready to run.
pub struct Vmm {
    // Kept open for the VM's lifetime; vCPU threads hold their own fds and memory handles.
    _kvm: Kvm,
    _vm: VmFd,
    _mem: GuestMemoryMmap,
    event_loop: EventLoop,
    exit: Arc<VmExit>,
    vcpus: Vec<Vcpu>,
    timeout: Option<Duration>,
}

impl Vmm {
    /// Builds the VM described by `cfg`. The order is deliberate; see the comments.
    pub fn new(cfg: VmmConfig) -> Result<Self, VmmError> {
        cfg.validate()?;
        let kvm = kvm::open()?;
        let vm = kvm.create_vm().map_err(ioctl("KVM_CREATE_VM"))?;

        // Memory before the irqchip: registering slots afterwards costs milliseconds.
        let regions = layout::arch_memory_regions(cfg.memory_bytes() as u64);
        // A vhost-user backend maps guest memory from an fd; anonymous memory has none.
        let mem = if cfg.fs.is_empty() {
            memory::create(&regions)?
        } else {
            memory::create_shared(&regions)?
        };
        memory::register(&vm, &mem)?;
        vm.set_tss_address(KVM_TSS_ADDRESS)
            .map_err(ioctl("KVM_SET_TSS_ADDR"))?;
        vm.create_irq_chip().map_err(ioctl("KVM_CREATE_IRQCHIP"))?;
        // The dummy speaker keeps port 0x61 in the kernel (Linux's PIT calibration reads it).
        let pit = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        vm.create_pit2(pit).map_err(ioctl("KVM_CREATE_PIT2"))?;

        let exit = VmExit::new().map_err(|source| VmmError::Io {
            what: "exit eventfd",
            source,
        })?;
        let mut event_loop = EventLoop::new().map_err(VmmError::EventLoop)?;
        event_loop.add_subscriber(Arc::new(Mutex::new(ExitListener {
            fd: exit.evt().as_raw_fd(),
        })));

        // Devices, which may add to the command line, before it is written to memory.
        let mut cmdline = loader::cmdline(&cfg.kernel_cmdline())?;
        let mut devices = DeviceManager::new();
        {
            let mut env = DeviceEnv {
                vm: &vm,
                mem: &mem,
                cmdline: &mut cmdline,
                devices: &mut devices,
                event_loop: &mut event_loop,
                exit: &exit,
            };
            attach::attach_serial(&mut env, &cfg.console)?;
            attach::attach_i8042(&mut env)?;
            attach::attach_layer_disk(&mut env, cfg.layer_disk.as_ref())?;
            attach::attach_block_devices(&mut env, &cfg.disks)?;
            attach::attach_vsock(&mut env, cfg.vsock.as_ref())?;
            attach::attach_fs_devices(&mut env, &cfg.fs)?;
            attach::attach_net_devices(&mut env, &cfg.net)?;
        }

        // The guest's software and the structures the boot protocol points it to.
        let kernel = loader::load_kernel(&mem, &cfg.kernel)?;
        let initrd = cfg
            .initramfs
            .as_deref()
            .map(|p| loader::load_initrd(&mem, p))
            .transpose()?;
        let cmdline_size = loader::write_cmdline(&mem, &cmdline)?;
        boot_params::configure_boot_params(
            &mem,
            GuestAddress(layout::CMDLINE_START),
            cmdline_size,
            initrd,
            kernel.setup_header,
        )
        .map_err(arch_err("boot_params"))?;
        mptable::setup_mptable(&mem, cfg.vcpus).map_err(arch_err("MP table"))?;

        // vCPUs last: each needs the entry point and the finished memory image.
        let mut cpuid = kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(ioctl("KVM_GET_SUPPORTED_CPUID"))?;
        cpuid::add_emulated_features(&mut cpuid, kvm.check_extension(Cap::TscDeadlineTimer));
        let msrs = kvm
            .get_msr_index_list()
            .map_err(ioctl("KVM_GET_MSR_INDEX_LIST"))?;
        let mut vcpus = Vec::with_capacity(cfg.vcpus.into());
        for id in 0..cfg.vcpus {
            let fd = vm
                .create_vcpu(id.into())
                .map_err(ioctl("KVM_CREATE_VCPU"))?;
            arch::x86_64::configure_vcpu(
                &fd,
                &mem,
                id,
                cfg.vcpus,
                kernel.entry.0,
                &cpuid,
                msrs.as_slice(),
            )
            .map_err(arch_err(format!("configuring vCPU {id}")))?;
            vcpus.push(Vcpu {
                id,
                fd,
                pio: devices.pio.clone(),
                mmio: devices.mmio.clone(),
                mem: mem.clone(),
                exit: exit.clone(),
            });
        }

        // Everything the VM needs is open: confine the process before any guest code runs.
        if let Some(j) = &cfg.jail {
            jail::enter(j)?;
        }

        Ok(Self {
            _kvm: kvm,
            _vm: vm,
            _mem: mem,
            event_loop,
            exit,
            vcpus,
            timeout: cfg.timeout_secs.map(Duration::from_secs_f64),
        })
    }

    /// Runs the VM until the guest resets, something fails, or the watchdog fires.
    ///
    /// Returns without waiting for the vCPU threads: they are kicked out of KVM_RUN and
    /// stop on their own. The VM itself lives until `self` is dropped — destroying it costs
    /// 13–25 ms here (RCU grace periods, the PIT's worker), which [`super::teardown`] can
    /// keep off a process's exit path.
    pub fn run(&mut self) -> Result<ExitReason, VmmError> {
        vcpu::install_kick_handler()?;
        let deadline = self.timeout.map(|t| (Instant::now() + t, t));
        // With seccomp on, device workers start from the spawner (started first: a vCPU may
        // activate a device at once), never from a vCPU; the main thread filters itself last,
        // once it has started its threads.
        if seccomp::active() {
            threads::start_spawner().map_err(|source| VmmError::Io {
                what: "the thread spawner",
                source,
            })?;
        }
        let mut threads: Vec<JoinHandle<()>> = Vec::with_capacity(self.vcpus.len());
        for v in self.vcpus.drain(..) {
            match v.spawn() {
                Ok(t) => threads.push(t),
                Err(e) => {
                    self.exit.request(ExitReason::HostError(e.to_string()));
                    break;
                }
            }
        }
        seccomp::install_or_exit(ThreadKind::Main);
        while !self.exit.is_stopping() {
            let wait_ms = match deadline {
                None => -1,
                Some((at, t)) => {
                    let left = at.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        self.exit.request(ExitReason::Timeout {
                            secs: t.as_secs_f64(),
                        });
                        break;
                    }
                    // Round up so the loop does not spin on a sub-millisecond remainder.
                    left.as_millis().saturating_add(1).min(i32::MAX as u128) as i32
                }
            };
            if let Err(e) = self.event_loop.run_with_timeout(wait_ms) {
                self.exit
                    .request(ExitReason::HostError(format!("event loop: {e:?}")));
            }
        }
        vcpu::kick_all(&threads);
        Ok(self
            .exit
            .reason()
            .unwrap_or_else(|| ExitReason::HostError("VM stopped without a reason".into())))
    }
}
