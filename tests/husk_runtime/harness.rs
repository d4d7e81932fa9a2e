//! Drives the built `husk-runtime` binary as an engine does: OCI bundles with a busybox
//! rootfs directory, `create` with pipes as the container's stdio, the VM holder pid from
//! `--pid-file` waited on as a (sub)reaper waits, and a check that nothing is left behind.

use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::sync::Once;
use std::time::{Duration, Instant};

use crate::common;

/// Longest any one husk-runtime command may take.
pub const LIMIT: Duration = Duration::from_secs(120);

/// A runtime root of the test's own, its log, and the guest assets.
pub struct Rt {
    pub tmp: tempfile::TempDir,
    pub kernel: PathBuf,
    pub initramfs: PathBuf,
}

impl Rt {
    /// Everything the test needs, or `None` after saying why not.
    pub fn new(test: &str) -> Option<Rt> {
        let kernel = common::kernel(test)?;
        let initramfs = common::initramfs(test)?;
        if !Path::new("/bin/busybox").exists() {
            common::not_run(
                test,
                "/bin/busybox missing (apt install busybox-static)",
                true,
            );
            return None;
        }
        static SUBREAPER: Once = Once::new();
        // The VM holder outlives `create`; as conmon does, become its reaper to get its status.
        // SAFETY: PR_SET_CHILD_SUBREAPER takes an integer flag and touches no memory.
        SUBREAPER.call_once(|| unsafe {
            libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
        });
        let tmp = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(tmp.path().join("t")).expect("tmpdir");
        Some(Rt {
            tmp,
            kernel,
            initramfs,
        })
    }

    /// The last lines of every VM console log under this test's directories and of the
    /// runtime log (for a failure).
    pub fn console_tails(&self) -> String {
        fn tail(path: &Path, out: &mut String) {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let tail = lines[lines.len().saturating_sub(20)..].join("\n");
            out.push_str(&format!("--- {}:\n{tail}\n", path.display()));
        }
        fn walk(dir: &Path, out: &mut String) {
            let Ok(entries) = std::fs::read_dir(dir) else {
                return;
            };
            for e in entries.flatten() {
                let p = e.path();
                if p.is_dir() {
                    walk(&p, out);
                } else if p.file_name().is_some_and(|n| n == "console.log") {
                    tail(&p, out);
                }
            }
        }
        let mut out = String::new();
        walk(self.tmp.path(), &mut out);
        tail(&self.log(), &mut out);
        out
    }

    pub fn root(&self) -> PathBuf {
        self.tmp.path().join("root")
    }

    pub fn log(&self) -> PathBuf {
        self.tmp.path().join("runtime.log")
    }

    /// `husk-runtime --root R --log L --log-format json args…`, with TMPDIR inside the
    /// test's directory so every socket, VMM and helper of this test is findable by path.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(common::bin("husk-runtime"));
        c.arg("--root")
            .arg(self.root())
            .arg("--log")
            .arg(self.log())
            .arg("--log-format")
            .arg("json")
            .args(args);
        c.env("HUSK_KERNEL", &self.kernel)
            .env("HUSK_INITRAMFS", &self.initramfs)
            .env("TMPDIR", self.tmp.path().join("t"));
        c
    }

    /// Runs a command that does not leave a VM holder behind (stdin null, output captured).
    pub fn run(&self, args: &[&str]) -> Output {
        let mut child = self
            .cmd(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn husk-runtime");
        let status = wait_child(&mut child, LIMIT, args);
        let mut out = Vec::new();
        let mut err = Vec::new();
        let _ = child.stdout.take().expect("piped").read_to_end(&mut out);
        let _ = child.stderr.take().expect("piped").read_to_end(&mut err);
        Output {
            status,
            stdout: out,
            stderr: err,
        }
    }

    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "husk-runtime {args:?} failed ({}): {}",
            out.status,
            common::text(&out.stderr)
        );
        common::text(&out.stdout)
    }

    /// `state ID` as JSON.
    pub fn state(&self, id: &str) -> serde_json::Value {
        serde_json::from_str(&self.ok(&["state", id])).expect("state JSON")
    }

    /// `create --bundle B --pid-file P [extra] ID` with pipes as the container's stdio.
    pub fn create(&self, bundle: &Bundle, id: &str, extra: &[&str]) -> Created {
        let pid_file = self.tmp.path().join(format!("{id}.pid"));
        let b = bundle.path().to_str().expect("utf-8").to_string();
        let p = pid_file.to_str().expect("utf-8").to_string();
        let mut args = vec!["create", "--bundle", &b, "--pid-file", &p];
        args.extend_from_slice(extra);
        args.push(id);
        let started = Instant::now();
        let mut child = self
            .cmd(&args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn create");
        let status = wait_child(&mut child, LIMIT, &args);
        let took = started.elapsed();
        let mut stderr = child.stderr.take().expect("piped");
        if !status.success() {
            let mut e = String::new();
            let _ = stderr.read_to_string(&mut e);
            panic!(
                "create {id} failed ({status}): {e}\n{}",
                self.console_tails()
            );
        }
        let pid: i32 = std::fs::read_to_string(&pid_file)
            .expect("pid file")
            .trim()
            .parse()
            .expect("pid");
        Created {
            pid,
            stdin: child.stdin.take(),
            stdout: child.stdout.take().expect("piped"),
            stderr,
            took,
        }
    }

    /// Asserts nothing of this test is left: no container state, and no live process
    /// (VM holder, VMM, virtiofsd, husk-agent-mux) naming the test's directory.
    pub fn assert_clean(&self) {
        let left: Vec<_> = std::fs::read_dir(self.root())
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| !n.starts_with('.'))
                    .collect()
            })
            .unwrap_or_default();
        assert!(left.is_empty(), "state left under the root: {left:?}");
        let socks: Vec<_> = std::fs::read_dir(self.tmp.path().join("t"))
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        assert!(socks.is_empty(), "socket directories left: {socks:?}");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let procs = processes_naming(self.tmp.path());
            if procs.is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "processes left behind: {procs:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The runtime's JSON log, one value per line.
    pub fn log_lines(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.log())
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("log line {l:?}: {e}")))
            .collect()
    }
}

/// What `create` left: the VM holder pid and the container's stdio.
pub struct Created {
    pub pid: i32,
    pub stdin: Option<ChildStdin>,
    pub stdout: std::process::ChildStdout,
    pub stderr: std::process::ChildStderr,
    pub took: Duration,
}

impl Created {
    /// Waits for the VM holder to exit; its exit code (the container's status).
    pub fn wait(&mut self, limit: Duration) -> i32 {
        drop(self.stdin.take());
        wait_pid(self.pid, limit)
    }

    pub fn read_stdout(&mut self) -> String {
        let mut s = String::new();
        let _ = self.stdout.read_to_string(&mut s);
        s
    }

    pub fn read_stderr(&mut self) -> String {
        let mut s = String::new();
        let _ = self.stderr.read_to_string(&mut s);
        s
    }
}

/// Reads exactly `n` bytes from `r` (a container's stdout) within `limit`: output the VM never
/// sends fails the test with what did arrive and the tails of the VMs' console logs, instead
/// of blocking it forever.
pub fn read_exact_within(
    rt: &Rt,
    r: &mut (impl Read + AsRawFd),
    n: usize,
    limit: Duration,
) -> Vec<u8> {
    let deadline = Instant::now() + limit;
    let mut got = vec![0u8; n];
    let mut have = 0;
    while have < n {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "{n} bytes of output not there within {limit:?}; got {:?}\n{}",
            String::from_utf8_lossy(&got[..have]),
            rt.console_tails()
        );
        let mut pfd = libc::pollfd {
            fd: r.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = i32::try_from(left.as_millis()).unwrap_or(i32::MAX).max(1);
        // SAFETY: one valid pollfd, borrowed for the duration of the call.
        let ready = unsafe { libc::poll(&mut pfd, 1, ms) };
        if ready <= 0 {
            continue;
        }
        match r.read(&mut got[have..]) {
            Ok(0) => panic!(
                "output closed after {:?}, before {n} bytes",
                String::from_utf8_lossy(&got[..have])
            ),
            Ok(k) => have += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => panic!("reading output: {e}"),
        }
    }
    got
}

pub fn wait_child(child: &mut Child, limit: Duration, args: &[&str]) -> std::process::ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(s) = child.try_wait().expect("wait") {
            return s;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("husk-runtime {args:?} still running after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Waits for `pid` (a child or an orphan reparented to this subreaper); its exit code, or
/// 128+N for signal N.
pub fn wait_pid(pid: i32, limit: Duration) -> i32 {
    let start = Instant::now();
    loop {
        let mut status = 0;
        // SAFETY: waitpid on one pid with WNOHANG, writing into our local.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if r == pid {
            if libc::WIFEXITED(status) {
                return libc::WEXITSTATUS(status);
            }
            return 128 + libc::WTERMSIG(status);
        }
        assert!(
            r == 0,
            "waitpid({pid}): {}",
            std::io::Error::last_os_error()
        );
        assert!(
            start.elapsed() < limit,
            "process {pid} still running after {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Live (non-zombie) processes whose command line mentions `dir`.
pub fn processes_naming(dir: &Path) -> Vec<String> {
    let needle = dir.as_os_str().as_encoded_bytes().to_vec();
    let me = std::process::id();
    std::fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
                .filter(|&p| p != me)
                .filter(|p| {
                    let stat =
                        std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default();
                    let state = stat
                        .rsplit(')')
                        .next()
                        .unwrap_or("")
                        .trim_start()
                        .chars()
                        .next();
                    !matches!(state, Some('Z') | Some('X') | None)
                })
                .filter_map(|p| {
                    let c = std::fs::read(format!("/proc/{p}/cmdline")).ok()?;
                    c.windows(needle.len())
                        .any(|w| w == needle.as_slice())
                        .then(|| format!("{p}: {}", String::from_utf8_lossy(&c).replace('\0', " ")))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// An OCI bundle: `rootfs/` with busybox and its applets, `config.json` from
/// `husk-runtime spec`, changed by the test.
pub struct Bundle {
    dir: tempfile::TempDir,
}

impl Bundle {
    pub fn new(rt: &Rt, change: impl FnOnce(&mut serde_json::Value)) -> Bundle {
        let dir = tempfile::tempdir().expect("tempdir");
        let rootfs = dir.path().join("rootfs");
        for d in ["bin", "proc", "sys", "dev", "tmp", "etc", "root", "run"] {
            std::fs::create_dir_all(rootfs.join(d)).expect("mkdir");
        }
        std::fs::copy("/bin/busybox", rootfs.join("bin/busybox")).expect("copy busybox");
        let list = Command::new("/bin/busybox")
            .arg("--list")
            .output()
            .expect("busybox --list");
        for applet in common::text(&list.stdout).lines() {
            if applet != "busybox" {
                let _ = std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet));
            }
        }
        let b = dir.path().to_str().expect("utf-8").to_string();
        rt.ok(&["spec", "--bundle", &b]);
        let path = dir.path().join("config.json");
        let mut config: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).expect("config.json")).expect("json");
        config["process"]["terminal"] = false.into();
        config["process"]["env"] = serde_json::json!(["PATH=/bin", "HOME=/root"]);
        config["root"]["readonly"] = false.into();
        change(&mut config);
        std::fs::write(&path, config.to_string()).expect("write config.json");
        Bundle { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn rootfs(&self) -> PathBuf {
        self.dir.path().join("rootfs")
    }
}

/// Accepts one connection on `listener` and receives the fd sent with SCM_RIGHTS.
pub fn recv_fd(listener: &UnixListener) -> (OwnedFd, String) {
    let (conn, _) = listener.accept().expect("console socket accept");
    let (msg, fd) = husk_fdpass::recv_fd(conn.as_raw_fd(), 256).expect("recvmsg");
    let fd = fd.expect("no fd received");
    (fd, String::from_utf8_lossy(&msg).into_owned())
}

/// A shell hook that writes its stdin (the state) to `out`.
pub fn hook_writing(out: &Path) -> serde_json::Value {
    serde_json::json!({
        "path": "/bin/sh",
        "args": ["sh", "-c", format!("cat > {}", out.display())]
    })
}
