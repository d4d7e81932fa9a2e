//! What one microVM is made of: the settings husk-vmm takes from flags or a JSON file.
//!
//! The JSON form (`--config FILE`) has exactly the fields of [`VmmConfig`]; flags given
//! beside `--config` override the file field by field (see `cli.rs`).

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::arch::x86_64::layout;
pub use super::net_config::{MacAddr, NetConfig};
use crate::confine::jail::{self, JailConfig};
pub use crate::confine::seccomp::Mode as SeccompMode;
use crate::devices::virtio::block::backend::ID_BYTES;

/// Memory when nothing is asked for. Guest memory is mapped lazily (MAP_NORESERVE), so a
/// larger default costs address space, not RSS.
pub const DEFAULT_MEM_MIB: u32 = 256;
/// KVM's in-kernel LAPIC ids and the MP table's CPU entries are 8-bit; 254 leaves room for
/// the IOAPIC id.
pub const MAX_VCPUS: u8 = 254;
/// The longest watchdog timeout, in seconds (about 136 years): the builder turns it into a
/// `Duration`, and this keeps every accepted value far inside what one holds.
pub const MAX_TIMEOUT_SECS: f64 = u32::MAX as f64;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The jail settings are unusable.
    #[error(transparent)]
    Jail(#[from] jail::Error),
    /// The config file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The config file is not valid JSON for a VmmConfig.
    #[error("invalid config file {path}: {source}")]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
    /// The console spec is none of stdout, off, file:PATH.
    #[error("invalid console {0:?}: expected stdout, off or file:PATH")]
    Console(String),
    /// A --disk value is not PATH[,ro][,serial=ID].
    #[error("invalid disk {0:?}: expected PATH[,ro][,serial=ID]")]
    Disk(String),
    /// A disk serial that GET_ID cannot carry as given.
    #[error("invalid disk serial {serial:?} for {path}: use 1 to {ID_BYTES} printable ASCII characters without ','")]
    DiskSerial { path: PathBuf, serial: String },
    /// A --vsock value is not CID,UDS with a guest CID of at least 3.
    #[error("invalid vsock {0:?}: expected CID,UDS_PATH with CID >= 3")]
    Vsock(String),
    /// A --fs value is not TAG,SOCKET with a 1-36 byte tag.
    #[error("invalid fs share {0:?}: expected TAG,SOCKET_PATH with a tag of 1 to 36 bytes")]
    Fs(String),
    /// Two shares with one tag: the guest could mount only one of them.
    #[error("fs tag {0:?} is given twice; give each share its own tag")]
    FsTagTwice(String),
    /// A --net value (or a `net` entry of the config file) is unusable.
    #[error("invalid net device {spec:?}: {why}")]
    Net { spec: String, why: String },
    /// No kernel was given.
    #[error("no kernel given: pass --kernel PATH or a config file with \"kernel\"")]
    NoKernel,
    /// vCPU count out of range.
    #[error("vcpus must be between 1 and {MAX_VCPUS}, got {0}")]
    Vcpus(u32),
    /// Memory size out of range.
    #[error("memory must be at least 16 MiB and fit the host address space, got {0} MiB")]
    Memory(u32),
    /// More virtio devices than husk-vmm has interrupt lines for.
    #[error("too many virtio devices: {disks} disk(s){vsock}{fs}{net} need {want} IRQs, husk-vmm has {max} (lines {first}..={last}); attach fewer disks or merge read-only layers into one composite disk")]
    TooManyDevices {
        disks: usize,
        vsock: &'static str,
        /// " + N fs" when shares are configured, else empty.
        fs: String,
        /// " + N net" when NICs are configured, else empty.
        net: String,
        want: usize,
        max: usize,
        first: u32,
        last: u32,
    },
    /// A layer disk with no layers or more than OCI allows.
    #[error("a layer disk holds 1 to {MAX_LAYERS} layers, got {0}")]
    LayerCount(usize),
    /// Watchdog timeout not a positive number of seconds, or past what a `Duration` of the
    /// builder can hold.
    #[error("timeout must be a positive number of seconds up to {MAX_TIMEOUT_SECS}, got {0}")]
    Timeout(f64),
}

/// Where the guest's serial console goes.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum ConsoleConfig {
    /// The process's stdout (and stdin feeds the guest). The default, for people at a shell.
    #[default]
    Stdout,
    /// Appended to a file; what the runtime uses for container logs.
    File(PathBuf),
    /// Discarded without a syscall per byte: the fast path.
    Off,
}

impl FromStr for ConsoleConfig {
    type Err = ConfigError;
    fn from_str(s: &str) -> Result<Self, ConfigError> {
        match s {
            "stdout" => Ok(Self::Stdout),
            "off" => Ok(Self::Off),
            _ => match s.strip_prefix("file:") {
                Some(p) if !p.is_empty() => Ok(Self::File(PathBuf::from(p))),
                _ => Err(ConfigError::Console(s.to_string())),
            },
        }
    }
}

impl TryFrom<String> for ConsoleConfig {
    type Error = ConfigError;
    fn try_from(s: String) -> Result<Self, ConfigError> {
        s.parse()
    }
}

impl fmt::Display for ConsoleConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Stdout => f.write_str("stdout"),
            Self::Off => f.write_str("off"),
            Self::File(p) => write!(f, "file:{}", p.display()),
        }
    }
}

impl From<ConsoleConfig> for String {
    fn from(c: ConsoleConfig) -> String {
        c.to_string()
    }
}

/// Read-only image layers the guest sees as the partitions of one GPT disk (partition N is
/// layer N-1, bottom first), served without copying (see `devices::virtio::block::composite`).
/// One virtio-mmio slot whatever the layer count.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LayerDiskConfig {
    pub layers: Vec<PathBuf>,
    /// What GET_ID answers (the guest's `/sys/block/vdX/serial`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
}

impl LayerDiskConfig {
    /// 1 to [`MAX_LAYERS`] layers and a valid serial.
    pub fn check(&self) -> Result<(), ConfigError> {
        if self.layers.is_empty() || self.layers.len() > MAX_LAYERS {
            return Err(ConfigError::LayerCount(self.layers.len()));
        }
        match &self.serial {
            Some(s) if !valid_serial(s) => Err(ConfigError::DiskSerial {
                path: PathBuf::from("(layer disk)"),
                serial: s.clone(),
            }),
            _ => Ok(()),
        }
    }
}

/// The most layers a layer disk holds: OCI's limit (127); the GPT array has room for 128.
pub const MAX_LAYERS: usize = 127;

/// A raw disk image exposed as a virtio-blk device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskConfig {
    pub path: PathBuf,
    #[serde(default)]
    pub read_only: bool,
    /// What GET_ID answers (the guest's `/sys/block/vdX/serial`); without it, an id derived
    /// from the file's device and inode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
}

impl DiskConfig {
    /// Checks the serial: 1 to [`ID_BYTES`] printable ASCII bytes and no ',' (the flag's
    /// separator), so that what the guest reads back is exactly what was asked for.
    pub fn check(&self) -> Result<(), ConfigError> {
        match &self.serial {
            Some(s) if !valid_serial(s) => Err(ConfigError::DiskSerial {
                path: self.path.clone(),
                serial: s.clone(),
            }),
            _ => Ok(()),
        }
    }
}

fn valid_serial(s: &str) -> bool {
    (1..=ID_BYTES).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_graphic() && b != b',')
}

impl FromStr for DiskConfig {
    type Err = ConfigError;
    /// `PATH[,ro|,rw][,serial=ID]`, options in any order, each at most once.
    fn from_str(s: &str) -> Result<Self, ConfigError> {
        let bad = || ConfigError::Disk(s.to_string());
        let mut parts = s.split(',');
        let path = parts.next().filter(|p| !p.is_empty()).ok_or_else(bad)?;
        let (mut mode, mut serial) = (None, None);
        for opt in parts {
            match opt {
                "ro" | "rw" if mode.is_none() => mode = Some(opt == "ro"),
                _ => match opt.strip_prefix("serial=") {
                    Some(id) if serial.is_none() => serial = Some(id.to_string()),
                    _ => return Err(bad()),
                },
            }
        }
        let cfg = Self {
            path: PathBuf::from(path),
            read_only: mode.unwrap_or(false),
            serial,
        };
        cfg.check()?;
        Ok(cfg)
    }
}

/// A virtio-vsock device bridged to host unix sockets (Firecracker's protocol).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VsockConfig {
    /// The guest's context id; 0-2 are reserved by vsock.
    pub cid: u32,
    /// Host-side unix socket; guest-initiated connections go to `<uds>_<port>`.
    pub uds: PathBuf,
}

impl FromStr for VsockConfig {
    type Err = ConfigError;
    fn from_str(s: &str) -> Result<Self, ConfigError> {
        let bad = || ConfigError::Vsock(s.to_string());
        let (cid, uds) = s.split_once(',').ok_or_else(bad)?;
        let cid: u32 = cid.trim().parse().map_err(|_| bad())?;
        if cid < 3 || uds.is_empty() {
            return Err(bad());
        }
        Ok(Self {
            cid,
            uds: PathBuf::from(uds),
        })
    }
}

/// A host directory shared through virtio-fs: the guest's mount tag and the vhost-user
/// socket of the `virtiofsd` serving it (started by the caller, before husk-vmm).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FsConfig {
    pub tag: String,
    pub socket: PathBuf,
}

impl FromStr for FsConfig {
    type Err = ConfigError;
    fn from_str(s: &str) -> Result<Self, ConfigError> {
        let bad = || ConfigError::Fs(s.to_string());
        let (tag, socket) = s.split_once(',').ok_or_else(bad)?;
        let cfg = Self {
            tag: tag.to_string(),
            socket: PathBuf::from(socket),
        };
        if !cfg.is_valid() {
            return Err(bad());
        }
        Ok(cfg)
    }
}

impl FsConfig {
    fn is_valid(&self) -> bool {
        (1..=crate::devices::virtio::fs::TAG_LEN).contains(&self.tag.len())
            && !self.tag.contains('\0')
            && !self.socket.as_os_str().is_empty()
    }
}

/// One microVM. Field names are the JSON keys of `--config FILE`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmmConfig {
    /// ELF vmlinux or bzImage.
    pub kernel: PathBuf,
    #[serde(default)]
    pub initramfs: Option<PathBuf>,
    /// Replaces [`DEFAULT_CMDLINE`] when set.
    #[serde(default)]
    pub cmdline: Option<String>,
    /// Appended to the command line (default or replaced), e.g. `init=/bin/sh`.
    #[serde(default)]
    pub append: Option<String>,
    #[serde(default = "default_vcpus")]
    pub vcpus: u8,
    #[serde(default = "default_mem")]
    pub memory_mib: u32,
    #[serde(default)]
    pub console: ConsoleConfig,
    /// The image layers as one read-only composite disk, attached before `disks`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layer_disk: Option<LayerDiskConfig>,
    #[serde(default)]
    pub disks: Vec<DiskConfig>,
    #[serde(default)]
    pub vsock: Option<VsockConfig>,
    /// virtio-fs shares; any share makes guest memory a shareable memfd.
    #[serde(default)]
    pub fs: Vec<FsConfig>,
    /// virtio-net devices on host TAPs.
    #[serde(default)]
    pub net: Vec<NetConfig>,
    /// Watchdog: end the VM with an error after this many seconds. A guest that halts with
    /// interrupts off never leaves KVM_RUN on some hosts, so this is the only way out then.
    #[serde(default)]
    pub timeout_secs: Option<f64>,
    /// Leave KVM's VM destruction (13–25 ms) to a helper child so the exit status is
    /// delivered at once (see `teardown.rs`). Off by default: the helper is reparented to
    /// init or the nearest subreaper, which must reap it.
    #[serde(default)]
    pub fast_exit: bool,
    /// What the seccomp filters of husk-vmm's threads do with a forbidden syscall.
    #[serde(default)]
    pub seccomp: SeccompMode,
    /// husk-vmm's jail, entered once the VM is built (see `confine::jail`); none by default.
    #[serde(default)]
    pub jail: Option<JailConfig>,
}

fn default_vcpus() -> u8 {
    1
}
fn default_mem() -> u32 {
    DEFAULT_MEM_MIB
}

/// The command line when none is given. `reboot=k` makes reboot (and `panic=1`) go through
/// the i8042 reset line, which ends the VM; `i8042.*` keep that controller's probe short
/// since only its reset line is emulated; no PCI/ACPI probing on a virtio-mmio machine;
/// `no_timer_check` skips the early busy-wait check of the timer interrupt, which a vCPU
/// starved on a loaded host fails with a panic (as the QEMU backend's guests do).
pub const DEFAULT_CMDLINE: &str = "console=ttyS0 reboot=k panic=1 pci=off nomodule \
     i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd no_timer_check";

impl VmmConfig {
    /// A config with defaults for everything but the kernel.
    pub fn new(kernel: impl Into<PathBuf>) -> Self {
        Self {
            kernel: kernel.into(),
            initramfs: None,
            cmdline: None,
            append: None,
            vcpus: default_vcpus(),
            memory_mib: default_mem(),
            console: ConsoleConfig::default(),
            layer_disk: None,
            disks: Vec::new(),
            vsock: None,
            fs: Vec::new(),
            net: Vec::new(),
            timeout_secs: None,
            fast_exit: false,
            seccomp: SeccompMode::default(),
            jail: None,
        }
    }

    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        serde_json::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_path_buf(),
            source,
        })
    }

    /// Checks ranges that serde cannot express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.vcpus == 0 || self.vcpus > MAX_VCPUS {
            return Err(ConfigError::Vcpus(self.vcpus.into()));
        }
        // 16 MiB holds the tiny guests and the boot structures below 1 MiB; real kernels
        // need more but say so themselves.
        if self.memory_mib < 16 || u64::from(self.memory_mib) << 20 > usize::MAX as u64 {
            return Err(ConfigError::Memory(self.memory_mib));
        }
        if let Some(v) = &self.vsock {
            if v.cid < 3 || v.uds.as_os_str().is_empty() {
                return Err(ConfigError::Vsock(format!("{},{}", v.cid, v.uds.display())));
            }
        }
        for (i, f) in self.fs.iter().enumerate() {
            if !f.is_valid() {
                return Err(ConfigError::Fs(format!("{},{}", f.tag, f.socket.display())));
            }
            if self.fs[..i].iter().any(|o| o.tag == f.tag) {
                return Err(ConfigError::FsTagTwice(f.tag.clone()));
            }
        }
        if let Some(l) = &self.layer_disk {
            l.check()?;
        }
        for d in &self.disks {
            d.check()?;
        }
        for n in &self.net {
            n.check().map_err(|why| ConfigError::Net {
                spec: serde_json::to_string(n).unwrap_or_default(),
                why,
            })?;
        }
        let disks = self.disks.len() + usize::from(self.layer_disk.is_some());
        let want = disks + usize::from(self.vsock.is_some()) + self.fs.len() + self.net.len();
        let max = (layout::IRQ_MAX - layout::IRQ_BASE + 1) as usize;
        if want > max {
            return Err(ConfigError::TooManyDevices {
                disks,
                vsock: if self.vsock.is_some() { " + vsock" } else { "" },
                fs: if self.fs.is_empty() {
                    String::new()
                } else {
                    format!(" + {} fs", self.fs.len())
                },
                net: if self.net.is_empty() {
                    String::new()
                } else {
                    format!(" + {} net", self.net.len())
                },
                want,
                max,
                first: layout::IRQ_BASE,
                last: layout::IRQ_MAX,
            });
        }
        if let Some(t) = self.timeout_secs {
            if !(t.is_finite() && t > 0.0 && t <= MAX_TIMEOUT_SECS) {
                return Err(ConfigError::Timeout(t));
            }
        }
        if let Some(j) = &self.jail {
            j.validate()?;
        }
        Ok(())
    }

    /// The kernel command line as the guest will see it (before devices add their entries).
    pub fn kernel_cmdline(&self) -> String {
        let base = self.cmdline.as_deref().unwrap_or(DEFAULT_CMDLINE).trim();
        match self.append.as_deref().map(str::trim) {
            Some(extra) if !extra.is_empty() => format!("{base} {extra}"),
            _ => base.to_string(),
        }
    }

    pub fn memory_bytes(&self) -> usize {
        (self.memory_mib as usize) << 20
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn console_round_trips() {
        for s in ["stdout", "off", "file:/tmp/x.log"] {
            let c: ConsoleConfig = s.parse().unwrap();
            assert_eq!(c.to_string(), s);
        }
        assert!("file:".parse::<ConsoleConfig>().is_err());
        assert!("tty".parse::<ConsoleConfig>().is_err());
    }

    #[test]
    fn fs_shares_parse_and_validate() {
        let f: FsConfig = "vol0,/run/c/fs0.sock".parse().unwrap();
        assert_eq!(
            (f.tag.as_str(), f.socket.as_path()),
            ("vol0", Path::new("/run/c/fs0.sock"))
        );
        for bad in ["vol0", ",/s", "t,", &format!("{},/s", "x".repeat(37))] {
            assert!(bad.parse::<FsConfig>().is_err(), "{bad:?}");
        }
        let mut c = VmmConfig::new("/k");
        c.fs = vec![f.clone(), f];
        assert!(matches!(c.validate(), Err(ConfigError::FsTagTwice(_))));
        c.fs.pop();
        c.validate().unwrap();
    }

    #[test]
    fn disk_and_vsock_parse() {
        assert_eq!(
            "/a/b.img,ro".parse::<DiskConfig>().unwrap(),
            DiskConfig {
                path: "/a/b.img".into(),
                read_only: true,
                serial: None,
            }
        );
        assert!(!"/a/b.img".parse::<DiskConfig>().unwrap().read_only);
        assert!("/a,xx".parse::<DiskConfig>().is_err());
        assert!(",ro".parse::<DiskConfig>().is_err());
        let v: VsockConfig = "3,/run/v.sock".parse().unwrap();
        assert_eq!((v.cid, v.uds), (3, PathBuf::from("/run/v.sock")));
        assert!("2,/x".parse::<VsockConfig>().is_err());
        assert!("x,/x".parse::<VsockConfig>().is_err());
        assert!("3".parse::<VsockConfig>().is_err());
    }

    #[test]
    fn disk_serial_parses_in_any_order() {
        for s in [
            "/l0.img,ro,serial=husk-layer-0",
            "/l0.img,serial=husk-layer-0,ro",
        ] {
            let d: DiskConfig = s.parse().unwrap();
            assert_eq!(
                d,
                DiskConfig {
                    path: "/l0.img".into(),
                    read_only: true,
                    serial: Some("husk-layer-0".into()),
                },
                "{s}"
            );
        }
        let d: DiskConfig = "/s.img,serial=husk-scratch".parse().unwrap();
        assert_eq!(
            (d.read_only, d.serial.as_deref()),
            (false, Some("husk-scratch"))
        );
        // 20 bytes is the most GET_ID carries; any printable ASCII but ',' is fine.
        let max = "a".repeat(20);
        let d: DiskConfig = format!("/d,serial={max}").parse().unwrap();
        assert_eq!(d.serial.as_deref(), Some(max.as_str()));
        let d: DiskConfig = "/d,serial=a=b:c/d".parse().unwrap();
        assert_eq!(d.serial.as_deref(), Some("a=b:c/d"));
    }

    #[test]
    fn disk_serial_rejects_what_get_id_cannot_carry() {
        let long = format!("/d,serial={}", "a".repeat(21));
        for bad in [
            "/d,serial=",
            long.as_str(),
            "/d,serial=a b",
            "/d,serial=caf\u{e9}",
            "/d,serial=a\tb",
        ] {
            let e = bad.parse::<DiskConfig>().unwrap_err();
            assert!(matches!(e, ConfigError::DiskSerial { .. }), "{bad:?}: {e}");
            assert!(e.to_string().contains("1 to 20 printable ASCII"), "{e}");
        }
        // A ',' inside the id splits it into an unknown option.
        for bad in [
            "/d,serial=a,b",
            "/d,serial=a,serial=b",
            "/d,ro,ro",
            "/d,ro,rw",
            "/d,ro,",
            "/d,serial",
            ",serial=x",
        ] {
            let e = bad.parse::<DiskConfig>().unwrap_err();
            assert!(matches!(e, ConfigError::Disk(_)), "{bad:?}: {e}");
        }
    }

    #[test]
    fn disk_serial_in_json_is_optional_and_validated() {
        let c: VmmConfig = serde_json::from_str(
            r#"{"kernel":"/k","disks":[{"path":"/a"},{"path":"/b","read_only":true,"serial":"husk-layer-0"}]}"#,
        )
        .unwrap();
        assert_eq!(c.disks[0].serial, None);
        assert_eq!(c.disks[1].serial.as_deref(), Some("husk-layer-0"));
        c.validate().unwrap();
        let back: VmmConfig = serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
        assert_eq!(back, c);
        // JSON bypasses the flag parser, so validate must catch a bad serial itself.
        let c: VmmConfig = serde_json::from_str(
            r#"{"kernel":"/k","disks":[{"path":"/a","serial":"has a,comma"}]}"#,
        )
        .unwrap();
        assert!(matches!(c.validate(), Err(ConfigError::DiskSerial { .. })));
        // A misspelt key would otherwise drop the serial silently.
        assert!(serde_json::from_str::<VmmConfig>(
            r#"{"kernel":"/k","disks":[{"path":"/a","serail":"x"}]}"#
        )
        .is_err());
    }

    #[test]
    fn json_uses_defaults_and_rejects_unknown_fields() {
        let c: VmmConfig = serde_json::from_str(r#"{"kernel":"/k","console":"off"}"#).unwrap();
        assert_eq!(c.vcpus, 1);
        assert_eq!(c.memory_mib, DEFAULT_MEM_MIB);
        assert_eq!(c.console, ConsoleConfig::Off);
        assert!(serde_json::from_str::<VmmConfig>(r#"{"kernel":"/k","cpus":2}"#).is_err());
        let back: VmmConfig = serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
        assert_eq!(back, c);
    }

    #[test]
    fn cmdline_replace_and_append() {
        let mut c = VmmConfig::new("/k");
        assert_eq!(c.kernel_cmdline(), DEFAULT_CMDLINE);
        c.append = Some("init=/x".into());
        assert!(c.kernel_cmdline().ends_with(" init=/x"));
        c.cmdline = Some("console=ttyS0".into());
        assert_eq!(c.kernel_cmdline(), "console=ttyS0 init=/x");
    }

    #[test]
    fn validate_ranges() {
        let mut c = VmmConfig::new("/k");
        c.validate().unwrap();
        c.vcpus = 0;
        assert!(c.validate().is_err());
        c.vcpus = 2;
        c.memory_mib = 8;
        assert!(c.validate().is_err());
        c.memory_mib = 64;
        c.timeout_secs = Some(-1.0);
        assert!(c.validate().is_err());
        // The builder turns the timeout into a `Duration`, which panics on values past
        // u64 seconds: a 73-digit timeout once passed validation (found by fuzzing).
        for bad in [1.8e72, MAX_TIMEOUT_SECS * 2.0, f64::INFINITY, f64::NAN] {
            c.timeout_secs = Some(bad);
            assert!(
                matches!(c.validate(), Err(ConfigError::Timeout(_))),
                "{bad} accepted"
            );
        }
        c.timeout_secs = Some(MAX_TIMEOUT_SECS);
        c.validate().unwrap();
        let d = std::time::Duration::from_secs_f64(MAX_TIMEOUT_SECS);
        assert_eq!(d.as_secs(), u32::MAX as u64);
    }

    #[test]
    fn a_timeout_with_a_long_mantissa_reads_back_unchanged() {
        // What the vmm_config fuzz target found: without serde_json's exact float parsing
        // this read back one ulp off (1.800666666666667e72), so a config did not survive
        // its own serialisation.
        let text = format!(
            r#"{{"kernel":"/k","timeout_secs":18006666{}6}}"#,
            "6".repeat(64)
        );
        let c: VmmConfig = serde_json::from_str(&text).unwrap();
        let back: VmmConfig = serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
        assert_eq!(back.timeout_secs, c.timeout_secs);
        assert!(matches!(c.validate(), Err(ConfigError::Timeout(_))));
    }

    #[test]
    fn validate_devices() {
        let mut c = VmmConfig::new("/k");
        c.vsock = Some(VsockConfig {
            cid: 2,
            uds: "/v".into(),
        });
        assert!(
            matches!(c.validate(), Err(ConfigError::Vsock(_))),
            "JSON can carry CID 2"
        );
        c.vsock = Some(VsockConfig {
            cid: 3,
            uds: "/v".into(),
        });
        let disk = DiskConfig {
            path: "/d".into(),
            read_only: true,
            serial: None,
        };
        c.disks = vec![disk; 18];
        c.validate().unwrap();
        c.disks.push(c.disks[0].clone());
        let e = c.validate().unwrap_err().to_string();
        assert!(
            e.contains("19 disk(s) + vsock need 20 IRQs, husk-vmm has 19"),
            "{e}"
        );
    }
}
