//! Shared helpers for the integration tests: where the built artifacts are, and how a
//! test that cannot run on this host says so.
//!
//! A test never passes silently when it could not do its job: it prints `NOT RUN: …` with
//! the reason, and under `CI=true` a missing artifact or a missing /dev/kvm fails the run.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn in_ci() -> bool {
    std::env::var("CI")
        .map(|v| v == "true" || v == "1")
        .unwrap_or(false)
}

/// Where build scripts keep cached artifacts outside the repo (the kernel).
pub fn cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("HUSK_CACHE") {
        return PathBuf::from(d);
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
    Path::new(&home).join(".cache/husk")
}

/// Reports a test that could not run here. Under CI, `must_run` turns it into a failure.
pub fn not_run(test: &str, reason: &str, must_run: bool) {
    if must_run && in_ci() {
        panic!("{test}: required under CI=true but cannot run: {reason}");
    }
    eprintln!("NOT RUN: {test}: {reason}");
    // cargo hides the output of passing tests, so also record the line where the test
    // script collects and prints them after the run.
    append_to_log("HUSK_NOT_RUN_LOG", &format!("NOT RUN: {test}: {reason}"));
}

/// Appends `line` to the file `$env_var` names (scripts/test.sh sets these logs and sums or
/// prints them after the run); nothing when it is unset.
pub fn append_to_log(env_var: &str, line: &str) {
    use std::io::Write;
    let Some(log) = std::env::var_os(env_var) else {
        return;
    };
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
    {
        let _ = writeln!(f, "{line}");
    }
}

fn artifact(env: &str, default: PathBuf, hint: &str, test: &str) -> Option<PathBuf> {
    let path = std::env::var_os(env).map(PathBuf::from).unwrap_or(default);
    if path.exists() {
        Some(path)
    } else {
        not_run(
            test,
            &format!("{} not found ({env}); build it with {hint}", path.display()),
            true,
        );
        None
    }
}

/// The guest kernel (ELF vmlinux) built by kernel-config/build.sh.
pub fn kernel(test: &str) -> Option<PathBuf> {
    artifact(
        "HUSK_KERNEL",
        cache_dir().join("kernel/vmlinux"),
        "kernel-config/build.sh",
        test,
    )
}

/// The guest kernel as a bzImage, built beside the vmlinux.
pub fn bzimage(test: &str) -> Option<PathBuf> {
    artifact(
        "HUSK_BZIMAGE",
        cache_dir().join("kernel/bzImage"),
        "kernel-config/build.sh",
        test,
    )
}

/// The agent initramfs built by scripts/build-initramfs.sh.
pub fn initramfs(test: &str) -> Option<PathBuf> {
    artifact(
        "HUSK_INITRAMFS",
        repo_root().join("target/husk/initramfs.cpio"),
        "scripts/build-initramfs.sh",
        test,
    )
}

/// The test initramfs: the same agent built with its self-test (`husk.selftest=1`), by
/// `SELFTEST=1 scripts/build-initramfs.sh`. The production initramfs has no self-test.
pub fn selftest_initramfs(test: &str) -> Option<PathBuf> {
    artifact(
        "HUSK_SELFTEST_INITRAMFS",
        repo_root().join("target/husk/initramfs-selftest.cpio"),
        "SELFTEST=1 scripts/build-initramfs.sh",
        test,
    )
}

/// /dev/kvm usable by this process (open read-write).
pub fn kvm_available(test: &str) -> bool {
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        Ok(_) => true,
        Err(e) => {
            not_run(test, &format!("cannot open /dev/kvm: {e}"), true);
            false
        }
    }
}

/// Path of a binary of this package built by cargo for the integration tests.
pub fn bin(name: &str) -> PathBuf {
    match name {
        "husk-vmm" => PathBuf::from(env!("CARGO_BIN_EXE_husk-vmm")),
        "husk" => PathBuf::from(env!("CARGO_BIN_EXE_husk")),
        "husk-runtime" => PathBuf::from(env!("CARGO_BIN_EXE_husk-runtime")),
        "husk-layer-disk" => PathBuf::from(env!("CARGO_BIN_EXE_husk-layer-disk")),
        "husk-monitor" => PathBuf::from(env!("CARGO_BIN_EXE_husk-monitor")),
        other => panic!("unknown binary {other}"),
    }
}

/// e820 entries husk-vmm's x86_64 layout gives a guest of `mem_bytes`: usable RAM below the
/// EBDA (640 KiB), RAM from 1 MiB to the end of the first region, plus one entry per
/// region above the MMIO gap.
pub fn expected_e820_entries(mem_bytes: usize) -> usize {
    1 + husk::vmm::arch::x86_64::layout::arch_memory_regions(mem_bytes as u64).len()
}

/// How long a test waits for a state it needs (a guest up, a port listening, a process
/// gone) before calling it never reached: generous, so a loaded host makes a test slow, not
/// failing.
pub const SETTLE: Duration = Duration::from_secs(60);

/// Calls `f` every 100 ms until it returns `Some` or `limit` has passed; its value, or `None`.
/// Tests wait with this for the state an assertion needs instead of sleeping a fixed time.
pub fn poll_until<T>(limit: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let end = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= end {
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// [`poll_until`] for a state the test cannot go on without: panics naming `what` it waited
/// for when `limit` passes first.
pub fn wait_for<T>(what: &str, limit: Duration, f: impl FnMut() -> Option<T>) -> T {
    poll_until(limit, f).unwrap_or_else(|| panic!("waited {limit:?} for {what}: never happened"))
}

/// Lossy UTF-8 text of a process's stdout or stderr.
pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Runs this package's husk-vmm binary with `args`, killed after `limit` (see
/// [`run_limited`]).
pub fn husk_vmm(args: &[&str], limit: Duration) -> (Output, Duration) {
    run_limited(&bin("husk-vmm"), args, limit)
}

/// Boots the tiny guest `kernel` (an ELF built from tests/guests/*.S) in husk-vmm with
/// 64 MiB of memory and `flags` after those, killed after `limit`.
pub fn boot_tiny(kernel: &str, flags: &[&str], limit: Duration) -> (Output, Duration) {
    let mut args = vec!["--kernel", kernel, "--memory", "64"];
    args.extend_from_slice(flags);
    husk_vmm(&args, limit)
}

/// Runs `program` with `args` (stdin null), killing it after `limit` so a broken VMM fails
/// the test instead of hanging it. Returns the output and how long it ran.
pub fn run_limited(program: &Path, args: &[&str], limit: Duration) -> (Output, Duration) {
    let start = Instant::now();
    let mut cmd = Command::new(program);
    cmd.args(args);
    let out = run_bounded(cmd, None, limit);
    (out, start.elapsed())
}

/// Waits up to `limit` for `child` to end by itself, then kills it; its output, and whether
/// it ended by itself. Its stdout and stderr should be piped and small.
pub fn finish_within(mut child: std::process::Child, limit: Duration) -> (Output, bool) {
    let ended = poll_until(limit, || child.try_wait().ok().flatten().map(|_| ())).is_some();
    if !ended {
        let _ = child.kill();
    }
    (child.wait_with_output().expect("wait"), ended)
}

/// Runs `cmd` with `input` on its stdin (or /dev/null), killing it after `limit` so a hung
/// engine fails the test instead of hanging it.
pub fn run_bounded(mut cmd: Command, input: Option<&[u8]>, limit: Duration) -> Output {
    let start = Instant::now();
    cmd.stdin(if input.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
    let writer = input.map(|data| {
        let mut stdin = child.stdin.take().expect("stdin piped");
        let data = data.to_vec();
        // Closing stdin after the data is what ends a `cat` in the container.
        std::thread::spawn(move || {
            let _ = stdin.write_all(&data);
        })
    });
    let mut out = child.stdout.take().expect("stdout piped");
    let mut err = child.stderr.take().expect("stderr piped");
    let t_out = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let t_err = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        v
    });
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{cmd:?} still running after {limit:?}: it must never hang");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    if let Some(w) = writer {
        let _ = w.join();
    }
    Output {
        status,
        stdout: t_out.join().expect("stdout reader"),
        stderr: t_err.join().expect("stderr reader"),
    }
}

/// What a VM printed on its console, and how it ended.
pub struct ConsoleRun {
    /// Every console line, in order (carriage returns stripped).
    pub lines: Vec<String>,
    /// Exit status, or None when it was killed at the timeout.
    pub status: Option<std::process::ExitStatus>,
    /// Time from spawning the process to the first line containing the marker.
    pub marker_after: Option<std::time::Duration>,
    /// Time from spawning the process to its exit (or the kill).
    pub total: std::time::Duration,
}

impl ConsoleRun {
    pub fn output(&self) -> String {
        self.lines.join("\n")
    }
}

/// Runs a VM process whose console is its stdout, timing when `marker` appears; kills it
/// (and reports `status: None`) if it has not exited after `timeout`.
pub fn run_console(
    mut cmd: std::process::Command,
    marker: &str,
    timeout: std::time::Duration,
) -> ConsoleRun {
    use std::io::BufRead;
    use std::process::Stdio;
    use std::time::Instant;

    let start = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {:?}: {e}", cmd.get_program()));
    let stdout = child.stdout.take().expect("piped stdout");
    let stderr = child.stderr.take().expect("piped stderr");
    let (tx, rx) = std::sync::mpsc::channel::<(std::time::Instant, String)>();
    let tx2 = tx.clone();
    // Console bytes need not be UTF-8; read raw lines and convert lossily.
    let reader = move |r: Box<dyn std::io::Read + Send>,
                       tx: std::sync::mpsc::Sender<(Instant, String)>| {
        let mut r = std::io::BufReader::new(r);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match r.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let line = String::from_utf8_lossy(&buf)
                        .trim_end_matches(['\n', '\r'])
                        .replace('\r', "");
                    let _ = tx.send((Instant::now(), line));
                }
            }
        }
    };
    let t1 = std::thread::spawn(move || reader(Box::new(stdout), tx));
    let t2 = std::thread::spawn(move || reader(Box::new(stderr), tx2));

    let deadline = start + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break Some(s),
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            Ok(None) => std::thread::sleep(std::time::Duration::from_millis(20)),
            Err(e) => panic!("waiting for the VM process: {e}"),
        }
    };
    let total = start.elapsed();
    let _ = t1.join();
    let _ = t2.join();
    let mut lines = Vec::new();
    let mut marker_after = None;
    for (at, line) in rx.try_iter() {
        if marker_after.is_none() && line.contains(marker) {
            marker_after = Some(at.duration_since(start));
        }
        lines.push(line);
    }
    ConsoleRun {
        lines,
        status,
        marker_after,
        total,
    }
}
pub mod cli;
pub mod cri;
pub mod cri_image;
pub mod cri_leaks;
pub mod engine;
pub mod faults;
pub mod registry;
pub mod rig;
