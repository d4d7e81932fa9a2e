//! Drives the built `husk` binary against a private `--root`, for the CLI tests.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

/// Longest any one husk command may take before a test calls it hung.
pub const LIMIT: Duration = Duration::from_secs(120);

/// `--network` of containers these tests run: none, unless a test asks for one. The
/// default bridge is the host's `husk0`, shared by every root, and its addresses are leased
/// per root: parallel tests with their own roots would hand out the same address twice.
/// tests/husk_network.rs runs bridges inside network namespaces of its own instead.
pub const NETWORK_DEFAULT: &str = "none";

/// A husk root of the test's own, and the guest kernel + initramfs it boots.
pub struct Husk {
    pub root: tempfile::TempDir,
    pub kernel: PathBuf,
    pub initramfs: PathBuf,
    /// More environment for every husk command (`NAME=VALUE`).
    pub env: Vec<String>,
}

impl Husk {
    pub fn new(kernel: PathBuf, initramfs: PathBuf) -> Self {
        Husk {
            root: tempfile::tempdir().expect("tempdir"),
            kernel,
            initramfs,
            env: Vec::new(),
        }
    }

    /// `husk --root <root> args…` as a Command (for tests that pipe stdin themselves).
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(super::bin("husk"));
        c.arg("--root").arg(self.root.path()).args(args);
        c.env("HUSK_KERNEL", &self.kernel)
            .env("HUSK_INITRAMFS", &self.initramfs)
            .env("HUSK_NETWORK", NETWORK_DEFAULT);
        for kv in &self.env {
            if let Some((k, v)) = kv.split_once('=') {
                c.env(k, v);
            }
        }
        c
    }

    /// Runs `husk --root <root> args…` with stdin from /dev/null, bounded by [`LIMIT`].
    /// `run_limited` takes no environment, so env(1) carries the asset paths: without them
    /// husk would boot whatever kernel an earlier setup.sh installed under /usr/local.
    pub fn run(&self, args: &[&str]) -> Output {
        let kernel = format!("HUSK_KERNEL={}", self.kernel.display());
        let initramfs = format!("HUSK_INITRAMFS={}", self.initramfs.display());
        let husk = super::bin("husk");
        let root = self.root.path().to_str().expect("utf-8 root");
        let network = format!("HUSK_NETWORK={NETWORK_DEFAULT}");
        let mut a = vec![kernel.as_str(), initramfs.as_str(), network.as_str()];
        a.extend(self.env.iter().map(String::as_str));
        a.extend([husk.to_str().expect("utf-8 path"), "--root", root]);
        a.extend_from_slice(args);
        super::run_limited(Path::new("/usr/bin/env"), &a, LIMIT).0
    }

    /// Runs and asserts success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "husk {args:?} failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf-8 stdout")
    }

    pub fn containers_dir(&self) -> PathBuf {
        self.root.path().join("containers")
    }

    /// A container's state.json.
    pub fn state(&self, id: &str) -> serde_json::Value {
        let path = self.containers_dir().join(id).join("state.json");
        serde_json::from_slice(&std::fs::read(&path).expect("state.json")).expect("state json")
    }

    /// The ids of the containers under this root (their directories; `.lock` and the like
    /// left out).
    pub fn container_ids(&self) -> Vec<String> {
        std::fs::read_dir(self.containers_dir())
            .expect("containers")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| !n.starts_with('.'))
            .collect()
    }

    /// The state.json of the only container under this root.
    pub fn only_state(&self) -> serde_json::Value {
        let ids = self.container_ids();
        assert_eq!(ids.len(), 1, "{ids:?}");
        self.state(&ids[0])
    }
}

impl Drop for Husk {
    /// Whatever a test left running under its root (it failed midway, or kept a container
    /// for its checks) goes with the root: a VM, its monitor and its helper daemons outlive
    /// a deleted root otherwise, and nothing would ever repair them.
    fn drop(&mut self) {
        let ids: Vec<String> = std::fs::read_dir(self.containers_dir())
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| !n.starts_with('.'))
            .collect();
        if ids.is_empty() {
            return;
        }
        let mut args = vec!["rm", "-f"];
        args.extend(ids.iter().map(String::as_str));
        let out = self.run(&args);
        if !out.status.success() {
            eprintln!(
                "husk rm -f of what {} left: {}",
                self.root.path().display(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
    }
}

/// A root with the busybox image and this host's guest assets, or `None` after saying why
/// this host cannot run `test`.
pub fn husk_with_busybox(test: &str) -> Option<Husk> {
    let kernel = super::kernel(test)?;
    let initramfs = super::initramfs(test)?;
    Husk::with_busybox(test, kernel, initramfs)
}

/// Whether the tools a husk root needs to hold images are here; says NOT RUN (a failure under
/// CI) when one is missing.
pub fn image_tools_present(test: &str) -> bool {
    for tool in ["mkfs.erofs", "mkfs.ext4"] {
        let found = Command::new("sh")
            .arg("-c")
            .arg(format!("PATH=$PATH:/usr/sbin:/sbin command -v {tool}"))
            .output()
            .is_ok_and(|o| o.status.success());
        if !found {
            super::not_run(test, &format!("{tool} not installed"), true);
            return false;
        }
    }
    if !Path::new("/usr/bin/busybox").is_file() {
        super::not_run(
            test,
            "/usr/bin/busybox missing (apt-get install busybox-static)",
            true,
        );
        return false;
    }
    true
}

/// The busybox docker-archive of scripts/make-busybox-image.sh, built once per test binary.
pub fn busybox_archive() -> PathBuf {
    static ARCHIVE: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    ARCHIVE
        .get_or_init(|| {
            let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
                .join(format!("{}-images", env!("CARGO_CRATE_NAME")));
            let o = Command::new(super::repo_root().join("scripts/make-busybox-image.sh"))
                .arg(&out)
                .output()
                .expect("run make-busybox-image.sh");
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
            let stdout = String::from_utf8_lossy(&o.stdout).into_owned();
            PathBuf::from(stdout.trim().lines().last().expect("archive path"))
        })
        .clone()
}

impl Husk {
    /// A root with the busybox image loaded, or `None` after saying why this host cannot run
    /// the test.
    pub fn with_busybox(test: &str, kernel: PathBuf, initramfs: PathBuf) -> Option<Husk> {
        if !image_tools_present(test) {
            return None;
        }
        let h = Husk::new(kernel, initramfs);
        let archive = busybox_archive();
        let loaded = h.ok(&["load", "-i", archive.to_str().expect("utf-8 path")]);
        assert_eq!(loaded.trim(), "Loaded image: busybox:latest");
        Some(h)
    }
}

/// One row of `husk run --timings`' table: a phase (two spaces in), or a step of the guest's
/// within the phase above it (four in).
#[derive(Debug)]
pub struct TimingRow {
    pub name: String,
    pub ms: f64,
    pub step: bool,
}

/// The rows after `husk: timings:` in `stderr`; a duration that does not parse reads -1.
pub fn timing_rows(stderr: &str) -> Vec<TimingRow> {
    stderr
        .lines()
        .skip_while(|l| *l != "husk: timings:")
        .skip(1)
        .map(|l| {
            let mut words = l.trim().rsplitn(3, ' ');
            let ms = words.nth(1).and_then(|v| v.parse().ok()).unwrap_or(-1.0);
            TimingRow {
                name: words.next().unwrap_or("").trim().to_string(),
                ms,
                step: l.starts_with("    "),
            }
        })
        .collect()
}

/// Checks `husk run --rm --timings --network none busybox true`'s table (its `stderr`, the
/// command having taken `wall`): every phase in order, the guest's steps under container
/// create and within it, and a total of about the command's own wall time.
pub fn check_timings(err: &str, wall: Duration) {
    let phases = [
        "image resolve",
        "disk preparation",
        "VM backend choice",
        "network attach",
        "helper daemons",
        "VMM spawn",
        "kernel boot to agent ready",
        "agent connect",
        "container create",
        "stdio attach + start",
        "process run to exit",
        "power-off + cleanup",
        "total",
    ];
    // Phases, and the guest's own steps under the phase they belong to (with no network,
    // none for it).
    let rows = timing_rows(err);
    // A VM restored from a VM template (src/backend/template) has its restore, and the first
    // one of its kind the template's build, before the agent answers.
    let names: Vec<&str> = rows
        .iter()
        .filter(|r| !r.step)
        .map(|r| r.name.as_str())
        .filter(|n| {
            !matches!(
                *n,
                "VM template build"
                    | "VM template RAM"
                    | "VM template load"
                    | "VM template restore"
            )
        })
        .collect();
    assert_eq!(names, phases, "{err}");
    let create = rows
        .iter()
        .position(|r| r.name == "container create")
        .unwrap();
    let steps: Vec<_> = rows[create + 1..].iter().take_while(|r| r.step).collect();
    let step_names: Vec<&str> = steps.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(
        step_names,
        [
            "cgroup and seccomp",
            "init helper spawned",
            "layer disks mounted",
            "scratch disk mounted",
            "overlay mounted",
            "init helper set-up",
        ],
        "{err}"
    );
    let in_guest: f64 = steps.iter().map(|r| r.ms).sum();
    assert!(
        steps.iter().all(|r| r.ms >= 0.0) && in_guest <= rows[create].ms,
        "the guest's steps ({in_guest} ms) run within container create: {err}"
    );
    let total_ms = rows.last().map(|r| r.ms).unwrap_or(-1.0);
    // The phases run from the command's start to its end, less process start-up and exit.
    assert!(
        total_ms > 0.0 && total_ms <= wall.as_secs_f64() * 1e3,
        "total {total_ms} ms against {wall:?}: {err}"
    );
    assert!(
        total_ms >= wall.as_secs_f64() * 1e3 * 0.5,
        "{total_ms} ms against {wall:?}"
    );
}
