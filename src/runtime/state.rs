//! `state.json`: what husk knows about one container, saved atomically (temp file + rename)
//! so a crash mid-write leaves the old state, never a torn one.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::pod::proc::ProcessRef;
pub use crate::util::time::now;

/// The file name of a container's state inside its directory.
pub use crate::pod::state_store::STATE_FILE;

/// Where a container is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Recorded, writable layer made, VM not (yet) booted.
    Created,
    /// The VM is up and the container's process was started.
    Running,
    /// Ended by `husk stop` / `husk kill`.
    Stopped,
    /// The process ended on its own (or the VM died).
    Exited,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Created => "created",
            Status::Running => "running",
            Status::Stopped => "stopped",
            Status::Exited => "exited",
        }
    }
}

/// The container's settings, fixed at `husk run` and reused by `husk start`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerConfig {
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub cwd: String,
    pub uid: u32,
    pub gid: u32,
    pub hostname: String,
    pub tty: bool,
    pub stdin: bool,
    pub vcpus: u8,
    pub memory_mib: u32,
    /// `--pids-limit` (None: unlimited, and containers recorded before it existed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pids_limit: Option<u64>,
    /// The image's read-only layer disks, bottom layer first.
    pub layers: Vec<PathBuf>,
    /// `"erofs"` or `"ext4"`: the filesystem of the layer disks.
    pub layer_fs: String,
    /// `--rm`: remove the container when its process ends.
    pub auto_remove: bool,
    /// `-v HOST:GUEST[:ro]`: host directories shared live into the container, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<Volume>,
    /// Supplementary groups of a named user, from the image's /etc/group.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub additional_gids: Vec<u32>,
    /// `--network` and `-p`. Containers recorded before networking existed have none.
    #[serde(default)]
    pub network: crate::network::NetworkSettings,
}

/// One `-v`: a host directory (canonical) mounted at `guest` inside the container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Volume {
    pub host: PathBuf,
    pub guest: String,
    #[serde(default)]
    pub read_only: bool,
}

/// `<root>/containers/<id>/state.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct State {
    pub id: String,
    pub name: String,
    /// The image reference as the user named it (normalized).
    pub image: String,
    /// The image's id (config digest), when the store gave one.
    pub image_id: Option<String>,
    /// Seconds since the epoch.
    pub created: u64,
    pub status: Status,
    /// The process owning the VM (husk-vmm or QEMU) and its start time, so a recycled pid
    /// is never mistaken for it.
    pub pid: Option<ProcessRef>,
    /// The husk process that owns the VM handle (foreground `husk run` or the detached
    /// monitor); it records the exit status.
    pub monitor: Option<ProcessRef>,
    pub exit_code: Option<i32>,
    pub started_at: Option<u64>,
    pub finished_at: Option<u64>,
    /// Set by `stop`/`kill` so the monitor records `stopped` rather than `exited`.
    pub stop_requested: bool,
    /// From the VM's start until the container's process runs in it. A VM whose monitor
    /// died meanwhile runs nothing and nobody would end it: the next command does.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub booting: bool,
    /// The backend that ran it last (`qemu (tcg)`, `husk-vmm`, ...).
    pub backend: Option<String>,
    pub vsock_cid: u32,
    pub vsock_uds: PathBuf,
    pub scratch_disk: PathBuf,
    pub console_log: PathBuf,
    /// stdout and stderr of a detached container (`husk logs`).
    pub log_file: PathBuf,
    pub config: ContainerConfig,
    /// What is set up on the host for the running VM (TAP, address, rules); cleared once
    /// it is torn down.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<crate::network::Attachment>,
}

impl State {
    pub fn short_id(&self) -> &str {
        &self.id[..12.min(self.id.len())]
    }

    /// The status as it really is now: a `running` container whose VM process is gone (a
    /// `kill -9`, a crash, a reboot of the host) is `exited`, whatever the file says.
    pub fn effective_status(&self) -> Status {
        match self.status {
            Status::Running if !self.vm_alive() => Status::Exited,
            s => s,
        }
    }

    pub fn vm_alive(&self) -> bool {
        self.pid.as_ref().is_some_and(ProcessRef::is_alive)
    }

    pub fn monitor_alive(&self) -> bool {
        self.monitor.as_ref().is_some_and(ProcessRef::is_alive)
    }

    /// `start` boots created, stopped and exited containers.
    pub fn can_start(&self) -> bool {
        self.effective_status() != Status::Running && !self.monitor_alive()
    }

    /// `stop`, `kill`, `exec` need a running container.
    pub fn can_signal(&self) -> bool {
        self.effective_status() == Status::Running
    }

    /// `rm` without `-f` refuses a running container (its monitor may still be finishing:
    /// `rm` waits for it).
    pub fn can_delete(&self) -> bool {
        self.effective_status() != Status::Running
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::runtime::Error;

    pub(crate) fn sample(id: &str) -> State {
        State {
            id: id.into(),
            name: "web".into(),
            image: "docker.io/library/busybox:latest".into(),
            image_id: None,
            created: 1,
            status: Status::Created,
            pid: None,
            monitor: None,
            exit_code: None,
            started_at: None,
            finished_at: None,
            stop_requested: false,
            booting: false,
            backend: None,
            vsock_cid: 3,
            vsock_uds: "/r/v.sock".into(),
            scratch_disk: "/r/scratch.ext4".into(),
            console_log: "/r/console.log".into(),
            log_file: "/r/container.log".into(),
            config: ContainerConfig {
                args: vec!["true".into()],
                env: vec![],
                cwd: "/".into(),
                uid: 0,
                gid: 0,
                hostname: "h".into(),
                tty: false,
                stdin: false,
                vcpus: 1,
                memory_mib: 256,
                pids_limit: None,
                layers: vec![],
                layer_fs: "erofs".into(),
                auto_remove: false,
                volumes: vec![],
                network: Default::default(),
                additional_gids: vec![],
            },
            network: None,
        }
    }

    #[test]
    fn saves_camel_case_atomically_and_loads_back() {
        let (_root, store) = store();
        let mut s = sample(&"a".repeat(64));
        s.exit_code = Some(3);
        std::fs::create_dir(store.dir(&s.id)).unwrap();
        store.save(&s.id, &s).unwrap();
        let text = std::fs::read_to_string(store.dir(&s.id).join(STATE_FILE)).unwrap();
        assert!(text.contains("\"exitCode\": 3"), "{text}");
        assert!(text.contains("\"vsockUds\""), "{text}");
        assert!(text.contains("\"status\": \"created\""), "{text}");
        // No temp file left beside it.
        assert_eq!(std::fs::read_dir(store.dir(&s.id)).unwrap().count(), 1);
        assert_eq!(store.load(&s.id).unwrap(), s);
    }

    #[test]
    fn running_with_a_dead_vm_is_exited() {
        let mut s = sample("b");
        s.status = Status::Running;
        // A pid that exists but with another start time: a recycled pid.
        s.pid = Some(ProcessRef {
            pid: std::process::id(),
            start_time: 1,
        });
        assert_eq!(s.effective_status(), Status::Exited);
        s.pid = ProcessRef::of(std::process::id());
        assert_eq!(s.effective_status(), Status::Running);
        assert!(!s.can_delete());
    }

    #[test]
    fn state_without_volumes_loads_and_volumes_round_trip() {
        let (_root, store) = store();
        let mut s = sample(&"e".repeat(64));
        std::fs::create_dir(store.dir(&s.id)).unwrap();
        store.save(&s.id, &s).unwrap();
        let text = std::fs::read_to_string(store.dir(&s.id).join(STATE_FILE)).unwrap();
        // What a husk from before volumes wrote: no `volumes` key at all.
        assert!(!text.contains("volumes"), "{text}");
        assert_eq!(store.load(&s.id).unwrap(), s);
        s.config.volumes = vec![Volume {
            host: "/srv/data".into(),
            guest: "/data".into(),
            read_only: true,
        }];
        store.save(&s.id, &s).unwrap();
        assert_eq!(store.load(&s.id).unwrap(), s);
    }

    #[test]
    fn corrupt_state_names_the_file_and_the_way_out() {
        let (_root, store) = store();
        std::fs::create_dir(store.dir("c")).unwrap();
        std::fs::write(store.dir("c").join(STATE_FILE), b"{").unwrap();
        let e = Error::from(store.load("c").unwrap_err()).to_string();
        assert!(e.contains("state.json") && e.contains("husk rm -f"), "{e}");
    }

    fn store() -> (tempfile::TempDir, crate::pod::StateStore<State>) {
        let root = tempfile::tempdir().unwrap();
        let store = crate::pod::StateStore::open(root.path()).unwrap();
        (root, store)
    }
}
