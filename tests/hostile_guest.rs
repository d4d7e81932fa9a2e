//! A guest that misbehaves on purpose, and the host checked afterwards: what a guest does
//! must cost the host no more than its limits allow. Real microVMs through `husk`, each test
//! with its own `--root` (see tests/husk_cli.rs for the harness).

#![deny(clippy::undocumented_unsafe_blocks)]

mod common;

use common::cli::{husk_with_busybox, Husk, LIMIT};

fn len(path: &std::path::Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

#[test]
fn a_guest_flooding_its_serial_console_fills_no_host_disk() {
    let Some(h) = husk_with_busybox("a_guest_flooding_its_serial_console_fills_no_host_disk")
    else {
        return;
    };
    const MAX: u64 = 64 << 10;
    const WRITTEN: u64 = 600_000;
    // The container is root in its VM with the device capabilities: it makes the serial
    // port's node and writes ~9x the console limit through it, then says it is done.
    let script = format!(
        "mknod /tmp/ttyS0 c 4 64 && head -c {WRITTEN} /dev/zero | tr '\\0' x > /tmp/ttyS0 \
         && echo flooded"
    );
    let mut cmd = h.cmd(&["run", "--name", "flood", "busybox", "sh", "-c", &script]);
    cmd.env("HUSK_CONSOLE_LOG_MAX", MAX.to_string());
    let out = common::run_bounded(cmd, None, LIMIT);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "flooded\n");
    let state = h.only_state();
    let log = std::path::PathBuf::from(state["consoleLog"].as_str().expect("consoleLog"));
    let rotated = husk::backend::console_cap::rotated_path(&log);
    let (now, old) = (len(&log), len(&rotated));
    // The flood went through the serial port (it is in the logs), and was rotated away.
    assert!(old > 0, "nothing was rotated: console.log is {now} bytes");
    // Each file holds at most the limit plus what lands while one rotation runs; both
    // together hold far less than the guest wrote.
    assert!(
        now <= 2 * MAX && old <= 2 * MAX,
        "console.log {now}, .1 {old} bytes"
    );
    assert!(now + old < WRITTEN / 2, "console.log {now}, .1 {old} bytes");
    h.ok(&["rm", "flood"]);
    assert!(
        !log.exists() && !rotated.exists(),
        "rm left the console logs"
    );
}

/// Waits until `husk logs NAME` holds `want`, at most `secs`; returns the logs.
fn wait_for_log(h: &Husk, name: &str, want: &str, secs: u64) -> String {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    loop {
        let logs = String::from_utf8_lossy(&h.run(&["logs", name]).stdout).into_owned();
        if logs.contains(want) || std::time::Instant::now() >= deadline {
            return logs;
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
}

/// Resident memory of process `pid` in MiB.
fn rss_mib(pid: u64) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .expect("VmRSS")
        / 1024
}

#[test]
fn a_guest_eating_all_its_memory_is_stopped_inside_its_vm() {
    let Some(h) = husk_with_busybox("a_guest_eating_all_its_memory_is_stopped_inside_its_vm")
    else {
        return;
    };
    const MEMORY_MIB: u64 = 128;
    // `tail` of an endless line keeps all of it: the guest kernel's OOM killer ends it, the
    // container's shell goes on and says so.
    h.ok(&[
        "run",
        "-d",
        "--name",
        "hog",
        "-m",
        "128m",
        "busybox",
        "sh",
        "-c",
        "head -c 1000000000 /dev/zero | tail; echo oom:$?; sleep 1000",
    ]);
    // Up to 5 minutes, for an emulated guest beside the rest of the suite (and the nested-KVM
    // rig) on two host cores. Killed within seconds of filling the guest: without the agent's
    // `min_ttl_ms` (below), reclaim thrashing the executables' pages held the OOM killer off
    // for 260-300 s half the time, even on its own (2026-12-05).
    let logs = wait_for_log(&h, "hog", "oom:137", 300);
    assert!(
        logs.contains("oom:137"),
        "the hog was not OOM-killed: {logs:?}"
    );
    // The host paid for the VM's memory and no more: guest RAM plus the VMM's own (QEMU's
    // translation cache is 64 MiB of it).
    let vmm = h.only_state()["pid"]["pid"].as_u64().expect("VMM pid");
    let rss = rss_mib(vmm);
    assert!(
        rss <= MEMORY_MIB + 160,
        "the VMM holds {rss} MiB for a {MEMORY_MIB} MiB guest"
    );
    // The agent lived through it: the container still answers.
    assert_eq!(h.ok(&["exec", "hog", "echo", "alive"]), "alive\n");
    // The valve that made it quick is open (the guest kernel's multi-gen LRU keeps the last
    // second's pages, or OOM-kills).
    assert_eq!(
        h.ok(&["exec", "hog", "cat", "/sys/kernel/mm/lru_gen/min_ttl_ms"]),
        "1000\n"
    );
    h.ok(&["rm", "-f", "hog"]);
}

#[test]
fn a_fork_bomb_stops_at_its_limit_and_the_agent_keeps_answering() {
    let Some(h) = husk_with_busybox("a_fork_bomb_stops_at_its_limit_and_the_agent_keeps_answering")
    else {
        return;
    };
    // With `run`'s default --pids-limit (2048, podman's), which is more tasks than a
    // 256 MiB guest can have at all: the agent's own reserve is what keeps it answering.
    h.ok(&[
        "run",
        "-d",
        "--name",
        "bomb",
        "busybox",
        "sh",
        "-c",
        "b() { b | b & }; b; sleep 1000",
    ]);
    // Let the bomb fill the guest.
    std::thread::sleep(std::time::Duration::from_secs(20));
    // The agent still takes connections and starts an exec (the exec itself may find no
    // task left to fork in the container; its first builtin runs).
    let out = h.run(&[
        "exec",
        "bomb",
        "sh",
        "-c",
        "echo alive; cat /sys/fs/cgroup/pids.max",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.starts_with("alive"),
        "exec into the bombed container: {stdout:?} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Another VM runs as usual meanwhile.
    assert_eq!(h.ok(&["run", "--rm", "busybox", "echo", "ok"]), "ok\n");
    // And the bomb stops when told, in bounded time.
    let started = std::time::Instant::now();
    h.ok(&["stop", "-t", "2", "bomb"]);
    assert!(started.elapsed() < std::time::Duration::from_secs(30));
    h.ok(&["rm", "bomb"]);
}

#[test]
fn a_guest_that_never_answers_costs_bounded_waits() {
    let Some(h) = husk_with_busybox("a_guest_that_never_answers_costs_bounded_waits") else {
        return;
    };
    h.ok(&["run", "-d", "--name", "mute", "busybox", "sleep", "1000"]);
    // The VMM stopped: the guest, its agent included, never answers again.
    let vmm = h.only_state()["pid"]["pid"].as_u64().expect("VMM pid");
    // SAFETY: kill(2) with a pid and a signal number; no memory is passed.
    assert_eq!(unsafe { libc::kill(vmm as i32, libc::SIGSTOP) }, 0);
    let started = std::time::Instant::now();
    let out = h.run(&["exec", "mute", "true"]);
    let took = started.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "exec into a mute guest succeeded");
    assert!(stderr.contains("agent not reachable"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(
        took < std::time::Duration::from_secs(30),
        "exec took {took:?}"
    );
    // `stop` gives up on the agent and ends the VM itself.
    let started = std::time::Instant::now();
    h.ok(&["stop", "-t", "2", "mute"]);
    let took = started.elapsed();
    assert!(
        took < std::time::Duration::from_secs(45),
        "stop took {took:?}"
    );
    let state = h.only_state();
    assert_ne!(state["status"], "running", "{state}");
    h.ok(&["rm", "mute"]);
    // SAFETY: as above; the VMM is gone (ESRCH) or must not outlive its container.
    let alive = unsafe { libc::kill(vmm as i32, 0) } == 0;
    assert!(!alive, "the mute VM's VMM is still there");
}

#[test]
fn a_guest_flooding_its_output_streams_costs_the_host_bounded_memory() {
    let Some(h) =
        husk_with_busybox("a_guest_flooding_its_output_streams_costs_the_host_bounded_memory")
    else {
        return;
    };
    // Both output streams flat out, over vsock to the container's monitor on the host.
    h.ok(&[
        "run",
        "-d",
        "--name",
        "loud",
        "busybox",
        "sh",
        "-c",
        "yes >&2 & yes",
    ]);
    std::thread::sleep(std::time::Duration::from_secs(10));
    let state = h.only_state();
    let monitor = state["monitor"]["pid"].as_u64().expect("monitor pid");
    let vmm = state["pid"]["pid"].as_u64().expect("VMM pid");
    let logged = len(std::path::Path::new(
        state["logFile"].as_str().expect("logFile"),
    ));
    assert!(logged > 0, "nothing of the flood reached the log");
    // The control connection is not stuck behind the bulk streams.
    let started = std::time::Instant::now();
    assert_eq!(h.ok(&["exec", "loud", "echo", "heard"]), "heard\n");
    assert!(started.elapsed() < std::time::Duration::from_secs(20));
    // Nothing on the host buffers the flood: the monitor stays small, the VMM at its size.
    let (m, v) = (rss_mib(monitor), rss_mib(vmm));
    assert!(m < 64, "the monitor holds {m} MiB");
    assert!(v < 256 + 160, "the VMM holds {v} MiB");
    h.ok(&["rm", "-f", "loud"]);
}

#[test]
fn a_guest_writing_past_its_scratch_disk_stops_at_its_size() {
    let Some(h) = husk_with_busybox("a_guest_writing_past_its_scratch_disk_stops_at_its_size")
    else {
        return;
    };
    const SIZE: u64 = 64 << 20;
    // A neighbour that must not notice.
    h.ok(&["run", "-d", "--name", "calm", "busybox", "sleep", "1000"]);
    // The container fills its writable layer, then (root in its VM, with the device
    // capabilities) writes at and across the end of the raw scratch device, then frees its
    // file and writes again.
    let script = "dd if=/dev/zero of=/fill bs=1M 2>/tmp/dd.err; echo fill:$?; cat /tmp/dd.err; \
         d=$(grep -l husk-scratch /sys/block/vd*/serial); d=${d%/serial}; \
         mknod /tmp/s b $(tr : ' ' < $d/dev); s=$(cat $d/size); echo sectors:$s; \
         dd if=/dev/urandom of=/tmp/s bs=512 seek=$s count=8 conv=notrunc 2>/dev/null; \
         echo past:$?; \
         dd if=/dev/urandom of=/tmp/s bs=512 seek=$((s-4)) count=8 conv=notrunc 2>/dev/null; \
         echo straddle:$?; \
         rm /fill && echo again > /again && cat /again";
    let out = h.run(&[
        "run",
        "--name",
        "fill",
        "--storage-opt",
        "size=64m",
        "busybox",
        "sh",
        "-c",
        script,
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The guest saw a full disk, and a device that ends where its size says.
    assert!(stdout.contains("fill:1\n"), "{stdout}");
    assert!(stdout.contains("No space left on device"), "{stdout}");
    assert!(
        stdout.contains(&format!("sectors:{}\n", SIZE / 512)),
        "{stdout}"
    );
    assert!(stdout.contains("past:1\n"), "{stdout}");
    assert!(stdout.contains("straddle:1\n"), "{stdout}");
    // And its filesystem survived: freed space is writable again.
    assert!(stdout.ends_with("again\n"), "{stdout}");
    // The host file kept its size, and holds no more than it.
    let fill = h
        .container_ids()
        .into_iter()
        .find(|id| h.state(id)["name"] == "fill")
        .expect("fill's id");
    let disk = h.containers_dir().join(fill).join("scratch.ext4");
    let meta = std::fs::metadata(&disk).expect("scratch disk");
    use std::os::unix::fs::MetadataExt;
    assert_eq!(meta.len(), SIZE, "{}", disk.display());
    assert!(
        meta.blocks() * 512 <= SIZE,
        "{} allocates {} bytes",
        disk.display(),
        meta.blocks() * 512
    );
    assert_eq!(h.ok(&["exec", "calm", "echo", "calm"]), "calm\n");
    h.ok(&["rm", "-f", "fill", "calm"]);
    // A size husk cannot honour is one line, and no container.
    let out = h.run(&["run", "--storage-opt", "size=1m", "busybox", "true"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("--storage-opt"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(h.container_ids().is_empty());
}
