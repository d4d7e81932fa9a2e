//! `CreateContainer`: everything the guest needs to set up a container before its process
//! starts — the OCI spec fields the guest applies, plus how to find the root filesystem.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::network::NetworkConfig;
use super::process::ProcessSpec;
use super::rootfs::{MountSpec, RootfsSpec};
use super::seccomp::SeccompSpec;
use crate::limits::{MAX_HOSTNAME_LEN, MAX_LIST, MAX_SYSCTL_VALUE_LEN};
use crate::validate::{check_abs_path, check_cstr, check_id, check_list, check_token, fail, Check};

/// Body of `CreateContainer`. The agent prepares the container and its init process but runs
/// nothing until `StartContainer`, so the host can attach stdio streams first and lose no
/// output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContainerSpec {
    pub container_id: String,
    pub rootfs: RootfsSpec,
    pub process: ProcessSpec,
    pub hostname: Option<String>,
    /// OCI `mounts`, applied in order after the root is in place.
    pub mounts: Vec<MountSpec>,
    /// OCI `root.readonly`: remount `/` read-only once the mounts are done.
    pub readonly_root: bool,
    /// OCI `linux.sysctl`; a sorted map so encoding is deterministic.
    pub sysctl: BTreeMap<String, String>,
    /// OCI `linux.maskedPaths`.
    pub masked_paths: Vec<String>,
    /// OCI `linux.readonlyPaths`.
    pub readonly_paths: Vec<String>,
    /// Namespaces to create for the container (OCI `linux.namespaces` types; paths are
    /// host-side notions and are not sent). Exec'd processes join these.
    pub namespaces: Vec<NamespaceKind>,
    pub seccomp: Option<SeccompSpec>,
    /// The guest's network (added after version 1 shipped: absent means none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<NetworkConfig>,
    /// Limits for the container's cgroup in the guest (OCI `linux.resources`). Appended:
    /// absent means none.
    #[serde(default)]
    pub resources: Resources,
}

/// cgroup v2 limits the agent writes to the container's group (`memory.max`, `cpu.max`,
/// `pids.max`); `None` leaves the kernel's default (`max`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    #[serde(default)]
    pub memory_max: Option<u64>,
    /// `cpu.max`: quota and period in microseconds.
    #[serde(default)]
    pub cpu_max: Option<(u64, u64)>,
    #[serde(default)]
    pub pids_max: Option<u64>,
}

/// Namespace types, named as OCI names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NamespaceKind {
    Pid,
    Mount,
    Uts,
    Ipc,
    Network,
    Cgroup,
    User,
    Time,
}

impl ContainerSpec {
    pub fn validate(&self) -> Check {
        check_id("container_id", &self.container_id)?;
        self.rootfs.validate().map_err(|e| e.within("rootfs"))?;
        self.process.validate().map_err(|e| e.within("process"))?;
        if let Some(h) = &self.hostname {
            check_cstr("hostname", h, MAX_HOSTNAME_LEN)?;
            if h.contains('/') {
                return fail("hostname", format!("{h:?} contains '/'"));
            }
        }
        check_list("mounts", &self.mounts, MAX_LIST, MountSpec::validate)?;
        if self.sysctl.len() > MAX_LIST {
            return fail(
                "sysctl",
                format!("{} entries, at most {MAX_LIST} allowed", self.sysctl.len()),
            );
        }
        for (key, value) in &self.sysctl {
            check_sysctl_key(key).map_err(|e| e.within(&format!("sysctl[{key:?}]")))?;
            check_cstr(&format!("sysctl[{key:?}]"), value, MAX_SYSCTL_VALUE_LEN)?;
        }
        check_list("masked_paths", &self.masked_paths, MAX_LIST, |p| {
            check_abs_path("", p)
        })?;
        check_list("readonly_paths", &self.readonly_paths, MAX_LIST, |p| {
            check_abs_path("", p)
        })?;
        let mut seen = BTreeSet::new();
        for ns in &self.namespaces {
            if !seen.insert(ns) {
                return fail("namespaces", format!("{ns:?} listed twice"));
            }
        }
        if let Some(s) = &self.seccomp {
            s.validate().map_err(|e| e.within("seccomp"))?;
        }
        if let Some(n) = &self.network {
            n.validate().map_err(|e| e.within("network"))?;
        }
        if let Some((quota, period)) = self.resources.cpu_max {
            if quota == 0 || !(1000..=1_000_000).contains(&period) {
                return fail(
                    "resources.cpu_max",
                    format!("quota {quota} / period {period} µs: quota > 0, period 1000..=1000000"),
                );
            }
        }
        if self.resources.memory_max == Some(0) || self.resources.pids_max == Some(0) {
            return fail(
                "resources",
                "a limit of 0 would stop the container from running",
            );
        }
        Ok(())
    }
}

/// The agent writes a sysctl to `/proc/sys/<key with '.' as '/'>`, so a key must not be able
/// to name anything outside `/proc/sys`.
fn check_sysctl_key(key: &str) -> Check {
    check_token("", key)?;
    let ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if !key.chars().all(ok) || key.split('.').any(str::is_empty) {
        return fail(
            "",
            "not a sysctl name (letters, digits, _ and -, separated by single dots)",
        );
    }
    Ok(())
}
