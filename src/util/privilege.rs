//! Who may drive husk: root only. husk starts VMs, makes TAP devices, bridges and mounts,
//! and keeps its state in directories only root may enter (0700), so another user gets one
//! line saying so before anything is touched, never a half-created container.

/// The calling user is not root.
#[derive(Debug, thiserror::Error)]
#[error(
    "needs root (you are uid {uid}): it starts VMs, makes TAP devices and mounts, and keeps \
     its state where only root may go; run it with sudo"
)]
pub struct NotRoot {
    pub uid: u32,
}

/// Ok for root (effective uid 0).
pub fn require_root() -> Result<(), NotRoot> {
    // SAFETY: geteuid has no arguments and cannot fail.
    let uid = unsafe { libc::geteuid() };
    if uid == 0 {
        Ok(())
    } else {
        Err(NotRoot { uid })
    }
}
