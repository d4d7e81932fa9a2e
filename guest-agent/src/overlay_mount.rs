//! The container's overlay, mounted through the new mount API (`fsopen` / `fsconfig` /
//! `fsmount` / `move_mount`) with one `lowerdir+` per layer. The old `mount(2)` takes all
//! options in one page: 127 lower directories under `/run/husk/<64-hex id>/layers/` do not fit
//! in 4096 bytes, one `fsconfig` call per layer always does (Linux 6.8+; husk's guest kernel
//! is newer).

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// A step of the overlay mount failed.
#[derive(Debug, thiserror::Error)]
#[error("mounting the overlay ({lower} lower layers) on {target}: {step}: {source}")]
pub struct OverlayError {
    pub lower: usize,
    pub step: String,
    pub target: PathBuf,
    #[source]
    pub source: nix::Error,
}

const FSOPEN_CLOEXEC: libc::c_uint = 1;
const FSCONFIG_SET_STRING: libc::c_uint = 1;
const FSCONFIG_CMD_CREATE: libc::c_uint = 6;
const FSMOUNT_CLOEXEC: libc::c_uint = 1;
const MOUNT_ATTR_RDONLY: libc::c_uint = 1;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 4;

/// Mounts overlayfs at `target` over `lower` (top layer first), with `upper` = (upperdir,
/// workdir) or read-only without.
pub fn mount(
    target: &Path,
    lower: &[PathBuf],
    upper: Option<(&Path, &Path)>,
) -> Result<(), OverlayError> {
    let fail = |step: &str, errno: nix::Error| OverlayError {
        lower: lower.len(),
        step: step.to_string(),
        target: target.to_path_buf(),
        source: errno,
    };
    let name = c"overlay";
    // SAFETY: fsopen reads a NUL-terminated string and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_fsopen, name.as_ptr(), FSOPEN_CLOEXEC) };
    if fd < 0 {
        return Err(fail("fsopen", nix::Error::last()));
    }
    // SAFETY: fd is a descriptor fsopen just returned, owned by nothing else.
    let fs = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let set = |key: &str, value: &Path| -> Result<(), OverlayError> {
        let key = CString::new(key).map_err(|_| fail(key, nix::Error::EINVAL))?;
        let value = CString::new(value.as_os_str().as_bytes())
            .map_err(|_| fail("path with NUL", nix::Error::EINVAL))?;
        // SAFETY: fsconfig reads two NUL-terminated strings that outlive the call.
        let r = unsafe {
            libc::syscall(
                libc::SYS_fsconfig,
                fs.as_raw_fd(),
                FSCONFIG_SET_STRING,
                key.as_ptr(),
                value.as_ptr(),
                0,
            )
        };
        if r < 0 {
            return Err(fail(
                &format!("{key:?} {}", value.to_string_lossy()),
                nix::Error::last(),
            ));
        }
        Ok(())
    };
    for dir in lower {
        set("lowerdir+", dir)?;
    }
    if let Some((up, work)) = upper {
        set("upperdir", up)?;
        set("workdir", work)?;
    }
    // SAFETY: fsconfig with CMD_CREATE takes no pointers.
    let r = unsafe {
        libc::syscall(
            libc::SYS_fsconfig,
            fs.as_raw_fd(),
            FSCONFIG_CMD_CREATE,
            std::ptr::null::<libc::c_char>(),
            std::ptr::null::<libc::c_void>(),
            0,
        )
    };
    if r < 0 {
        return Err(fail("create", nix::Error::last()));
    }
    let attrs = if upper.is_none() {
        MOUNT_ATTR_RDONLY
    } else {
        0
    };
    // SAFETY: fsmount takes the context descriptor and integer flags; returns a descriptor.
    let m = unsafe { libc::syscall(libc::SYS_fsmount, fs.as_raw_fd(), FSMOUNT_CLOEXEC, attrs) };
    if m < 0 {
        return Err(fail("fsmount", nix::Error::last()));
    }
    // SAFETY: m is a descriptor fsmount just returned, owned by nothing else.
    let mnt = unsafe { OwnedFd::from_raw_fd(m as i32) };
    let to = CString::new(target.as_os_str().as_bytes())
        .map_err(|_| fail("target with NUL", nix::Error::EINVAL))?;
    // SAFETY: move_mount reads two NUL-terminated strings that outlive the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            mnt.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_FDCWD,
            to.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH,
        )
    };
    if r < 0 {
        return Err(fail("move_mount", nix::Error::last()));
    }
    Ok(())
}
