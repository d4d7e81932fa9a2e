//! Creating a container's namespaces, or joining those of a running one.

use std::fs;
use std::os::fd::AsRawFd;

use husk_protocol::NamespaceKind;

use super::{cvt, on_path, sys, InitError, Result};

/// The unshare(2) flags for `kinds`; user and time namespaces are refused.
pub fn flags(kinds: &[NamespaceKind]) -> Result<libc::c_int> {
    let mut flags = 0;
    for k in kinds {
        flags |= match k {
            NamespaceKind::Pid => libc::CLONE_NEWPID,
            NamespaceKind::Mount => libc::CLONE_NEWNS,
            NamespaceKind::Uts => libc::CLONE_NEWUTS,
            NamespaceKind::Ipc => libc::CLONE_NEWIPC,
            NamespaceKind::Network => libc::CLONE_NEWNET,
            NamespaceKind::Cgroup => libc::CLONE_NEWCGROUP,
            NamespaceKind::User | NamespaceKind::Time => {
                return Err(InitError::UnsupportedNamespace(*k))
            }
        };
    }
    Ok(flags)
}

/// Enters `target`'s namespaces and root, mount namespace last (it changes what /proc is).
pub fn join(target: i32, kinds: &[NamespaceKind]) -> Result<()> {
    let order = [
        (NamespaceKind::Ipc, "ipc"),
        (NamespaceKind::Uts, "uts"),
        (NamespaceKind::Network, "net"),
        (NamespaceKind::Cgroup, "cgroup"),
        (NamespaceKind::Pid, "pid"),
        (NamespaceKind::Mount, "mnt"),
    ];
    let mut fds = Vec::new();
    for (kind, name) in order {
        if kinds.contains(&kind) {
            let p = format!("/proc/{target}/ns/{name}");
            let f = fs::File::open(&p).map_err(on_path("opening", &p))?;
            fds.push((p, f));
        }
    }
    let root_path = format!("/proc/{target}/root");
    let root = fs::File::open(&root_path).map_err(on_path("opening", &root_path))?;
    for (p, f) in fds {
        // SAFETY: setns on an fd of an open /proc/PID/ns file we hold (`f`); the helper is single-
        // threaded, as setns into a mount namespace requires, and no memory is touched.
        cvt(unsafe { libc::setns(f.as_raw_fd(), 0) }).map_err(on_path("setns", p))?;
    }
    // SAFETY: fchdir on the fd of the open /proc/PID/root directory `root` we hold; it touches no
    // memory.
    cvt(unsafe { libc::fchdir(root.as_raw_fd()) }).map_err(on_path("fchdir", &root_path))?;
    nix::unistd::chroot(".").map_err(|e| sys("chroot into the container root")(e.into()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_and_time_namespaces_are_refused_by_name() {
        assert_eq!(
            flags(&[NamespaceKind::Pid, NamespaceKind::Mount]).unwrap(),
            libc::CLONE_NEWPID | libc::CLONE_NEWNS
        );
        let e = flags(&[NamespaceKind::Pid, NamespaceKind::User]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "User namespaces are not supported by husk-agent"
        );
    }
}
