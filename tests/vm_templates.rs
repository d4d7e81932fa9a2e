//! VM templates (src/backend/template) through the `husk` binary on QEMU: the first container
//! of its kind builds the template, the next ones are restored from it instead of booting;
//! each clone is its own (its CRNG reseeded from the host, its clock the host's); a template
//! that no longer loads is removed and the VM boots; `HUSK_VM_TEMPLATES=off` boots every VM.
//! Each test keeps its templates in a directory of its own.

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::cli::{timing_rows, Husk};

/// A busybox root whose husk keeps VM templates in `templates`, or `None` (NOT RUN said).
fn husk(test: &str, templates: &Path) -> Option<Husk> {
    let mut h = common::cli::husk_with_busybox(test)?;
    // QEMU only: husk-vmm (where it runs) has no templates.
    h.env.push("HUSK_VMM=qemu".into());
    h.env
        .push(format!("HUSK_VM_TEMPLATES={}", templates.display()));
    Some(h)
}

/// `husk run --rm --timings busybox sh -c SCRIPT`: (stdout, the phases' names).
fn run(h: &Husk, script: &str) -> (String, Vec<String>) {
    let out = h.run(&["run", "--rm", "--timings", "busybox", "sh", "-c", script]);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "husk run {script:?}: {err}");
    let phases = timing_rows(&err)
        .into_iter()
        .filter(|r| !r.step)
        .map(|r| r.name)
        .collect();
    (String::from_utf8(out.stdout).unwrap(), phases)
}

/// The template directories under `dir` (one per key).
fn templates(dir: &Path) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.path())
                .filter(|p| {
                    p.is_dir() && !p.file_name().unwrap().to_string_lossy().starts_with('.')
                })
                .collect()
        })
        .unwrap_or_default()
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// What each clone prints: a UUID from its CRNG, its wall clock, and the scheduling policy
/// its container's processes run at (`/proc/self/stat` field 41; the spare init helper they
/// come from was started at idle priority in the template and must hand on the normal one, 0).
const WHO_AM_I: &str =
    "cat /proc/sys/kernel/random/uuid; date +%s; awk '{print $41}' /proc/self/stat";

#[test]
fn the_first_container_builds_a_template_and_the_next_are_restored_and_their_own() {
    let test = "the_first_container_builds_a_template_and_the_next_are_restored_and_their_own";
    let dir = tempfile::tempdir().unwrap();
    let Some(h) = husk(test, dir.path()) else {
        return;
    };
    let (first, phases) = run(&h, WHO_AM_I);
    assert!(
        phases.iter().any(|p| p == "VM template build")
            && phases.iter().any(|p| p == "VM template restore"),
        "the first run builds the template and is restored from it: {phases:?}"
    );
    let made = templates(dir.path());
    assert_eq!(made.len(), 1, "one template: {made:?}");
    for f in ["state", "ram", "boot.log", "template.json"] {
        assert!(made[0].join(f).is_file(), "{f} in {}", made[0].display());
    }
    let boot = std::fs::read_to_string(made[0].join("boot.log")).unwrap();
    assert!(boot.contains(husk_protocol::GUEST_READY_MARKER), "{boot}");
    // Saved once the guest had printed its boot facts, which no clone prints again.
    assert!(
        boot.contains(husk_protocol::GUEST_FACTS_END_MARKER),
        "{boot}"
    );

    // Long enough that a clone keeping the template's clock would show it.
    std::thread::sleep(Duration::from_secs(3));
    let mut uuids = vec![first.lines().next().unwrap().to_string()];
    for round in 0..2 {
        let (out, phases) = run(&h, WHO_AM_I);
        assert!(
            !phases.iter().any(|p| p == "VM template build")
                && phases.iter().any(|p| p == "VM template restore"),
            "run {round}: restored, not built again: {phases:?}"
        );
        let mut lines = out.lines();
        let uuid = lines.next().unwrap().to_string();
        let clock: i64 = lines.next().unwrap().trim().parse().unwrap();
        assert!(
            (clock - now_secs()).abs() <= 2,
            "run {round}: the clone's clock {clock} against the host's {}",
            now_secs()
        );
        assert!(
            !uuids.contains(&uuid),
            "run {round}: {uuid} drawn before: {uuids:?}"
        );
        assert_eq!(
            lines.next().map(str::trim),
            Some("0"),
            "run {round}: the container's scheduling policy (SCHED_OTHER)"
        );
        uuids.push(uuid);
    }
    assert_eq!(templates(dir.path()), made, "still the one template");

    // A clone of the template's own image keeps its layer disk's partitions (the kernel
    // already lists what the disk's GPT holds) and re-reads the rest; its console holds the
    // agent's account, and no boot facts.
    let out = h.run(&["run", "-d", "busybox", "sleep", "60"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = String::from_utf8(out.stdout).unwrap().trim().to_string();
    // Two clones at once: the pages of the template's RAM they only read are one copy,
    // mapped by both (the keeper's sealed memfd; src/backend/template/ram.rs).
    let other = h
        .ok(&["run", "-d", "busybox", "sleep", "60"])
        .trim()
        .to_string();
    std::thread::sleep(Duration::from_secs(1));
    for c in [&id, &other] {
        let pid = h.state(c)["pid"]["pid"].as_u64().unwrap();
        let (rss, shared) = template_ram_kib(pid as u32);
        assert!(
            rss > 1024 && shared * 2 > rss,
            "{c}: QEMU {pid} maps the template's RAM ({rss} KiB resident), mostly shared \
             with the other clone ({shared} KiB)"
        );
    }
    let _ = h.run(&["rm", "-f", &other]);
    let console = h
        .root
        .path()
        .join("containers")
        .join(&id)
        .join("console.log");
    let log = std::fs::read_to_string(&console).unwrap();
    let _ = h.run(&["rm", "-f", &id]);
    let said = log
        .lines()
        .find(|l| l.starts_with("husk-agent: restored from a template"))
        .unwrap_or_else(|| panic!("no account of the restore in {log}"));
    assert!(said.contains("disks: [vda kept, vdb re-read]"), "{said}");
    assert!(!log.contains("FACT "), "{log}");

    // The template's RAM on disk holds only what its guest wrote; its keeper leaves with it.
    let ram = std::fs::metadata(made[0].join("ram")).unwrap();
    assert!(ram.blocks() * 512 < ram.len() / 4, "sparse: {ram:?}");
    let keepers = keepers_of(&made[0]);
    assert_eq!(keepers.len(), 1, "one keeper serves the template");
    // It holds nothing of husk's but what it was given, blocks no signal, runs as an id of
    // its own with no capability, and is confined to its syscalls; it served every clone
    // above (one keeper, alive: a syscall its filter lacks would have killed it).
    let k = keepers[0];
    let mut fds: Vec<u32> = std::fs::read_dir(format!("/proc/{k}/fd"))
        .unwrap()
        .flatten()
        .filter_map(|f| f.file_name().to_str()?.parse().ok())
        .collect();
    fds.sort_unstable();
    assert_eq!(
        fds,
        [0, 1, 2, 100, 101, 102, 103],
        "the keeper's descriptors"
    );
    let status = std::fs::read_to_string(format!("/proc/{k}/status")).unwrap();
    for want in [
        "SigBlk:\t0000000000000000",
        "CapEff:\t0000000000000000",
        "NoNewPrivs:\t1",
        // Its seccomp filter (src/backend/template/ram.rs, KEEPER_SYSCALLS).
        "Seccomp:\t2",
    ] {
        assert!(status.contains(want), "{want} in {status}");
    }
    assert!(!status.contains("Uid:\t0\t"), "{status}");
    std::fs::remove_dir_all(&made[0]).unwrap();
    let gone = std::time::Instant::now() + Duration::from_secs(10);
    while Path::new(&format!("/proc/{}", keepers[0])).exists() {
        assert!(
            std::time::Instant::now() < gone,
            "the keeper outlived its template"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The template RAM QEMU `pid` maps: (resident KiB, KiB of it shared with another process).
fn template_ram_kib(pid: u32) -> (u64, u64) {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap();
    let mut inside = false;
    let (mut rss, mut shared) = (0, 0);
    for line in smaps.lines() {
        let mut words = line.split_whitespace();
        let first = words.next().unwrap_or("");
        if first.contains('-') && !first.ends_with(':') {
            inside = line.contains("/memfd:husk-template-ram");
            continue;
        }
        let kib = || {
            words
                .clone()
                .next()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        match first {
            "Rss:" if inside => rss += kib(),
            "Shared_Clean:" | "Shared_Dirty:" if inside => shared += kib(),
            _ => {}
        }
    }
    (rss, shared)
}

/// The husk-template-ram processes holding the template directory `at`.
fn keepers_of(at: &Path) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            String::from_utf8_lossy(&cmd).contains("husk-template-ram")
                && std::fs::read_dir(format!("/proc/{pid}/fd"))
                    .map(|fds| {
                        fds.flatten()
                            .any(|f| std::fs::read_link(f.path()).is_ok_and(|l| l == at))
                    })
                    .unwrap_or(false)
        })
        .collect()
}

#[test]
fn a_template_that_does_not_load_is_removed_and_the_vm_boots() {
    let test = "a_template_that_does_not_load_is_removed_and_the_vm_boots";
    let dir = tempfile::tempdir().unwrap();
    let Some(h) = husk(test, dir.path()) else {
        return;
    };
    run(&h, "true");
    let made = templates(dir.path());
    assert_eq!(made.len(), 1, "{made:?}");
    // A state QEMU refuses to load.
    std::fs::write(made[0].join("state"), b"not a QEMU migration stream").unwrap();
    let (out, phases) = run(&h, "echo booted");
    assert_eq!(out, "booted\n");
    assert!(
        phases.iter().any(|p| p == "kernel boot to agent ready")
            && !phases.iter().any(|p| p == "VM template restore"),
        "booted, not restored: {phases:?}"
    );
    assert!(
        !made[0].exists(),
        "the broken template is removed so the next VM rebuilds it"
    );
    let (_, phases) = run(&h, "true");
    assert!(
        phases.iter().any(|p| p == "VM template build"),
        "rebuilt: {phases:?}"
    );
}

#[test]
fn with_templates_off_every_vm_boots() {
    let test = "with_templates_off_every_vm_boots";
    let dir = tempfile::tempdir().unwrap();
    let Some(mut h) = husk(test, dir.path()) else {
        return;
    };
    h.env.retain(|kv| !kv.starts_with("HUSK_VM_TEMPLATES="));
    h.env.push("HUSK_VM_TEMPLATES=off".into());
    for _ in 0..2 {
        let (out, phases) = run(&h, "echo ok");
        assert_eq!(out, "ok\n");
        assert!(
            !phases.iter().any(|p| p.starts_with("VM template")),
            "{phases:?}"
        );
    }
    assert!(templates(dir.path()).is_empty());
}
