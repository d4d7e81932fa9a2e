//! `husk`, the command people use, driven through the built binary: every test has its own
//! `--root` and boots real microVMs on whichever backend `--vmm auto` picks here (QEMU/TCG
//! on PVM hosts, husk-vmm where KVM runs Linux guests).
//!
//! The image is scripts/make-busybox-image.sh's one-layer busybox (Debian's static
//! busybox), given to each test's root with `husk load -i`.

#![deny(clippy::undocumented_unsafe_blocks)]

mod common;

use common::cli::{husk_with_busybox as husk, Husk, LIMIT};

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

impl Husk {
    /// Runs it with `input` on stdin, bounded by [`LIMIT`].
    fn run_with_input(&self, args: &[&str], input: &[u8]) -> Output {
        common::run_bounded(self.cmd(args), Some(input), LIMIT)
    }

    /// `ps -a --format json` as (name, status, exitCode).
    fn ps(&self) -> Vec<(String, String, Option<i64>)> {
        let v: serde_json::Value =
            serde_json::from_str(&self.ok(&["ps", "-a", "--format", "json"])).expect("ps json");
        v.as_array()
            .expect("array")
            .iter()
            .map(|c| {
                (
                    c["name"].as_str().unwrap().to_string(),
                    c["status"].as_str().unwrap().to_string(),
                    c["exitCode"].as_i64(),
                )
            })
            .collect()
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Processes (other than this test) whose command line mentions `dir`.
fn processes_using(dir: &Path) -> Vec<String> {
    let needle = dir.to_str().unwrap();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&p| p != std::process::id())
        .filter_map(|p| {
            let c = std::fs::read(format!("/proc/{p}/cmdline")).ok()?;
            let c = String::from_utf8_lossy(&c).replace('\0', " ");
            c.contains(needle).then(|| format!("{p}: {c}"))
        })
        .collect()
}

fn mounts_under(dir: &Path) -> Vec<String> {
    let needle = dir.to_str().unwrap();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| l.contains(needle))
        .map(String::from)
        .collect()
}

/// What is left in the containers directory besides its lock file.
fn leftovers(h: &Husk) -> Vec<String> {
    std::fs::read_dir(h.containers_dir())
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n != ".lock")
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn run_passes_stdout_stderr_stdin_and_the_exit_code() {
    let Some(h) = husk("run_passes_stdout_stderr_stdin_and_the_exit_code") else {
        return;
    };
    let out = h.run(&["run", "--rm", "busybox", "echo", "hello from a microVM"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "hello from a microVM\n");

    let out = h.run(&[
        "run",
        "--rm",
        "busybox",
        "sh",
        "-c",
        "echo out; echo err >&2; exit 7",
    ]);
    assert_eq!(out.status.code(), Some(7), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "out\n");
    assert_eq!(text(&out.stderr), "err\n");

    // Flags merged as docker merges them: -e, -w, -u, --hostname, --entrypoint.
    let out = h.ok(&[
        "run",
        "--rm",
        "-e",
        "GREETING=hi",
        "-w",
        "/tmp",
        "-u",
        "1000:1001",
        "--hostname",
        "box",
        "busybox",
        "sh",
        "-c",
        "echo $GREETING $(pwd) $(id -u):$(id -g) $(hostname)",
    ]);
    assert_eq!(out, "hi /tmp 1000:1001 box\n");
    let out = h.ok(&["run", "--rm", "--entrypoint", "echo", "busybox", "a", "b"]);
    assert_eq!(out, "a b\n");
    assert!(leftovers(&h).is_empty(), "{:?}", leftovers(&h));
}

#[test]
fn detached_container_logs_stops_and_is_removed() {
    let Some(h) = husk("detached_container_logs_stops_and_is_removed") else {
        return;
    };
    let script = "echo started; trap 'echo got term; exit 0' TERM; while true; do sleep 1; done";
    let id = h.ok(&["run", "-d", "--name", "web", "busybox", "sh", "-c", script]);
    let id = id.trim();
    assert_eq!(id.len(), 64, "{id}");
    assert!(id.bytes().all(|b| b.is_ascii_hexdigit()));
    assert_eq!(h.ps(), [("web".to_string(), "running".to_string(), None)]);
    assert!(h.ok(&["ps"]).contains("web"));
    // Its VM is owned by a husk-monitor process (a binary of its own, not `husk`).
    let inspect: serde_json::Value = serde_json::from_str(&h.ok(&["inspect", "web"])).unwrap();
    let monitor = inspect[0]["monitor"]["pid"]
        .as_u64()
        .expect("a monitor pid");
    let exe = std::fs::read_link(format!("/proc/{monitor}/exe")).unwrap();
    assert_eq!(exe, common::bin("husk-monitor"), "monitor {monitor}");
    assert!(
        common::poll_until(Duration::from_secs(30), || (h.ok(&["logs", "web"])
            == "started\n")
            .then_some(()))
        .is_some(),
        "logs: {:?}",
        h.ok(&["logs", "web"])
    );

    assert_eq!(h.ok(&["stop", "-t", "10", &id[..12]]).trim(), &id[..12]);
    assert_eq!(
        h.ps(),
        [("web".to_string(), "stopped".to_string(), Some(0))]
    );
    assert_eq!(h.ok(&["logs", "web"]), "started\ngot term\n");
    // What the container printed, and its monitor's log, are the owner's alone.
    for log in ["container.log", "monitor.log"] {
        use std::os::unix::fs::PermissionsExt;
        let p = h.containers_dir().join(id).join(log);
        let m = std::fs::metadata(&p).map(|m| m.permissions().mode() & 0o777);
        assert_eq!(m.ok(), Some(0o600), "{}", p.display());
    }
    assert!(
        !h.ok(&["ps"]).contains("web"),
        "ps without -a lists only running ones"
    );
    let inspect: serde_json::Value = serde_json::from_str(&h.ok(&["inspect", "web"])).unwrap();
    assert_eq!(inspect[0]["id"], id);
    assert_eq!(inspect[0]["status"], "stopped");

    h.ok(&["rm", "web"]);
    assert!(h.ps().is_empty());
    assert!(leftovers(&h).is_empty(), "{:?}", leftovers(&h));
    assert!(processes_using(h.root.path()).is_empty());
}

/// `-i` with ~290 KB of stdin, far past the guest's 256 KiB vsock buffer and its 64 KiB credit
/// updates: every byte reaches the container.
#[test]
fn run_i_streams_stdin_into_the_container() {
    let Some(h) = husk("run_i_streams_stdin_into_the_container") else {
        return;
    };
    let input: Vec<u8> = (0..50_000u32)
        .flat_map(|i| format!("{i}\n").into_bytes())
        .collect();
    let out = h.run_with_input(&["run", "--rm", "-i", "busybox", "md5sum"], &input);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let want = Command::new("md5sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            c.stdin.take().unwrap().write_all(&input)?;
            c.wait_with_output()
        })
        .unwrap();
    assert_eq!(text(&out.stdout), text(&want.stdout));
}

#[test]
fn exec_runs_in_a_detached_container() {
    let Some(h) = husk("exec_runs_in_a_detached_container") else {
        return;
    };
    let id = h.ok(&["run", "-d", "-e", "FROM_RUN=1", "busybox", "sleep", "1000"]);
    let id = id.trim();
    let out = h.run(&[
        "exec",
        &id[..8],
        "sh",
        "-c",
        "echo $FROM_RUN $(hostname); exit 3",
    ]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), format!("1 {}\n", &id[..12]));
    let out = h.run_with_input(&["exec", "-i", id, "cat"], b"through exec\n");
    assert_eq!(text(&out.stdout), "through exec\n", "{}", text(&out.stderr));
    // The exec ended, the container did not.
    assert_eq!(h.ps()[0].1, "running");
    h.ok(&["rm", "-f", id]);
    assert!(leftovers(&h).is_empty(), "{:?}", leftovers(&h));
    assert!(processes_using(h.root.path()).is_empty());
}

#[test]
fn the_container_runs_on_the_guest_kernel() {
    let Some(h) = husk("the_container_runs_on_the_guest_kernel") else {
        return;
    };
    let guest = h.ok(&["run", "--rm", "busybox", "uname", "-r"]);
    let host = text(&Command::new("uname").arg("-r").output().unwrap().stdout);
    assert!(guest.starts_with("6.12."), "guest kernel {guest:?}");
    assert_ne!(guest, host);
}

/// `husk run -t`: the container's process gets a terminal of its own (a pty in the guest)
/// and the exit code comes back. `script` gives husk a real terminal to relay.
#[test]
fn run_t_gives_the_container_a_terminal() {
    let Some(h) = husk("run_t_gives_the_container_a_terminal") else {
        return;
    };
    let line = format!(
        "{} --root {} run --rm -t busybox sh -c 'tty; test -t 0 && test -t 1 && echo both-ttys; exit 3'",
        common::bin("husk").display(),
        h.root.path().display()
    );
    let mut c = Command::new("script");
    c.args(["-qefc", &line, "/dev/null"])
        .env("HUSK_KERNEL", &h.kernel)
        .env("HUSK_INITRAMFS", &h.initramfs)
        .env("HUSK_NETWORK", common::cli::NETWORK_DEFAULT);
    let out = common::run_bounded(c, None, LIMIT);
    let stdout = text(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(3),
        "{stdout}\n{}",
        text(&out.stderr)
    );
    // `tty` names the guest's pty and `test -t` holds for stdin and stdout.
    assert!(stdout.contains("/dev/pts/"), "{stdout:?}");
    assert!(stdout.contains("both-ttys"), "{stdout:?}");
    assert!(leftovers(&h).is_empty(), "{:?}", leftovers(&h));
}

#[test]
fn writable_layer_survives_stop_and_start_and_goes_with_rm() {
    let Some(h) = husk("writable_layer_survives_stop_and_start_and_goes_with_rm") else {
        return;
    };
    let id = h.ok(&["run", "-d", "--name", "keep", "busybox", "sleep", "1000"]);
    let id = id.trim().to_string();
    h.ok(&["exec", "keep", "sh", "-c", "echo kept > /root/file"]);
    h.ok(&["stop", "-t", "1", "keep"]);
    assert_eq!(h.ps()[0].1, "stopped");
    let scratch = PathBuf::from(h.state(&id)["scratchDisk"].as_str().unwrap());
    assert!(scratch.is_file());

    h.ok(&["start", "keep"]);
    assert_eq!(h.ps()[0].1, "running");
    assert_eq!(h.ok(&["exec", "keep", "cat", "/root/file"]), "kept\n");

    h.ok(&["rm", "-f", "keep"]);
    assert!(!scratch.exists(), "scratch disk left behind");
    assert!(leftovers(&h).is_empty(), "{:?}", leftovers(&h));
    // A new container from the same image starts clean.
    let out = h.run(&["run", "--rm", "busybox", "cat", "/root/file"]);
    assert_eq!(out.status.code(), Some(1));
}

/// `husk run --timings` says where the time went, phase by phase in the order they happen,
/// with the guest's steps under container create, and the phases add up to about the
/// command's own wall time.
#[test]
fn run_timings_list_every_phase_in_order() {
    let Some(h) = husk("run_timings_list_every_phase_in_order") else {
        return;
    };
    let started = Instant::now();
    let out = h.run(&[
        "run",
        "--rm",
        "--timings",
        "--network",
        "none",
        "busybox",
        "true",
    ]);
    let wall = started.elapsed();
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    common::cli::check_timings(&err, wall);
}

/// The state.json of the only container under `h`'s root, once it has one.
fn only_state(h: &Husk) -> Option<serde_json::Value> {
    std::fs::read_dir(h.containers_dir())
        .ok()?
        .flatten()
        .find_map(|e| std::fs::read(e.path().join("state.json")).ok())
        .and_then(|b| serde_json::from_slice(&b).ok())
}

/// Ctrl-C while the VM boots (before the container runs) ends `husk run` with 130 and takes
/// the VM with it: no VMM is left running, and the container can be removed.
#[test]
fn a_signal_during_boot_takes_the_vm_with_it() {
    let Some(h) = husk("a_signal_during_boot_takes_the_vm_with_it") else {
        return;
    };
    let mut child = h
        .cmd(&["run", "--name", "early", "busybox", "sleep", "1000"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The VMM's pid is recorded as soon as it runs, most of a second before the guest is up.
    let pid = common::poll_until(LIMIT, || only_state(&h)?["pid"]["pid"].as_i64());
    let Some(pid) = pid else {
        let _ = child.kill();
        let out = child.wait_with_output().unwrap();
        panic!("the VM never started: {}", text(&out.stderr));
    };
    // SAFETY: plain kill(2) of the husk process this test started.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGINT) }, 0);
    let (out, ended) = common::finish_within(child, Duration::from_secs(30));
    let err = text(&out.stderr);
    assert!(ended, "husk run still running after SIGINT: {err}");
    assert_eq!(out.status.code(), Some(130), "{err}");
    let gone = common::poll_until(Duration::from_secs(10), || {
        (!Path::new(&format!("/proc/{pid}")).exists()).then_some(())
    });
    assert!(gone.is_some(), "the VMM (pid {pid}) outlived husk run");
    h.ok(&["rm", "early"]);
    assert!(leftovers(&h).is_empty(), "{:?}", leftovers(&h));
}

/// A foreground `husk run` whose VM dies under it exits 137 as docker's would, and says that
/// it was the VM (not a SIGKILL inside the container) on one line.
#[test]
fn a_vm_killed_under_husk_run_is_said_to_have_ended() {
    let Some(h) = husk("a_vm_killed_under_husk_run_is_said_to_have_ended") else {
        return;
    };
    let mut child = h
        .cmd(&[
            "run",
            "--name",
            "doomed",
            "busybox",
            "sh",
            "-c",
            "echo up; sleep 1000",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Once the process runs in the guest, the only container of this root has its VMM pid.
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line);
        let _ = tx.send(line);
    });
    let up = rx.recv_timeout(LIMIT).unwrap_or_default();
    let pid = only_state(&h).and_then(|s| s["pid"]["pid"].as_i64());
    let (true, Some(pid)) = (up == "up\n", pid) else {
        let _ = child.kill();
        let out = child.wait_with_output().unwrap();
        panic!("never up ({up:?}, pid {pid:?}): {}", text(&out.stderr));
    };
    // What the container leaves on the host is its owner's alone.
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let dir = std::fs::read_dir(h.containers_dir())
            .unwrap()
            .flatten()
            .find(|e| e.path().is_dir())
            .unwrap()
            .path();
        assert_eq!(mode(&h.containers_dir()), 0o700);
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join("scratch.ext4")), 0o600);
        assert_eq!(mode(&dir.join("console.log")), 0o600);
        // The scratch templates its disk was copied from, too.
        let templates = h.containers_dir().parent().unwrap().join("templates");
        assert_eq!(mode(&templates), 0o700);
        for t in std::fs::read_dir(&templates).unwrap().flatten() {
            assert_eq!(mode(&t.path()), 0o600, "{}", t.path().display());
        }
    }
    // SAFETY: the VMM pid husk just recorded for this test's container.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGKILL) }, 0);
    let (out, ended) = common::finish_within(child, Duration::from_secs(60));
    let err = text(&out.stderr);
    assert!(
        ended,
        "husk run still running after its VM was killed: {err}"
    );
    assert_eq!(out.status.code(), Some(137), "{err}");
    assert!(
        err.contains("container doomed: lost its process before it exited: the VM ended"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
    h.ok(&["rm", "doomed"]);
}

#[test]
fn ps_sees_a_killed_vmm_at_once() {
    let Some(h) = husk("ps_sees_a_killed_vmm_at_once") else {
        return;
    };
    let id = h.ok(&["run", "-d", "busybox", "sleep", "1000"]);
    let pid = h.state(id.trim())["pid"]["pid"].as_i64().unwrap();
    // SAFETY: the VMM pid husk just recorded for this test's container.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGKILL) }, 0);
    assert!(
        common::poll_until(Duration::from_secs(2), || (h.ps()[0].1 == "exited")
            .then_some(()))
        .is_some(),
        "{:?}",
        h.ps()
    );
    h.ok(&["rm", id.trim()]);
    assert!(leftovers(&h).is_empty(), "{:?}", leftovers(&h));
    assert!(
        common::poll_until(Duration::from_secs(5), || processes_using(h.root.path())
            .is_empty()
            .then_some(()))
        .is_some(),
        "{:?}",
        processes_using(h.root.path())
    );
}

#[test]
fn errors_are_one_line_and_fail() {
    let root = tempfile::tempdir().unwrap();
    let run = |program: &str, args: &[&str]| {
        let mut a = vec!["--root", root.path().to_str().unwrap()];
        a.extend_from_slice(args);
        common::run_limited(&common::bin(program), &a, LIMIT).0
    };
    for (args, want) in [
        (&["run", "--bogus", "busybox"][..], "--bogus"),
        (&["run", "no-such-image:1"][..], "no-such-image"),
        (&["stop", "deadbeef"][..], "no such container: deadbeef"),
        (&["rm", "deadbeef"][..], "no such container: deadbeef"),
        (
            &["exec", "deadbeef", "true"][..],
            "no such container: deadbeef",
        ),
        (&["logs", "deadbeef"][..], "no such container: deadbeef"),
        (&["start", "deadbeef"][..], "no such container: deadbeef"),
        (&["kill", "-s", "NOPE", "deadbeef"][..], "invalid signal"),
        (&["run", "--memory", "lots", "busybox"][..], "--memory"),
    ] {
        let out = run("husk", args);
        let err = text(&out.stderr);
        assert!(!out.status.success(), "husk {args:?} succeeded");
        assert_eq!(err.lines().count(), 1, "husk {args:?}: {err}");
        assert!(
            err.starts_with("husk: ") && err.contains(want),
            "husk {args:?}: {err}"
        );
        assert!(
            out.stdout.is_empty(),
            "husk {args:?}: {}",
            text(&out.stdout)
        );
    }
    // husk-monitor, run by hand for a container that does not exist, says so in one line.
    let out = run("husk-monitor", &["--vmm", "qemu", "--", "deadbeef"]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("husk-monitor: ") && err.contains("no such container: deadbeef"),
        "{err}"
    );
}

#[test]
fn twenty_run_rm_leave_nothing_behind() {
    let Some(h) = husk("twenty_run_rm_leave_nothing_behind") else {
        return;
    };
    let mut times = Vec::new();
    for i in 0..20 {
        let start = Instant::now();
        let out = h.run(&["run", "--rm", "busybox", "true"]);
        times.push(start.elapsed());
        assert!(out.status.success(), "run {i}: {}", text(&out.stderr));
    }
    times.sort();
    eprintln!(
        "husk run --rm busybox true x20: median {:?}, p90 {:?}",
        times[10], times[18]
    );
    assert!(leftovers(&h).is_empty(), "{:?}", leftovers(&h));
    assert!(
        processes_using(h.root.path()).is_empty(),
        "{:?}",
        processes_using(h.root.path())
    );
    assert!(
        mounts_under(h.root.path()).is_empty(),
        "{:?}",
        mounts_under(h.root.path())
    );
    assert!(h.ps().is_empty());
}

/// `Key:\tvalue` of a /proc status file.
fn status_field(status: &str, key: &str) -> Option<String> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .map(|v| v.trim().to_string())
}

/// The VMM of a running container (QEMU here, husk-vmm in the rig) runs confined: under
/// seccomp, as a uid of husk's range with no capability and `no_new_privs`, in its own PID,
/// mount, IPC and UTS namespaces, with no host file system under its root, in its own cgroup
/// (where the host gives one), which goes with the container. QEMU's helper daemons
/// (husk-agent-mux, husk-layer-disk) run as that same uid, with no capability.
#[test]
fn the_vmm_runs_confined_and_its_cgroup_goes_with_the_container() {
    let test = "the_vmm_runs_confined_and_its_cgroup_goes_with_the_container";
    let Some(h) = husk(test) else {
        return;
    };
    let id = h.ok(&["run", "-d", "busybox", "sleep", "600"]);
    let id = id.trim();
    let pid = h.state(id)["pid"]["pid"].as_u64().expect("the VMM's pid");
    let proc_dir = format!("/proc/{pid}");
    let status = std::fs::read_to_string(format!("{proc_dir}/status")).expect("status");
    let cgroups = std::fs::read_to_string(format!("{proc_dir}/cgroup")).unwrap_or_default();
    let root: Vec<String> = std::fs::read_dir(format!("{proc_dir}/root"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    let ns = |p: &str, k: &str| std::fs::read_link(format!("/proc/{p}/ns/{k}")).ok();
    let shared: Vec<&str> = ["pid", "mnt", "ipc", "uts"]
        .into_iter()
        .filter(|k| ns(&pid.to_string(), k) == ns("self", k))
        .collect();
    let vmm_comm = std::fs::read_to_string(format!("{proc_dir}/comm")).unwrap_or_default();
    let vmm_uid = status_field(&status, "Uid").unwrap_or_default();
    let vmm_uid = vmm_uid.split_whitespace().next().unwrap_or("").to_string();
    // QEMU's helpers: named after the VM's sockets, which carry the container's id.
    let marker = &id[..16];
    let helpers: Vec<String> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| {
            std::fs::read(e.path().join("cmdline")).is_ok_and(|c| {
                let c = String::from_utf8_lossy(&c);
                (c.starts_with("husk-agent-mux@") || c.starts_with("husk-layer-disk@"))
                    && c.contains(marker)
            })
        })
        .filter_map(|e| std::fs::read_to_string(e.path().join("status")).ok())
        .collect();
    // The exec path still works through the jail.
    assert_eq!(h.ok(&["exec", id, "echo", "through"]), "through\n");
    h.ok(&["rm", "-f", id]);

    assert_eq!(
        status_field(&status, "Seccomp").as_deref(),
        Some("2"),
        "{status}"
    );
    assert_eq!(status_field(&status, "NoNewPrivs").as_deref(), Some("1"));
    assert_eq!(
        status_field(&status, "CapEff").as_deref(),
        Some("0000000000000000")
    );
    let uid: u32 = status_field(&status, "Uid")
        .and_then(|u| u.split_whitespace().next()?.parse().ok())
        .expect("uid");
    let base = husk::confine::launch::DEFAULT_ID_BASE;
    assert!(
        (base..base + husk::confine::launch::ID_COUNT).contains(&uid),
        "uid {uid}"
    );
    assert!(shared.is_empty(), "shares the host's {shared:?} namespaces");
    if vmm_comm.starts_with("qemu") {
        assert_eq!(
            helpers.len(),
            2,
            "husk-agent-mux and husk-layer-disk of {marker}"
        );
    }
    for h in &helpers {
        let ids = format!("{vmm_uid}\t{vmm_uid}\t{vmm_uid}\t{vmm_uid}");
        assert_eq!(status_field(h, "Uid").as_deref(), Some(ids.as_str()), "{h}");
        assert_eq!(
            status_field(h, "CapEff").as_deref(),
            Some("0000000000000000")
        );
        assert_eq!(status_field(h, "NoNewPrivs").as_deref(), Some("1"));
    }
    for host_dir in ["etc", "usr", "var", "root", "home"] {
        assert!(!root.iter().any(|e| e == host_dir), "root holds {root:?}");
    }
    let has_cgroups = std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists()
        || std::path::Path::new("/sys/fs/cgroup/memory/cgroup.procs").exists();
    if has_cgroups {
        let line = cgroups
            .lines()
            .find(|l| l.contains("/husk/vm-"))
            .unwrap_or_else(|| panic!("not in a husk cgroup: {cgroups}"));
        let dir = line.rsplit(':').next().unwrap().to_string();
        for hierarchy in ["", "/memory", "/pids"] {
            let p = format!("/sys/fs/cgroup{hierarchy}{dir}");
            assert!(!std::path::Path::new(&p).exists(), "{p} outlived its VM");
        }
    } else {
        common::not_run(
            test,
            "this host mounts no memory/pids cgroup (cgroup part)",
            false,
        );
    }
}

/// Another user gets one line, exit 125 (husk) or 1 (husk-runtime), and nothing is created.
#[test]
fn a_user_who_is_not_root_gets_one_line() {
    let test = "a_user_who_is_not_root_gets_one_line";
    if husk::util::fs::which("setpriv").is_none() {
        common::not_run(test, "setpriv (util-linux) is missing", true);
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let root = dir.path().join("root");
    for (bin, args, code) in [
        (
            "husk",
            vec![
                "--root",
                root.to_str().unwrap(),
                "run",
                "--rm",
                "busybox",
                "true",
            ],
            125,
        ),
        ("husk-runtime", vec!["list"], 1),
    ] {
        let copy = dir.path().join(bin);
        std::fs::copy(common::bin(bin), &copy).expect("copy binary");
        let out = std::process::Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(&copy)
            .args(&args)
            .output()
            .expect("setpriv");
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{bin}: {err}");
        assert_eq!(err.lines().count(), 1, "{bin}: {err}");
        assert!(
            err.contains("needs root (you are uid 65534)") && err.contains("sudo"),
            "{bin}: {err}"
        );
    }
    assert!(!root.exists(), "a refused husk created its root");
}

/// `husk run` output, exit codes, stdin (`-i`), `-d` + logs + stop + rm, and `exec`, again on both backends of a KVM that boots stock Linux: husk-vmm and QEMU
/// `-accel kvm` (on this project's PVM hosts: inside the nested-KVM rig).
const ON_HUSK_VMM: &[&str] = &[
    "run_passes_stdout_stderr_stdin_and_the_exit_code",
    "run_i_streams_stdin_into_the_container",
    "exec_runs_in_a_detached_container",
    "detached_container_logs_stops_and_is_removed",
    "run_t_gives_the_container_a_terminal",
    "the_vmm_runs_confined_and_its_cgroup_goes_with_the_container",
];

/// The same on QEMU `-accel kvm`. `run_i_streams_stdin_into_the_container` was left out while
/// QEMU's agent channel was vhost-device-vsock 0.3.0, through which ~290 KB of stdin stalled
/// for good in 1 of 3 suite runs; through husk-agent-mux it passed 6 runs of 6 in the rig
/// (2026-12-06, 15-19 s each).
const ON_QEMU_KVM: &[&str] = &[
    "run_passes_stdout_stderr_stdin_and_the_exit_code",
    "run_i_streams_stdin_into_the_container",
    "exec_runs_in_a_detached_container",
    "detached_container_logs_stops_and_is_removed",
    "run_t_gives_the_container_a_terminal",
    "the_vmm_runs_confined_and_its_cgroup_goes_with_the_container",
];

crate::on_kvm_backends! {
    husk_cli_on_husk_vmm => ON_HUSK_VMM,
    husk_cli_on_qemu_kvm => ON_QEMU_KVM,
}

#[test]
fn run_answers_with_the_exit_status_before_the_teardown() {
    let Some(h) = husk("run_answers_with_the_exit_status_before_the_teardown") else {
        return;
    };
    // Without --rm the caller gets the status and output at the process's exit; the VM is
    // powered off after. Output through a pipe ends with the answer (nothing keeps it open).
    let out = h.run(&[
        "run",
        "--name",
        "early",
        "busybox",
        "sh",
        "-c",
        "echo out; echo err >&2; exit 5",
    ]);
    assert_eq!(out.status.code(), Some(5), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "out\n");
    assert_eq!(text(&out.stderr), "err\n");
    // Recorded as exited before the answer, whatever the teardown is doing.
    let ps = h.ok(&["ps", "-a", "--format", "{{.Names}} {{.Status}}"]);
    assert!(ps.starts_with("early Exited (5)"), "{ps:?}");
    // The name is held until `rm`, which waits for the teardown, and then nothing is left.
    let again = h.run(&["run", "--name", "early", "busybox", "true"]);
    assert!(
        !again.status.success(),
        "a second container took a held name"
    );
    h.ok(&["rm", "early"]);
    assert!(leftovers(&h).is_empty(), "{:?}", leftovers(&h));
    let deadline = Instant::now() + Duration::from_secs(15);
    while !processes_using(h.root.path()).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        processes_using(h.root.path()).is_empty(),
        "{:?}",
        processes_using(h.root.path())
    );
}
