//! A dockerd of the test's own (tests/engine_docker.rs): its own data root, exec root (with
//! the containerd it manages), socket, bridge and daemon.json, set up by
//! `scripts/engine-setup.sh dockerd-start`, with the runtime under test registered as `husk`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use super::{engine_setup, private_dir, run_bounded, tool_present, write_launcher, Runtime, LIMIT};

/// The name the runtime under test is registered under (`--add-runtime husk=…`).
pub const RUNTIME_NAME: &str = "husk";

pub struct Docker {
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    /// The launcher dockerd runs as the `husk` runtime.
    pub runtime: PathBuf,
}

impl Docker {
    /// A started dockerd with busybox loaded, or None (NOT RUN) when docker.io is missing.
    pub fn new(test: &str, rt: &Runtime) -> Option<Self> {
        for tool in ["dockerd", "docker", "docker-proxy", "ip"] {
            if !tool_present(test, tool) {
                return None;
            }
        }
        let dir = private_dir();
        // containerd's shim passes the runtime a `--root` under dockerd's exec root.
        let runtime = write_launcher(dir.path(), rt, None);
        let docker = Docker {
            socket: dir.path().join("docker/docker.sock"),
            dir,
            runtime,
        };
        // After the struct exists, so that its Drop stops a daemon whose setup failed later.
        let socket = engine_setup("dockerd-start", docker.dir.path(), Some(&docker.runtime));
        assert_eq!(
            Path::new(&socket),
            docker.socket,
            "engine-setup.sh's socket"
        );
        Some(docker)
    }

    /// `docker --host unix://… args…`, with a config dir of its own (not ~/.docker).
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new("docker");
        c.env("DOCKER_CONFIG", self.dir.path().join("docker/config"))
            .arg("--host")
            .arg(format!("unix://{}", self.socket.display()))
            .args(args);
        c
    }

    /// `docker run --runtime husk flags…` (the arguments after `run`).
    pub fn run_args<'a>(flags: &[&'a str]) -> Vec<&'a str> {
        let mut a = vec!["run", "--runtime", RUNTIME_NAME];
        a.extend_from_slice(flags);
        a
    }

    /// Runs docker with stdin from /dev/null, bounded by [`LIMIT`].
    pub fn run(&self, args: &[&str]) -> Output {
        run_bounded(self.cmd(args), None, LIMIT)
    }

    /// Runs docker with `input` on its stdin, bounded by [`LIMIT`].
    pub fn run_with_input(&self, args: &[&str], input: &[u8]) -> Output {
        run_bounded(self.cmd(args), Some(input), LIMIT)
    }

    /// Runs and asserts success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "docker {args:?} failed ({}):\nstdout: {}\nstderr: {}",
            out.status,
            crate::common::text(&out.stdout),
            crate::common::text(&out.stderr)
        );
        crate::common::text(&out.stdout)
    }

    /// `docker inspect NAME --format F`, trimmed.
    pub fn inspect(&self, name: &str, format: &str) -> String {
        self.ok(&["inspect", name, "--format", format])
            .trim()
            .to_string()
    }

    /// Polls `docker logs NAME` until it contains `needle` (bounded by [`LIMIT`]).
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

    /// Ids of all containers of this dockerd, running or not.
    pub fn all_containers(&self) -> Vec<String> {
        self.ok(&["ps", "-a", "-q"])
            .lines()
            .map(str::to_string)
            .filter(|l| !l.is_empty())
            .collect()
    }

    /// The runtime's `--root` as containerd's shim gives it under dockerd's exec root.
    pub fn runtime_root(&self) -> PathBuf {
        self.dir.path().join("docker/exec/runtime-runc/moby")
    }

    /// This dockerd's bridge (engine-setup.sh records "NAME ADDRESS/24").
    pub fn bridge(&self) -> (String, String) {
        let line = std::fs::read_to_string(self.dir.path().join("docker/bridge"))
            .expect("the bridge engine-setup.sh recorded");
        let mut f = line.split_whitespace();
        let name = f.next().expect("bridge name").to_string();
        let addr = f.next().expect("bridge address");
        (name, addr.trim_end_matches("/24").to_string())
    }

    /// `engine-setup.sh dockerd-stop`, asserted to succeed.
    pub fn stop_daemon(&self) {
        engine_setup("dockerd-stop", self.dir.path(), None);
    }
}

impl Drop for Docker {
    fn drop(&mut self) {
        // Whatever a failed test left, then the daemon, its mounts, bridge and files.
        if self.socket.exists() {
            if let Ok(out) =
                std::panic::catch_unwind(|| run_bounded(self.cmd(&["ps", "-aq"]), None, LIMIT))
            {
                let ids = crate::common::text(&out.stdout);
                let ids: Vec<&str> = ids.lines().filter(|l| !l.is_empty()).collect();
                if !ids.is_empty() {
                    let mut a = vec!["rm", "-f"];
                    a.extend(ids);
                    let _ = run_bounded(self.cmd(&a), None, LIMIT);
                }
            }
        }
        let mut c = Command::new(crate::common::repo_root().join("scripts/engine-setup.sh"));
        c.arg("clean").arg(self.dir.path());
        let _ = run_bounded(c, None, LIMIT);
    }
}
