//! What husk-runtime keeps per container: `<root>/<id>/state.json` (camelCase, written through
//! a temp file and a rename), the short socket directory the VM's sockets live in, and the
//! OCI `state` document built from both and from the kernel's view of the VM holder process.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::Error;
use crate::pod::proc::ProcessRef;
use crate::pod::StateStore;

pub use crate::pod::state_store::STATE_FILE;
/// The OCI runtime spec version husk-runtime implements.
pub const OCI_VERSION: &str = "1.2.0";

/// OCI status, plus `paused` as runc reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// `create` has not finished yet.
    Creating,
    Created,
    Running,
    Paused,
    Stopped,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Creating => "creating",
            Status::Created => "created",
            Status::Running => "running",
            Status::Paused => "paused",
            Status::Stopped => "stopped",
        }
    }
}

/// One container as recorded on disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerState {
    pub id: String,
    pub bundle: PathBuf,
    pub rootfs: PathBuf,
    /// RFC 3339, UTC.
    pub created: String,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    pub status: Status,
    /// The VM holder process: the container's `pid` as engines see it.
    /// (`sandbox` in state written before the process had this name: still read.)
    #[serde(alias = "sandbox")]
    pub vm_holder: Option<ProcessRef>,
    /// The VMM process (QEMU or husk-vmm), for pause/resume and the last-resort kill.
    pub vm: Option<ProcessRef>,
    /// Where the VM's sockets and console log are (short enough for `sun_path`).
    pub sock_dir: PathBuf,
    pub vsock_cid: u32,
    pub exit_code: Option<i32>,
    /// The network namespace the engine prepared (`linux.namespaces[network].path`).
    pub netns: Option<String>,
    /// The TAP and tc mirroring the VM holder set up in `netns`, until they are detached.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<crate::network::netns::NetnsLink>,
    /// Host processes of `exec --detach` (for `ps`).
    #[serde(default)]
    pub execs: Vec<ProcessRef>,
    /// Hooks run after `start` and at `delete` (the bundle may be gone by then).
    #[serde(default)]
    pub poststart: Vec<oci_spec::runtime::Hook>,
    #[serde(default)]
    pub poststop: Vec<oci_spec::runtime::Hook>,
}

impl ContainerState {
    /// The status the kernel agrees with: a VM holder that is gone means stopped.
    pub fn effective_status(&self) -> Status {
        match self.status {
            Status::Stopped => Status::Stopped,
            Status::Creating => {
                if self.vm_holder.as_ref().is_some_and(ProcessRef::is_alive) {
                    Status::Creating
                } else {
                    Status::Stopped
                }
            }
            s => {
                if self.vm_holder.as_ref().is_some_and(ProcessRef::is_alive) {
                    s
                } else {
                    Status::Stopped
                }
            }
        }
    }

    pub fn vsock_uds(&self) -> PathBuf {
        self.sock_dir.join("vsock")
    }

    pub fn console_log(&self) -> PathBuf {
        self.sock_dir.join("console.log")
    }

    pub fn control_socket(&self) -> PathBuf {
        self.sock_dir.join("ctl")
    }

    /// The pid engines see: the VM holder while it lives, else 0 (as runc reports stopped ones).
    pub fn pid(&self) -> u32 {
        match self.effective_status() {
            Status::Stopped => 0,
            _ => self.vm_holder.map(|p| p.pid).unwrap_or(0),
        }
    }

    /// runc's `state` JSON.
    pub fn oci_json(&self) -> serde_json::Value {
        serde_json::json!({
            "ociVersion": OCI_VERSION,
            "id": self.id,
            "pid": self.pid(),
            "status": self.effective_status().as_str(),
            "bundle": self.bundle,
            "rootfs": self.rootfs,
            "created": self.created,
            "owner": "",
            "annotations": self.annotations,
        })
    }

    /// The OCI state document hooks get on stdin.
    pub fn hook_json(&self, status: Status) -> serde_json::Value {
        serde_json::json!({
            "ociVersion": OCI_VERSION,
            "id": self.id,
            "pid": self.vm_holder.map(|p| p.pid).unwrap_or(0),
            "status": status.as_str(),
            "bundle": self.bundle,
            "annotations": self.annotations,
        })
    }
}

/// All containers under one `--root`: a [`StateStore`] of [`ContainerState`]s.
pub struct Store {
    records: StateStore<ContainerState>,
}

/// Held while ids and vsock cids are being handed out.
pub type StoreLock = crate::flock::FileLock;

impl Store {
    pub fn open(root: &Path) -> Result<Store, Error> {
        Ok(Store {
            records: StateStore::open(root)?,
        })
    }

    pub fn root(&self) -> &Path {
        self.records.root()
    }

    pub fn dir(&self, id: &str) -> PathBuf {
        self.records.dir(id)
    }

    pub fn lock(&self) -> Result<StoreLock, Error> {
        Ok(self.records.lock()?)
    }

    pub fn exists(&self, id: &str) -> bool {
        self.records.exists(id)
    }

    pub fn load(&self, id: &str) -> Result<ContainerState, Error> {
        check_id(id)?;
        Ok(self.records.load(id)?)
    }

    pub fn save(&self, state: &ContainerState) -> Result<(), Error> {
        Ok(self.records.save(&state.id, state)?)
    }

    /// Loads, changes and saves the state of `id` under the store lock.
    pub fn update(
        &self,
        id: &str,
        change: impl FnOnce(&mut ContainerState),
    ) -> Result<ContainerState, Error> {
        check_id(id)?;
        Ok(self.records.update(id, change)?)
    }

    /// Every container with a readable state, sorted by id.
    pub fn list(&self) -> Result<Vec<ContainerState>, Error> {
        let mut out = self.records.list()?;
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    /// A vsock cid no other container under this root uses. Call under the lock.
    pub fn free_cid(&self) -> Result<u32, Error> {
        Ok(crate::pod::free_cid(
            self.list()?.iter().map(|s| s.vsock_cid),
        ))
    }

    /// The short directory for a container's sockets: `sun_path` holds 108 bytes, and
    /// virtiofsd sockets are named after the console log (`console.log.fsN.sock`).
    pub fn sock_dir(&self, id: &str) -> PathBuf {
        let hex = crate::util::fs::short_name(self.root().as_os_str().as_encoded_bytes(), id);
        std::env::temp_dir().join(format!("husk-rt-{hex}"))
    }

    /// Removes what `id` has on disk: its state directory and socket directory.
    pub fn remove(&self, state: &ContainerState) -> Result<(), Error> {
        let _ = std::fs::remove_dir_all(&state.sock_dir);
        Ok(self.records.remove(&state.id)?)
    }
}

/// Container ids as runc accepts them (they become directory names).
pub fn check_id(id: &str) -> Result<(), Error> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && id.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if ok {
        Ok(())
    } else {
        Err(Error::BadId(id.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_checked() {
        for ok in ["a", "abc-1.2_3", &"f".repeat(64)] {
            check_id(ok).unwrap();
        }
        for bad in ["", "../x", "a/b", "-a", ".a", &"f".repeat(129)] {
            assert!(check_id(bad).is_err(), "{bad}");
        }
    }

    use crate::util::time::rfc3339_now;

    fn sample(id: &str) -> ContainerState {
        ContainerState {
            id: id.into(),
            bundle: "/b".into(),
            rootfs: "/b/rootfs".into(),
            created: rfc3339_now(),
            annotations: BTreeMap::new(),
            status: Status::Running,
            vm_holder: None,
            vm: None,
            sock_dir: "/tmp/x".into(),
            vsock_cid: 3,
            exit_code: None,
            netns: None,
            network: None,
            execs: Vec::new(),
            poststart: Vec::new(),
            poststop: Vec::new(),
        }
    }

    #[test]
    fn a_gone_vm_holder_means_stopped_and_pid_zero() {
        let mut s = sample("a");
        assert_eq!(s.effective_status(), Status::Stopped);
        assert_eq!(s.oci_json()["pid"], 0);
        s.vm_holder = ProcessRef::of(std::process::id());
        assert_eq!(s.effective_status(), Status::Running);
        assert_eq!(s.oci_json()["pid"], std::process::id());
        assert_eq!(s.oci_json()["status"], "running");
    }

    #[test]
    fn state_that_calls_the_vm_holder_sandbox_still_loads() {
        let mut s = sample("a");
        s.vm_holder = ProcessRef::of(std::process::id());
        let mut v = serde_json::to_value(&s).unwrap();
        let map = v.as_object_mut().unwrap();
        let holder = map.remove("vmHolder").unwrap();
        map.insert("sandbox".into(), holder);
        assert_eq!(serde_json::from_value::<ContainerState>(v).unwrap(), s);
    }

    #[test]
    fn store_saves_lists_and_hands_out_distinct_cids() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut a = sample("a");
        std::fs::create_dir_all(store.dir("a")).unwrap();
        a.vsock_cid = store.free_cid().unwrap();
        store.save(&a).unwrap();
        std::fs::create_dir_all(store.dir("b")).unwrap();
        let mut b = sample("b");
        b.vsock_cid = store.free_cid().unwrap();
        assert_ne!(a.vsock_cid, b.vsock_cid);
        store.save(&b).unwrap();
        assert_eq!(store.list().unwrap().len(), 2);
        assert_eq!(store.load("a").unwrap(), a);
        assert!(matches!(store.load("c"), Err(Error::NoSuchContainer(_))));
        assert_ne!(store.sock_dir("a"), store.sock_dir("b"));
        store.remove(&a).unwrap();
        assert!(!store.exists("a"));
    }
}
