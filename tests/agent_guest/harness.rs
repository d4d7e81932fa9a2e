//! What the guest tests share: booting a VM on the QEMU backend with the agent initramfs and
//! the busybox rootfs (erofs layer + ext4 scratch disk, plus any disks a test adds), and
//! small builders for container and process specs.
#![allow(dead_code)]

use std::io::Read;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use husk::agent::{attach_stream, copy_to_stream, AgentClient};
use husk::backend::{BackendKind, DiskSpec, VmBackend, VmHandle, VmSpec, VsockSpec};
use husk_protocol::{
    ContainerSpec, DiskRef, FsType, LayerDisk, MountSpec, NamespaceKind, ProcessSpec, RootfsSpec,
    StreamHello, StreamKind, User, PROTOCOL_VERSION,
};

use crate::common;

pub const T: Duration = Duration::from_secs(120);

pub struct Guest {
    pub vm: Box<dyn VmHandle>,
    pub client: AgentClient,
    pub uds: PathBuf,
    _dir: tempfile::TempDir,
}

pub fn busybox_rootfs(test: &str) -> Option<PathBuf> {
    let script = common::repo_root().join("scripts/make-busybox-rootfs.sh");
    match Command::new(&script).output() {
        Ok(o) if o.status.success() => {
            let out = String::from_utf8_lossy(&o.stdout);
            Some(PathBuf::from(out.lines().last().unwrap_or_default()))
        }
        Ok(o) => {
            common::not_run(
                test,
                &format!(
                    "{} failed: {}",
                    script.display(),
                    String::from_utf8_lossy(&o.stderr)
                ),
                true,
            );
            None
        }
        Err(e) => {
            common::not_run(test, &format!("cannot run {}: {e}", script.display()), true);
            None
        }
    }
}

pub fn tail(p: &Path) -> String {
    let s = std::fs::read_to_string(p).unwrap_or_default();
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// A guest VM ready to start on the QEMU backend: kernel, agent initramfs, the busybox layer
/// (serial `layer0`), an ext4 scratch disk (`scratch`), then `extra`; vsock at `uds`.
pub struct Planned {
    pub backend: Box<dyn VmBackend>,
    pub spec: VmSpec,
    pub uds: PathBuf,
    pub dir: tempfile::TempDir,
}

/// A fresh 64 MiB ext4 disk image at `path`, or why not.
pub fn ext4_disk(path: &Path) -> Result<(), String> {
    let mk = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-E", "lazy_itable_init=1,lazy_journal_init=1"])
        .arg(path)
        .arg("64M")
        .output();
    match mk {
        Ok(o) if o.status.success() => Ok(()),
        other => Err(format!("mkfs.ext4 for {}: {other:?}", path.display())),
    }
}

impl Planned {
    /// None after reporting NOT RUN (no kernel, initramfs, rootfs, QEMU or mkfs.ext4).
    pub fn new(test: &str, extra: Vec<DiskSpec>) -> Option<Planned> {
        let kernel = common::kernel(test)?;
        let initramfs = common::initramfs(test)?;
        let rootfs = busybox_rootfs(test)?;
        let backend = match husk::backend::backend(BackendKind::Qemu) {
            Ok(b) => b,
            Err(e) => {
                common::not_run(test, &e.to_string(), true);
                return None;
            }
        };
        let dir = tempfile::tempdir().unwrap();
        let scratch = dir.path().join("scratch.ext4");
        if let Err(why) = ext4_disk(&scratch) {
            common::not_run(test, &why, true);
            return None;
        }
        let uds = dir.path().join("vsock.sock");
        let mut spec = VmSpec::new(kernel, dir.path().join("console.log"));
        spec.initramfs = Some(initramfs);
        spec.memory_mib = 256;
        spec.disks = vec![
            DiskSpec {
                path: rootfs,
                read_only: true,
                serial: Some("layer0".into()),
            },
            DiskSpec {
                path: scratch,
                read_only: false,
                serial: Some("scratch".into()),
            },
        ];
        spec.disks.extend(extra);
        spec.vsock = Some(VsockSpec {
            cid: 3,
            uds_path: uds.clone(),
        });
        Some(Planned {
            backend,
            spec,
            uds,
            dir,
        })
    }
}

impl Guest {
    pub fn boot(test: &str) -> Option<Guest> {
        Guest::boot_with(test, vec![])
    }

    /// Boots with `extra` disks after the busybox layer and the scratch disk.
    pub fn boot_with(test: &str, extra: Vec<DiskSpec>) -> Option<Guest> {
        Guest::boot_custom(test, extra, |_, _| {})
    }

    /// As [`Guest::boot_with`], letting `customize` change the spec (shared directories, ...)
    /// given the VM's temporary directory.
    pub fn boot_custom(
        test: &str,
        extra: Vec<DiskSpec>,
        customize: impl FnOnce(&mut VmSpec, &Path),
    ) -> Option<Guest> {
        let Planned {
            backend,
            mut spec,
            uds,
            dir,
        } = Planned::new(test, extra)?;
        customize(&mut spec, dir.path());
        let t0 = Instant::now();
        let vm = backend.start(&spec).unwrap();
        if let Err(e) = vm.wait_vsock_ready(T) {
            panic!("{test}: {e}\nconsole:\n{}", tail(&vm.console_log()));
        }
        let client = match AgentClient::connect(&uds, T) {
            Ok(c) => c,
            Err(e) => panic!(
                "{test}: agent never answered: {e}\nconsole:\n{}",
                tail(&vm.console_log())
            ),
        };
        eprintln!(
            "{test}: [{}] VM start -> agent ready (hello ok): {:.0} ms",
            backend.name(),
            t0.elapsed().as_secs_f64() * 1e3
        );
        Some(Guest {
            vm,
            client,
            uds,
            _dir: dir,
        })
    }

    pub fn console(&self) -> String {
        tail(&self.vm.console_log())
    }

    pub fn stream(&self, cid: &str, exec: Option<&str>, kind: StreamKind) -> UnixStream {
        let hello = StreamHello {
            version: PROTOCOL_VERSION,
            container_id: cid.into(),
            exec_id: exec.map(Into::into),
            kind,
        };
        attach_stream(&self.uds, hello, T)
            .unwrap_or_else(|e| panic!("attach {kind:?}: {e}\n{}", self.console()))
    }

    /// Runs an exec to completion with `input` on stdin; (code, stdout, stderr).
    pub fn exec(
        &self,
        cid: &str,
        eid: &str,
        p: ProcessSpec,
        input: Vec<u8>,
    ) -> (i32, Vec<u8>, Vec<u8>) {
        self.client
            .exec_process(cid, eid, p)
            .unwrap_or_else(|e| panic!("exec {eid}: {e}\n{}", self.console()));
        let stdin = self.stream(cid, Some(eid), StreamKind::Stdin);
        let writer = std::thread::spawn(move || copy_to_stream(&mut input.as_slice(), &stdin));
        let err_stream = self.stream(cid, Some(eid), StreamKind::Stderr);
        let errs = std::thread::spawn(move || read_all(err_stream));
        let out = read_all(self.stream(cid, Some(eid), StreamKind::Stdout));
        let err = errs.join().unwrap();
        writer.join().unwrap().unwrap();
        let st = self.client.wait(cid, Some(eid)).unwrap();
        (st.code, out, err)
    }
}

pub fn read_all(mut s: UnixStream) -> Vec<u8> {
    let mut v = Vec::new();
    s.read_to_end(&mut v).unwrap();
    v
}

pub fn process(args: &[&str]) -> ProcessSpec {
    ProcessSpec {
        args: args.iter().map(|s| s.to_string()).collect(),
        env: vec!["PATH=/usr/sbin:/usr/bin:/sbin:/bin".into()],
        cwd: "/".into(),
        user: User {
            uid: 0,
            gid: 0,
            additional_gids: vec![],
            umask: None,
        },
        terminal: false,
        console_size: None,
        rlimits: vec![],
        no_new_privileges: false,
        capabilities: None,
        oom_score_adj: None,
    }
}

pub fn mnt(dest: &str, ty: &str, src: &str, opts: &[&str]) -> MountSpec {
    MountSpec {
        destination: dest.into(),
        source: src.into(),
        fs_type: ty.into(),
        options: opts.iter().map(|s| s.to_string()).collect(),
    }
}

pub fn container(id: &str, p: ProcessSpec) -> ContainerSpec {
    let disk = |s: &str, fs| LayerDisk {
        disk: DiskRef::Serial(s.into()),
        fs_type: fs,
    };
    ContainerSpec {
        container_id: id.into(),
        rootfs: RootfsSpec::Overlay {
            layers: vec![disk("layer0", FsType::Erofs)],
            scratch: Some(disk("scratch", FsType::Ext4)),
        },
        process: p,
        hostname: Some("husk-test".into()),
        mounts: vec![
            mnt("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"]),
            mnt(
                "/dev",
                "tmpfs",
                "tmpfs",
                &["nosuid", "strictatime", "mode=755", "size=65536k"],
            ),
            mnt(
                "/dev/pts",
                "devpts",
                "devpts",
                &[
                    "nosuid",
                    "noexec",
                    "newinstance",
                    "ptmxmode=0666",
                    "mode=0620",
                    "gid=5",
                ],
            ),
            mnt(
                "/dev/shm",
                "tmpfs",
                "shm",
                &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
            ),
            mnt(
                "/dev/mqueue",
                "mqueue",
                "mqueue",
                &["nosuid", "noexec", "nodev"],
            ),
            mnt(
                "/sys",
                "sysfs",
                "sysfs",
                &["nosuid", "noexec", "nodev", "ro"],
            ),
        ],
        readonly_root: false,
        sysctl: Default::default(),
        masked_paths: vec!["/proc/kcore".into()],
        readonly_paths: vec!["/proc/sys".into()],
        namespaces: vec![
            NamespaceKind::Pid,
            NamespaceKind::Mount,
            NamespaceKind::Uts,
            NamespaceKind::Ipc,
        ],
        seccomp: None,
        network: None,
        resources: Default::default(),
    }
}

/// Reads from `s` until `want` lines arrived; the bytes and when the first one came.
pub fn read_lines(s: &mut UnixStream, want: usize) -> (String, Instant) {
    let mut buf = Vec::new();
    let mut first = None;
    let mut chunk = [0u8; 4096];
    while buf.iter().filter(|&&b| b == b'\n').count() < want {
        let n = s.read(&mut chunk).unwrap();
        assert!(
            n > 0,
            "stream ended after {:?}",
            String::from_utf8_lossy(&buf)
        );
        first.get_or_insert_with(Instant::now);
        buf.extend_from_slice(&chunk[..n]);
    }
    (String::from_utf8_lossy(&buf).into_owned(), first.unwrap())
}

pub fn s(v: &[u8]) -> String {
    String::from_utf8_lossy(v).into_owned()
}
