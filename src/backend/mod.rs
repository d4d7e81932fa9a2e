//! The VM-backend seam: describe a microVM once ([`VmSpec`]), start it on whichever backend
//! the host can run ([`VmBackend`]), and drive it through a [`VmHandle`].
//!
//! Two backends sit behind the seam:
//! - [`husk_vmm::HuskVmmBackend`]: husk's own VMM, one `husk-vmm` process per VM, for hosts
//!   whose KVM runs a stock Linux guest;
//! - [`qemu::QemuBackend`]: QEMU's `microvm` machine (KVM where usable, TCG elsewhere), with
//!   the agent's channel through a virtio-serial port and `husk-agent-mux`, whose host side
//!   speaks the same unix-socket protocol.
//!
//! Nothing above this module may know which one runs: both take the same spec, give the guest
//! the same devices, and expose vsock as Firecracker's hybrid unix socket at
//! [`VsockSpec::uds_path`]. Nor which files a backend adds beside that socket and the console
//! log: [`vsock_socket_path`], [`console_log_path`] and [`remove_sockets`] know them.

pub mod agent_mux;
mod child;
mod confined;
pub mod console_cap;
pub mod host;
pub mod husk_vmm;
mod kind;
pub mod layer_disk;
pub mod listening;
mod paths;
mod process_vm;
pub mod qemu;
mod qmp;
pub mod template;
pub mod tsc;
pub mod virtiofsd;

use std::io;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::Duration;

pub use husk_vmm::HuskVmmBackend;
pub use kind::{BackendKind, ParseBackendKindError, VMM_ENV};
pub use paths::{console_log_path, remove_sockets, vsock_socket_path, MAX_SOCKET_PATH};
pub use qemu::QemuBackend;

/// One microVM, described independently of the backend that runs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmSpec {
    /// The guest kernel. The QEMU backend boots an ELF `vmlinux` through its PVH note (or a
    /// bzImage); husk-vmm takes either.
    pub kernel: PathBuf,
    pub initramfs: Option<PathBuf>,
    /// Kernel command-line arguments beyond what the backend needs to boot (console, reboot
    /// behaviour and virtio-mmio devices are the backend's job).
    pub cmdline: Vec<String>,
    pub vcpus: u8,
    pub memory_mib: u32,
    /// The image layers as one read-only disk, attached before `disks`.
    pub layer_disk: Option<LayerDiskSpec>,
    /// virtio-blk disks, in the order the guest sees them after the layer disk.
    pub disks: Vec<DiskSpec>,
    pub vsock: Option<VsockSpec>,
    /// Where the guest's serial console goes (truncated at start). The backend's own
    /// diagnostics are appended to the same file, so one file explains a failed boot.
    pub console_log: PathBuf,
    /// Host directories shared through virtio-fs, one virtiofsd each; the guest mounts them
    /// by tag (`mount -t virtiofs TAG DIR`).
    pub shared_dirs: Vec<SharedDirSpec>,
    /// virtio-net NICs, each on a host TAP device, in the order the guest probes them.
    pub taps: Vec<TapSpec>,
    /// A cgroup (v2, an absolute path under the cgroup root) the VMM's own cgroup goes
    /// under instead of husk's: a Kubernetes pod's, so that the kubelet counts the VM
    /// against the pod. `None`: husk's (`/husk/vm-<uid>`).
    pub cgroup_parent: Option<PathBuf>,
    /// The VM may start from a VM template instead of booting ([`template`]; QEMU backend
    /// only): its guest is husk's agent, which takes the `Restored` request a clone needs.
    pub template: bool,
}

/// Image layers (filesystem images, bottom first) that the guest sees as the partitions of one
/// read-only GPT disk: partition N holds layer N-1. One virtio-mmio slot whatever the layer
/// count (up to [`MAX_LAYERS`]); nothing is copied, each layer file is shared by every VM that
/// uses it. husk-vmm serves it in-process, QEMU through `husk-layer-disk` (an NBD export).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerDiskSpec {
    pub layers: Vec<PathBuf>,
    /// virtio-blk serial, how the agent finds the disk.
    pub serial: String,
}

/// The most layers a layer disk holds (OCI's limit).
pub const MAX_LAYERS: usize = crate::vmm::config::MAX_LAYERS;

/// A raw disk image the guest sees as a virtio-blk device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskSpec {
    pub path: PathBuf,
    pub read_only: bool,
    /// virtio-blk serial (at most 20 bytes), how the agent finds a disk by name in
    /// `/sys/block/*/serial`.
    pub serial: Option<String>,
}

/// The guest's vsock device and the host socket standing for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VsockSpec {
    /// The guest's context id (3 or more).
    pub cid: u32,
    /// The hybrid socket: connect and write `CONNECT <port>\n` to reach a guest port. Created
    /// by the backend, removed when the VM's handle is done with it.
    pub uds_path: PathBuf,
}

/// A host directory the guest sees live through virtio-fs, and the tag it mounts it by.
/// `read_only` is enforced by the daemon (`--readonly`), not only by the guest's mount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedDirSpec {
    pub host_path: PathBuf,
    pub tag: String,
    pub read_only: bool,
    /// How much the guest may cache; see [`ShareCache`].
    pub cache: ShareCache,
}

/// How much of a share the guest caches (virtiofsd's `--cache`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ShareCache {
    /// Nothing: every lookup, stat and read goes to the host, so a file the host just
    /// changed is seen whole by the next read. For volumes (`-v`, /etc/hosts, ...), which the
    /// host edits under a running container. Measured: with `auto`, a file the host grew was
    /// read back truncated to its old size for up to the 1 s attribute timeout.
    #[default]
    Never,
    /// Close-to-open data caching with 1 s attribute timeouts: for a rootfs directory, which
    /// nothing on the host changes while the container runs, and which is read (exec'd,
    /// mmap'd) far more than a volume.
    Auto,
}

impl SharedDirSpec {
    /// A volume the host may change at any time (cache nothing).
    pub fn volume(host_path: impl Into<PathBuf>, tag: impl Into<String>, read_only: bool) -> Self {
        SharedDirSpec {
            host_path: host_path.into(),
            tag: tag.into(),
            read_only,
            cache: ShareCache::Never,
        }
    }

    /// A container rootfs directory (cached: the host leaves it alone while the VM runs).
    pub fn rootfs(host_path: impl Into<PathBuf>, tag: impl Into<String>, read_only: bool) -> Self {
        SharedDirSpec {
            cache: ShareCache::Auto,
            ..SharedDirSpec::volume(host_path, tag, read_only)
        }
    }
}

/// A virtio-net NIC: the host TAP device behind it and the guest's MAC address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TapSpec {
    /// The TAP's name in the VMM's network namespace (1 to 15 bytes of `[A-Za-z0-9_.-]`).
    pub tap_name: String,
    pub mac: [u8; 6],
    /// A TAP already opened (`TUNSETIFF` done) by the caller, for a TAP that lives in another
    /// network namespace than the VMM's (an engine's netns): the VMM inherits this fd instead
    /// of opening `tap_name`.
    pub fd: Option<TapFd>,
}

/// An open TAP queue fd, shared so a [`VmSpec`] stays cheap to clone; the VMM gets a copy.
#[derive(Debug, Clone)]
pub struct TapFd(pub std::sync::Arc<std::os::fd::OwnedFd>);

impl TapSpec {
    /// A TAP the VMM opens by name.
    pub fn new(tap_name: impl Into<String>, mac: [u8; 6]) -> Self {
        TapSpec {
            tap_name: tap_name.into(),
            mac,
            fd: None,
        }
    }
}

impl PartialEq for TapFd {
    fn eq(&self, other: &Self) -> bool {
        use std::os::fd::AsRawFd;
        self.0.as_raw_fd() == other.0.as_raw_fd()
    }
}
impl Eq for TapFd {}

/// Longest interface name (`IFNAMSIZ` less the NUL).
pub const MAX_IFNAME_LEN: usize = 15;

/// Whether `name` can be a Linux interface name that every VMM command line carries as is.
pub fn valid_ifname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_IFNAME_LEN
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// Longest virtio-blk serial the device can carry (`VIRTIO_BLK_ID_BYTES`).
pub const MAX_DISK_SERIAL_LEN: usize = 20;

impl VmSpec {
    /// A spec with one vCPU, 256 MiB, no disks, no vsock.
    pub fn new(kernel: impl Into<PathBuf>, console_log: impl Into<PathBuf>) -> Self {
        VmSpec {
            kernel: kernel.into(),
            initramfs: None,
            cmdline: Vec::new(),
            vcpus: 1,
            memory_mib: 256,
            layer_disk: None,
            disks: Vec::new(),
            vsock: None,
            console_log: console_log.into(),
            shared_dirs: Vec::new(),
            taps: Vec::new(),
            cgroup_parent: None,
            template: false,
        }
    }

    /// Checks what every backend needs before anything is spawned, so a bad spec fails with
    /// the field at fault rather than as a backend exit status.
    pub fn validate(&self) -> Result<(), Error> {
        let must_exist = |what: &'static str, p: &Path| {
            if p.is_file() {
                Ok(())
            } else {
                Err(Error::MissingFile {
                    what,
                    path: p.to_path_buf(),
                })
            }
        };
        must_exist("kernel", &self.kernel)?;
        if let Some(i) = &self.initramfs {
            must_exist("initramfs", i)?;
        }
        let check_serial = |s: &str, of: &Path| {
            if s.is_empty()
                || s.len() > MAX_DISK_SERIAL_LEN
                || !s
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                return Err(Error::InvalidSpec(format!(
                    "disk serial {s:?} of {}: use 1 to {MAX_DISK_SERIAL_LEN} characters \
                     from [A-Za-z0-9_-]",
                    of.display()
                )));
            }
            Ok(())
        };
        if let Some(l) = &self.layer_disk {
            if l.layers.is_empty() || l.layers.len() > MAX_LAYERS {
                return Err(Error::InvalidSpec(format!(
                    "an image of {} layers; husk runs 1 to {MAX_LAYERS}",
                    l.layers.len()
                )));
            }
            for p in &l.layers {
                must_exist("layer image", p)?;
            }
            check_serial(&l.serial, Path::new("the layer disk"))?;
        }
        for d in &self.disks {
            must_exist("disk image", &d.path)?;
            if let Some(s) = &d.serial {
                check_serial(s, &d.path)?;
            }
            // Both backends use ',' as an option separator in the disk argument.
            if d.path.to_string_lossy().contains(',') {
                return Err(Error::InvalidSpec(format!(
                    "disk path {} contains ',', which VMM command lines cannot carry",
                    d.path.display()
                )));
            }
        }
        if self.vcpus == 0 {
            return Err(Error::InvalidSpec("vcpus must be at least 1".into()));
        }
        if self.memory_mib < 32 {
            return Err(Error::InvalidSpec(format!(
                "memory of {} MiB is too small for a Linux guest (at least 32)",
                self.memory_mib
            )));
        }
        if let Some(v) = &self.vsock {
            if v.cid < 3 {
                return Err(Error::InvalidSpec(format!(
                    "vsock cid {} is reserved (0-2); use 3 or more",
                    v.cid
                )));
            }
            if v.uds_path.to_string_lossy().contains(',') {
                return Err(Error::InvalidSpec(format!(
                    "vsock socket path {} contains ',', which VMM command lines cannot carry",
                    v.uds_path.display()
                )));
            }
        }
        if let Some(bad) = self
            .cmdline
            .iter()
            .find(|a| a.is_empty() || a.contains(char::is_whitespace))
        {
            return Err(Error::InvalidSpec(format!(
                "kernel argument {bad:?} is empty or contains whitespace; pass one argument per entry"
            )));
        }
        for (i, d) in self.shared_dirs.iter().enumerate() {
            virtiofsd::validate(d)?;
            // sockaddr_un holds 107 bytes of path; bind() would fail later with less to say.
            let sock = virtiofsd::socket_for(&self.console_log, i);
            if sock.as_os_str().len() > 107 {
                return Err(Error::InvalidSpec(format!(
                    "virtiofsd socket {} (beside the console log) is longer than a unix \
                     socket path may be (107 bytes); use a shorter VM directory",
                    sock.display()
                )));
            }
            if self.shared_dirs[..i].iter().any(|o| o.tag == d.tag) {
                return Err(Error::InvalidSpec(format!(
                    "shared directory tag {:?} is used twice; give each share its own tag",
                    d.tag
                )));
            }
        }
        for (i, t) in self.taps.iter().enumerate() {
            if !valid_ifname(&t.tap_name) {
                return Err(Error::InvalidSpec(format!(
                    "TAP name {:?}: use 1 to {MAX_IFNAME_LEN} characters from [A-Za-z0-9_.-]",
                    t.tap_name
                )));
            }
            if t.mac[0] & 1 != 0 || t.mac == [0; 6] {
                return Err(Error::InvalidSpec(format!(
                    "MAC of TAP {}: not a unicast address",
                    t.tap_name
                )));
            }
            if self.taps[..i]
                .iter()
                .any(|o| o.tap_name == t.tap_name || o.mac == t.mac)
            {
                return Err(Error::InvalidSpec(format!(
                    "TAP {} or its MAC is used twice; give each NIC its own",
                    t.tap_name
                )));
            }
        }
        Ok(())
    }
}

/// Starts microVMs.
pub trait VmBackend: Send + Sync {
    /// Which backend this is, for logs and test output.
    fn name(&self) -> &'static str;

    /// Starts the VM described by `spec` and returns as soon as it is running (not booted).
    fn start(&self, spec: &VmSpec) -> Result<Box<dyn VmHandle>, Error>;
}

/// A running (or finished) microVM. Every method takes `&self`, so one thread can `wait`
/// while another `kill`s. Dropping the handle kills the VM if it still runs and removes what
/// the backend created (helper processes, sockets).
pub trait VmHandle: Send + Sync {
    /// The pid of the process that owns the VM (husk-vmm or QEMU).
    fn pid(&self) -> u32;

    /// Blocks until the VM ends; then cleans up helpers and sockets. A guest power-off
    /// (reset) is a success. Repeated calls return the same status.
    fn wait(&self) -> Result<ExitStatus, Error>;

    /// The exit status if the VM has ended (cleaning up as `wait` does), else `None`.
    fn try_wait(&self) -> Result<Option<ExitStatus>, Error>;

    /// Ends the VM now (SIGKILL) and cleans up; a no-op once it has ended.
    fn kill(&self) -> Result<(), Error>;

    fn console_log(&self) -> PathBuf;

    /// The hybrid vsock socket, if the VM has a vsock device.
    fn vsock_uds(&self) -> Option<PathBuf>;

    /// Blocks until the host may connect through [`vsock_uds`](Self::vsock_uds), or
    /// `timeout` passes: both backends wait for the guest's ready line on the console, and
    /// fail at once when the VMM exits first. Both take connections at any time (husk-vmm's
    /// vsock device; husk-agent-mux queues a stream until the guest's port opens), so the
    /// wait only turns a VMM that died into an error with its status and last console line.
    fn wait_vsock_ready(&self, timeout: Duration) -> Result<(), Error>;
}

/// Picks the backend for `kind`, resolving `Auto` by probing the host. An explicit `husk`
/// on a host where `husk-vmm --probe` says no (PVM, no hardware virtualisation) fails here
/// with husk-vmm's reason, instead of as a guest that never comes up.
pub fn backend(kind: BackendKind) -> Result<Box<dyn VmBackend>, Error> {
    Ok(match kind.resolve() {
        BackendKind::Husk => {
            let b = HuskVmmBackend::from_env()?;
            let probe = host::husk_vmm_usable();
            if !probe.usable {
                return Err(Error::Unsupported(format!(
                    "the husk-vmm backend was asked for, but {}; --vmm qemu, HUSK_VMM=qemu \
                     or auto pick QEMU",
                    probe.reason
                )));
            }
            Box::new(b)
        }
        BackendKind::Qemu => Box::new(QemuBackend::from_env()?),
        BackendKind::Auto => unreachable!("resolve never returns Auto"),
    })
}

/// Why a VM could not be started or managed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{what} {path} not found")]
    MissingFile { what: &'static str, path: PathBuf },
    #[error("invalid VM spec: {0}")]
    InvalidSpec(String),
    #[error("{0}")]
    Unsupported(String),
    /// A program the backend runs is not installed.
    #[error("{program} not found: {hint}")]
    MissingProgram { program: String, hint: String },
    #[error("cannot start {program}: {source}")]
    Spawn { program: String, source: io::Error },
    /// The VM's cgroup could not be joined.
    #[error(transparent)]
    Cgroup(#[from] crate::confine::cgroup::Error),
    #[error("{program} exited ({status}) before it was ready; see {log}")]
    HelperDied {
        program: String,
        status: ExitStatus,
        log: PathBuf,
    },
    /// A helper (a vhost-user daemon) died while the VM ran, and the VM was stopped for it.
    #[error(
        "{program} (pid {pid}) exited ({status}) while the VM ran, so the VM was stopped; see {log}"
    )]
    HelperExited {
        program: String,
        pid: u32,
        status: ExitStatus,
        log: PathBuf,
    },
    #[error("{program} did not create {path} within {secs} s; see {log}")]
    HelperTimeout {
        program: String,
        path: PathBuf,
        secs: u64,
        log: PathBuf,
    },
    #[error("the guest did not come up within {secs} s (no {marker:?} on the console); see {log}")]
    GuestNotUp {
        secs: u64,
        marker: &'static str,
        log: PathBuf,
    },
    #[error("the VM exited ({status}) before the guest came up{}; see {log}", last_words(.last_line))]
    ExitedBeforeReady {
        status: ExitStatus,
        log: PathBuf,
        /// The console log's last non-empty line (a VMM's one-line error lands there).
        last_line: Option<String>,
    },
    /// The VM as husk-vmm would take it fails husk-vmm's own checks.
    #[error("husk-vmm cannot run this VM: {0}")]
    VmmConfig(#[source] crate::vmm::config::ConfigError),
    #[error("cannot prepare {path}: {source}")]
    File { path: PathBuf, source: io::Error },
    #[error("{op} on VM process {pid} failed: {source}")]
    Process {
        op: &'static str,
        pid: u32,
        source: io::Error,
    },
}

#[cfg(test)]
mod qemu_args_tests;
#[cfg(test)]
mod tests;

fn last_words(line: &Option<String>) -> String {
    line.as_ref()
        .map(|l| format!(": {l:?}"))
        .unwrap_or_default()
}
