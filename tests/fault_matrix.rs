//! `kill -9` of each process a container runs on, while it runs: the next command reports
//! the right state and cleans up, and `rm` leaves nothing (processes, files, networks).
//! Real microVMs through `husk`, each test with its own `--root`.

#![deny(clippy::undocumented_unsafe_blocks)]

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::cli::{husk_with_busybox, Husk};

/// Pids of the processes whose command line starts with `program` (argv[0], or its file
/// name) and mentions `needle`.
fn pids_of(program: &str, needle: &str) -> Vec<i32> {
    let mut pids = Vec::new();
    for e in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let argv0 = args.first().cloned().unwrap_or_default();
        let name = Path::new(&argv0)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        // Helpers name themselves `PROGRAM@PATH` in argv[0].
        let named = argv0.starts_with(program) || name.starts_with(program);
        if named && args.iter().any(|a| a.contains(needle)) {
            pids.push(pid);
        }
    }
    pids
}

fn kill9(pid: i32) {
    // SAFETY: kill(2) with a pid and a signal number; no memory is passed.
    unsafe { libc::kill(pid, libc::SIGKILL) };
}

/// `ps -a --format json`'s status of the only container.
fn status(h: &Husk) -> String {
    let v: serde_json::Value =
        serde_json::from_str(&h.ok(&["ps", "-a", "--format", "json"])).expect("ps json");
    v[0]["status"].as_str().unwrap_or_default().to_string()
}

/// Waits until the only container is no longer running (at most `secs`).
fn wait_not_running(h: &Husk, secs: u64) -> String {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let s = status(h);
        if s != "running" || Instant::now() >= deadline {
            return s;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Processes that still use the root or the container's short directories.
fn users_of(h: &Husk, state: &serde_json::Value) -> Vec<String> {
    let mut dirs = vec![h.root.path().to_path_buf()];
    for key in ["consoleLog", "vsockUds"] {
        if let Some(d) = state[key].as_str().and_then(|p| Path::new(p).parent()) {
            dirs.push(d.to_path_buf());
        }
    }
    dirs.iter()
        .flat_map(|d| common::engine::processes_using(d))
        .collect()
}

/// `rm` (after the kill) leaves no process and no container directory.
fn removed_cleanly(h: &Husk, state: &serde_json::Value) {
    h.ok(&["rm", "-f", "victim"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !users_of(h, state).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(users_of(h, state).is_empty(), "{:?}", users_of(h, state));
    let left = h.container_ids();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn kill_9_of_each_process_under_a_running_container() {
    let Some(h) = husk_with_busybox("kill_9_of_each_process_under_a_running_container") else {
        return;
    };
    let vol = tempfile::tempdir().expect("volume");
    let volume = format!("{}:/data", vol.path().display());
    // The VMM, and each helper daemon: the VM ends (a helper's watcher ends it within its
    // 2 s grace), the container reads as ended, and `rm` takes everything.
    for victim in ["vmm", "vhost-device-vsock", "husk-vhost-blk", "virtiofsd"] {
        h.ok(&[
            "run", "-d", "--name", "victim", "-v", &volume, "busybox", "sleep", "1000",
        ]);
        let state = h.only_state();
        let id = state["id"].as_str().expect("id").to_string();
        let pids = match victim {
            "vmm" => vec![state["pid"]["pid"].as_i64().expect("VMM pid") as i32],
            // By the id's prefix: a root as deep as a test's puts the sockets (and so the
            // helpers' arguments) in a short directory named after it. virtiofsd's sandbox
            // keeps two processes; both go.
            _ => pids_of(victim, &id[..16]),
        };
        assert!(!pids.is_empty(), "no {victim} process for {id}");
        pids.into_iter().for_each(kill9);
        let s = wait_not_running(&h, 30);
        assert_ne!(
            s, "running",
            "still running 30 s after kill -9 of its {victim}"
        );
        removed_cleanly(&h, &state);
    }
}

#[test]
fn kill_9_of_the_monitor_is_repaired_by_the_next_command() {
    let Some(h) = husk_with_busybox("kill_9_of_the_monitor_is_repaired_by_the_next_command") else {
        return;
    };
    // The container outlives its monitor, then ends by itself: nobody is left to record it.
    h.ok(&[
        "run", "-d", "--name", "victim", "busybox", "sh", "-c", "sleep 3",
    ]);
    let state = h.only_state();
    kill9(state["monitor"]["pid"].as_i64().expect("monitor pid") as i32);
    // The VM goes on without it (its helpers too) until the process ends.
    let vmm = state["pid"]["pid"].as_i64().expect("VMM pid") as i32;
    let deadline = Instant::now() + Duration::from_secs(30);
    // SAFETY: kill(2) with signal 0 only checks that the process exists.
    while unsafe { libc::kill(vmm, 0) } == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    // The next command, whatever it is, records the end and ends what was left running.
    let s = status(&h);
    assert_ne!(s, "running", "{s}");
    let recorded = h.only_state();
    assert_ne!(recorded["status"], "running", "{recorded}");
    assert!(
        users_of(&h, &state).is_empty(),
        "helpers of the ended VM still run: {:?}",
        users_of(&h, &state)
    );
    removed_cleanly(&h, &state);
}

/// Every regular file under `dir`, relative.
fn files_under(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p.strip_prefix(dir).unwrap().display().to_string());
            }
        }
    }
    out
}

#[test]
fn a_full_image_store_refuses_a_load_in_one_line_and_keeps_nothing_half_written() {
    let test = "a_full_image_store_refuses_a_load_in_one_line_and_keeps_nothing_half_written";
    if !common::cli::image_tools_present(test) {
        return;
    }
    // SAFETY: geteuid(2) takes nothing and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        common::not_run(test, "mounting a small tmpfs store needs root", true);
        return;
    }
    let archive = common::cli::busybox_archive();
    // Too small for the layer blob; for the unpacked layer; for the erofs disk.
    for size in ["1500k", "2600k", "4500k"] {
        let h = Husk::new(Default::default(), Default::default());
        let root = h.root.path();
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(root)
            .status()
            .expect("mount");
        assert!(mounted.success(), "mount tmpfs on {}", root.display());
        let out = h.run(&["load", "-i", archive.to_str().unwrap()]);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        let files = files_under(root);
        let images = h.run(&["images", "-q"]);
        let _ = std::process::Command::new("umount").arg(root).status();
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
            "{size}: images failed after the full load"
        );
        assert!(images.stdout.is_empty(), "{size}: {:?}", images.stdout);
    }
}

#[test]
fn a_corrupt_state_or_index_file_is_named_and_the_rest_keeps_working() {
    let Some(h) =
        husk_with_busybox("a_corrupt_state_or_index_file_is_named_and_the_rest_keeps_working")
    else {
        return;
    };
    h.ok(&["run", "--name", "good", "busybox", "true"]);
    h.ok(&["run", "--name", "bad", "busybox", "true"]);
    let ids = h.container_ids();
    let bad = ids
        .iter()
        .find(|id| h.state(id)["name"] == "bad")
        .expect("bad's id")
        .clone();
    let state_file = h.containers_dir().join(&bad).join("state.json");
    std::fs::write(&state_file, "{\"id\": \"trunc").unwrap();
    // The rest is listed; the broken record is named once, with its file.
    let out = h.run(&["ps", "-a", "--format", "{{.Names}}"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "good\n");
    assert_eq!(
        stderr.matches(&*state_file.to_string_lossy()).count(),
        1,
        "{stderr}"
    );
    // It can be removed by its id (or a prefix), with everything it held.
    h.ok(&["rm", &bad[..12]]);
    assert!(!h.containers_dir().join(&bad).exists());
    h.ok(&["rm", "good"]);
    // A corrupt image index: image commands say which file, containers still list.
    let index = h.root.path().join("index.json");
    std::fs::write(&index, "{\"manifests\": [oops").unwrap();
    let out = h.run(&["images"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains(&*index.to_string_lossy()), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    h.ok(&["ps", "-a"]);
}
