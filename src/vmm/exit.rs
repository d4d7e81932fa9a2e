//! Why a VM ended, recorded once: the first vCPU or device that ends the VM wins, and every
//! later reason (a triple fault after a reset request, a kicked vCPU's EINTR) is ignored.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// How the VM ended.
#[derive(Debug, Clone, PartialEq)]
pub enum ExitReason {
    /// The guest pulsed the i8042 reset line (Linux reboot/poweroff with reboot=k): clean.
    Reset,
    /// The guest asked KVM for a shutdown/reset system event: clean.
    SystemEvent(u32),
    /// KVM_EXIT_SHUTDOWN: a triple fault.
    TripleFault { vcpu: u8 },
    /// KVM_EXIT_INTERNAL_ERROR: usually an instruction KVM's emulator cannot handle.
    InternalError {
        vcpu: u8,
        suberror: u32,
        rip: Option<u64>,
    },
    /// KVM_EXIT_FAIL_ENTRY: the CPU refused to enter the guest.
    FailEntry { vcpu: u8, reason: u64 },
    /// An exit the VMM does not handle.
    UnexpectedExit { vcpu: u8, what: String },
    /// An ioctl or thread failure on the host side.
    HostError(String),
    /// The watchdog (`timeout_secs`) ran out.
    Timeout { secs: f64 },
}

impl ExitReason {
    /// Clean ends give 0, everything else 1.
    pub fn exit_code(&self) -> i32 {
        match self {
            Self::Reset | Self::SystemEvent(_) => 0,
            _ => 1,
        }
    }

    pub fn is_clean(&self) -> bool {
        self.exit_code() == 0
    }
}

impl std::fmt::Display for ExitReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Reset => f.write_str("guest reset through the i8042"),
            Self::SystemEvent(t) => write!(f, "guest system event {t}"),
            Self::TripleFault { vcpu } => {
                write!(f, "guest triple fault on vCPU {vcpu} (KVM_EXIT_SHUTDOWN)")
            }
            Self::InternalError {
                vcpu,
                suberror,
                rip,
            } => {
                write!(
                    f,
                    "KVM internal error on vCPU {vcpu} (suberror {suberror}{})",
                    if *suberror == 1 {
                        ": instruction emulation failed"
                    } else {
                        ""
                    }
                )?;
                match rip {
                    Some(rip) => write!(f, " at guest rip {rip:#x}"),
                    None => Ok(()),
                }
            }
            Self::FailEntry { vcpu, reason } => {
                write!(
                    f,
                    "KVM failed to enter vCPU {vcpu} (hardware reason {reason:#x})"
                )
            }
            Self::UnexpectedExit { vcpu, what } => {
                write!(f, "unexpected exit on vCPU {vcpu}: {what}")
            }
            Self::HostError(e) => f.write_str(e),
            Self::Timeout { secs } => write!(f, "watchdog: guest still running after {secs} s"),
        }
    }
}

/// Shared by vCPU threads, devices and the event loop.
pub struct VmExit {
    stopping: AtomicBool,
    reason: Mutex<Option<ExitReason>>,
    evt: EventFd,
}

impl VmExit {
    pub fn new() -> std::io::Result<Arc<Self>> {
        Ok(Arc::new(Self {
            stopping: AtomicBool::new(false),
            reason: Mutex::new(None),
            evt: EventFd::new(EFD_NONBLOCK)?,
        }))
    }

    /// Ends the VM with `reason` unless it is already ending. Returns whether this call won.
    pub fn request(&self, reason: ExitReason) -> bool {
        let mut slot = self.reason.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_some() {
            return false;
        }
        *slot = Some(reason);
        self.stopping.store(true, Ordering::SeqCst);
        drop(slot);
        // Failing to wake the loop only delays the exit until the next event or timeout.
        let _ = self.evt.write(1);
        true
    }

    /// Cheap check for vCPU loops between exits.
    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::Relaxed)
    }

    pub fn reason(&self) -> Option<ExitReason> {
        self.reason
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Readable once the VM is ending.
    pub fn evt(&self) -> &EventFd {
        &self.evt
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_reason_wins() {
        let e = VmExit::new().unwrap();
        assert!(!e.is_stopping());
        assert!(e.request(ExitReason::Reset));
        assert!(!e.request(ExitReason::TripleFault { vcpu: 0 }));
        assert!(e.is_stopping());
        assert_eq!(e.reason(), Some(ExitReason::Reset));
        assert_eq!(e.evt().read().unwrap(), 1);
    }

    #[test]
    fn exit_codes_and_messages() {
        assert_eq!(ExitReason::Reset.exit_code(), 0);
        let tf = ExitReason::TripleFault { vcpu: 1 };
        assert_eq!(tf.exit_code(), 1);
        assert!(tf.to_string().contains("triple fault"));
        let ie = ExitReason::InternalError {
            vcpu: 0,
            suberror: 1,
            rip: Some(0x100_0000),
        };
        assert!(ie.to_string().contains("emulation failed"));
        assert!(ie.to_string().contains("rip 0x1000000"));
        assert!(!ie.to_string().contains('\n'));
    }
}
