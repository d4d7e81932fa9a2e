//! Real container engines (podman, containerd's runc shim, dockerd) driving an OCI runtime, for the
//! engine tests. The runtime is `$HUSK_ENGINE_RUNTIME` or the built husk-runtime; the tests
//! are developed against runc (`HUSK_ENGINE_RUNTIME=/usr/sbin/runc`) and assert the same
//! engine-visible behaviour of both, plus what only a VM runtime shows (the guest kernel,
//! vCPUs and memory sized from the limits).
//!
//! Every engine instance is private to one test (its own podman store, containerd daemon,
//! runtime `--root`), set up by scripts/engine-setup.sh, and every command is bounded.

pub mod docker;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// Longest one engine command may take (a VM boot on TCG with other tests running beside it
/// included) before the test calls it hung.
pub const LIMIT: Duration = Duration::from_secs(180);

/// The OCI runtime under test.
pub struct Runtime {
    /// The runtime binary itself.
    pub binary: PathBuf,
    /// Whether it is husk-runtime (its `--version` says so), i.e. containers run in VMs.
    pub is_husk: bool,
}

/// The runtime under test, or None (reported as NOT RUN, a failure under CI) when the
/// default husk-runtime is not built, or a tool the engine tests need is missing.
pub fn runtime(test: &str) -> Option<Runtime> {
    let binary = match std::env::var_os("HUSK_ENGINE_RUNTIME") {
        Some(p) => {
            let p = PathBuf::from(p);
            assert!(
                p.is_file(),
                "HUSK_ENGINE_RUNTIME={} is not a file",
                p.display()
            );
            p
        }
        None => {
            let p = super::bin("husk-runtime");
            if !p.is_file() {
                super::not_run(
                    test,
                    &format!(
                        "{} not built (cargo build --bin husk-runtime), and HUSK_ENGINE_RUNTIME is not set",
                        p.display()
                    ),
                    true,
                );
                return None;
            }
            p
        }
    };
    let version = run_bounded(
        {
            let mut c = Command::new(&binary);
            c.arg("--version");
            c
        },
        None,
        Duration::from_secs(30),
    );
    assert!(
        version.status.success(),
        "{} --version failed: {}",
        binary.display(),
        super::text(&version.stderr)
    );
    let is_husk = super::text(&version.stdout).to_lowercase().contains("husk");
    if is_husk {
        // A VM runtime needs the guest kernel, initramfs and KVM; say so when they are missing.
        if super::kernel(test).is_none()
            || super::initramfs(test).is_none()
            || !super::kvm_available(test)
        {
            return None;
        }
    }
    Some(Runtime { binary, is_husk })
}

/// Whether `tool` is on the PATH; reports NOT RUN (a failure under CI) when it is not.
pub fn tool_present(test: &str, tool: &str) -> bool {
    let found = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|d| d.join(tool).is_file()))
        .unwrap_or(false);
    if !found {
        super::not_run(
            test,
            &format!("{tool} is not installed (scripts/test.sh installs HUSK_ENGINE_PACKAGES)"),
            true,
        );
    }
    found
}

pub use super::run_bounded;

/// A private directory for one engine instance. Short on purpose: containerd's socket lives
/// in it and a unix socket path has 108 bytes.
fn private_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("husk-eng")
        .tempdir_in("/tmp")
        .expect("tempdir")
}

/// `scripts/engine-setup.sh STEP DIR [ARG]`, asserted to succeed; returns its last line.
/// The busybox archive is built once per test binary, in its own dir: tests setting up in
/// parallel must not rewrite one another's.
fn engine_setup(step: &str, dir: &Path, arg: Option<&Path>) -> String {
    let mut c = Command::new(super::repo_root().join("scripts/engine-setup.sh"));
    c.arg(step)
        .arg(dir)
        .env("HUSK_BUSYBOX_ARCHIVE", super::cli::busybox_archive());
    if let Some(a) = arg {
        c.arg(a);
    }
    let out = run_bounded(c, None, LIMIT);
    assert!(
        out.status.success(),
        "engine-setup.sh {step} {} failed ({}):\n{}",
        dir.display(),
        out.status,
        super::text(&out.stderr)
    );
    super::text(&out.stdout)
        .lines()
        .last()
        .unwrap_or_default()
        .to_string()
}

/// Writes `dir/bin/husk-runtime`, which runs the runtime under test with this test
/// environment's asset paths: conmon and the containerd shim do not pass the engine's
/// environment on, so `HUSK_KERNEL` & co. must travel in the file. The name makes podman's
/// conmon pass `--log-format=json --log` (engine-setup.sh lists it in runtime_supports_json).
///
/// With `root`, the launcher also gives the runtime that private `--root`: podman's
/// `--runtime-flag root=…` does not reach the `delete --force` of `podman container cleanup`
/// (conmon's exit command), which would then look in the default root.
fn write_launcher(dir: &Path, rt: &Runtime, root: Option<&Path>) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let bin_dir = dir.join("bin");
    std::fs::create_dir_all(&bin_dir).expect("launcher dir");
    let mut script = String::from("#!/bin/sh\n# Written by husk's engine tests.\n");
    // Inherited by whatever the runtime starts (VM holder, VMM, daemons): how the leak check
    // tells this test's processes from those of tests running beside it.
    script.push_str(&format!(
        "export {OWNER_ENV}={}\n",
        shell_quote(dir.to_str().expect("utf-8 dir"))
    ));
    for var in [
        "HUSK_KERNEL",
        "HUSK_BZIMAGE",
        "HUSK_INITRAMFS",
        "HUSK_VIRTIOFSD",
        "HUSK_AGENT_MUX_BIN",
        "HUSK_CACHE",
        "RUST_LOG",
    ] {
        if let Ok(v) = std::env::var(var) {
            script.push_str(&format!("export {var}={}\n", shell_quote(&v)));
        }
    }
    let root_flag = root
        .map(|r| format!("--root {} ", shell_quote(r.to_str().expect("utf-8 root"))))
        .unwrap_or_default();
    script.push_str(&format!(
        "exec {} {root_flag}\"$@\"\n",
        shell_quote(rt.binary.to_str().expect("utf-8 runtime path"))
    ));
    let path = bin_dir.join("husk-runtime");
    std::fs::write(&path, script).expect("write launcher");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    path
}

/// Set by the launcher to the engine instance's private dir.
pub const OWNER_ENV: &str = "HUSK_ENGINE_TEST_DIR";

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// A podman of the test's own: private store, runroot, tmp dir and runtime `--root`.
pub struct Podman {
    pub dir: tempfile::TempDir,
    /// The runtime path podman is given with `--runtime`.
    pub runtime: PathBuf,
    /// The runtime's private state dir (`--root`, given by the launcher).
    pub runtime_root: PathBuf,
}

impl Podman {
    /// A fresh podman with busybox loaded, or None (NOT RUN) when podman is missing.
    pub fn new(test: &str, rt: &Runtime) -> Option<Self> {
        if !tool_present(test, "podman") || !tool_present(test, "conmon") {
            return None;
        }
        let dir = private_dir();
        let runtime_root = dir.path().join("runtime-root");
        let runtime = write_launcher(dir.path(), rt, Some(&runtime_root));
        let podman = Podman {
            dir,
            runtime,
            runtime_root,
        };
        // After the struct exists, so that its Drop cleans up a failed setup too.
        engine_setup("podman", podman.dir.path(), Some(&podman.runtime));
        Some(podman)
    }

    /// `podman --runtime R args…` with this instance's configuration.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let d = self.dir.path();
        let mut c = Command::new("podman");
        c.env("CONTAINERS_CONF", d.join("containers.conf"))
            .env("CONTAINERS_STORAGE_CONF", d.join("storage.conf"))
            .arg("--runtime")
            .arg(&self.runtime)
            .args(args);
        c
    }

    /// Runs podman with stdin from /dev/null, bounded by [`LIMIT`].
    pub fn run(&self, args: &[&str]) -> Output {
        run_bounded(self.cmd(args), None, LIMIT)
    }

    /// Runs podman with `input` on its stdin, bounded by [`LIMIT`].
    pub fn run_with_input(&self, args: &[&str], input: &[u8]) -> Output {
        run_bounded(self.cmd(args), Some(input), LIMIT)
    }

    /// Runs and asserts success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "podman {args:?} failed ({}):\nstdout: {}\nstderr: {}",
            out.status,
            super::text(&out.stdout),
            super::text(&out.stderr)
        );
        super::text(&out.stdout)
    }

    /// Polls `podman logs NAME` until it contains `needle` (bounded by [`LIMIT`]).
    pub fn wait_for_log(&self, name: &str, needle: &str) -> String {
        let start = Instant::now();
        loop {
            let logs = self.ok(&["logs", name]);
            if logs.contains(needle) {
                return logs;
            }
            assert!(
                start.elapsed() < LIMIT,
                "{needle:?} never appeared in the logs of {name}: {logs:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Names (or ids) of all containers of this podman, running or not.
    pub fn all_containers(&self) -> Vec<String> {
        self.ok(&["ps", "-a", "--format", "{{.Names}}"])
            .lines()
            .map(str::to_string)
            .filter(|l| !l.is_empty())
            .collect()
    }
}

/// A bridge network private to one test (netavark): its own bridge name and /24 (from
/// 10.89.0.0/16, none of which the host routes yet), so tests running beside each other never
/// share a bridge or an address pool. Written straight into the podman's private
/// `network_config_dir`: podman 4.3's `network create` cannot name the bridge.
pub struct TestNetwork {
    pub name: String,
    pub bridge: String,
    /// The bridge's (the host's) address on the network.
    pub gateway: String,
}

impl Podman {
    pub fn private_network(&self, name: &str) -> TestNetwork {
        let routes = super::text(
            &run_bounded(
                {
                    let mut c = Command::new("ip");
                    c.args(["-4", "route", "show"]);
                    c
                },
                None,
                Duration::from_secs(30),
            )
            .stdout,
        );
        let seed = (std::process::id() as usize + name.len() * 7919) % 200;
        let octet = (0..200)
            .map(|i| 20 + (seed + i) % 200)
            .find(|o| !routes.contains(&format!("10.89.{o}.")))
            .expect("a free 10.89.X.0/24");
        let bridge = format!("hkt{}x{octet}", std::process::id() % 10000);
        let gateway = format!("10.89.{octet}.1");
        let id: String = format!("{:0>64}", format!("{}{octet}", std::process::id()));
        let config = serde_json::json!({
            "name": name,
            "id": id,
            "driver": "bridge",
            "network_interface": bridge,
            "created": "2026-01-01T00:00:00Z",
            "subnets": [{"subnet": format!("10.89.{octet}.0/24"), "gateway": gateway}],
            "ipv6_enabled": false,
            "internal": false,
            "dns_enabled": false,
            "ipam_options": {"driver": "host-local"}
        });
        let path = self
            .dir
            .path()
            .join("networks")
            .join(format!("{name}.json"));
        std::fs::write(&path, config.to_string()).expect("write the network's config");
        TestNetwork {
            name: name.to_string(),
            bridge,
            gateway,
        }
    }
}

/// A TCP port on 127.0.0.1 that nothing listens on right now (the kernel's pick).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind 127.0.0.1:0")
}

/// `curl -s -m 3 URL` until it answers (bounded by [`LIMIT`]); returns the body.
pub fn curl_until_up(url: &str) -> String {
    let start = Instant::now();
    loop {
        let mut c = Command::new("curl");
        c.args(["-s", "-f", "-m", "3", url]);
        let out = run_bounded(c, None, Duration::from_secs(30));
        if out.status.success() {
            return super::text(&out.stdout);
        }
        assert!(
            start.elapsed() < LIMIT,
            "{url} never answered: {}",
            super::text(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Names of the links in the network namespace at `netns` (`ip -o link`), or of the host's.
pub fn links(netns: Option<&str>) -> Vec<String> {
    let mut c = match netns {
        Some(ns) => {
            let mut c = Command::new("nsenter");
            c.arg(format!("--net={ns}"))
                .args(["--", "ip", "-o", "link"]);
            c
        }
        None => {
            let mut c = Command::new("ip");
            c.args(["-o", "link"]);
            c
        }
    };
    c.env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin");
    let out = run_bounded(c, None, Duration::from_secs(30));
    assert!(
        out.status.success(),
        "ip link: {}",
        super::text(&out.stderr)
    );
    super::text(&out.stdout)
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_string())
        .collect()
}

impl Drop for Podman {
    fn drop(&mut self) {
        // Whatever a failed test left running, then the store's mounts and files. Only with
        // this instance's configuration written: podman without it is the user's podman.
        let d = self.dir.path();
        if d.join("containers.conf").is_file() && d.join("storage.conf").is_file() {
            let _ = run_bounded(
                self.cmd(&["rm", "--all", "--force", "-t", "0"]),
                None,
                LIMIT,
            );
        }
        let mut c = Command::new(super::repo_root().join("scripts/engine-setup.sh"));
        c.arg("clean").arg(self.dir.path());
        let _ = run_bounded(c, None, LIMIT);
    }
}

/// The busybox image's name in containerd (engine-setup.sh imports it into namespace "husk").
pub const CTR_IMAGE: &str = "docker.io/library/busybox:latest";

/// A containerd of the test's own (root, state, socket), whose runc shim runs the runtime
/// under test with a private `--root`.
pub struct Containerd {
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    pub runtime: PathBuf,
    pub runtime_root: PathBuf,
}

impl Containerd {
    /// A started containerd with busybox imported, or None (NOT RUN) when it is missing.
    pub fn new(test: &str, rt: &Runtime) -> Option<Self> {
        if !tool_present(test, "containerd")
            || !tool_present(test, "ctr")
            || !tool_present(test, "containerd-shim-runc-v2")
        {
            return None;
        }
        let dir = private_dir();
        // The shim passes `--root` itself (`ctr run --runc-root`).
        let runtime = write_launcher(dir.path(), rt, None);
        let ctr = Containerd {
            socket: dir.path().join("containerd/containerd.sock"),
            runtime_root: dir.path().join("runtime-root"),
            dir,
            runtime,
        };
        // After the struct exists, so that its Drop stops a daemon whose setup failed later.
        let socket = engine_setup("containerd-start", ctr.dir.path(), None);
        assert_eq!(Path::new(&socket), ctr.socket, "engine-setup.sh's socket");
        Some(ctr)
    }

    /// `ctr --address … -n husk args…`.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new("ctr");
        c.arg("--address")
            .arg(&self.socket)
            .args(["-n", "husk"])
            .args(args);
        c
    }

    /// `ctr run --runc-binary R --runc-root ROOT flags… IMAGE id args…`.
    pub fn run_container(&self, flags: &[&str], id: &str, args: &[&str]) -> Output {
        let runtime = self.runtime.to_str().expect("utf-8 path");
        let root = self.runtime_root.to_str().expect("utf-8 path");
        let mut a = vec!["run", "--runc-binary", runtime, "--runc-root", root];
        a.extend_from_slice(flags);
        a.push(CTR_IMAGE);
        a.push(id);
        a.extend_from_slice(args);
        self.run(&a)
    }

    pub fn run(&self, args: &[&str]) -> Output {
        run_bounded(self.cmd(args), None, LIMIT)
    }

    /// Runs and asserts success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "ctr {args:?} failed ({}):\nstdout: {}\nstderr: {}",
            out.status,
            super::text(&out.stdout),
            super::text(&out.stderr)
        );
        super::text(&out.stdout)
    }

    /// `ctr task ls` as (id, pid, status) rows.
    pub fn tasks(&self) -> Vec<(String, u32, String)> {
        self.ok(&["task", "ls"])
            .lines()
            .skip(1)
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                match f.as_slice() {
                    [id, pid, status] => {
                        Some((id.to_string(), pid.parse().ok()?, status.to_string()))
                    }
                    _ => None,
                }
            })
            .collect()
    }

    /// Polls `ctr task ls` until task `id` has `status` (bounded by [`LIMIT`]); returns its pid.
    pub fn wait_task(&self, id: &str, status: &str) -> u32 {
        let start = Instant::now();
        loop {
            let tasks = self.tasks();
            if let Some((_, pid, _)) = tasks.iter().find(|(i, _, s)| i == id && s == status) {
                return *pid;
            }
            assert!(
                start.elapsed() < LIMIT,
                "task {id} never reached {status}: {tasks:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        // Kill and remove whatever a failed test left, so no container outlives its shim.
        if let Ok(out) =
            std::panic::catch_unwind(|| run_bounded(self.cmd(&["task", "ls", "-q"]), None, LIMIT))
        {
            for id in super::text(&out.stdout).lines().filter(|l| !l.is_empty()) {
                let _ = run_bounded(
                    self.cmd(&["task", "kill", "-a", "-s", "SIGKILL", id]),
                    None,
                    LIMIT,
                );
                let _ = run_bounded(self.cmd(&["task", "rm", "-f", id]), None, LIMIT);
            }
        }
        if let Ok(out) = std::panic::catch_unwind(|| {
            run_bounded(self.cmd(&["container", "ls", "-q"]), None, LIMIT)
        }) {
            for id in super::text(&out.stdout).lines().filter(|l| !l.is_empty()) {
                let _ = run_bounded(self.cmd(&["container", "rm", id]), None, LIMIT);
            }
        }
        let mut c = Command::new(super::repo_root().join("scripts/engine-setup.sh"));
        c.arg("clean").arg(self.dir.path());
        let _ = run_bounded(c, None, LIMIT);
    }
}

/// What is left in a runtime's `--root` besides a root-wide lock file (`.lock`, a regular
/// file that husk-runtime keeps for the whole root): per-container state that a delete
/// should have removed.
pub fn runtime_state(root: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(root)
        .map(|d| {
            d.flatten()
                .filter(|e| {
                    !(e.file_name() == ".lock"
                        && e.file_type().map(|t| t.is_file()).unwrap_or(false))
                })
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default()
}

/// The release (`uname -r`) of the kernel husk boots: from the bzImage's setup header
/// (boot protocol: `kernel_version` at 0x20e points, +0x200, at "6.12.x (user@host) #1 …"),
/// or else the `Linux version ` banner in the vmlinux.
pub fn husk_kernel_release(test: &str) -> Option<String> {
    if let Some(bz) = super::bzimage(test) {
        let data = std::fs::read(&bz).expect("read bzImage");
        if let Some(r) = bzimage_release(&data) {
            return Some(r);
        }
        panic!(
            "{}: no kernel version string in the setup header",
            bz.display()
        );
    }
    let vmlinux = super::kernel(test)?;
    let data = std::fs::read(&vmlinux).expect("read vmlinux");
    let banner = b"Linux version ";
    let at = data
        .windows(banner.len() + 1)
        .position(|w| w.starts_with(banner) && w[banner.len()].is_ascii_digit())
        .unwrap_or_else(|| panic!("{}: no Linux version banner", vmlinux.display()));
    let rest = &data[at + banner.len()..];
    let end = rest
        .iter()
        .position(|b| b.is_ascii_whitespace() || *b == 0)
        .unwrap_or(rest.len());
    Some(String::from_utf8_lossy(&rest[..end]).into_owned())
}

fn bzimage_release(data: &[u8]) -> Option<String> {
    if data.get(0x202..0x206)? != b"HdrS" {
        return None;
    }
    let ptr = u16::from_le_bytes([*data.get(0x20e)?, *data.get(0x20f)?]) as usize;
    let s = data.get(ptr + 0x200..)?;
    let end = s.iter().position(|b| *b == 0 || *b == b' ')?;
    let r = std::str::from_utf8(&s[..end]).ok()?;
    (!r.is_empty()).then(|| r.to_string())
}

/// The running host kernel's release.
pub fn host_kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .expect("osrelease")
        .trim()
        .to_string()
}

/// Processes (other than this one) that belong to the engine instance in `dir`: started
/// through its launcher (their environment has [`OWNER_ENV`]=dir), or whose command line or
/// working directory names `dir` (conmon, the VM holder, VMM, virtiofsd, husk-agent-mux).
pub fn processes_using(dir: &Path) -> Vec<String> {
    let needle = dir.to_str().expect("utf-8 dir");
    let me = std::process::id().to_string();
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return found;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.bytes().all(|b| b.is_ascii_digit()) || name == me {
            continue;
        }
        let cmdline = std::fs::read(e.path().join("cmdline"))
            .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
            .unwrap_or_default();
        let cwd = std::fs::read_link(e.path().join("cwd")).unwrap_or_default();
        let marker = format!("{OWNER_ENV}={needle}");
        let owned = std::fs::read(e.path().join("environ"))
            .map(|env| env.split(|b| *b == 0).any(|v| v == marker.as_bytes()))
            .unwrap_or(false);
        if owned || cmdline.contains(needle) || cwd.starts_with(dir) {
            found.push(format!("pid {name}: {}", cmdline.trim()));
        }
    }
    found
}

/// This process's mounts as (mount point, mount source) pairs.
pub fn mounts() -> BTreeSet<(String, String)> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    info.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            let point = f.get(4)?;
            let sep = f.iter().position(|x| *x == "-")?;
            let source = f.get(sep + 2)?;
            Some((point.to_string(), format!("{} {}", f.get(3)?, source)))
        })
        .collect()
}

/// `podman ARGS` with its own storage under `storage` (vfs, no daemon state shared with the
/// host's), the project's containers.conf when there is one; its stdout, asserting success.
pub fn podman_in(storage: &Path, args: &[&str]) -> String {
    let mut c = Command::new("podman");
    c.arg("--root")
        .arg(storage.join("root"))
        .arg("--runroot")
        .arg(storage.join("run"))
        .args(["--storage-driver", "vfs"])
        .args(args);
    let conf = super::repo_root().join("../shared/podman/containers.conf");
    if conf.is_file() {
        c.env("CONTAINERS_CONF", conf);
    }
    let out = super::run_bounded(c, None, std::time::Duration::from_secs(300));
    assert!(
        out.status.success(),
        "podman {args:?}: {}",
        super::text(&out.stderr)
    );
    super::text(&out.stdout)
}
