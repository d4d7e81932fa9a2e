//! Capabilities: the bounding set is trimmed before the uid changes, the other sets are
//! set with capset(2) after, and ambient ones raised last (they need permitted+inheritable).

use std::io;

use husk_protocol::{Capabilities, Capability};

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// The kernel's highest capability number.
fn last_cap() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(40)
}

pub fn mask(set: &[Capability]) -> u64 {
    set.iter().fold(0u64, |m, c| m | (1u64 << c.number()))
}

/// Drops every capability outside `caps.bounding` from the bounding set.
pub fn drop_bounding(caps: &Capabilities) -> io::Result<()> {
    let keep = mask(&caps.bounding);
    for cap in 0..=last_cap().min(63) {
        if keep & (1 << cap) == 0 {
            // SAFETY: PR_CAPBSET_DROP takes a capability number and touches no memory of ours.
            let rc = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) };
            if rc < 0 && io::Error::last_os_error().raw_os_error() != Some(libc::EINVAL) {
                return Err(io::Error::last_os_error());
            }
        }
    }
    Ok(())
}

/// Sets effective, permitted and inheritable exactly, then raises the ambient ones.
pub fn apply(caps: &Capabilities) -> io::Result<()> {
    let (e, p, i) = (
        mask(&caps.effective),
        mask(&caps.permitted),
        mask(&caps.inheritable),
    );
    let mut hdr = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let data = [
        CapData {
            effective: e as u32,
            permitted: p as u32,
            inheritable: i as u32,
        },
        CapData {
            effective: (e >> 32) as u32,
            permitted: (p >> 32) as u32,
            inheritable: (i >> 32) as u32,
        },
    ];
    // SAFETY: `hdr` and `data` are live, #[repr(C)] and laid out as the kernel's v3 header and two
    // data structs, which capset reads (and may write the header's version into).
    let rc = unsafe { libc::syscall(libc::SYS_capset, &mut hdr as *mut CapHeader, data.as_ptr()) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: PR_CAP_AMBIENT_CLEAR_ALL takes only integers.
    unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0,
            0,
            0,
        )
    };
    for c in &caps.ambient {
        // SAFETY: PR_CAP_AMBIENT_RAISE takes a capability number and touches no memory of ours.
        let rc = unsafe {
            libc::prctl(
                libc::PR_CAP_AMBIENT,
                libc::PR_CAP_AMBIENT_RAISE as libc::c_ulong,
                c.number() as libc::c_ulong,
                0,
                0,
            )
        };
        if rc < 0 {
            return Err(io::Error::other(format!(
                "raising ambient {}: {}",
                c.name(),
                io::Error::last_os_error()
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_use_kernel_numbers() {
        assert_eq!(
            mask(&[Capability::Chown, Capability::SysAdmin]),
            1 | (1 << 21)
        );
        assert_eq!(mask(&[Capability::CheckpointRestore]), 1 << 40);
        assert_eq!(mask(&[]), 0);
    }
}
