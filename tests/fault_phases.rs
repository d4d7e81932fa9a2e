//! `kill -9` of each process a container runs on at the other phases of its life (the
//! running phase is tests/fault_matrix.rs'): while it boots (`run -d` in flight), while an
//! `exec` runs in it, while a `stop` runs. The command in flight ends in bounded time with
//! one clear line (or succeeds where its work could still be done), the next command reports
//! a state that is not running, nothing of the VM stays, and `rm -f` takes the rest. Also a
//! full image store during `pull`. Real microVMs through `husk`, each test with its own
//! `--root`.

#![deny(clippy::undocumented_unsafe_blocks)]

mod common;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::Duration;

use common::cli::{husk_with_busybox, Husk};
use common::faults::{
    assert_cgroups_gone, files_under, kill9, pids_of, removed_cleanly, status, vm_cgroups,
    wait_no_leftovers, wait_not_running, SmallTmpfs,
};
use serde_json::Value;

/// The longest a command in flight may take to end after its VM lost a process: a helper's
/// death ends the VM within 2 s, a power-off within 10 s; a command that waited out a 60 s
/// agent timeout instead fails this.
const ENDS_WITHIN: Duration = Duration::from_secs(20);

/// The processes a container runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Victim {
    Vmm,
    Monitor,
    Vsock,
    Blk,
    Virtiofsd,
}

impl Victim {
    const ALL: [Victim; 5] = [
        Victim::Vmm,
        Victim::Monitor,
        Victim::Vsock,
        Victim::Blk,
        Victim::Virtiofsd,
    ];

    fn name(self) -> &'static str {
        match self {
            Victim::Vmm => "the VMM",
            Victim::Monitor => "the monitor",
            Victim::Vsock => "husk-agent-mux",
            Victim::Blk => "husk-layer-disk",
            Victim::Virtiofsd => "virtiofsd",
        }
    }

    /// Whether the container recorded as `state` runs on it: husk-vmm (the backend on a
    /// KVM host) serves vsock and the layer disk itself, with no helper daemon.
    fn runs_under(self, state: &Value) -> bool {
        state["backend"] != "husk" || !matches!(self, Victim::Vsock | Victim::Blk)
    }

    /// Its pids in the container recorded as `state` (empty while it does not run yet).
    fn pids(self, state: &Value) -> Vec<i32> {
        let recorded = |key: &str| {
            state[key]["pid"]
                .as_i64()
                .map(|p| vec![p as i32])
                .unwrap_or_default()
        };
        // Helpers by the id's prefix: a root as deep as a test's puts the sockets (and so the
        // helpers' arguments) in a short directory named after it. virtiofsd's sandbox keeps
        // two processes; both go.
        let id = state["id"].as_str().expect("id");
        match self {
            Victim::Vmm => recorded("pid"),
            Victim::Monitor => recorded("monitor"),
            Victim::Vsock => pids_of("husk-agent-mux", &id[..16]),
            Victim::Blk => pids_of("husk-layer-disk", &id[..16]),
            Victim::Virtiofsd => pids_of("virtiofsd", &id[..16]),
        }
    }
}

/// `kill -9` of `victim` in the container recorded as `state`. A helper is looked for again
/// until none is left: virtiofsd forks its sandbox as the VMM connects, and a child forked
/// just before its parent's death outlives it (its parent-death signal not armed yet).
fn kill_victim(victim: Victim, state: &Value, ctx: &str) {
    let pids = victim.pids(state);
    assert!(!pids.is_empty(), "{ctx}: no process to kill");
    pids.into_iter().for_each(kill9);
    if matches!(victim, Victim::Vmm | Victim::Monitor) {
        return;
    }
    common::wait_for(&format!("{ctx}: all of it gone"), common::SETTLE, || {
        let left: Vec<i32> = victim.pids(state);
        left.iter().copied().for_each(kill9);
        left.is_empty().then_some(())
    });
}

/// Says that the matrix has no (victim, phase) cell `ctx` under `state`'s backend.
fn not_under(ctx: &str, state: &Value) {
    let why = format!("the {} backend runs no such process", state["backend"]);
    common::not_run(ctx, &why, false);
}

/// `husk args…` started in the background, its output piped.
fn spawn(h: &Husk, args: &[&str]) -> Child {
    h.cmd(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start husk")
}

/// A root with busybox and a directory for `-v`, or `None` (NOT RUN said).
fn setup(test: &str) -> Option<(Husk, tempfile::TempDir)> {
    let h = husk_with_busybox(test)?;
    Some((h, tempfile::tempdir().expect("volume")))
}

fn run_args(vol: &tempfile::TempDir) -> Vec<String> {
    ["run", "-d", "--name", "victim", "-v"]
        .iter()
        .map(|s| s.to_string())
        .chain([format!("{}:/data", vol.path().display())])
        .chain(["busybox", "sleep", "1000"].iter().map(|s| s.to_string()))
        .collect()
}

/// The only container's state.json, once it is there and whole.
fn try_only_state(h: &Husk) -> Option<Value> {
    let mut dirs = std::fs::read_dir(h.containers_dir()).ok()?.flatten();
    let dir = dirs.find(|e| !e.file_name().to_string_lossy().starts_with('.'))?;
    let path = dir.path().join("state.json");
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

/// What the command in flight said, and how it ended.
struct Ended {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Waits for `child` (at most [`ENDS_WITHIN`]), failing `ctx` when it hangs.
fn ended(child: Child, ctx: &str) -> Ended {
    let (out, ended) = common::finish_within(child, ENDS_WITHIN);
    let stderr = common::text(&out.stderr);
    assert!(
        ended,
        "{ctx}: the command in flight still ran {ENDS_WITHIN:?} after the kill: {stderr}"
    );
    Ended {
        code: out.status.code(),
        stdout: common::text(&out.stdout),
        stderr,
    }
}

/// A failure: non-zero, exactly one line on stderr, no panic.
fn assert_one_line_failure(e: &Ended, ctx: &str) {
    assert!(
        e.code.is_some_and(|c| c != 0),
        "{ctx}: ended with {:?}, not a failure: {}",
        e.code,
        e.stderr
    );
    assert_eq!(
        e.stderr.trim().lines().count(),
        1,
        "{ctx}: not one error line: {}",
        e.stderr
    );
    assert!(!e.stderr.contains("panicked"), "{ctx}: {}", e.stderr);
}

/// After the command in flight: the container is not running, nothing of its VM is left,
/// and `rm -f` removes the rest.
fn assert_ended_and_removable(h: &Husk, state: &Value, cgroups: &[PathBuf], ctx: &str) {
    let s = wait_not_running(h, 15);
    assert_ne!(s, "running", "{ctx}: still running 15 s after the kill");
    let left = wait_no_leftovers(h, state, 10);
    assert!(
        left.is_empty(),
        "{ctx}: left running after the container ended: {left:?}"
    );
    removed_cleanly(h, state);
    assert_cgroups_gone(cgroups, ctx);
}

/// Kills `victim` while `run -d` boots the container: as soon as the VMM runs (`late`:
/// 250 ms later, while the guest kernel boots and the helpers serve it).
fn kill_during_boot(h: &Husk, vol: &tempfile::TempDir, victim: Victim, late: bool) {
    let phase = if late { "late boot" } else { "boot" };
    let ctx = format!("kill -9 of {} during {phase}", victim.name());
    let args = run_args(vol);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut run = spawn(h, &args);
    let state = common::wait_for(&format!("{ctx}: its VM"), common::SETTLE, || {
        if let Ok(Some(st)) = run.try_wait() {
            panic!("{ctx}: `run -d` ended ({st}) before its VM ran");
        }
        let state = try_only_state(h).filter(|s| s["status"] == "running")?;
        (!victim.runs_under(&state) || !victim.pids(&state).is_empty()).then_some(state)
    });
    let cgroups = vm_cgroups(&state);
    if !victim.runs_under(&state) {
        not_under(&ctx, &state);
        ended(run, &ctx);
        return removed_cleanly(h, &state);
    }
    if late {
        std::thread::sleep(Duration::from_millis(250));
    }
    let in_flight = run.try_wait().expect("try_wait").is_none();
    assert!(
        in_flight || late,
        "{ctx}: `run -d` was done as soon as its VMM ran"
    );
    kill_victim(victim, &state, &ctx);
    let e = ended(run, &ctx);
    if e.code == Some(0) {
        // The boot won the race (the agent answered before the kill landed), or it did not
        // need the daemon yet: a virtio-fs mount returns before the daemon answers FUSE_INIT,
        // so a guest can start its container on a dead virtiofsd. Either way the helper's
        // watcher ends the VM within its 2 s grace, as in the running phase.
        assert!(
            late || victim == Victim::Virtiofsd,
            "{ctx}: `run -d` succeeded: {}",
            e.stdout
        );
        eprintln!("{ctx}: the boot finished first; the running container ended");
    } else {
        assert_one_line_failure(&e, &ctx);
        // A failed boot is recorded before the command returns.
        let s = status(h);
        assert_ne!(
            s, "running",
            "{ctx}: `ps` right after the failed run says {s}"
        );
    }
    assert_ended_and_removable(h, &state, &cgroups, &ctx);
}

#[test]
fn kill_9_of_each_process_while_the_container_boots() {
    let Some((h, vol)) = setup("kill_9_of_each_process_while_the_container_boots") else {
        return;
    };
    for victim in Victim::ALL {
        kill_during_boot(&h, &vol, victim, false);
    }
    // The monitor's death later in the boot is the same as at its start.
    for victim in Victim::ALL.into_iter().filter(|v| *v != Victim::Monitor) {
        kill_during_boot(&h, &vol, victim, true);
    }
}

/// `run -d` and its monitor killed together while the container boots, and a foreground
/// `run` (its own monitor) killed while it boots: nobody is left to start the process or to
/// end the VM, so the next command (`ps`) ends it and records the end.
#[test]
fn kill_9_of_a_boot_with_its_monitor_leaves_the_next_command_to_end_it() {
    let Some((h, vol)) =
        setup("kill_9_of_a_boot_with_its_monitor_leaves_the_next_command_to_end_it")
    else {
        return;
    };
    for detached in [true, false] {
        let ctx = match detached {
            true => "kill -9 of `run -d` and its monitor during boot",
            false => "kill -9 of a foreground `run` during boot",
        };
        let args: Vec<String> = run_args(&vol)
            .into_iter()
            .filter(|a| detached || a != "-d")
            .collect();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut run = spawn(&h, &args);
        let state = common::wait_for(&format!("{ctx}: its VM"), common::SETTLE, || {
            if let Ok(Some(st)) = run.try_wait() {
                panic!("{ctx}: `run` ended ({st}) before its VM ran");
            }
            try_only_state(&h).filter(|s| s["status"] == "running")
        });
        let cgroups = vm_cgroups(&state);
        let id = state["id"].as_str().expect("id");
        if state["booting"] != true {
            // A loaded host let the boot finish before the first look.
            eprintln!("{ctx}: the process started before the kill; NOT RUN this round");
            h.ok(&["rm", "-f", "victim"]);
            continue;
        }
        let vmm = state["pid"]["pid"].as_i64().expect("VMM pid") as i32;
        let monitor = Victim::Monitor.pids(&state);
        monitor.iter().copied().for_each(kill9);
        kill9(run.id() as i32);
        let _ = run.wait();
        // A SIGKILL lands when the victim next runs; the next command comes after that.
        common::wait_for(&format!("{ctx}: the monitor's end"), common::SETTLE, || {
            (!monitor.iter().any(|p| common::faults::alive(*p))).then_some(())
        });
        if h.state(id)["booting"] != true {
            // The kill came after the process started: a working container stays.
            eprintln!("{ctx}: the boot finished first; NOT RUN this round");
            h.ok(&["rm", "-f", "victim"]);
            continue;
        }
        assert!(
            common::faults::alive(vmm),
            "{ctx}: the VM went with its monitor"
        );
        let s = status(&h);
        assert_ne!(s, "running", "{ctx}: `ps` after the kill says {s}");
        common::wait_for(
            &format!("{ctx}: the VM's end after `ps`"),
            common::SETTLE,
            || (!common::faults::alive(vmm)).then_some(()),
        );
        assert_ended_and_removable(&h, &state, &cgroups, ctx);
    }
}

#[test]
fn kill_9_of_each_process_during_an_exec() {
    let Some((h, vol)) = setup("kill_9_of_each_process_during_an_exec") else {
        return;
    };
    let args = run_args(&vol);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    for victim in Victim::ALL {
        let ctx = format!("kill -9 of {} during an exec", victim.name());
        h.ok(&args);
        let state = h.only_state();
        let cgroups = vm_cgroups(&state);
        if !victim.runs_under(&state) {
            not_under(&ctx, &state);
            removed_cleanly(&h, &state);
            continue;
        }
        // In flight once the process in the guest has written its first line, a second
        // after it started (its stdio is attached by then).
        let script = "sleep 1; echo started; sleep 5";
        let mut exec = spawn(&h, &["exec", "victim", "sh", "-c", script]);
        let mut lines = BufReader::new(exec.stdout.take().expect("stdout")).lines();
        let first = lines.next().and_then(Result::ok);
        assert_eq!(first.as_deref(), Some("started"), "{ctx}");
        kill_victim(victim, &state, &ctx);
        let e = ended(exec, &ctx);
        if victim == Victim::Monitor {
            // The container outlives its monitor (tests/fault_matrix.rs): the exec goes on
            // to its end, and `stop` ends the container without a monitor.
            assert_eq!(e.code, Some(0), "{ctx}: {}", e.stderr);
            assert!(e.stderr.is_empty(), "{ctx}: {}", e.stderr);
            assert_eq!(status(&h), "running", "{ctx}");
            h.ok(&["stop", "-t", "1", "victim"]);
            assert_eq!(status(&h), "stopped", "{ctx}");
        } else {
            assert_one_line_failure(&e, &ctx);
            assert_eq!(e.code, Some(137), "{ctx}: {}", e.stderr);
            // One plain line (no colour codes in a pipe).
            let line = "husk: container victim: the exec lost its process";
            assert!(e.stderr.starts_with(line), "{ctx}: {}", e.stderr);
        }
        assert_ended_and_removable(&h, &state, &cgroups, &ctx);
    }
}

#[test]
fn kill_9_of_each_process_during_a_stop() {
    let Some((h, vol)) = setup("kill_9_of_each_process_during_a_stop") else {
        return;
    };
    let args = run_args(&vol);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    for victim in Victim::ALL {
        let ctx = format!("kill -9 of {} during a stop", victim.name());
        h.ok(&args);
        let state = h.only_state();
        let cgroups = vm_cgroups(&state);
        if !victim.runs_under(&state) {
            not_under(&ctx, &state);
            removed_cleanly(&h, &state);
            continue;
        }
        let id = state["id"].as_str().expect("id").to_string();
        // `sleep` as the container's init ignores SIGTERM: the stop waits out its 3 s.
        let stop = spawn(&h, &["stop", "-t", "3", "victim"]);
        common::wait_for(&format!("{ctx}: the stop"), common::SETTLE, || {
            (h.state(&id)["stopRequested"] == true).then_some(())
        });
        std::thread::sleep(Duration::from_millis(100));
        kill_victim(victim, &state, &ctx);
        // What the stop was for happened: it says so, whatever ended the VM.
        let e = ended(stop, &ctx);
        assert_eq!(e.code, Some(0), "{ctx}: {}", e.stderr);
        assert_eq!(e.stdout, "victim\n", "{ctx}");
        assert!(e.stderr.is_empty(), "{ctx}: {}", e.stderr);
        assert_eq!(status(&h), "stopped", "{ctx}");
        assert_ended_and_removable(&h, &state, &cgroups, &ctx);
    }
}

fn have(cmd: &str) -> bool {
    std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {cmd}"))
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn a_full_image_store_refuses_a_pull_in_one_line_and_keeps_nothing_half_written() {
    let test = "a_full_image_store_refuses_a_pull_in_one_line_and_keeps_nothing_half_written";
    if !common::cli::image_tools_present(test) {
        return;
    }
    // SAFETY: geteuid(2) takes nothing and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        common::not_run(test, "mounting a small tmpfs store needs root", true);
        return;
    }
    for tool in ["skopeo", "docker-registry", "python3"] {
        if !have(tool) {
            let why = format!("{tool} not found: apt-get install skopeo docker-registry python3");
            common::not_run(test, &why, true);
            return;
        }
    }
    let reg = match common::registry::Registry::start(std::iter::empty::<&str>()) {
        Ok(r) => r,
        Err(e) => {
            common::not_run(test, &format!("start-test-registry.sh failed: {e}"), true);
            return;
        }
    };
    let archive = common::cli::busybox_archive();
    let layout = archive.parent().expect("images dir").join("busybox-oci");
    let reference = format!("127.0.0.1:{}/busybox:test", reg.port);
    let pushed = std::process::Command::new("skopeo")
        .args(["copy", "--dest-tls-verify=false"])
        .arg(format!("oci:{}", layout.display()))
        .arg(format!("docker://{reference}"))
        .output()
        .expect("skopeo");
    assert!(pushed.status.success(), "{}", common::text(&pushed.stderr));
    // Too small for the layer blob; for the unpacked layer; for the erofs disk.
    for size in ["600k", "1500k", "3000k"] {
        let h = Husk::new(Default::default(), Default::default());
        let root = h.root.path();
        let tmpfs = SmallTmpfs::mount(root, size);
        let out = h.run(&["pull", "-q", &reference]);
        let stderr = common::text(&out.stderr);
        let files = files_under(root);
        let images = h.run(&["images", "-q"]);
        drop(tmpfs);
        assert!(!out.status.success(), "a {size} store took the image");
        assert!(
            stderr.contains("No space left on device"),
            "{size}: {stderr}"
        );
        assert_eq!(stderr.trim().lines().count(), 1, "{size}: {stderr}");
        // Nothing half-written stays, nothing is listed, and the store still answers.
        assert_eq!(files, ["lock"], "{size}: left {files:?}");
        assert!(
            images.status.success(),
            "{size}: images failed after the full pull"
        );
        assert!(images.stdout.is_empty(), "{size}: {:?}", images.stdout);
    }
    // A store with room takes it.
    let h = Husk::new(Default::default(), Default::default());
    let tmpfs = SmallTmpfs::mount(h.root.path(), "64m");
    h.ok(&["pull", "-q", &reference]);
    let listed = h.ok(&["images", "--format", "{{.Repository}}:{{.Tag}}"]);
    drop(tmpfs);
    assert_eq!(listed.trim(), reference);
}
