//! A bundle's `config.json` → everything the VM holder needs: the VM's size and shared
//! directories, the guest container, the hooks. All checking happens here, before anything
//! is spawned, so bad input leaves nothing behind.
//!
//! Honoured: process (see [`super::process`]), hostname, mounts (see [`super::mounts`]),
//! root.path/readonly, linux.maskedPaths/readonlyPaths/sysctl/seccomp, namespaces pid, mount,
//! uts, ipc, cgroup (new ones, in the guest); network: the path is remembered for the NIC;
//! linux.devices of the standard set (the guest's own /dev); resources.cpu quota/period → vCPUs
//! and resources.memory.limit → VM memory; hooks prestart, createRuntime, poststart, poststop
//! (on the host). Refused with an error: joining an existing pid/ipc/uts/mount/cgroup
//! namespace, user and time namespaces, other host devices, seccomp notify, and the
//! createContainer/startContainer hooks (they run in the container's namespaces, in the VM).
//! Ignored: other resources (cgroup weights, block I/O, device cgroup rules), apparmor,
//! selinux, rootfsPropagation, cgroupsPath.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use husk_protocol::{ContainerSpec, NamespaceKind, RootfsSpec, SeccompSpec};
use oci_spec::runtime::{Hook, LinuxNamespaceType, LinuxResources, Spec};

use super::{mounts, process, Error};
use crate::backend::SharedDirSpec;

/// virtio-fs tag of the bundle's rootfs.
pub const ROOTFS_TAG: &str = "husk-rootfs";
/// VM memory when the spec sets no limit.
pub const DEFAULT_MEMORY_MIB: u32 = 256;
/// Guest kernel and agent on top of a container's memory limit.
pub const GUEST_OVERHEAD_MIB: u32 = 64;
/// The smallest VM husk boots.
const MIN_MEMORY_MIB: u32 = 128;
/// vCPUs when the spec sets no CPU quota.
pub const DEFAULT_VCPUS: u8 = 1;
const MAX_VCPUS: u64 = 64;
/// Device nodes the agent gives every container's /dev.
const GUEST_DEVICES: [&str; 8] = [
    "/dev/null",
    "/dev/zero",
    "/dev/full",
    "/dev/random",
    "/dev/urandom",
    "/dev/tty",
    "/dev/console",
    "/dev/ptmx",
];

/// The hooks run on the host, in spec order per kind.
#[derive(Debug, Clone, Default)]
pub struct Hooks {
    pub prestart: Vec<Hook>,
    pub create_runtime: Vec<Hook>,
    pub poststart: Vec<Hook>,
    pub poststop: Vec<Hook>,
}

/// What one bundle asks for, checked.
#[derive(Debug, Clone)]
pub struct Plan {
    pub bundle: PathBuf,
    pub rootfs: PathBuf,
    pub container: ContainerSpec,
    /// The rootfs share first, then one per bind-mounted host directory.
    pub shares: Vec<SharedDirSpec>,
    pub vcpus: u8,
    pub memory_mib: u32,
    pub netns: Option<String>,
    /// The spec asks for a new network namespace (a `network` entry without a path, as
    /// docker's and containerd's specs do): the VM holder makes one for itself and runs the
    /// create-time hooks in it, so that a hook configuring `/proc/<pid>/ns/net` (docker's
    /// `libnetwork-setkey`) configures that namespace, never the host's, before the NIC is
    /// chosen.
    pub new_netns: bool,
    /// `linux.cgroupsPath`, as the engine gave it.
    pub cgroups_path: Option<PathBuf>,
    pub hooks: Hooks,
    pub annotations: BTreeMap<String, String>,
}

/// Reads `<bundle>/config.json`.
pub fn load_spec(bundle: &Path) -> Result<Spec, Error> {
    let path = bundle.join("config.json");
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(Error::NoConfig { path }),
        Err(source) => return Err(Error::Io { path, source }),
    };
    serde_json::from_slice(&bytes).map_err(|e| Error::BadConfig {
        path,
        detail: format!("not a valid OCI runtime spec: {e}"),
    })
}

/// Where a container's namespaces come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Namespaces {
    /// Its own VM: every namespace the spec asks for is made in the guest; a path to join
    /// one is refused (it names a host namespace).
    Own,
    /// A container of a pod (one VM for all): the VM's IPC and UTS namespaces are the pod's,
    /// shared by every container in it, so the spec's paths to the sandbox's are taken as
    /// that and none is made; pid and mount namespaces stay each container's own.
    Pod,
}

/// Loads and checks the bundle for container `id`, in a VM of its own.
pub fn plan(id: &str, bundle: &Path) -> Result<Plan, Error> {
    plan_with(id, bundle, Namespaces::Own)
}

/// Loads and checks the bundle for container `id`; `ns`: alone in its VM or in a pod's.
pub fn plan_with(id: &str, bundle: &Path, ns: Namespaces) -> Result<Plan, Error> {
    let bundle = std::path::absolute(bundle).map_err(Error::io(bundle))?;
    let spec = load_spec(&bundle)?;
    let bad = |detail: String| Error::BadConfig {
        path: bundle.join("config.json"),
        detail,
    };
    let root = spec
        .root()
        .as_ref()
        .ok_or_else(|| bad("no root: the bundle must name its rootfs".into()))?;
    let rootfs = bundle.join(root.path());
    if !rootfs.is_dir() {
        return Err(Error::NoRootfs { path: rootfs });
    }
    let proc = spec
        .process()
        .as_ref()
        .ok_or_else(|| bad("no process: nothing to run".into()))?;
    let process = process::convert(proc, (24, 80)).map_err(|source| Error::BadProcess {
        path: bundle.join("config.json"),
        source,
    })?;
    let translated = mounts::translate(spec.mounts().as_deref().unwrap_or_default())?;
    // Shared read-write even for `root.readonly`: as runc does on the host, the guest creates
    // missing mount points in the rootfs before it remounts `/` read-only.
    let mut shares = vec![SharedDirSpec::rootfs(&rootfs, ROOTFS_TAG, false)];
    shares.extend(translated.shares);

    let linux = spec.linux().clone().unwrap_or_default();
    let list = linux.namespaces().as_deref().unwrap_or_default();
    let (namespaces, netns) = namespaces(list, ns)?;
    let new_netns = netns.is_none()
        && list
            .iter()
            .any(|ns| ns.typ() == LinuxNamespaceType::Network);
    if linux.uid_mappings().as_ref().is_some_and(|m| !m.is_empty())
        || linux.gid_mappings().as_ref().is_some_and(|m| !m.is_empty())
    {
        return Err(Error::Unsupported(
            "linux.uidMappings/gidMappings (user namespaces)".into(),
        ));
    }
    for d in linux.devices().iter().flatten() {
        let p = d.path().to_string_lossy();
        if !GUEST_DEVICES.contains(&p.as_ref()) {
            return Err(Error::Unsupported(format!(
                "linux.devices: {p}: host devices cannot be passed into the VM (the guest \
                 has {})",
                GUEST_DEVICES.join(", ")
            )));
        }
    }
    let seccomp = match linux.seccomp() {
        Some(s) => Some(seccomp(&serde_json::to_value(s).map_err(|source| {
            Error::BadJson {
                path: bundle.join("config.json"),
                source,
            }
        })?)?),
        None => None,
    };
    let (vcpus, memory_mib) = size(linux.resources().as_ref());
    let hooks = hooks(&spec)?;
    let container = ContainerSpec {
        container_id: id.to_string(),
        rootfs: RootfsSpec::VirtioFs {
            tag: ROOTFS_TAG.into(),
        },
        process,
        hostname: spec.hostname().clone().filter(|h| !h.is_empty()),
        mounts: translated.mounts,
        readonly_root: root.readonly().unwrap_or(false),
        sysctl: linux
            .sysctl()
            .clone()
            .unwrap_or_default()
            .into_iter()
            .collect(),
        masked_paths: linux.masked_paths().clone().unwrap_or_default(),
        readonly_paths: linux.readonly_paths().clone().unwrap_or_default(),
        namespaces,
        seccomp,
        resources: cgroup_limits(linux.resources().as_ref()),
        network: None,
    };
    container
        .validate()
        .map_err(|e| bad(format!("cannot be run: {e}")))?;
    Ok(Plan {
        bundle,
        rootfs,
        container,
        shares,
        vcpus,
        memory_mib,
        netns,
        new_netns,
        cgroups_path: linux.cgroups_path().clone(),
        hooks,
        annotations: spec
            .annotations()
            .clone()
            .unwrap_or_default()
            .into_iter()
            .collect(),
    })
}

/// The guest namespaces to create, and the engine's network namespace path.
fn namespaces(
    list: &[oci_spec::runtime::LinuxNamespace],
    joins: Namespaces,
) -> Result<(Vec<NamespaceKind>, Option<String>), Error> {
    let mut kinds = Vec::new();
    let mut netns = None;
    for ns in list {
        let path = ns.path().as_ref().map(|p| p.to_string_lossy().into_owned());
        let kind = match ns.typ() {
            // The VM is the network namespace: the guest's interfaces are the container's.
            LinuxNamespaceType::Network => {
                netns = path.filter(|p| !p.is_empty());
                continue;
            }
            // The pod's: the VM's own.
            LinuxNamespaceType::Uts | LinuxNamespaceType::Ipc if joins == Namespaces::Pod => {
                continue
            }
            LinuxNamespaceType::Pid => NamespaceKind::Pid,
            LinuxNamespaceType::Mount => NamespaceKind::Mount,
            LinuxNamespaceType::Uts => NamespaceKind::Uts,
            LinuxNamespaceType::Ipc => NamespaceKind::Ipc,
            LinuxNamespaceType::Cgroup => NamespaceKind::Cgroup,
            other @ (LinuxNamespaceType::User | LinuxNamespaceType::Time) => {
                return Err(Error::Unsupported(format!(
                    "linux.namespaces: a {} namespace",
                    other
                )))
            }
        };
        if let Some(p) = path.filter(|p| !p.is_empty()) {
            return Err(Error::Unsupported(format!(
                "linux.namespaces: joining the host's {} namespace {p} (the container runs \
                 in its own kernel)",
                ns.typ()
            )));
        }
        if !kinds.contains(&kind) {
            kinds.push(kind);
        }
    }
    Ok((kinds, netns))
}

/// vCPUs from the CPU quota (rounded up), memory from the limit plus the guest's own needs.
pub fn size(r: Option<&LinuxResources>) -> (u8, u32) {
    let vcpus = r
        .and_then(|r| r.cpu().as_ref())
        .and_then(|c| match (c.quota(), c.period()) {
            (Some(q), Some(p)) if q > 0 && p > 0 => Some((q as u64).div_ceil(p)),
            _ => None,
        })
        .map(|n| n.clamp(1, MAX_VCPUS) as u8)
        .unwrap_or(DEFAULT_VCPUS);
    let memory = r
        .and_then(|r| r.memory().as_ref())
        .and_then(|m| m.limit())
        .filter(|&l| l > 0)
        .map(|l| {
            let mib = (l as u64).div_ceil(1 << 20).min(u32::MAX as u64 / 2) as u32;
            (mib + GUEST_OVERHEAD_MIB).max(MIN_MEMORY_MIB)
        })
        .unwrap_or(DEFAULT_MEMORY_MIB);
    (vcpus, memory)
}

/// The limits also applied inside the guest, as cgroups of the container.
fn cgroup_limits(r: Option<&LinuxResources>) -> husk_protocol::Resources {
    let Some(r) = r else {
        return Default::default();
    };
    husk_protocol::Resources {
        memory_max: r
            .memory()
            .as_ref()
            .and_then(|m| m.limit())
            .filter(|&l| l > 0)
            .map(|l| l as u64),
        cpu_max: r
            .cpu()
            .as_ref()
            .and_then(|c| match (c.quota(), c.period()) {
                (Some(q), Some(p)) if q > 0 && (1000..=1_000_000).contains(&p) => {
                    Some((q as u64, p))
                }
                _ => None,
            }),
        pids_max: r
            .pids()
            .as_ref()
            .map(|p| p.limit())
            .filter(|&l| l > 0)
            .map(|l| l as u64),
    }
}

fn hooks(spec: &Spec) -> Result<Hooks, Error> {
    let Some(h) = spec.hooks() else {
        return Ok(Hooks::default());
    };
    for (name, list) in [
        ("createContainer", h.create_container()),
        ("startContainer", h.start_container()),
    ] {
        if list.as_ref().is_some_and(|l| !l.is_empty()) {
            return Err(Error::Unsupported(format!(
                "hooks.{name}: these run inside the container's namespaces, which are in the VM"
            )));
        }
    }
    Ok(Hooks {
        prestart: h.prestart().clone().unwrap_or_default(),
        create_runtime: h.create_runtime().clone().unwrap_or_default(),
        poststart: h.poststart().clone().unwrap_or_default(),
        poststop: h.poststop().clone().unwrap_or_default(),
    })
}

/// OCI seccomp (camelCase JSON) → the agent's filter spec.
fn seccomp(v: &serde_json::Value) -> Result<SeccompSpec, Error> {
    if v.get("listenerPath").is_some_and(|p| !p.is_null()) {
        return Err(Error::Unsupported(
            "linux.seccomp.listenerPath (seccomp notify)".into(),
        ));
    }
    let syscalls: Vec<serde_json::Value> = v["syscalls"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| {
            serde_json::json!({
                "names": s["names"],
                "action": s["action"],
                "errno_ret": s.get("errnoRet").cloned().unwrap_or(serde_json::Value::Null),
                "args": s["args"].as_array().into_iter().flatten().map(|a| serde_json::json!({
                    "index": a["index"], "value": a["value"],
                    "value_two": a.get("valueTwo").cloned().unwrap_or(0.into()), "op": a["op"],
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    let converted = serde_json::json!({
        "default_action": v["defaultAction"],
        "default_errno_ret": v.get("defaultErrnoRet").cloned().unwrap_or(serde_json::Value::Null),
        "architectures": v.get("architectures").cloned().filter(|a| !a.is_null()).unwrap_or(serde_json::json!([])),
        "flags": v.get("flags").cloned().filter(|a| !a.is_null()).unwrap_or(serde_json::json!([])),
        "syscalls": syscalls,
    });
    let spec: SeccompSpec = serde_json::from_value(converted).map_err(|e| Error::BadConfig {
        path: "config.json".into(),
        detail: format!("linux.seccomp: {e}"),
    })?;
    if spec.default_action == husk_protocol::SeccompAction::Notify
        || spec
            .syscalls
            .iter()
            .any(|s| s.action == husk_protocol::SeccompAction::Notify)
    {
        return Err(Error::Unsupported("linux.seccomp: SCMP_ACT_NOTIFY".into()));
    }
    Ok(spec)
}

#[cfg(test)]
mod tests;
