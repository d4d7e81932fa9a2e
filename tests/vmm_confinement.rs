//! husk-vmm's confinement under the real /dev/kvm, with tiny guests (tests/guests/*.S): every
//! thread runs under its seccomp filter, jailed, unprivileged; a forbidden syscall in each
//! thread kind ends husk-vmm with one line naming the thread and the syscall; `--seccomp log`
//! only logs. The Linux-guest device threads (vsock, fs, net's worker under Linux) are proven
//! in the nested-KVM rig (tests/vmm_linux_devices.rs), and the net worker's filter here in
//! tests/tiny_guest_net.rs.

#![deny(clippy::undocumented_unsafe_blocks)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{boot_tiny, text};

const HALT: &str = env!("HUSK_GUEST_HALT");
const MARKER: &str = env!("HUSK_GUEST_MARKER");
const BLK: &str = env!("HUSK_GUEST_VIRTIO_BLK");

const LIMIT: Duration = Duration::from_secs(30);

/// husk-vmm's status after a forbidden syscall (128 + SIGSYS).
const SECCOMP_EXIT: i32 = 159;

/// A uid from husk's range that no other test uses.
const JAIL_ID: u32 = 0x7000_0000 + 65_000;

fn jail_config(dir: &Path, kernel: &str, extra: &str) -> PathBuf {
    let root = husk::confine::launch::empty_dir().expect("husk's empty directory");
    let cfg = format!(
        r#"{{"kernel":"{kernel}","memory_mib":64,"vcpus":2,"timeout_secs":20,"console":"stdout",{extra}
            "jail":{{"root":"{}","uid":{JAIL_ID},"gid":{JAIL_ID},"binds":["{}"],
                     "max_open_files":128,"max_file_bytes":1048576,"max_threads":16}}}}"#,
        root.display(),
        dir.display()
    );
    let path = dir.join("vm.json");
    std::fs::write(&path, cfg).expect("write config");
    path
}

/// `Key:\tvalue` from a /proc status file.
fn field<'a>(status: &'a str, key: &str) -> Option<&'a str> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .map(str::trim)
}

#[test]
fn every_thread_is_filtered_jailed_and_unprivileged() {
    let test = "every_thread_is_filtered_jailed_and_unprivileged";
    if !common::kvm_available(test) {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = jail_config(dir.path(), HALT, "");
    let mut child = Command::new(common::bin("husk-vmm"))
        .arg("--config")
        .arg(&cfg)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn husk-vmm");
    let proc_dir = PathBuf::from(format!("/proc/{}", child.id()));
    // main, the spawner and two vCPUs, once the jail is entered (the uid changes last).
    let threads = common::poll_until(LIMIT, || {
        let status = std::fs::read_to_string(proc_dir.join("status")).ok()?;
        let uid = field(&status, "Uid")?
            .split_whitespace()
            .next()?
            .to_string();
        let names: Vec<(String, String)> = std::fs::read_dir(proc_dir.join("task"))
            .ok()?
            .flatten()
            .filter_map(|t| {
                let comm = std::fs::read_to_string(t.path().join("comm")).ok()?;
                let status = std::fs::read_to_string(t.path().join("status")).ok()?;
                Some((comm.trim().to_string(), status))
            })
            // KVM's own kernel worker (kvm-nx-lpage-recovery) is listed under the process.
            .filter(|(comm, _)| !comm.starts_with("kvm-"))
            .collect();
        (uid == JAIL_ID.to_string() && names.len() >= 4).then_some(names)
    });
    let root_entries: Option<Vec<String>> =
        std::fs::read_dir(proc_dir.join("root")).ok().map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        });
    let ns = |pid: &str, kind: &str| std::fs::read_link(format!("/proc/{pid}/ns/{kind}")).ok();
    let pid = child.id().to_string();
    let namespaces: Vec<(&str, bool)> = ["mnt", "net", "ipc", "uts"]
        .into_iter()
        .map(|k| (k, ns(&pid, k) != ns("self", k)))
        .collect();
    let limits = std::fs::read_to_string(proc_dir.join("limits")).unwrap_or_default();
    let _ = child.kill();
    let out = child.wait_with_output().expect("wait");
    let threads = threads.unwrap_or_else(|| {
        panic!(
            "husk-vmm never ran jailed with its 4 threads; stderr: {}",
            text(&out.stderr)
        )
    });
    let mut names: Vec<&str> = threads.iter().map(|(n, _)| n.as_str()).collect();
    names.sort();
    assert_eq!(names, ["husk-spawner", "husk-vmm", "vcpu0", "vcpu1"]);
    for (name, status) in &threads {
        assert_eq!(field(status, "Seccomp"), Some("2"), "{name}: {status}");
        assert_eq!(field(status, "NoNewPrivs"), Some("1"), "{name}");
        assert_eq!(field(status, "CapEff"), Some("0000000000000000"), "{name}");
        assert_eq!(field(status, "CapPrm"), Some("0000000000000000"), "{name}");
        assert_eq!(field(status, "CapBnd"), Some("0000000000000000"), "{name}");
        let ids = format!("{JAIL_ID}\t{JAIL_ID}\t{JAIL_ID}\t{JAIL_ID}");
        assert_eq!(field(status, "Uid"), Some(ids.as_str()), "{name}");
        assert_eq!(field(status, "Gid"), Some(ids.as_str()), "{name}");
        assert_eq!(field(status, "Groups"), Some(""), "{name}");
    }
    // The root holds only the path down to the one bound directory (the vsock socket's).
    let top = dir
        .path()
        .components()
        .nth(1)
        .map(|c| c.as_os_str().to_string_lossy().into_owned());
    assert_eq!(root_entries, Some(top.into_iter().collect()));
    for (kind, own) in namespaces {
        assert!(own, "husk-vmm shares the host's {kind} namespace");
    }
    for (limit, want) in [
        ("Max open files", "128"),
        ("Max file size", "1048576"),
        ("Max processes", "16"),
        ("Max core file size", "0"),
    ] {
        let line = limits.lines().find(|l| l.starts_with(limit)).unwrap_or("");
        assert!(
            line.split_whitespace().any(|w| w == want),
            "{limit}: {line:?}"
        );
    }
}

#[test]
fn a_forbidden_syscall_in_each_thread_kind_ends_husk_vmm_with_one_line() {
    let test = "a_forbidden_syscall_in_each_thread_kind_ends_husk_vmm_with_one_line";
    if !common::kvm_available(test) {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let disk = dir.path().join("disk.img");
    std::fs::write(&disk, vec![0u8; 4096]).expect("disk");
    let disk = disk.display().to_string();
    let cases: [(&str, &str, &[&str]); 4] = [
        ("main", HALT, &["--timeout", "20"]),
        ("vcpu", HALT, &["--timeout", "20"]),
        ("spawner", HALT, &["--timeout", "20"]),
        // The worker starts when the guest's driver activates the disk.
        ("block", BLK, &["--disk", &disk, "--timeout", "20"]),
    ];
    for (kind, guest, flags) in cases {
        let mut args = vec!["--seccomp-selftest", kind];
        args.extend_from_slice(flags);
        let (out, _) = boot_tiny(guest, &args, LIMIT);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(SECCOMP_EXIT), "{kind}: {stderr}");
        let want = format!("husk-vmm: seccomp: the {kind} thread (tid ");
        assert!(stderr.starts_with(&want), "{kind}: {stderr}");
        assert!(
            stderr.ends_with("made a forbidden syscall: 63 (uname); stopping the VM\n"),
            "{kind}: {stderr}"
        );
        assert_eq!(stderr.lines().count(), 1, "{kind}: {stderr}");
    }
}

#[test]
fn log_mode_lets_a_forbidden_syscall_through_and_off_installs_nothing() {
    let test = "log_mode_lets_a_forbidden_syscall_through_and_off_installs_nothing";
    if !common::kvm_available(test) {
        return;
    }
    for mode in ["log", "off"] {
        let (out, _) = boot_tiny(
            MARKER,
            &["--seccomp", mode, "--seccomp-selftest", "vcpu"],
            LIMIT,
        );
        assert!(
            out.status.success(),
            "{mode}: {:?} {}",
            out.status,
            text(&out.stderr)
        );
        assert_eq!(text(&out.stdout), "HUSK-TINY-OK\n", "{mode}");
    }
}

#[test]
fn an_unusable_jail_is_refused_with_one_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = jail_config(dir.path(), HALT, "");
    let text_cfg = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(
        &cfg,
        text_cfg.replace(&format!("\"uid\":{JAIL_ID}"), "\"uid\":0"),
    )
    .unwrap();
    let (out, _) = common::husk_vmm(&["--config", &cfg.display().to_string()], LIMIT);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text(&out.stderr),
        "husk-vmm: jail: the jail's uid and gid must not be 0\n"
    );
}
