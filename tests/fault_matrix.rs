//! `kill -9` of each process a container runs on, while it runs: the next command reports
//! the right state and cleans up, and `rm` leaves nothing (processes, files, networks).
//! Real microVMs through `husk`, each test with its own `--root`.

#![deny(clippy::undocumented_unsafe_blocks)]

mod common;

use std::time::{Duration, Instant};

use common::cli::{husk_with_busybox, Husk};
use common::faults::{
    assert_cgroups_gone, files_under, kill9, pids_of, removed_cleanly, status, users_of,
    vm_cgroups, wait_not_running, SmallTmpfs,
};

#[test]
fn kill_9_of_each_process_under_a_running_container() {
    let Some(h) = husk_with_busybox("kill_9_of_each_process_under_a_running_container") else {
        return;
    };
    let vol = tempfile::tempdir().expect("volume");
    let volume = format!("{}:/data", vol.path().display());
    // The VMM, and each helper daemon: the VM ends (a helper's watcher ends it within its
    // 2 s grace), the container reads as ended, and `rm` takes everything.
    for victim in ["vmm", "husk-agent-mux", "husk-layer-disk", "virtiofsd"] {
        h.ok(&[
            "run", "-d", "--name", "victim", "-v", &volume, "busybox", "sleep", "1000",
        ]);
        let state = h.only_state();
        let cgroups = vm_cgroups(&state);
        let id = state["id"].as_str().expect("id").to_string();
        // husk-vmm (the backend on a KVM host) serves vsock and the layer disk itself.
        if state["backend"] == "husk" && matches!(victim, "husk-agent-mux" | "husk-layer-disk") {
            let why = format!("the husk backend runs no {victim}");
            common::not_run(
                "kill_9_of_each_process_under_a_running_container",
                &why,
                false,
            );
            removed_cleanly(&h, &state);
            continue;
        }
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
        assert_cgroups_gone(&cgroups, &format!("kill -9 of its {victim}"));
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
    let cgroups = vm_cgroups(&state);
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
    // Its cgroup too, which the killed monitor would have removed.
    assert_cgroups_gone(&cgroups, "kill -9 of the monitor");
    removed_cleanly(&h, &state);
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
        let tmpfs = SmallTmpfs::mount(root, size);
        let out = h.run(&["load", "-i", archive.to_str().unwrap()]);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
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
