//! VM templates (src/backend/template) through the `husk` binary on QEMU: the first container
//! of its kind builds the template, the next ones are restored from it instead of booting;
//! each clone is its own (its CRNG reseeded from the host, its clock the host's); a template
//! that no longer loads is removed and the VM boots; `HUSK_VM_TEMPLATES=off` boots every VM.
//! Each test keeps its templates in a directory of its own.

mod common;

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

/// What each clone prints: a UUID from its CRNG and its wall clock.
const WHO_AM_I: &str = "cat /proc/sys/kernel/random/uuid; date +%s";

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
    for f in ["state", "boot.log", "template.json"] {
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
