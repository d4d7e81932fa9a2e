//! husk-vmm's command line: clap definitions and their mapping onto [`VmmConfig`].

use std::path::PathBuf;

use clap::Parser;

use super::config::{
    ConfigError, ConsoleConfig, DiskConfig, FsConfig, LayerDiskConfig, NetConfig, SeccompMode,
    VmmConfig, VsockConfig,
};
use crate::confine::seccomp::ThreadKind;

/// Run one KVM microVM: a Linux kernel (ELF vmlinux or bzImage), an initramfs and a
/// command line. Exits 0 when the guest resets (reboot, or poweroff with reboot=k).
#[derive(Debug, Parser)]
#[command(name = "husk-vmm", version)]
pub struct Args {
    /// Report whether this host can run husk-vmm Linux guests, then exit (0 yes, 2 no).
    #[arg(long)]
    pub probe: bool,
    /// With --probe: print the report as JSON.
    #[arg(long, requires = "probe")]
    pub json: bool,
    /// JSON file with the same settings as the flags; flags given too override it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Kernel image: ELF vmlinux or bzImage.
    #[arg(long, value_name = "PATH")]
    pub kernel: Option<PathBuf>,
    /// Initramfs (cpio, optionally compressed) loaded high in guest memory.
    #[arg(long, value_name = "PATH")]
    pub initramfs: Option<PathBuf>,
    /// Kernel command line, replacing the default one.
    #[arg(long, value_name = "STRING", allow_hyphen_values = true)]
    pub cmdline: Option<String>,
    /// Appended to the kernel command line (default or --cmdline).
    #[arg(long, value_name = "STRING", allow_hyphen_values = true)]
    pub append: Option<String>,
    /// Number of vCPUs [default: 1].
    #[arg(long, value_name = "N")]
    pub vcpus: Option<u8>,
    /// Guest memory in MiB [default: 256].
    #[arg(long, value_name = "MIB")]
    pub memory: Option<u32>,
    /// Serial console: stdout, off or file:PATH [default: stdout].
    #[arg(long, value_name = "WHERE")]
    pub console: Option<ConsoleConfig>,
    /// Raw disk image as a virtio-blk device, read-only with `ro`; `serial=ID` (1-20
    /// printable ASCII characters, no ',') sets what the guest reads as its serial.
    /// Repeatable.
    #[arg(long = "disk", value_name = "PATH[,ro][,serial=ID]")]
    pub disks: Vec<DiskConfig>,
    /// Image layer (a filesystem image file), bottom first; repeatable. The layers become one
    /// read-only GPT disk, partition N holding layer N-1, attached before the --disk devices.
    #[arg(long = "layer", value_name = "PATH")]
    pub layers: Vec<PathBuf>,
    /// What the layer disk answers as its serial.
    #[arg(long, value_name = "ID", requires = "layers")]
    pub layer_serial: Option<String>,
    /// virtio-vsock device: guest CID and host unix socket path.
    #[arg(long, value_name = "CID,UDS")]
    pub vsock: Option<VsockConfig>,
    /// virtio-fs share served by a running virtiofsd: guest mount tag and its vhost-user
    /// socket; repeatable. Guest memory becomes a shareable memfd.
    #[arg(long = "fs", value_name = "TAG,SOCKET")]
    pub fs: Vec<FsConfig>,
    /// virtio-net device on a host TAP (opened by name, created if missing) or on an
    /// inherited TAP fd; the MAC is derived from the name when not given. Repeatable.
    #[arg(long = "net", value_name = "tap=NAME[,mac=MAC][,fd=N]")]
    pub net: Vec<NetConfig>,
    /// Watchdog: end the VM with an error after this many seconds.
    #[arg(long, value_name = "SECONDS")]
    pub timeout: Option<f64>,
    /// Exit as soon as the guest ends, leaving VM teardown to a short-lived helper child.
    #[arg(long)]
    pub fast_exit: bool,
    /// What each thread's seccomp filter does with a forbidden syscall: kill (end husk-vmm
    /// with one line naming the thread and syscall), log (let it through; the kernel's audit
    /// log, `dmesg`, names it: debugging only) or off [default: kill].
    #[arg(long, value_name = "MODE")]
    pub seccomp: Option<SeccompMode>,
    /// Test hook: threads of this kind make a forbidden syscall right after installing their
    /// filter, to prove the filter is live.
    #[arg(long, value_name = "KIND", hide = true)]
    pub seccomp_selftest: Option<ThreadKind>,
}

impl Args {
    /// The VM to run: the config file (if any) with the flags laid over it.
    pub fn into_config(self) -> Result<VmmConfig, ConfigError> {
        let mut cfg = match (&self.config, &self.kernel) {
            (Some(path), _) => VmmConfig::from_file(path)?,
            (None, Some(k)) => VmmConfig::new(k),
            (None, None) => return Err(ConfigError::NoKernel),
        };
        if let Some(k) = self.kernel {
            cfg.kernel = k;
        }
        if self.initramfs.is_some() {
            cfg.initramfs = self.initramfs;
        }
        if self.cmdline.is_some() {
            cfg.cmdline = self.cmdline;
        }
        if self.append.is_some() {
            cfg.append = self.append;
        }
        if let Some(v) = self.vcpus {
            cfg.vcpus = v;
        }
        if let Some(m) = self.memory {
            cfg.memory_mib = m;
        }
        if let Some(c) = self.console {
            cfg.console = c;
        }
        if !self.layers.is_empty() {
            cfg.layer_disk = Some(LayerDiskConfig {
                layers: self.layers,
                serial: self.layer_serial,
            });
        }
        if !self.disks.is_empty() {
            cfg.disks = self.disks;
        }
        if self.vsock.is_some() {
            cfg.vsock = self.vsock;
        }
        if !self.fs.is_empty() {
            cfg.fs = self.fs;
        }
        if !self.net.is_empty() {
            cfg.net = self.net;
        }
        if self.timeout.is_some() {
            cfg.timeout_secs = self.timeout;
        }
        cfg.fast_exit |= self.fast_exit;
        if let Some(m) = self.seccomp {
            cfg.seccomp = m;
        }
        cfg.validate()?;
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Args {
        Args::try_parse_from(std::iter::once("husk-vmm").chain(args.iter().copied())).unwrap()
    }

    #[test]
    fn flags_build_a_config() {
        let cfg = parse(&[
            "--kernel",
            "/k",
            "--vcpus",
            "2",
            "--memory",
            "128",
            "--console",
            "off",
            "--disk",
            "/a.img,ro",
            "--disk",
            "/b.img",
            "--vsock",
            "3,/v.sock",
            "--cmdline",
            "console=ttyS0 x=1",
        ])
        .into_config()
        .unwrap();
        assert_eq!((cfg.vcpus, cfg.memory_mib), (2, 128));
        assert_eq!(cfg.console, ConsoleConfig::Off);
        assert_eq!(cfg.disks.len(), 2);
        assert!(cfg.disks[0].read_only);
        assert_eq!(cfg.vsock.as_ref().map(|v| v.cid), Some(3));
        assert_eq!(cfg.kernel_cmdline(), "console=ttyS0 x=1");
    }

    #[test]
    fn layers_make_one_disk_that_takes_one_interrupt_line() {
        let parse = |n: usize| {
            let mut argv = vec!["husk-vmm".to_string(), "--kernel".into(), "/k".into()];
            for i in 0..n {
                argv.extend(["--layer".into(), format!("/l/{i}")]);
            }
            argv.extend(["--layer-serial".into(), "husk-layers".into()]);
            for i in 0..18 {
                argv.extend(["--disk".into(), format!("/d{i}")]);
            }
            Args::try_parse_from(argv).unwrap().into_config()
        };
        // 127 layers + 18 disks: 19 devices, all of husk-vmm's lines.
        let cfg = parse(127).unwrap();
        let l = cfg.layer_disk.as_ref().unwrap();
        assert_eq!(
            (l.layers.len(), l.serial.as_deref()),
            (127, Some("husk-layers"))
        );
        cfg.validate().unwrap();
        let mut more = cfg.clone();
        more.disks.push(more.disks[0].clone());
        assert!(matches!(
            more.validate(),
            Err(ConfigError::TooManyDevices { disks: 20, .. })
        ));
        assert!(matches!(parse(128), Err(ConfigError::LayerCount(128))));
        assert!(
            Args::try_parse_from(["husk-vmm", "--kernel", "/k", "--layer-serial", "x"]).is_err(),
            "a serial without layers"
        );
    }

    #[test]
    fn flags_override_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("vm.json");
        std::fs::write(&file, r#"{"kernel":"/k","vcpus":4,"memory_mib":64}"#).unwrap();
        let cfg = parse(&["--config", file.to_str().unwrap(), "--vcpus", "1"])
            .into_config()
            .unwrap();
        assert_eq!((cfg.vcpus, cfg.memory_mib), (1, 64));
    }

    #[test]
    fn errors_are_specific() {
        assert!(matches!(
            parse(&[]).into_config(),
            Err(ConfigError::NoKernel)
        ));
        assert!(Args::try_parse_from(["husk-vmm", "--console", "tty"]).is_err());
        assert!(Args::try_parse_from(["husk-vmm", "--json"]).is_err());
        let missing = parse(&["--config", "/nonexistent/vm.json"]).into_config();
        assert!(missing
            .unwrap_err()
            .to_string()
            .contains("/nonexistent/vm.json"));
    }
}
