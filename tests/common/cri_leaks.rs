//! What a CRI pod leaves on the host, recorded while it runs ([`Footprint`]) and looked for
//! again after RemovePodSandbox ([`Cri::leftovers`]): processes, mounts, netns, CNI
//! addresses and bridge ports, cgroups, shim state, the CRI's and containerd's records.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use k8s_cri::v1::{ListContainersRequest, ListPodSandboxRequest};

use super::cri::{Cri, K8S_NAMESPACE};
use super::engine::{mounts, OWNER_ENV};
use super::text;

/// A pod as it was while running.
#[derive(Debug)]
pub struct Footprint {
    pub pod: String,
    pub containers: Vec<String>,
    /// The pod's network namespace (a bind mount under the instance's dir).
    pub netns: Option<PathBuf>,
    /// The pod's address on the CNI network.
    pub ip: String,
    /// The instance's processes then (shims, pause, containers, VMs), as `pid N: cmdline`.
    pub processes: Vec<String>,
}

/// A process on this host: pid, command line (NULs as spaces), whether its environment
/// carries the marker of the instance at `dir`.
pub struct Proc {
    pub pid: u32,
    pub cmdline: String,
    pub marked: bool,
}

/// Every process but this one, with whether it carries the marker of the instance at `dir`.
pub fn all_processes(dir: &Path) -> Vec<Proc> {
    let marker = format!("{OWNER_ENV}={}", dir.display());
    let me = std::process::id();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            if pid == me {
                return None;
            }
            let cmdline = std::fs::read(e.path().join("cmdline"))
                .map(|b| text(&b).replace('\0', " ").trim().to_string())
                .ok()?;
            let marked = std::fs::read(e.path().join("environ"))
                .map(|env| env.split(|b| *b == 0).any(|v| v == marker.as_bytes()))
                .unwrap_or(false);
            Some(Proc {
                pid,
                cmdline,
                marked,
            })
        })
        .collect()
}

/// The instance's processes whose program (first word's file name) starts with one of
/// `programs`: marked, or naming one of `ids` on their command line.
pub fn instance_programs(dir: &Path, ids: &[&str], programs: &[&str]) -> Vec<String> {
    all_processes(dir)
        .into_iter()
        .filter(|p| {
            let prog = p.cmdline.split(' ').next().unwrap_or_default();
            let name = prog.rsplit('/').next().unwrap_or(prog);
            programs.iter().any(|w| name.starts_with(w))
                && (p.marked || ids.iter().any(|id| p.cmdline.contains(id)))
        })
        .map(|p| format!("pid {}: {}", p.pid, p.cmdline))
        .collect()
}

/// Where the husk shim keeps a pod's working directory (share, sockets, console log).
pub const HUSK_RUN_DIR: &str = "/run/husk-shim/";

/// The husk shim's working directories that the VM processes `vms` (command lines) name.
pub fn husk_run_dirs(vms: &[String]) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = vms
        .iter()
        .flat_map(|p| p.match_indices(HUSK_RUN_DIR).map(|(at, _)| &p[at..]))
        .filter_map(|rest| {
            let name = rest[HUSK_RUN_DIR.len()..].split(['/', ' ', ',']).next()?;
            (!name.is_empty()).then(|| Path::new(HUSK_RUN_DIR).join(name))
        })
        .collect();
    dirs.sort();
    dirs.dedup();
    dirs
}

impl Cri {
    /// Records `pod` with its `containers` while they run.
    pub fn footprint(&self, pod: &str, containers: &[&str]) -> Footprint {
        let st = self.pod_status(pod);
        let ip = st
            .status
            .as_ref()
            .and_then(|s| s.network.as_ref())
            .map(|n| n.ip.clone())
            .unwrap_or_default();
        // containerd 1.6's verbose info: {"info": "{… runtimeSpec.linux.namespaces …}"}.
        let netns = st
            .info
            .get("info")
            .and_then(|i| serde_json::from_str::<serde_json::Value>(i).ok())
            .and_then(|v| {
                v["runtimeSpec"]["linux"]["namespaces"]
                    .as_array()?
                    .iter()
                    .find(|n| n["type"] == "network")?["path"]
                    .as_str()
                    .map(PathBuf::from)
            });
        Footprint {
            pod: pod.to_string(),
            containers: containers.iter().map(|c| c.to_string()).collect(),
            netns,
            ip,
            processes: self.processes(),
        }
    }

    /// What the pod of `fp` left after StopPodSandbox + RemovePodSandbox, one line each.
    pub fn leftovers(&self, fp: &Footprint) -> Vec<String> {
        let mut left = Vec::new();
        let dir = self.dir();
        let mut ids: Vec<&str> = vec![fp.pod.as_str()];
        ids.extend(fp.containers.iter().map(String::as_str));

        // Processes: the instance's (marked, or naming its dir), any naming an id.
        left.extend(self.processes().into_iter().map(|p| format!("process {p}")));
        for p in all_processes(dir) {
            if !p.marked && ids.iter().any(|id| p.cmdline.contains(id)) {
                left.push(format!(
                    "process naming the pod: pid {}: {}",
                    p.pid, p.cmdline
                ));
            }
        }
        // Mounts under the instance's dir (rootfs, shm, netns) and the netns itself.
        let prefix = format!("{}/", dir.display());
        for (point, source) in mounts() {
            if point.starts_with(&prefix) {
                left.push(format!("mount {point} ({source})"));
            }
        }
        if let Some(ns) = fp.netns.as_ref().filter(|ns| ns.exists()) {
            left.push(format!("netns {}", ns.display()));
        }
        // CNI: an address still allocated, a port still on the bridge, a cached result.
        let net = self.network();
        let ipam = dir.join("cni/ipam").join(&net);
        for f in read_names(&ipam) {
            if f != "lock" && !f.starts_with("last_reserved_ip") {
                left.push(format!(
                    "CNI address {f} still allocated in {}",
                    ipam.display()
                ));
            }
        }
        for port in read_names(&Path::new("/sys/class/net").join(&net).join("brif")) {
            left.push(format!("veth {port} still on bridge {net}"));
        }
        for f in read_names(Path::new("/var/lib/cni/results")) {
            if f.starts_with(&format!("{net}-")) || f.contains(&fp.pod) {
                left.push(format!("CNI result /var/lib/cni/results/{f}"));
            }
        }
        // cgroups under the pods' parent, in any hierarchy.
        for h in read_names(Path::new("/sys/fs/cgroup")) {
            let parent = Path::new("/sys/fs/cgroup")
                .join(&h)
                .join(self.cgroup_parent().trim_start_matches('/'));
            for c in read_names(&parent) {
                if parent.join(&c).is_dir() {
                    left.push(format!("cgroup {}", parent.join(c).display()));
                }
            }
        }
        // runc's state (the runc handler's Root is under the instance's dir).
        let runc = dir.join("runc-root").join(K8S_NAMESPACE);
        for c in read_names(&runc) {
            left.push(format!("runc state {}", runc.join(c).display()));
        }
        // The shims' bundles, and the records of the CRI and of containerd.
        let tasks = dir
            .join("containerd/state/io.containerd.runtime.v2.task")
            .join(K8S_NAMESPACE);
        for b in read_names(&tasks) {
            left.push(format!("shim bundle {}", tasks.join(b).display()));
        }
        let pods = self.call(
            "ListPodSandbox",
            self.runtime()
                .list_pod_sandbox(ListPodSandboxRequest::default()),
        );
        for p in pods.items {
            left.push(format!("CRI pod {} ({:?})", p.id, p.metadata));
        }
        let containers = self.call(
            "ListContainers",
            self.runtime()
                .list_containers(ListContainersRequest::default()),
        );
        for c in containers.containers {
            left.push(format!("CRI container {} ({:?})", c.id, c.metadata));
        }
        for what in ["containers", "tasks"] {
            let out = self.run_ctr(K8S_NAMESPACE, &[what, "ls", "-q"]);
            for id in text(&out.stdout).lines().filter(|l| !l.trim().is_empty()) {
                left.push(format!("containerd {what}: {id}"));
            }
        }
        left
    }

    /// Waits (bounded) until the pod of `fp` left nothing, by [`Cri::leftovers`] and by
    /// `extra` (a runtime's own checks); panics listing what is left.
    pub fn assert_pod_gone(&self, fp: &Footprint, extra: &dyn Fn(&Cri, &Footprint) -> Vec<String>) {
        let start = Instant::now();
        loop {
            let mut left = self.leftovers(fp);
            left.extend(extra(self, fp));
            if left.is_empty() {
                return;
            }
            // Shims exit and the kernel tears down a netns shortly after the call returns.
            if start.elapsed() > Duration::from_secs(30) {
                panic!(
                    "pod {} left behind after RemovePodSandbox:\n  {}\n(while running: {:#?})",
                    fp.pod,
                    left.join("\n  "),
                    fp
                );
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

/// The names in directory `d` (none when it does not exist).
fn read_names(d: &Path) -> Vec<String> {
    std::fs::read_dir(d)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}
