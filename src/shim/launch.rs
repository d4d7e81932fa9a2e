//! The shim's process lifecycle as containerd drives it: `start` (which shim serves a task:
//! the pod's, found by the CRI annotations, as Kata groups them), the serving process, and
//! `delete` (the clean-up containerd runs when a shim died).

use std::path::Path;
use std::sync::Arc;

use containerd_shim::api::DeleteResponse;
use containerd_shim::publisher::RemotePublisher;
use containerd_shim::{Config, ExitSignal, Flags, StartOpts};

use super::service::Service;
use super::{pod, CONTAINER_TYPE_ANNOTATION, SANDBOX_ID_ANNOTATION};
use crate::ociruntime::bundle;

/// The exit status containerd is told for a task whose shim died under it.
const SHIM_DIED_EXIT_STATUS: u32 = 128 + libc::SIGKILL as u32;

/// What containerd's shim crate needs from husk's shim.
pub struct HuskShim {
    namespace: String,
    id: String,
    exit: Arc<ExitSignal>,
}

/// The shim crate's settings for husk: it neither reaps children (husk waits for its VMM and
/// helpers itself) nor sets up its own logger (husk logs through `tracing`).
pub fn config() -> Config {
    Config {
        no_setup_logger: true,
        no_reaper: true,
        no_sub_reaper: true,
        ..Default::default()
    }
}

/// The pod a task belongs to: `(sandbox id, is it the sandbox)`, from the bundle in `dir`.
fn pod_of(dir: &Path, id: &str) -> (String, bool) {
    let annotations = bundle::load_spec(dir)
        .ok()
        .and_then(|s| s.annotations().clone())
        .unwrap_or_default();
    let member = annotations
        .get(CONTAINER_TYPE_ANNOTATION)
        .map(String::as_str)
        == Some("container");
    match annotations.get(SANDBOX_ID_ANNOTATION) {
        Some(sandbox) if member => (sandbox.clone(), false),
        _ => (id.to_string(), true),
    }
}

/// Logs to the `log` FIFO containerd reads in the bundle directory the shim serves from.
fn init_logging(debug: bool) {
    use std::os::unix::fs::OpenOptionsExt;
    // Non-blocking: a log line containerd does not read in time is dropped, never a shim
    // stuck in a write.
    let Ok(log) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open("log")
    else {
        return;
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(if debug { "debug" } else { "info" })
    });
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .with_writer(std::sync::Mutex::new(log))
        .try_init();
}

impl containerd_shim::Shim for HuskShim {
    type T = Service;

    fn new(_runtime_id: &str, args: &Flags, _config: &mut Config) -> Self {
        HuskShim {
            namespace: args.namespace.clone(),
            id: args.id.clone(),
            exit: Arc::new(ExitSignal::default()),
        }
    }

    fn start_shim(&mut self, opts: StartOpts) -> Result<String, containerd_shim::Error> {
        let cwd =
            std::env::current_dir().map_err(|e| containerd_shim::Error::Other(e.to_string()))?;
        // One shim per pod: a member's task goes to the shim its sandbox started.
        let (grouping, _) = pod_of(&cwd, &opts.id);
        let (_, address) = containerd_shim::spawn(opts, &grouping, Vec::new())?;
        containerd_shim::util::write_address(&address)?;
        Ok(address)
    }

    fn delete_shim(&mut self) -> Result<DeleteResponse, containerd_shim::Error> {
        let cwd =
            std::env::current_dir().map_err(|e| containerd_shim::Error::Other(e.to_string()))?;
        let (sandbox, is_sandbox) = pod_of(&cwd, &self.id);
        let dir = pod::dir_of(&self.namespace, &sandbox);
        if is_sandbox {
            pod::clean_up_after(&dir);
            // The VM's cgroup went under the sandbox's (see `Pod::boot`); its holder is gone.
            let cgroups = bundle::load_spec(&cwd)
                .ok()
                .and_then(|s| s.linux().clone())
                .and_then(|l| l.cgroups_path().clone())
                .filter(|p| p.is_absolute());
            if let Some(p) = cgroups {
                crate::confine::cgroup::remove_left_under(&p);
            }
        } else {
            pod::release_entries_of(&dir, &self.id);
        }
        super::rootfs::unmount(&cwd);
        Ok(DeleteResponse {
            exit_status: SHIM_DIED_EXIT_STATUS,
            exited_at: containerd_shim::protos::protobuf::MessageField::some(
                super::process::timestamp(std::time::SystemTime::now()),
            ),
            ..Default::default()
        })
    }

    fn wait(&mut self) {
        self.exit.wait();
    }

    fn create_task_service(&self, publisher: RemotePublisher) -> Service {
        init_logging(std::env::args().any(|a| a == "-debug"));
        tracing::info!("serving pod tasks in namespace {}", self.namespace);
        Service::new(&self.namespace, publisher, self.exit.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bundle_with(annotations: serde_json::Value) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let spec = serde_json::json!({
            "ociVersion": "1.0.2",
            "root": {"path": "rootfs"},
            "process": {"args": ["sh"], "cwd": "/", "user": {"uid": 0, "gid": 0}},
            "annotations": annotations,
        });
        std::fs::write(dir.path().join("config.json"), spec.to_string()).unwrap();
        bundle::load_spec(dir.path()).expect("a valid spec");
        dir
    }

    #[test]
    fn members_go_to_their_sandboxs_shim_and_the_rest_to_their_own() {
        let member = bundle_with(serde_json::json!({
            "io.kubernetes.cri.container-type": "container",
            "io.kubernetes.cri.sandbox-id": "pod1",
        }));
        assert_eq!(pod_of(member.path(), "c1"), ("pod1".to_string(), false));
        let sandbox = bundle_with(serde_json::json!({
            "io.kubernetes.cri.container-type": "sandbox",
            "io.kubernetes.cri.sandbox-id": "pod1",
        }));
        assert_eq!(pod_of(sandbox.path(), "pod1"), ("pod1".to_string(), true));
        let lone = bundle_with(serde_json::json!({}));
        assert_eq!(pod_of(lone.path(), "c2"), ("c2".to_string(), true));
        let none = tempfile::tempdir().unwrap();
        assert_eq!(pod_of(none.path(), "c3"), ("c3".to_string(), true));
    }
}
