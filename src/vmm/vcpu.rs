//! vCPU threads: the KVM_RUN loop, exit dispatch to the buses, and the kick that pulls a
//! thread out of KVM_RUN when the VM ends.
//!
//! Kick: a real-time signal whose handler sets `immediate_exit` in the thread's own
//! `kvm_run`. A signal landing inside KVM_RUN makes it return EINTR; one landing just before
//! the ioctl leaves `immediate_exit` set so the ioctl returns at once — no window in which
//! a kick is lost and the process hangs (e.g. on an AP waiting for a SIPI forever).

use std::cell::Cell;
use std::sync::{Arc, Once};
use std::thread::JoinHandle;

use kvm_bindings::{
    kvm_run, KVM_SYSTEM_EVENT_CRASH, KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN,
};
use kvm_ioctls::{VcpuExit, VcpuFd};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::signal::{register_signal_handler, Killable, SIGRTMIN};

use super::exit::{ExitReason, VmExit};
use crate::confine::seccomp::ThreadKind;
use crate::confine::threads;
use crate::devices::bus::Bus;

#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    /// The kick signal handler could not be installed.
    #[error("cannot install the vCPU kick signal handler: {0}")]
    Signal(vmm_sys_util::errno::Error),
    /// The OS refused a new thread.
    #[error("cannot start vCPU {id} thread: {source}")]
    Spawn { id: u8, source: std::io::Error },
}

/// The kick signal: the first real-time signal, which nothing else in husk-vmm uses.
fn kick_signal() -> libc::c_int {
    SIGRTMIN()
}

thread_local! {
    // Const-initialised and Drop-free, so reading it from a signal handler touches no lazy
    // TLS machinery.
    static KVM_RUN: Cell<*mut kvm_run> = const { Cell::new(std::ptr::null_mut()) };
}

extern "C" fn handle_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    let _ = KVM_RUN.try_with(|p| {
        let run = p.get();
        if !run.is_null() {
            // SAFETY: the pointer is this thread's own mapped kvm_run, set while its VcpuFd
            // is alive on this thread; a volatile byte store is async-signal-safe.
            unsafe { std::ptr::addr_of_mut!((*run).immediate_exit).write_volatile(1) };
        }
    });
}

/// Installs the kick handler once per process.
pub fn install_kick_handler() -> Result<(), VcpuError> {
    static ONCE: Once = Once::new();
    let mut result = Ok(());
    ONCE.call_once(|| result = register_signal_handler(kick_signal(), handle_kick));
    result.map_err(VcpuError::Signal)
}

/// One configured vCPU, ready to run on its own thread.
pub struct Vcpu {
    pub id: u8,
    pub fd: VcpuFd,
    pub pio: Bus,
    pub mmio: Bus,
    /// Held so guest memory stays mapped while this thread may still be in KVM_RUN, even
    /// after the `Vmm` is gone.
    pub mem: GuestMemoryMmap,
    pub exit: Arc<VmExit>,
}

/// What to do after one KVM_RUN.
enum Next {
    Continue,
    Stop(ExitReason),
    InternalError,
}

impl Vcpu {
    pub fn spawn(self) -> Result<JoinHandle<()>, VcpuError> {
        let id = self.id;
        // The loop needs little stack; a small one keeps RSS down. The thread installs the
        // vCPU seccomp filter before its first KVM_RUN.
        threads::spawn_now(
            &format!("vcpu{id}"),
            ThreadKind::Vcpu,
            Some(256 << 10),
            move || self.run(),
        )
        .map_err(|source| VcpuError::Spawn { id, source })
    }

    /// Runs until the VM ends; records why if this vCPU is the one that ended it.
    pub fn run(mut self) {
        let run_ptr = self.fd.get_kvm_run() as *mut kvm_run;
        KVM_RUN.with(|p| p.set(run_ptr));
        while !self.exit.is_stopping() {
            match self.run_once(run_ptr) {
                Next::Continue => {}
                Next::Stop(reason) => {
                    self.exit.request(reason);
                }
                Next::InternalError => {
                    // SAFETY: the exit reason was KVM_EXIT_INTERNAL_ERROR, so `internal` is
                    // the union member the kernel filled.
                    let suberror =
                        unsafe { self.fd.get_kvm_run().__bindgen_anon_1.internal.suberror };
                    // Where it stopped, to look up in System.map.
                    let rip = self.fd.get_regs().ok().map(|r| r.rip);
                    self.exit.request(ExitReason::InternalError {
                        vcpu: self.id,
                        suberror,
                        rip,
                    });
                }
            }
        }
        KVM_RUN.with(|p| p.set(std::ptr::null_mut()));
    }

    fn run_once(&mut self, run_ptr: *mut kvm_run) -> Next {
        let id = self.id;
        // String I/O (`rep outsb`) arrives as `count` accesses of `size` bytes in one exit;
        // devices must see them one at a time.
        let io_size = || {
            // SAFETY: read right after a KVM_EXIT_IO, when `io` is the live union member;
            // `run_ptr` is this vCPU's mapped kvm_run.
            let size = unsafe { (*run_ptr).__bindgen_anon_1.io.size };
            usize::from(size).max(1)
        };
        match self.fd.run() {
            // Ports and addresses nobody owns (0x80 POST codes, absent UARTs, …) read as
            // all ones and swallow writes, as on a real board; that is not an error.
            Ok(VcpuExit::IoIn(port, data)) => {
                for chunk in data.chunks_mut(io_size()) {
                    self.pio.read(port.into(), chunk);
                }
                Next::Continue
            }
            Ok(VcpuExit::IoOut(port, data)) => {
                for chunk in data.chunks(io_size()) {
                    self.pio.write(port.into(), chunk);
                }
                Next::Continue
            }
            Ok(VcpuExit::MmioRead(addr, data)) => {
                self.mmio.read(addr, data);
                Next::Continue
            }
            Ok(VcpuExit::MmioWrite(addr, data)) => {
                self.mmio.write(addr, data);
                Next::Continue
            }
            Ok(VcpuExit::Shutdown) => Next::Stop(ExitReason::TripleFault { vcpu: id }),
            Ok(VcpuExit::FailEntry(reason, _)) => {
                Next::Stop(ExitReason::FailEntry { vcpu: id, reason })
            }
            Ok(VcpuExit::InternalError) => Next::InternalError,
            Ok(VcpuExit::SystemEvent(kind, _)) => match kind {
                KVM_SYSTEM_EVENT_SHUTDOWN | KVM_SYSTEM_EVENT_RESET => {
                    Next::Stop(ExitReason::SystemEvent(kind))
                }
                KVM_SYSTEM_EVENT_CRASH => Next::Stop(ExitReason::UnexpectedExit {
                    vcpu: id,
                    what: "guest crash system event".into(),
                }),
                other => Next::Stop(ExitReason::UnexpectedExit {
                    vcpu: id,
                    what: format!("system event {other}"),
                }),
            },
            // With the in-kernel LAPIC, HLT is handled in the kernel; seeing it here means
            // the guest stopped for good, which for husk is not a clean shutdown.
            Ok(VcpuExit::Hlt) => Next::Stop(ExitReason::UnexpectedExit {
                vcpu: id,
                what: "KVM_EXIT_HLT (guest halted)".into(),
            }),
            Ok(VcpuExit::Intr) => Next::Continue,
            Ok(other) => Next::Stop(ExitReason::UnexpectedExit {
                vcpu: id,
                what: format!("{other:?}"),
            }),
            Err(e) if e.errno() == libc::EINTR => {
                // A kick (or a stray signal): clear the flag and let the loop decide.
                self.fd.set_kvm_immediate_exit(0);
                Next::Continue
            }
            Err(e) if e.errno() == libc::EAGAIN => Next::Continue,
            Err(e) => Next::Stop(ExitReason::HostError(format!("KVM_RUN on vCPU {id}: {e}"))),
        }
    }
}

/// Pulls every vCPU thread out of KVM_RUN. Call after `VmExit::request`, so the threads see
/// `is_stopping` when they come back.
pub fn kick_all(threads: &[JoinHandle<()>]) {
    for t in threads {
        if !t.is_finished() {
            // A thread that already exited cannot be signalled; nothing to do then.
            let _ = t.kill(kick_signal());
        }
    }
}
