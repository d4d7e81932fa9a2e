//! A pod: one VM for all of its containers. The sandbox container (CRI's pause, or a lone
//! `ctr run` container) boots it with the pod's share and network; each further container
//! is bound into the share and created in the running VM; the VM goes with the sandbox.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use husk_protocol::{ContainerSpec, RootfsSpec};

use super::share::{self, PodShare, POD_TAG};
use super::Error;
use crate::backend::{self, BackendKind, VmHandle, VsockSpec};
use crate::network::netns::NetnsLink;
use crate::ociruntime::bundle::{self, Plan};
use crate::ociruntime::network;
use crate::pod::{base_spec, GuestAssets, PodVm, PoweredOff, FIRST_CID};

/// CRI's sizing of the whole pod on its sandbox (containerd 1.7 and later): the sum of its
/// containers' limits. containerd 1.6 sends none: the VM gets the default size.
pub const SANDBOX_MEMORY_ANNOTATION: &str = "io.kubernetes.cri.sandbox-memory";
pub const SANDBOX_CPU_QUOTA_ANNOTATION: &str = "io.kubernetes.cri.sandbox-cpu-quota";
pub const SANDBOX_CPU_PERIOD_ANNOTATION: &str = "io.kubernetes.cri.sandbox-cpu-period";

/// The VM's vCPUs and memory for a pod whose sandbox carries `annotations`, sized as
/// husk-runtime sizes a container with those limits; `fallback` without them.
pub fn vm_size(
    annotations: &std::collections::BTreeMap<String, String>,
    fallback: (u8, u32),
) -> (u8, u32) {
    use oci_spec::runtime::{LinuxCpuBuilder, LinuxMemoryBuilder, LinuxResourcesBuilder};
    let num = |k: &str| {
        annotations
            .get(k)
            .and_then(|v| v.trim().parse::<i64>().ok())
            .filter(|v| *v > 0)
    };
    let memory = num(SANDBOX_MEMORY_ANNOTATION);
    let quota = num(SANDBOX_CPU_QUOTA_ANNOTATION);
    let period = num(SANDBOX_CPU_PERIOD_ANNOTATION);
    if memory.is_none() && quota.is_none() {
        return fallback;
    }
    let mut r = LinuxResourcesBuilder::default();
    if let Some(m) = memory {
        if let Ok(mem) = LinuxMemoryBuilder::default().limit(m).build() {
            r = r.memory(mem);
        }
    }
    if let (Some(q), Some(p)) = (quota, period) {
        if let Ok(cpu) = LinuxCpuBuilder::default().quota(q).period(p as u64).build() {
            r = r.cpu(cpu);
        }
    }
    let (vcpus, memory_mib) = bundle::size(r.build().ok().as_ref());
    (
        if quota.is_some() { vcpus } else { fallback.0 },
        if memory.is_some() {
            memory_mib
        } else {
            fallback.1
        },
    )
}

/// A running pod VM and what the host set up for it.
pub struct Pod {
    pub id: String,
    pub vm: PodVm,
    dir: PathBuf,
    share: PodShare,
    network: Option<NetnsLink>,
}

/// The working directory of pod `id` in `namespace`: short, as the vsock socket in it must
/// fit a socket address.
pub fn dir_of(namespace: &str, id: &str) -> PathBuf {
    Path::new(super::RUN_DIR).join(crate::util::fs::short_name(namespace.as_bytes(), id))
}

impl Pod {
    /// Boots the VM of pod `id` for its sandbox container, planned as `plan` (whose
    /// container spec gets the pod's network), in working directory `dir`.
    pub fn boot(id: &str, dir: &Path, plan: &mut Plan) -> Result<Pod, Error> {
        let assets = GuestAssets::find(None, None)?;
        crate::util::fs::create_private_dir(dir).map_err(|source| share::ShareError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let share = PodShare::create(&dir.join("share"))?;
        let vm_err = |source| Error::Vm {
            pod: id.to_string(),
            source,
        };
        let booted = (|| {
            let kind =
                BackendKind::from_env().map_err(|e| Error::InvalidArgument(e.to_string()))?;
            let backend = backend::backend(kind).map_err(vm_err)?;
            let vsock = VsockSpec {
                cid: FIRST_CID,
                uds_path: dir.join("vsock"),
            };
            let (vcpus, memory_mib) = vm_size(&plan.annotations, (plan.vcpus, plan.memory_mib));
            let mut spec = base_spec(&assets, &dir.join("console.log"), vcpus, memory_mib, vsock);
            spec.shared_dirs = vec![share.spec()];
            // The VMM's cgroup under the sandbox's (cgroupfs paths: the kubelet's pod cgroup
            // then counts the VM); a systemd-style `slice:prefix:name` keeps husk's own.
            spec.cgroup_parent = plan.cgroups_path.clone().filter(|p| p.is_absolute());
            let mut link = None;
            let mut wiring = None;
            if let Some(ns) = &plan.netns {
                if let Some(nic) = network::attach(id, ns, &plan.container)? {
                    spec.taps.push(nic.tap);
                    wiring = Some(nic.guest);
                    link = Some(nic.link);
                }
            }
            let detach = |link: &Option<_>| {
                if let Some(l) = link {
                    network::detach(l);
                }
            };
            let started = backend.start(&spec).map_err(vm_err);
            // The TAP fd went to the VMM with `spec`; a VM that did not start takes it along.
            drop(spec);
            let vm: Arc<dyn VmHandle> = match started {
                Ok(vm) => Arc::from(vm),
                Err(e) => {
                    // The set-up's end first: what it sets up is what the detach removes.
                    drop(wiring);
                    detach(&link);
                    return Err(e);
                }
            };
            // The NIC's set-up ran beside the VMM's start; the guest boots on while it ends.
            if let Some(w) = wiring {
                match w.wait() {
                    Ok(net) => plan.container.network = Some(net),
                    Err(source) => {
                        let _ = vm.kill();
                        detach(&link);
                        return Err(Error::Network {
                            pod: id.to_string(),
                            source,
                        });
                    }
                }
            }
            match PodVm::connect(vm, &dir.join("vsock")) {
                Ok(pod) => Ok((pod, link)),
                Err(source) => {
                    detach(&link);
                    Err(Error::Boot {
                        pod: id.to_string(),
                        source,
                    })
                }
            }
        })();
        match booted {
            Ok((vm, network)) => Ok(Pod {
                id: id.to_string(),
                vm,
                dir: dir.to_path_buf(),
                share,
                network,
            }),
            Err(e) => {
                share.remove();
                let _ = std::fs::remove_dir_all(dir);
                Err(e)
            }
        }
    }

    /// Binds container `cid`'s root and volumes (as `plan` shares them) into the pod's share
    /// and points its spec at them; returns the entries, to [`release`](Self::release) later.
    pub fn place(&self, cid: &str, plan: &mut Plan) -> Result<Vec<String>, Error> {
        let mut entries = Vec::new();
        let placed = self.place_into(cid, plan, &mut entries);
        if placed.is_err() {
            self.release(&entries);
        }
        placed.map(|()| entries)
    }

    fn place_into(
        &self,
        cid: &str,
        plan: &mut Plan,
        entries: &mut Vec<String>,
    ) -> Result<(), Error> {
        let root = share::rootfs_entry(cid);
        self.share.bind(&root, &plan.rootfs, false)?;
        entries.push(root.clone());
        plan.container.rootfs = RootfsSpec::VirtioFsEntry {
            tag: POD_TAG.into(),
            entry: root,
        };
        let shares = plan.shares.clone();
        for m in plan
            .container
            .mounts
            .iter_mut()
            .filter(|m| m.fs_type == "virtiofs")
        {
            let (tag, file) = match m.source.split_once(':') {
                Some((t, f)) => (t.to_string(), Some(f.to_string())),
                None => (m.source.clone(), None),
            };
            let Some(s) = shares.iter().find(|s| s.tag == tag) else {
                return Err(Error::InvalidArgument(format!(
                    "mount {}: no share {tag}",
                    m.destination
                )));
            };
            let (name, src) = match &file {
                Some(f) => (share::file_entry(cid, &tag, f), s.host_path.join(f)),
                None => (share::volume_entry(cid, &tag), s.host_path.clone()),
            };
            if !entries.contains(&name) {
                self.share.bind(&name, &src, s.read_only)?;
                entries.push(name.clone());
            }
            // The whole share is one directory in the guest: every entry is one name in it.
            m.source = format!("{POD_TAG}:{name}");
        }
        Ok(())
    }

    /// Unbinds a container's entries from the share.
    pub fn release(&self, entries: &[String]) {
        for e in entries {
            self.share.unbind(e);
        }
    }

    /// Creates container `spec` in the VM; its process waits for `start`.
    pub fn create(&self, spec: ContainerSpec) -> Result<(), Error> {
        let id = spec.container_id.clone();
        self.vm
            .create_container(spec)
            .map(drop)
            .map_err(|source| Error::Agent {
                what: format!("creating container {id} in pod {}", self.id),
                source,
            })
    }

    pub fn vm_pid(&self) -> u32 {
        self.vm.vm.pid()
    }

    pub fn console_log(&self) -> PathBuf {
        self.dir.join("console.log")
    }

    /// Powers the VM off and undoes what the host set up for it.
    pub fn shut_down(self) {
        let Pod {
            id,
            vm,
            dir,
            share,
            network: link,
        } = self;
        match vm.power_off() {
            Ok(PoweredOff::Cleanly) => {}
            Ok(PoweredOff::Killed) => {
                tracing::warn!("pod {id}: the VM did not power off; killed it")
            }
            Err(e) => tracing::warn!("pod {id}: {e}"),
        }
        if let Some(l) = &link {
            network::detach(l);
        }
        share.remove();
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// Undoes what a shim that died left for pod directory `dir`: kills what still runs for it
/// (the VMM and its helpers, found by the paths under `dir` on their command lines) and
/// unbinds and removes the share.
pub fn clean_up_after(dir: &Path) {
    kill_processes_using(dir);
    let share = dir.join("share");
    if let Ok(entries) = std::fs::read_dir(&share) {
        for e in entries.flatten() {
            let _ = nix::mount::umount2(&e.path(), nix::mount::MntFlags::MNT_DETACH);
        }
    }
    let _ = nix::mount::umount2(&share, nix::mount::MntFlags::MNT_DETACH);
    let _ = std::fs::remove_dir_all(dir);
}

/// Unbinds the share entries of member container `id` a dead shim left in pod `dir`.
pub fn release_entries_of(dir: &Path, id: &str) {
    let prefix = format!("{id}.");
    if let Ok(entries) = std::fs::read_dir(dir.join("share")) {
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().starts_with(&prefix) {
                let _ = nix::mount::umount2(&e.path(), nix::mount::MntFlags::MNT_DETACH);
                let _ = std::fs::remove_dir(e.path()).or_else(|_| std::fs::remove_file(e.path()));
            }
        }
    }
}

/// SIGKILLs every process whose command line names a path under `dir`.
fn kill_processes_using(dir: &Path) {
    let needle = dir.as_os_str().as_encoded_bytes();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return;
    };
    let mut killed = Vec::new();
    for p in procs.flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        if pid == std::process::id() as i32 {
            continue;
        }
        let Ok(cmdline) = std::fs::read(p.path().join("cmdline")) else {
            continue;
        };
        if cmdline.windows(needle.len()).any(|w| w == needle) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
            killed.push(pid);
        }
    }
    // Gone before what they held (sockets, mounts, cgroups) is removed; at most 5 s.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while killed
        .iter()
        .any(|pid| Path::new(&format!("/proc/{pid}")).exists())
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pods_size_comes_from_the_sandbox_annotations() {
        let mut a = std::collections::BTreeMap::new();
        assert_eq!(vm_size(&a, (1, 256)), (1, 256));
        a.insert(
            SANDBOX_MEMORY_ANNOTATION.to_string(),
            (512u64 << 20).to_string(),
        );
        a.insert(
            SANDBOX_CPU_QUOTA_ANNOTATION.to_string(),
            "250000".to_string(),
        );
        a.insert(
            SANDBOX_CPU_PERIOD_ANNOTATION.to_string(),
            "100000".to_string(),
        );
        // 512 MiB of limits plus the guest's own 64; 2.5 CPUs round up to 3.
        assert_eq!(vm_size(&a, (1, 256)), (3, 512 + bundle::GUEST_OVERHEAD_MIB));
        a.insert(SANDBOX_MEMORY_ANNOTATION.to_string(), "lots".to_string());
        assert_eq!(vm_size(&a, (1, 256)), (3, 256));
    }

    #[test]
    fn pod_dirs_are_short_and_per_namespace() {
        let a = dir_of("k8s.io", &"a".repeat(64));
        let b = dir_of("default", &"a".repeat(64));
        assert_ne!(a, b);
        // Room for "/vsock" and the helpers' "_1024" suffixes under the 108-byte limit.
        assert!(a.as_os_str().len() < 40, "{}", a.display());
    }
}
