//! containerd with its CRI plugin, private to one test, driven over the Kubernetes CRI API
//! (k8s-cri's `runtime.v1` client over containerd's unix socket) as kubelet would drive it.
//!
//! [`Cri::start`] starts a test registry (plain HTTP) holding busybox and a pause image, then
//! containerd through `scripts/engine-setup.sh cri-start`: its own root, state, socket,
//! config and CNI network (a bridge of its own) under one temp dir, runtime handlers `runc`
//! (io.containerd.runc.v2) and `husk` (io.containerd.husk.v2, found on the daemon's PATH).
//! Dropping it tears everything down through `engine-setup.sh clean`, and prints the tail of
//! containerd's log when the test is failing. [`Cri::leftovers`] lists what a removed pod
//! left behind.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::{
    ContainerConfig, ContainerMetadata, ContainerState, ContainerStats, ContainerStatsRequest,
    ContainerStatus, ContainerStatusRequest, CreateContainerRequest, ExecSyncRequest,
    ExecSyncResponse, ImageSpec, LinuxContainerConfig, LinuxContainerSecurityContext,
    LinuxPodSandboxConfig, LinuxSandboxSecurityContext, ListPodSandboxRequest, NamespaceMode,
    NamespaceOption, PodSandboxConfig, PodSandboxMetadata, PodSandboxStatusRequest,
    PodSandboxStatusResponse, PullImageRequest, RemovePodSandboxRequest, RunPodSandboxRequest,
    StartContainerRequest, StatusRequest, StopContainerRequest, StopPodSandboxRequest,
    VersionRequest,
};
use tonic::transport::{Channel, Endpoint, Uri};

use super::engine::{processes_using, tool_present, LIMIT};
use super::registry::Registry;
use super::{run_bounded, text};

/// The containerd namespace the CRI plugin keeps pods in.
pub const K8S_NAMESPACE: &str = "k8s.io";

/// The pause container's entrypoint: runs until SIGTERM (as PID 1 it has to trap it to die
/// of it), like Kubernetes' pause.
const PAUSE_ENTRYPOINT: &str = "trap 'exit 0' TERM INT; while :; do sleep 3600 & wait $!; done";

/// A runtime handler of the CRI configuration (`RunPodSandboxRequest.runtime_handler`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Handler {
    /// containerd's own io.containerd.runc.v2: the known-good reference.
    Runc,
    /// io.containerd.husk.v2: one microVM per pod.
    Husk,
}

impl Handler {
    pub fn name(self) -> &'static str {
        match self {
            Handler::Runc => "runc",
            Handler::Husk => "husk",
        }
    }

    /// The runtime type `ctr run --runtime` takes.
    pub fn runtime_type(self) -> &'static str {
        match self {
            Handler::Runc => "io.containerd.runc.v2",
            Handler::Husk => "io.containerd.husk.v2",
        }
    }
}

/// The husk shim binary: `$HUSK_SHIM_BINARY`, else the one cargo built for this test binary.
/// None (NOT RUN, a failure under CI) when there is none, or the guest assets are missing.
pub fn husk_shim(test: &str) -> Option<PathBuf> {
    let shim = match std::env::var_os("HUSK_SHIM_BINARY") {
        Some(p) => {
            let p = PathBuf::from(p);
            assert!(
                p.is_file(),
                "HUSK_SHIM_BINARY={} is not a file",
                p.display()
            );
            p
        }
        // Set by cargo only once the package has the binary: until then, NOT RUN.
        None => match option_env!("CARGO_BIN_EXE_containerd-shim-husk-v2") {
            Some(p) => PathBuf::from(p),
            None => {
                super::not_run(
                    test,
                    "containerd-shim-husk-v2 not built (the package has no such binary yet; HUSK_SHIM_BINARY unset)",
                    true,
                );
                return None;
            }
        },
    };
    // The shim boots VMs: it needs the guest kernel and initramfs this environment names.
    super::kernel(test)?;
    super::initramfs(test)?;
    Some(shim)
}

/// The daemon's temp dir and registry; Drop stops and removes everything. Separate from
/// [`Cri`] so that a setup failing half-way is torn down too.
struct Instance {
    dir: tempfile::TempDir,
    registry: Registry,
}

impl Instance {
    fn log(&self) -> PathBuf {
        self.dir.path().join("containerd/containerd.log")
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- last lines of {} ---\n{}",
                self.log().display(),
                log_tail(&self.log(), 60)
            );
        }
        let mut c = Command::new(super::repo_root().join("scripts/engine-setup.sh"));
        c.arg("clean").arg(self.dir.path());
        if let Ok(out) =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run_bounded(c, None, LIMIT)))
        {
            if !out.status.success() {
                eprintln!(
                    "engine-setup.sh clean ({}): {}",
                    out.status,
                    text(&out.stderr)
                );
            }
        }
    }
}

/// The last `n` lines of the file at `path` (or why it could not be read).
pub fn log_tail(path: &Path, n: usize) -> String {
    match std::fs::read(path) {
        Ok(b) => {
            let t = text(&b);
            let lines: Vec<&str> = t.lines().collect();
            lines[lines.len().saturating_sub(n)..].join("\n")
        }
        Err(e) => format!("(cannot read it: {e})"),
    }
}

/// A running containerd with its CRI plugin, and a CRI client of it.
pub struct Cri {
    // Dropped first: the client before the daemon it talks to.
    rt: tokio::runtime::Runtime,
    channel: Channel,
    /// The socket the CRI (and `ctr`) is served on.
    pub socket: PathBuf,
    /// `127.0.0.1:PORT` of the test registry.
    pub registry: String,
    /// busybox in the test registry.
    pub busybox: String,
    containerd_pid: u32,
    inst: Instance,
}

impl Cri {
    /// A started containerd with CRI, `shim` (the husk shim) on its PATH when given; None
    /// (NOT RUN, a failure under CI) when a tool it needs is missing.
    pub fn start(test: &str, shim: Option<&Path>) -> Option<Cri> {
        for tool in [
            "containerd",
            "ctr",
            "containerd-shim-runc-v2",
            "skopeo",
            "docker-registry",
        ] {
            if !tool_present(test, tool) {
                return None;
            }
        }
        if !Path::new("/usr/lib/cni/bridge").is_file() {
            super::not_run(
                test,
                "/usr/lib/cni/bridge missing (Debian's containernetworking-plugins)",
                true,
            );
            return None;
        }
        let registry = Registry::start(std::iter::empty::<&str>())
            .unwrap_or_else(|e| panic!("cannot start the test registry: {e}"));
        // Short: the daemon's socket lives in it and a unix socket path has 108 bytes. The
        // script names the bridge and cgroup parent after its last 6 characters.
        let dir = tempfile::Builder::new()
            .prefix("husk-cri.")
            .rand_bytes(6)
            .tempdir_in("/tmp")
            .expect("tempdir");
        let inst = Instance { dir, registry };
        let host = format!("127.0.0.1:{}", inst.registry.port);
        let busybox = format!("{host}/library/busybox:latest");
        let pause = format!("{host}/husk/pause:3.9");
        push_images(inst.dir.path(), &busybox, &pause);

        let mut c = Command::new(super::repo_root().join("scripts/engine-setup.sh"));
        c.arg("cri-start")
            .arg(inst.dir.path())
            .arg(&host)
            .arg(&pause);
        if let Some(shim) = shim {
            // The shim under the name containerd looks for, alone in a dir of its own.
            let bin = inst.dir.path().join("shim-bin");
            std::fs::create_dir_all(&bin).expect("shim dir");
            std::os::unix::fs::symlink(shim, bin.join("containerd-shim-husk-v2"))
                .expect("link the shim");
            c.arg(&bin);
        }
        let out = run_bounded(c, None, LIMIT);
        assert!(
            out.status.success(),
            "engine-setup.sh cri-start failed ({}):\n{}",
            out.status,
            text(&out.stderr)
        );
        let socket = inst.dir.path().join("containerd/containerd.sock");
        let containerd_pid: u32 =
            std::fs::read_to_string(inst.dir.path().join("containerd/containerd.pid"))
                .ok()
                .and_then(|p| p.trim().parse().ok())
                .expect("containerd.pid");

        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        let channel = rt.block_on(connect(&socket));
        let cri = Cri {
            rt,
            channel,
            socket,
            registry: host,
            busybox,
            containerd_pid,
            inst,
        };
        let v = cri.call("Version", cri.runtime().version(VersionRequest::default()));
        assert_eq!(v.runtime_name, "containerd", "CRI Version: {v:?}");
        cri.wait_ready();
        Some(cri)
    }

    /// StopPodSandbox + RemovePodSandbox of every pod left (a failed test's): the CRI's own
    /// teardown, CNI DEL included, before engine-setup.sh kills what is left.
    fn remove_all_pods(&self) {
        let pods = self.try_call(
            "ListPodSandbox",
            self.runtime()
                .list_pod_sandbox(ListPodSandboxRequest::default()),
        );
        let pods = match pods {
            Ok(p) => p.items,
            Err(s) => {
                eprintln!("cleanup: ListPodSandbox: {}", s.message());
                return;
            }
        };
        for pod in pods {
            if let Err(s) = self.try_call(
                "StopPodSandbox",
                self.runtime().stop_pod_sandbox(StopPodSandboxRequest {
                    pod_sandbox_id: pod.id.clone(),
                }),
            ) {
                eprintln!("cleanup: StopPodSandbox {}: {}", pod.id, s.message());
            }
            if let Err(s) = self.try_call(
                "RemovePodSandbox",
                self.runtime().remove_pod_sandbox(RemovePodSandboxRequest {
                    pod_sandbox_id: pod.id.clone(),
                }),
            ) {
                eprintln!("cleanup: RemovePodSandbox {}: {}", pod.id, s.message());
            }
        }
    }

    /// The instance's private dir.
    pub fn dir(&self) -> &Path {
        self.inst.dir.path()
    }

    pub fn runtime(&self) -> RuntimeServiceClient<Channel> {
        RuntimeServiceClient::new(self.channel.clone())
    }

    pub fn images(&self) -> ImageServiceClient<Channel> {
        ImageServiceClient::new(self.channel.clone())
    }

    /// Runs one CRI call to completion, bounded by [`LIMIT`]; its error as `Err`.
    pub fn try_call<T>(
        &self,
        what: &str,
        f: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    ) -> Result<T, tonic::Status> {
        match self
            .rt
            .block_on(async { tokio::time::timeout(LIMIT, f).await })
        {
            Ok(r) => r.map(tonic::Response::into_inner),
            Err(_) => panic!("CRI {what}: no answer within {LIMIT:?}"),
        }
    }

    /// [`Cri::try_call`] for a call that must succeed.
    pub fn call<T>(
        &self,
        what: &str,
        f: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    ) -> T {
        self.try_call(what, f).unwrap_or_else(|s| {
            panic!(
                "CRI {what} failed: {:?}: {}",
                s.code(),
                s.message().trim_end()
            )
        })
    }

    /// Waits until the CRI says RuntimeReady and NetworkReady (the CNI config is loaded).
    fn wait_ready(&self) {
        let start = Instant::now();
        loop {
            let st = self.call("Status", self.runtime().status(StatusRequest::default()));
            let conditions = st.status.map(|s| s.conditions).unwrap_or_default();
            let ready = |t: &str| conditions.iter().any(|c| c.r#type == t && c.status);
            if ready("RuntimeReady") && ready("NetworkReady") {
                return;
            }
            assert!(
                start.elapsed() < LIMIT,
                "the CRI never became ready: {conditions:?}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// CRI PullImage of `image`; the image's reference (its digest).
    pub fn pull(&self, image: &str) -> String {
        let r = self.call(
            "PullImage",
            self.images().pull_image(PullImageRequest {
                image: Some(ImageSpec {
                    image: image.to_string(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
        );
        r.image_ref
    }

    /// The cgroup parent engine-setup.sh gave this instance's pods (removed by cri-stop).
    pub fn cgroup_parent(&self) -> String {
        let name = self.dir().file_name().expect("dir name").to_string_lossy();
        let tag: String = name.chars().filter(char::is_ascii_alphanumeric).collect();
        format!("/husk-cri-{}", &tag[tag.len().saturating_sub(6)..])
    }

    /// The CNI network's (and bridge's) name, from the conflist cri-start wrote.
    pub fn network(&self) -> String {
        let path = self.dir().join("cni/net.d/10-husk-cri.conflist");
        let conf: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).expect("read the conflist"))
                .expect("conflist JSON");
        conf["name"].as_str().expect("network name").to_string()
    }

    /// A pod config as crictl sends one from a minimal pod-config.json, plus what kubelet
    /// sets by default: network and IPC shared by the pod, a PID namespace per container.
    pub fn pod_config(&self, name: &str) -> PodSandboxConfig {
        let log_dir = self.dir().join("pod-logs").join(name);
        std::fs::create_dir_all(&log_dir).expect("pod log dir");
        PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                name: name.to_string(),
                uid: format!("uid-{name}-{}", std::process::id()),
                namespace: "default".to_string(),
                attempt: 0,
            }),
            hostname: name.to_string(),
            log_directory: log_dir.to_str().expect("utf-8 dir").to_string(),
            linux: Some(LinuxPodSandboxConfig {
                cgroup_parent: self.cgroup_parent(),
                security_context: Some(LinuxSandboxSecurityContext {
                    namespace_options: Some(NamespaceOption {
                        network: NamespaceMode::Pod as i32,
                        pid: NamespaceMode::Container as i32,
                        ipc: NamespaceMode::Pod as i32,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// RunPodSandbox with `handler`; the pod's id.
    pub fn run_pod(&self, config: &PodSandboxConfig, handler: Handler) -> String {
        self.call(
            "RunPodSandbox",
            self.runtime().run_pod_sandbox(RunPodSandboxRequest {
                config: Some(config.clone()),
                runtime_handler: handler.name().to_string(),
            }),
        )
        .pod_sandbox_id
    }

    pub fn pod_status(&self, pod: &str) -> PodSandboxStatusResponse {
        self.call(
            "PodSandboxStatus",
            self.runtime().pod_sandbox_status(PodSandboxStatusRequest {
                pod_sandbox_id: pod.to_string(),
                verbose: true,
            }),
        )
    }

    /// CreateContainer `name` in `pod` running `command` in `image`, its log at
    /// `<log_directory>/<name>.log`; the container's id.
    pub fn create_container(
        &self,
        pod: &str,
        pod_config: &PodSandboxConfig,
        name: &str,
        image: &str,
        command: &[&str],
    ) -> String {
        let config = ContainerConfig {
            metadata: Some(ContainerMetadata {
                name: name.to_string(),
                attempt: 0,
            }),
            image: Some(ImageSpec {
                image: image.to_string(),
                ..Default::default()
            }),
            command: command.iter().map(|s| s.to_string()).collect(),
            log_path: format!("{name}.log"),
            linux: Some(LinuxContainerConfig {
                security_context: Some(LinuxContainerSecurityContext {
                    namespace_options: pod_config
                        .linux
                        .as_ref()
                        .and_then(|l| l.security_context.as_ref())
                        .and_then(|s| s.namespace_options.clone()),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        self.call(
            "CreateContainer",
            self.runtime().create_container(CreateContainerRequest {
                pod_sandbox_id: pod.to_string(),
                config: Some(config),
                sandbox_config: Some(pod_config.clone()),
            }),
        )
        .container_id
    }

    pub fn start_container(&self, id: &str) {
        self.call(
            "StartContainer",
            self.runtime().start_container(StartContainerRequest {
                container_id: id.to_string(),
            }),
        );
    }

    /// ExecSync of `cmd` in container `id`, given `timeout_s` by the CRI.
    pub fn exec_sync(&self, id: &str, cmd: &[&str], timeout_s: i64) -> ExecSyncResponse {
        self.call(
            "ExecSync",
            self.runtime().exec_sync(ExecSyncRequest {
                container_id: id.to_string(),
                cmd: cmd.iter().map(|s| s.to_string()).collect(),
                timeout: timeout_s,
            }),
        )
    }

    pub fn container_status(&self, id: &str) -> ContainerStatus {
        self.call(
            "ContainerStatus",
            self.runtime().container_status(ContainerStatusRequest {
                container_id: id.to_string(),
                verbose: false,
            }),
        )
        .status
        .unwrap_or_else(|| panic!("ContainerStatus of {id}: no status"))
    }

    /// Polls ContainerStatus until container `id` has exited (bounded by [`LIMIT`]).
    pub fn wait_exited(&self, id: &str) -> ContainerStatus {
        let start = Instant::now();
        loop {
            let st = self.container_status(id);
            if st.state == ContainerState::ContainerExited as i32 {
                return st;
            }
            assert!(
                start.elapsed() < LIMIT,
                "container {id} never exited within {LIMIT:?}: {st:?}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// StopContainer with `timeout_s` seconds between SIGTERM and SIGKILL.
    pub fn stop_container(&self, id: &str, timeout_s: i64) {
        self.call(
            "StopContainer",
            self.runtime().stop_container(StopContainerRequest {
                container_id: id.to_string(),
                timeout: timeout_s,
            }),
        );
    }

    pub fn stop_pod(&self, pod: &str) {
        self.call(
            "StopPodSandbox",
            self.runtime().stop_pod_sandbox(StopPodSandboxRequest {
                pod_sandbox_id: pod.to_string(),
            }),
        );
    }

    pub fn remove_pod(&self, pod: &str) {
        self.call(
            "RemovePodSandbox",
            self.runtime().remove_pod_sandbox(RemovePodSandboxRequest {
                pod_sandbox_id: pod.to_string(),
            }),
        );
    }

    /// `ctr --address … -n NAMESPACE args…`.
    pub fn ctr(&self, namespace: &str, args: &[&str]) -> Command {
        let mut c = Command::new("ctr");
        c.arg("--address")
            .arg(&self.socket)
            .args(["-n", namespace])
            .args(args);
        c
    }

    /// Runs `ctr` bounded by [`LIMIT`].
    pub fn run_ctr(&self, namespace: &str, args: &[&str]) -> Output {
        run_bounded(self.ctr(namespace, args), None, LIMIT)
    }

    /// The last `n` lines of containerd's log.
    pub fn log_tail(&self, n: usize) -> String {
        log_tail(&self.inst.log(), n)
    }

    /// Processes of this instance other than containerd itself: the shims and whatever they
    /// started (they carry the instance's marker in their environment), anything whose
    /// command line or working directory names the instance's dir.
    /// ContainerStats: what the runtime says the container uses.
    pub fn container_stats(&self, id: &str) -> ContainerStats {
        self.call(
            "ContainerStats",
            self.runtime().container_stats(ContainerStatsRequest {
                container_id: id.to_string(),
            }),
        )
        .stats
        .unwrap_or_else(|| panic!("ContainerStats of {id}: no stats"))
    }

    pub fn processes(&self) -> Vec<String> {
        let me = format!("pid {}:", self.containerd_pid);
        processes_using(self.dir())
            .into_iter()
            .filter(|p| !p.starts_with(&me))
            .collect()
    }
}

impl Drop for Cri {
    fn drop(&mut self) {
        // Bounded calls; a hung one panics, which must not abort a test already failing.
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.remove_all_pods()));
    }
}

async fn connect(socket: &Path) -> Channel {
    let socket = socket.to_path_buf();
    // The URI is required by tonic but unused: every connection goes to the socket.
    let endpoint = Endpoint::try_from("http://[::1]:50051").expect("endpoint URI");
    let connect = endpoint.connect_with_connector(tower::service_fn(move |_: Uri| {
        let socket = socket.clone();
        async move {
            let stream = tokio::net::UnixStream::connect(socket).await?;
            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
        }
    }));
    match tokio::time::timeout(LIMIT, connect).await {
        Ok(Ok(ch)) => ch,
        Ok(Err(e)) => panic!("cannot connect to the CRI socket: {e}"),
        Err(_) => panic!("connecting to the CRI socket took over {LIMIT:?}"),
    }
}

/// Pushes busybox (the engine tests' archive) as `busybox`, and a pause image built on its
/// layer as `pause`, into the plain-HTTP test registry.
fn push_images(dir: &Path, busybox: &str, pause: &str) {
    let archive = super::cli::busybox_archive();
    skopeo_copy(&format!("docker-archive:{}", archive.display()), busybox);
    let layout = archive.parent().expect("archive dir").join("busybox-oci");
    let pause_layout = dir.join("pause-oci");
    super::cri_image::pause_layout(&layout, &pause_layout, PAUSE_ENTRYPOINT);
    skopeo_copy(&format!("oci:{}:pause", pause_layout.display()), pause);
}

fn skopeo_copy(from: &str, to: &str) {
    let mut c = Command::new("skopeo");
    c.args([
        "--insecure-policy",
        "copy",
        "--quiet",
        "--dest-tls-verify=false",
    ])
    .arg(from)
    .arg(format!("docker://{to}"));
    let out = run_bounded(c, None, LIMIT);
    assert!(
        out.status.success(),
        "skopeo copy {from} to {to}: {}",
        text(&out.stderr)
    );
}
