//! The engine's network namespace → the VM's NIC.
//!
//! podman (netavark) and CNI prepare a network namespace holding a veth with the container's
//! MAC, addresses and routes, and name it in `linux.namespaces[network].path`. The VM holder
//! [`attach`]es a TAP beside that veth (tc mirrors the two, see [`crate::network::netns`])
//! before the VM starts and gives the guest the veth's identity, so the engine's bridge, port
//! publishing and DNS work unchanged. A namespace with only `lo` (podman `--network none`)
//! gives no NIC. A spec that asks for a new namespace (no path: docker, containerd) gets
//! one of the VM holder's own ([`own_namespace`]); docker's prestart hook moves its veth
//! into it, and it is attached as podman's is. What was set up is recorded in the container's state, and [`detach`]ed when
//! the VM holder ends and again at `delete` (after a `kill -9` of the VM holder the TAP is gone
//! with the VMM already; only the veth's ingress qdisc is left for `delete` to remove).
//!
//! Name resolution: engines bind-mount their own `/etc/resolv.conf` and `/etc/hosts` (the
//! agent binds those single files out of their shared directory over what it writes). A
//! spec that binds no `/etc/resolv.conf` gets the host's nameservers, less loopback ones
//! (a resolver on the host's 127.0.0.x is not reachable from the engine's namespace), as
//! docker does; the agent writes `/etc/hosts` (localhost, the hostname) either way.

use std::path::Path;

use husk_protocol::ContainerSpec;

use super::{runc_log, Error};
use crate::backend::TapSpec;
use crate::network::netns::{self, NetnsLink};
use crate::network::{self, tap, Wiring};

/// The NIC the VM gets, the guest's network (for `ContainerSpec::network`, once its
/// set-up, which runs beside the boot, is done) and what to detach later.
pub struct Attached {
    pub tap: TapSpec,
    pub guest: Wiring,
    pub link: NetnsLink,
}

/// Attaches the VM of container `id` (whose spec is `container`) to the engine's namespace
/// `netns`. `Ok(None)`: the namespace holds no Ethernet link, so no NIC.
pub fn attach(id: &str, netns: &str, container: &ContainerSpec) -> Result<Option<Attached>, Error> {
    let path = Path::new(netns);
    let err = |source| Error::Network {
        id: id.to_string(),
        netns: netns.to_string(),
        source: Box::new(source),
    };
    // One clear line for a namespace that is not there (the tools would say it less well).
    if let Err(source) = std::fs::File::open(path) {
        return Err(err(network::Error::Io {
            path: path.to_path_buf(),
            source,
        }));
    }
    let engine = match netns::attach(path, &tap::name_for(id)) {
        Ok(e) => e,
        Err(network::Error::NoEngineLink { .. }) => {
            runc_log::debug(&format!(
                "network namespace {netns}: no Ethernet link, the VM gets no NIC"
            ));
            return Ok(None);
        }
        Err(e) => return Err(err(e)),
    };
    let guest = match binds(container, "/etc/resolv.conf") {
        true => engine.guest,
        false => engine.guest.with_dns(network::resolv::host()),
    };
    Ok(Some(Attached {
        tap: engine.tap,
        guest,
        link: engine.link,
    }))
}

/// Moves the calling thread, which must be the process's main one (whose namespace
/// `/proc/<pid>/ns/net` names, as hooks read it), into a new network namespace; returns that
/// path. Everything the caller starts from then on (hooks, the VMM) is in it with it.
pub fn own_namespace(id: &str) -> Result<String, Error> {
    let err = |source| Error::NewNetns {
        id: id.to_string(),
        source,
    };
    let pid = std::process::id();
    // SAFETY: plain syscalls without pointers.
    if unsafe { libc::gettid() } as u32 != pid {
        return Err(err(std::io::Error::other(
            "not on the main thread: /proc/<pid>/ns/net would not name it",
        )));
    }
    // SAFETY: unshare takes flags only; it changes this thread's network namespace alone.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        return Err(err(std::io::Error::last_os_error()));
    }
    Ok(format!("/proc/{pid}/ns/net"))
}

/// Undoes [`attach`] once the VM is gone; failures are logged (the engine removes the
/// namespace, and the veth with it, anyway).
pub fn detach(link: &NetnsLink) {
    if let Err(e) = netns::detach(link) {
        runc_log::warn(&format!(
            "network namespace {}: detaching {}: {e}",
            link.netns.display(),
            link.tap
        ));
    }
}

/// Whether the container's mounts put something over `dest`.
fn binds(container: &ContainerSpec, dest: &str) -> bool {
    container
        .mounts
        .iter()
        .any(|m| Path::new(&m.destination) == Path::new(dest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_namespace_is_one_clear_error() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("rootfs")).unwrap();
        std::fs::write(d.path().join("resolv.conf"), "nameserver 10.88.0.1\n").unwrap();
        let config = serde_json::json!({
            "ociVersion": "1.0.2",
            "process": {"user": {"uid": 0, "gid": 0}, "args": ["sh"], "cwd": "/"},
            "root": {"path": "rootfs"},
            "mounts": [{"destination": "/etc/resolv.conf", "type": "bind",
                        "source": d.path().join("resolv.conf"), "options": ["bind"]}],
            "linux": {"namespaces": [{"type": "network", "path": "/nonexistent/netns/x"}]}
        });
        std::fs::write(d.path().join("config.json"), config.to_string()).unwrap();
        let plan = super::super::bundle::plan("c1", d.path()).unwrap();
        assert!(binds(&plan.container, "/etc/resolv.conf"));
        assert!(!binds(&plan.container, "/etc/hosts"));
        let e = attach("c1", "/nonexistent/netns/x", &plan.container)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            e.contains("/nonexistent/netns/x") && e.contains("No such file") && !e.contains('\n'),
            "{e}"
        );
    }
}
