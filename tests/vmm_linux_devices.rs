//! The real guest kernel using husk's virtio devices: mount an ext4 and an erofs disk and
//! read a known file, write + sync and find the bytes in the host image, fail to write a
//! read-only disk, and echo over vsock both ways.
//!
//! The guest side is a small test initramfs (scripts/make-test-initramfs.sh: busybox-static,
//! a static `vsock-echo`, and scripts/test-initramfs/init), which prints one `DEVTEST …`
//! line per check and resets the VM. Disks come from scripts/make-test-disks.sh; /init
//! tells them apart by the /role file on each, so attach order does not matter.
//!
//! - `linux_devices_under_husk_vmm` runs where `husk::vmm::probe` says KVM runs stock Linux
//!   guests, and elsewhere (PVM hosts) inside the nested-KVM rig (`tests/common/rig.rs`).
//! - `linux_devices_under_qemu_tcg` runs the same initramfs and disks under QEMU microvm
//!   (software CPU) everywhere, so the guest script, the images and the kernel's drivers are
//!   proven here too. QEMU has no userspace virtio-vsock (only vhost-vsock, which needs the
//!   host's /dev/vhost-vsock and would not test husk's device anyway), so its vsock part is
//!   reported NOT RUN.

#![deny(clippy::undocumented_unsafe_blocks)]

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const TIMEOUT: Duration = Duration::from_secs(180);
const HOST_PORT: u32 = 5001;
const GUEST_PORT: u32 = 5000;

/// Builds the test initramfs and the disks in `dir` with the repo's scripts.
fn prepare(dir: &Path) -> (PathBuf, PathBuf) {
    let root = common::repo_root();
    let initramfs = dir.join("test-initramfs.cpio.gz");
    for (script, arg) in [
        ("scripts/make-test-initramfs.sh", &initramfs),
        ("scripts/make-test-disks.sh", &dir.to_path_buf()),
    ] {
        let out = Command::new(root.join(script))
            .arg(arg)
            .output()
            .expect("run script");
        assert!(
            out.status.success(),
            "{script} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    (initramfs, dir.to_path_buf())
}

/// A running VM's console, line by line, with everything seen so far kept for messages.
struct Console {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
    deadline: Instant,
}

impl Console {
    fn spawn(mut cmd: Command) -> Self {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn VMM");
        let (tx, lines) = mpsc::channel();
        for pipe in [
            Box::new(child.stdout.take().expect("stdout")) as Box<dyn Read + Send>,
            Box::new(child.stderr.take().expect("stderr")),
        ] {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    let _ = tx.send(line);
                }
            });
        }
        Self {
            child,
            lines,
            seen: Vec::new(),
            deadline: Instant::now() + TIMEOUT,
        }
    }

    /// Waits for a line containing `want`; None at EOF or the deadline.
    fn wait_for(&mut self, want: &str) -> Option<String> {
        loop {
            let left = self.deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    self.seen.push(l.clone());
                    if l.contains(want) {
                        return Some(l);
                    }
                }
                Err(_) => return None,
            }
        }
    }

    /// Reads to the end and returns the exit status (killing the VMM at the deadline).
    fn finish(&mut self) -> Option<ExitStatus> {
        while self.wait_for("\u{0}never").is_some() {}
        loop {
            if let Some(s) = self.child.try_wait().expect("wait") {
                return Some(s);
            }
            if Instant::now() > self.deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn text(&self) -> String {
        format!(
            "\n--- console ---\n{}\n---------------",
            self.seen.join("\n")
        )
    }

    /// The rest of the first `DEVTEST <key>[ …]` line, trimmed.
    fn result(&self, key: &str) -> Option<&str> {
        let p = format!("DEVTEST {key}");
        self.seen.iter().find_map(|l| {
            let rest = &l[l.find(&p)? + p.len()..];
            (rest.is_empty() || rest.starts_with(' ')).then(|| rest.trim())
        })
    }
}

impl Drop for Console {
    /// A failed assertion must not leave the VM running.
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The disk checks, the same under every VMM.
fn assert_disks(con: &Console, images: &Path, token: &str) {
    let ctx = con.text();
    let r = |k: &str| con.result(k).unwrap_or("<missing>").trim().to_string();
    assert!(r("disk rw").ends_with("ro=0"), "rw disk writable{ctx}");
    assert!(
        r("disk ro").ends_with("ro=1"),
        "ro disk read-only in the guest{ctx}"
    );
    assert!(
        r("disk erofs").ends_with("ro=1"),
        "erofs disk read-only{ctx}"
    );
    assert_eq!(r("ext4-read"), "hello from rw", "{ctx}");
    assert_eq!(r("ext4-write"), "synced", "{ctx}");
    assert_eq!(r("ext4-umount"), "ok", "{ctx}");
    assert_eq!(r("erofs-read"), "hello from erofs", "{ctx}");
    assert_eq!(r("ro-raw-write"), "refused", "{ctx}");
    assert_eq!(r("ro-fs-write"), "refused", "{ctx}");
    assert_eq!(r("ro-read"), "hello from ro", "{ctx}");
    let needle = format!("husk-written-{token}\n");
    let img = std::fs::read(images.join("rw.ext4")).expect("read rw.ext4");
    assert!(
        img.windows(needle.len()).any(|w| w == needle.as_bytes()),
        "the guest's synced bytes {needle:?} are not in the host image{ctx}"
    );
}

fn token() -> String {
    format!(
        "{}x{}",
        std::process::id(),
        Instant::now().elapsed().as_nanos()
    )
}

#[test]
fn linux_devices_under_husk_vmm() {
    let name = "linux_devices_under_husk_vmm";
    // Directly where the host's KVM boots Linux, else in the nested-KVM rig.
    if !common::rig::on_linux_kvm(name, Duration::from_secs(600)) {
        return;
    }
    let Some(kernel) = common::kernel(name) else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let (initramfs, images) = prepare(dir.path());
    let before_ro = std::fs::read(images.join("ro.ext4")).expect("read ro.ext4");
    let before_erofs = std::fs::read(images.join("layer.erofs")).expect("read layer.erofs");
    let token = token();
    let uds = dir.path().join("v.sock");

    // guest → host: an echo server on <uds>_5001, where husk-vmm forwards guest port 5001.
    let host_listener = UnixListener::bind(format!("{}_{HOST_PORT}", uds.display())).expect("bind");
    let echo = std::thread::spawn(move || {
        let (mut s, _) = host_listener.accept().expect("accept guest connection");
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).expect("read from guest");
        s.write_all(&buf).expect("echo to guest");
        buf
    });

    let mut cmd = Command::new(common::bin("husk-vmm"));
    cmd.arg("--kernel")
        .arg(&kernel)
        .arg("--initramfs")
        .arg(&initramfs);
    cmd.args(["--memory", "256", "--timeout", "120"]);
    cmd.args([
        "--append",
        &format!("quiet husk.token={token} husk.vsock=1"),
    ]);
    cmd.arg("--disk").arg(images.join("rw.ext4"));
    cmd.arg("--disk")
        .arg(format!("{},ro", images.join("layer.erofs").display()));
    cmd.arg("--disk")
        .arg(format!("{},ro", images.join("ro.ext4").display()));
    cmd.arg("--vsock").arg(format!("3,{}", uds.display()));
    let mut con = Console::spawn(cmd);

    // host → guest: CONNECT to the guest's listener once it is up.
    assert!(
        con.wait_for("DEVTEST vsock-listening").is_some(),
        "guest never listened{}",
        con.text()
    );
    // husk-vmm's seccomp filters are on by default: every thread runs under one, the device
    // workers (three disks and vsock, all active by now) and the spawner included.
    let threads = thread_seccomp(con.child.id());
    let names: Vec<&str> = threads.iter().map(|(n, _)| n.as_str()).collect();
    assert!(
        threads.iter().all(|(_, mode)| mode == "2"),
        "{threads:?}{}",
        con.text()
    );
    for want in ["husk-vmm", "husk-spawner", "vcpu0", "husk-vsock-3"] {
        assert!(names.contains(&want), "no {want} thread in {names:?}");
    }
    assert!(names.len() >= 4 + 3, "{names:?}");
    let mut s = UnixStream::connect(&uds).expect("connect to the vsock uds");
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    s.write_all(format!("CONNECT {GUEST_PORT}\n").as_bytes())
        .expect("CONNECT");
    let mut ok = String::new();
    BufReader::new(&mut s)
        .read_line(&mut ok)
        .expect("read OK line");
    assert!(
        ok.starts_with("OK "),
        "CONNECT answered {ok:?}{}",
        con.text()
    );
    let msg = format!("host-{token}");
    s.write_all(msg.as_bytes()).expect("send to guest");
    s.shutdown(std::net::Shutdown::Write).expect("shutdown");
    let mut back = String::new();
    s.read_to_string(&mut back).expect("read echo");
    assert_eq!(back, msg, "host → guest echo{}", con.text());

    let status = con.finish();
    let ctx = con.text();
    assert_eq!(
        con.result("vsock-host-echo").map(str::trim),
        Some("served"),
        "{ctx}"
    );
    let guest_msg = format!("guest-{token}");
    assert_eq!(
        con.result("vsock-guest-echo").map(str::trim),
        Some(guest_msg.as_str()),
        "{ctx}"
    );
    assert_eq!(echo.join().expect("echo thread"), guest_msg.as_bytes());
    assert_disks(&con, &images, &token);
    assert!(
        std::fs::read(images.join("ro.ext4")).expect("ro.ext4") == before_ro,
        "ro.ext4 changed"
    );
    assert!(
        std::fs::read(images.join("layer.erofs")).expect("layer.erofs") == before_erofs,
        "layer.erofs changed"
    );
    assert!(con.result("done").is_some(), "{ctx}");
    assert!(
        matches!(status, Some(s) if s.success()),
        "husk-vmm status {status:?}{ctx}"
    );
}

#[test]
fn linux_devices_under_qemu_tcg() {
    let name = "linux_devices_under_qemu_tcg";
    let Some(kernel) = common::bzimage(name) else {
        return;
    };
    let qemu = Command::new("qemu-system-x86_64").arg("--version").output();
    if !qemu.is_ok_and(|o| o.status.success()) {
        common::not_run(
            name,
            "qemu-system-x86_64 not found (apt-get install qemu-system-x86)",
            true,
        );
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let (initramfs, images) = prepare(dir.path());
    let before_ro = std::fs::read(images.join("ro.ext4")).expect("read ro.ext4");
    let token = token();
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args(["-M", "microvm,acpi=off", "-accel", "tcg", "-m", "256"])
        .args([
            "-nodefaults",
            "-no-user-config",
            "-nographic",
            "-serial",
            "stdio",
        ])
        .args(["-device", "i8042", "-no-reboot"])
        .arg("-kernel")
        .arg(&kernel)
        .arg("-initrd")
        .arg(&initramfs)
        .arg("-append")
        .arg(format!(
            "console=ttyS0 reboot=k panic=-1 quiet husk.token={token}"
        ));
    for (i, (file, ro)) in [("rw.ext4", false), ("layer.erofs", true), ("ro.ext4", true)]
        .iter()
        .enumerate()
    {
        let ro = if *ro { ",readonly=on" } else { "" };
        cmd.arg("-drive")
            .arg(format!(
                "if=none,id=d{i},format=raw,file={}{ro}",
                images.join(file).display()
            ))
            .arg("-device")
            .arg(format!("virtio-blk-device,drive=d{i}"));
    }
    let mut con = Console::spawn(cmd);
    let status = con.finish();
    let ctx = con.text();
    assert_disks(&con, &images, &token);
    assert!(
        std::fs::read(images.join("ro.ext4")).expect("ro.ext4") == before_ro,
        "ro.ext4 changed"
    );
    assert!(con.result("done").is_some(), "{ctx}");
    assert!(
        matches!(status, Some(s) if s.success()),
        "QEMU status {status:?}{ctx}"
    );
    common::not_run(
        "linux_devices_under_qemu_tcg (vsock echo)",
        "QEMU has no userspace virtio-vsock; husk's vsock is exercised by linux_devices_under_husk_vmm",
        false,
    );
}

/// `(name, Seccomp mode)` of each thread of `pid` but KVM's own kernel workers.
fn thread_seccomp(pid: u32) -> Vec<(String, String)> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("task dir");
    tasks
        .flatten()
        .filter_map(|t| {
            let name = std::fs::read_to_string(t.path().join("comm")).ok()?;
            let status = std::fs::read_to_string(t.path().join("status")).ok()?;
            let mode = status
                .lines()
                .find_map(|l| l.strip_prefix("Seccomp:"))?
                .trim()
                .to_string();
            Some((name.trim().to_string(), mode))
        })
        .filter(|(name, _)| !name.starts_with("kvm-"))
        .collect()
}

/// The vsock worker and the virtio-fs vhost-user frontend each run under their own filter:
/// the test hook's forbidden syscall there, made as the Linux driver activates the device,
/// ends husk-vmm with one line naming that thread. (The other kinds are proven with tiny
/// guests: tests/vmm_confinement.rs, tests/tiny_guest_net.rs.)
#[test]
fn a_forbidden_syscall_in_the_vsock_and_fs_threads_ends_husk_vmm() {
    let name = "a_forbidden_syscall_in_the_vsock_and_fs_threads_ends_husk_vmm";
    if !common::rig::on_linux_kvm(name, Duration::from_secs(600)) {
        return;
    }
    let (Some(kernel), Some(initramfs)) = (common::kernel(name), common::initramfs(name)) else {
        return;
    };
    let virtiofsd = match husk::backend::virtiofsd::find_binary() {
        Ok(b) => b,
        Err(e) => {
            common::not_run(name, &format!("no virtiofsd: {e}"), true);
            return;
        }
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let fs_sock = dir.path().join("fs.sock");
    let shared = dir.path().join("shared");
    std::fs::create_dir(&shared).expect("shared dir");
    let mut daemon = Command::new(&virtiofsd)
        .arg("--socket-path")
        .arg(&fs_sock)
        .arg("--shared-dir")
        .arg(&shared)
        .args(["--sandbox", "none"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start virtiofsd");
    let up = common::poll_until(Duration::from_secs(10), || fs_sock.exists().then_some(()));
    assert!(up.is_some(), "virtiofsd never made {}", fs_sock.display());
    let uds = dir.path().join("v.sock");
    let cases = [
        (
            "vsock",
            vec!["--vsock".to_string(), format!("3,{}", uds.display())],
        ),
        (
            "fs",
            vec!["--fs".to_string(), format!("vol,{}", fs_sock.display())],
        ),
    ];
    for (kind, flags) in cases {
        let mut cmd = Command::new(common::bin("husk-vmm"));
        cmd.arg("--kernel")
            .arg(&kernel)
            .arg("--initramfs")
            .arg(&initramfs);
        cmd.args(["--memory", "256", "--timeout", "120", "--append", "quiet"]);
        cmd.args(&flags).args(["--seccomp-selftest", kind]);
        let mut con = Console::spawn(cmd);
        let status = con.finish();
        let ctx = con.text();
        assert_eq!(status.and_then(|s| s.code()), Some(159), "{kind}{ctx}");
        let want = format!("husk-vmm: seccomp: the {kind} thread (tid ");
        let line = con.seen.iter().find(|l| l.starts_with(&want));
        assert!(
            line.is_some_and(
                |l| l.ends_with("made a forbidden syscall: 63 (uname); stopping the VM")
            ),
            "{kind}{ctx}"
        );
    }
    let _ = daemon.kill();
    let _ = daemon.wait();
}
