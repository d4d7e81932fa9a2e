//! The QEMU `microvm` backend: KVM where it can run a stock guest, TCG elsewhere.
//!
//! The guest gets what husk-vmm gives it: a serial console, virtio-mmio block devices and a
//! channel to the agent. Where husk-vmm has a virtio-vsock device, QEMU has a virtio-serial
//! port and a [`husk-agent-mux`](super::agent_mux) daemon, whose host side is Firecracker's
//! hybrid unix socket, so clients cannot tell the backends apart. The layer disk is
//! QEMU's own virtio-blk device reading husk-layer-disk's NBD export (the daemon never maps
//! guest memory). Shared directories need guest memory QEMU shares
//! (`memory-backend-memfd,share=on`): one [`virtiofsd`](super::virtiofsd) per share behind a
//! `vhost-user-fs-device` carrying the tag.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::child::{self, Leftovers};
use super::confined;
use super::process_vm::ProcessVm;
use super::{agent_mux, host, layer_disk, template, virtiofsd, Error, VmBackend, VmHandle, VmSpec};
use crate::confine::launch::{self, Ids};
use crate::util::fs::{is_executable, which};
use crate::util::timings;

/// Kernel arguments every guest of this backend gets.
///
/// `reboot=t`: the agent ends the VM with reboot(2), and under `-no-reboot` the resulting
/// reset ends QEMU with status 0. microvm has no i8042, so `reboot=k` only gets there after the
/// kernel's ten keyboard-controller attempts time out (measured: 2.2 s from start to exit
/// instead of 0.74 s under TCG); a triple fault resets at once. `panic=-1` turns a guest
/// panic into the same reset instead of a hung VM. `no_timer_check`: the kernel's early check
/// that the timer interrupt reaches the IO-APIC counts ticks in a busy-wait, which a vCPU
/// thread starved on a loaded host fails, and the kernel then panics ("IO-APIC + timer
/// doesn't work!"; Kata's guests skip the check too).
pub const BOOT_ARGS: &[&str] = &["console=ttyS0", "reboot=t", "panic=-1", "no_timer_check"];

/// TCG's translation cache (`-accel tcg,tb-size=`), in MiB. QEMU 7.2's default for system
/// emulation is an eighth of the host's RAM, up to 1 GiB: anonymous memory that fills as the
/// guest runs code it has not run before and is never given back (a full cache is flushed and
/// refilled in place). Booting the guest and running busybox fills ~46-48 MiB of it; a smaller
/// cache flushes during start-up and retranslates. Measured on the 2-core PVM development host
/// (2026-12-03, busy, runs interleaved, per-round ratio to the default, medians of 7-17):
/// `husk run --rm busybox true` took 0.98x at 64, 1.04x at 48, 1.06x at 32, 1.25x at 24,
/// 1.38x at 16 and 1.73x at 8 MiB, while an idle container's QEMU held the same PSS at 64 as
/// at the default (128 MiB) and 115 / 96 / 87 MiB at 32 / 16 / 8. 64 is the smallest size
/// that did not slow start-up: it saves nothing on an idle busybox, but caps what a VM running
/// much code can hold at 64 MiB instead of up to 1 GiB. KVM has no translation cache.
pub const TCG_TB_SIZE_MIB: u32 = 64;

/// Kernel arguments added under TCG only, after [`BOOT_ARGS`].
///
/// `lapic_timer_period=4000000` (our kernel's patch, kernel-config/patches/): TCG's APIC bus
/// runs at 1 GHz, so with HZ=250 the kernel's calibration always finds 4000000; presetting it
/// skips ~0.2 s of calibrating and verifying against the emulated PIT. Not under KVM: with
/// `-cpu host` the TSC-deadline timer already skips calibration, and KVM's APIC bus rate is
/// not guaranteed to be 1 GHz. A kernel without the patch ignores the unknown parameter.
///
/// `noreplace-smp`: a kernel that finds one CPU rewrites every LOCK prefix in its text to a
/// no-op prefix, one `text_poke` (page-table switch + TLB flush) each, ~80 ms under TCG and
/// cheap on KVM. The LOCK prefixes stay correct on one CPU; they only cost a few cycles.
pub const TCG_BOOT_ARGS: &[&str] = &["lapic_timer_period=4000000", "noreplace-smp"];

/// [`TCG_BOOT_ARGS`], then, where the host's TSC frequency is known, `tsc_early_khz=` with it
/// and `tsc=reliable`: a TCG guest reads the host's own TSC but cannot calibrate it against
/// the emulated PIT, and without it keeps time on jiffies and never idles tickless
/// ([`tsc`](super::tsc)); `reliable` because its rate is the host's constant one, which the
/// jiffies watchdog, slowed by emulation, would otherwise call skewed.
pub fn tcg_boot_args(tsc_khz: Option<u32>) -> Vec<String> {
    let mut a: Vec<String> = TCG_BOOT_ARGS.iter().map(|s| s.to_string()).collect();
    if let Some(khz) = tsc_khz {
        a.push(format!("tsc_early_khz={khz}"));
        a.push("tsc=reliable".into());
    }
    a
}

/// Overrides the QEMU binary.
pub const QEMU_ENV: &str = "HUSK_QEMU";
/// Forces the accelerator (`kvm` or `tcg`) instead of probing.
pub const ACCEL_ENV: &str = "HUSK_QEMU_ACCEL";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    Tcg,
}

impl Accel {
    pub fn as_str(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

/// Starts VMs as `qemu-system-x86_64 -M microvm` processes.
#[derive(Debug, Clone)]
pub struct QemuBackend {
    pub qemu: PathBuf,
    pub accel: Accel,
    /// husk-agent-mux; found when the first VM with vsock starts.
    pub agent_mux: Option<PathBuf>,
    /// Found when the first VM with a shared directory starts.
    pub virtiofsd: Option<PathBuf>,
    /// Found when the first VM with a layer disk starts.
    pub layer_disk: Option<PathBuf>,
    /// Start QEMU and its helper daemons confined (`confine`, docs/security.md); off only
    /// with `HUSK_JAIL=off`.
    pub confine: bool,
    /// Under TCG, the host's TSC frequency, told to the guest ([`tsc`](super::tsc)).
    pub tsc_khz: Option<u32>,
    /// Where VM templates are kept ([`template`](super::template)); `None`: every VM boots.
    pub templates: Option<PathBuf>,
}

impl QemuBackend {
    /// QEMU from `$HUSK_QEMU` or `PATH`; KVM if the host's KVM runs stock guests (or
    /// `$HUSK_QEMU_ACCEL`), else TCG.
    pub fn from_env() -> Result<Self, Error> {
        let qemu = find_qemu(std::env::var_os(QEMU_ENV).map(PathBuf::from))?;
        let accel = match std::env::var(ACCEL_ENV).ok().as_deref() {
            Some("kvm") => Accel::Kvm,
            Some("tcg") => Accel::Tcg,
            Some(other) => {
                return Err(Error::InvalidSpec(format!(
                    "{ACCEL_ENV}={other}: expected kvm or tcg"
                )))
            }
            None => {
                let kvm = host::kvm_runs_stock_guests();
                tracing::debug!(kvm = kvm.usable, reason = %kvm.reason, "QEMU accelerator");
                if kvm.usable {
                    Accel::Kvm
                } else {
                    Accel::Tcg
                }
            }
        };
        Ok(QemuBackend {
            qemu,
            accel,
            agent_mux: None,
            virtiofsd: None,
            layer_disk: None,
            confine: launch::enabled(),
            tsc_khz: match accel {
                Accel::Tcg => super::tsc::host_tsc_khz(),
                Accel::Kvm => None,
            },
            templates: template::dir_from_env(),
        })
    }
}

/// The QEMU binary: `explicit` (from `$HUSK_QEMU`) if given, else `qemu-system-x86_64` on
/// `PATH`; either way it must be executable.
pub fn find_qemu(explicit: Option<PathBuf>) -> Result<PathBuf, Error> {
    let found = match explicit {
        Some(p) => Some(p).filter(|p| is_executable(p)),
        None => which("qemu-system-x86_64"),
    };
    found.ok_or_else(|| Error::MissingProgram {
        program: "qemu-system-x86_64".into(),
        hint: format!(
            "the QEMU backend needs it; install QEMU (Debian: apt-get install \
             qemu-system-x86) or point {QEMU_ENV} at it"
        ),
    })
}

/// How QEMU brings a VM's guest up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Boot<'a> {
    /// Boots the kernel.
    Cold,
    /// Boots the kernel into a VM template ([`template`](super::template)): guest RAM the
    /// memfd at [`RAM_FD`], shared (the template's RAM once saved), NICs on a hub with
    /// nothing else on it, a QMP socket at `qmp` to stop and save it through.
    Template { qmp: &'a Path },
    /// Runs a template's saved VM, no boot: guest RAM the template's sealed memfd at
    /// [`RAM_FD`], private (copy on write), the device state loaded from [`STATE_FD`] once
    /// QMP at [`QMP_FD`] asks (`migrate-incoming`, after `x-ignore-shared` is set).
    Restore,
}

/// The descriptor a restored QEMU reads its template's state from (`migrate-incoming
/// fd:N`): high, below the TAPs' ([`tap_fd_number`]).
pub const STATE_FD: i32 = 199;
/// The guest RAM's memfd in a template VM or a clone (`mem-path=/proc/self/fd/N`).
pub const RAM_FD: i32 = 198;
/// A clone's end of the QMP link husk drives its restore through.
pub const QMP_FD: i32 = 197;

/// What a template VM's or a clone's QEMU inherits besides its disks and TAPs.
#[derive(Debug, Default, Clone, Copy)]
pub struct Inherit<'a> {
    /// The guest RAM's memfd, at [`RAM_FD`].
    pub ram: Option<&'a std::fs::File>,
    /// The saved state a clone loads, at [`STATE_FD`].
    pub state: Option<&'a std::fs::File>,
    /// QEMU's end of a clone's QMP link, at [`QMP_FD`].
    pub qmp: Option<&'a std::os::unix::net::UnixStream>,
}

/// The full QEMU command line for `spec` (everything after the program name).
/// `agent_link` is husk-agent-mux's link socket when the spec has vsock; `fs_sockets` holds
/// the virtiofsd socket of each of `spec.shared_dirs`, in order. `tsc_khz`: the host's TSC
/// frequency, told to a TCG guest ([`tcg_boot_args`]). `boot`: how the guest comes up.
pub fn args(
    spec: &VmSpec,
    accel: Accel,
    tsc_khz: Option<u32>,
    agent_link: Option<&Path>,
    fs_sockets: &[PathBuf],
    layer_socket: Option<&Path>,
    boot: Boot<'_>,
) -> Vec<String> {
    let mut a: Vec<String> = Vec::new();
    let mut push = |items: &[&str]| a.extend(items.iter().map(|s| s.to_string()));
    push(&["-nodefaults", "-no-user-config", "-nographic", "-no-reboot"]);
    // No ACPI (the kernel has none; a reset ends the VM); option ROMs only cost boot time.
    push(&[
        "-M",
        "microvm,acpi=off,x-option-roms=off,memory-backend=mem",
    ]);
    match accel {
        Accel::Kvm => push(&["-accel", "kvm", "-cpu", "host"]),
        Accel::Tcg => push(&["-accel", &format!("tcg,tb-size={TCG_TB_SIZE_MIB}")]),
    }
    push(&["-smp", &spec.vcpus.to_string()]);
    push(&["-m", &format!("{}M", spec.memory_mib)]);
    // Shared so virtiofsd can map the virtqueues; cheap enough to use always. A template's
    // RAM is a memfd of husk's, shared, so that it holds the guest's RAM once the VM is
    // saved (and the saved state need not); a clone maps the template's sealed memfd
    // private: pages it reads are the template's, pages it writes its own copies.
    let memory = match boot {
        Boot::Cold => "memory-backend-memfd,id=mem,size={}M,share=on".to_string(),
        Boot::Template { .. } => {
            format!(
                "memory-backend-file,id=mem,size={{}}M,share=on,mem-path=/proc/self/fd/{RAM_FD}"
            )
        }
        Boot::Restore => {
            format!(
                "memory-backend-file,id=mem,size={{}}M,share=off,mem-path=/proc/self/fd/{RAM_FD}"
            )
        }
    };
    push(&[
        "-object",
        &memory.replace("{}", &spec.memory_mib.to_string()),
    ]);
    // append=on: QEMU's own stderr goes to the same file (opened O_APPEND by us).
    push(&[
        "-chardev",
        &format!(
            "file,id=console,path={},append=on",
            spec.console_log.display()
        ),
    ]);
    push(&["-serial", "chardev:console"]);
    push(&["-kernel", &spec.kernel.display().to_string()]);
    if let Some(i) = &spec.initramfs {
        push(&["-initrd", &i.display().to_string()]);
    }
    let accel_args = match accel {
        Accel::Tcg => tcg_boot_args(tsc_khz),
        Accel::Kvm => Vec::new(),
    };
    let cmdline: Vec<&str> = BOOT_ARGS
        .iter()
        .copied()
        .chain(accel_args.iter().map(String::as_str))
        .chain(spec.cmdline.iter().map(String::as_str))
        .collect();
    push(&["-append", &cmdline.join(" ")]);
    if let (Some(layers), Some(sock)) = (&spec.layer_disk, layer_socket) {
        // QEMU's own virtio-blk device over husk-layer-disk's read-only NBD export.
        push(&[
            "-blockdev",
            &format!(
                "driver=nbd,node-name=layers,server.type=unix,server.path={},read-only=on",
                sock.display()
            ),
        ]);
        push(&[
            "-device",
            &format!("virtio-blk-device,drive=layers,serial={}", layers.serial),
        ]);
    }
    for (i, d) in spec.disks.iter().enumerate() {
        let ro = if d.read_only { "on" } else { "off" };
        match boot {
            Boot::Cold => push(&[
                "-drive",
                &format!(
                    "if=none,id=d{i},file={},format=raw,readonly={ro}",
                    d.path.display()
                ),
            ]),
            // Saving a VM and loading one reopen its disks (read-only, then read-write), which
            // a QEMU chrooted into an empty directory cannot do by path: they come as a set
            // of descriptors instead ([`disk_fds`]), QEMU taking the one whose mode it needs.
            // Locking off: two descriptions of one file would lock each other out, and each
            // disk is this VM's own.
            Boot::Template { .. } | Boot::Restore => {
                let set = i + 1;
                // `opaque` names the file: QMP's query-fdsets and the command line (where
                // tools look for the processes that use a container's disk) still show it.
                for (fd, _) in disk_fd_numbers(i, d.read_only) {
                    push(&[
                        "-add-fd",
                        &format!("fd={fd},set={set},opaque={}", d.path.display()),
                    ]);
                }
                push(&[
                    "-drive",
                    &format!(
                        "if=none,id=d{i},file=/dev/fdset/{set},format=raw,readonly={ro},\
                         file.locking=off"
                    ),
                ]);
            }
        }
        let mut dev = format!("virtio-blk-device,drive=d{i}");
        if let Some(s) = &d.serial {
            dev.push_str(&format!(",serial={s}"));
        }
        push(&["-device", &dev]);
    }
    if let (Some(_), Some(link)) = (&spec.vsock, agent_link) {
        // The agent's channel: a virtio-serial port carrying husk-agent-mux's streams.
        let port = agent_mux::qemu_args(link);
        push(&port.iter().map(String::as_str).collect::<Vec<_>>());
    }
    for (i, t) in spec.taps.iter().enumerate() {
        // vhost=off: vhost-net would move the datapath into the host kernel, but TCG guests
        // (these hosts) gain nothing from it and it needs /dev/vhost-net.
        let netdev = match &t.fd {
            // A template's NIC reaches nothing: its clones bring their own TAPs.
            _ if matches!(boot, Boot::Template { .. }) => format!("hubport,id=net{i},hubid={i}"),
            Some(_) => format!("tap,id=net{i},fd={},vhost=off", tap_fd_number(i)),
            None => format!(
                "tap,id=net{i},ifname={},script=no,downscript=no,vhost=off",
                t.tap_name
            ),
        };
        push(&["-netdev", &netdev]);
        push(&[
            "-device",
            &format!(
                "virtio-net-device,netdev=net{i},mac={}",
                husk_protocol::format_mac(&t.mac)
            ),
        ]);
    }
    for (i, (share, sock)) in spec.shared_dirs.iter().zip(fs_sockets).enumerate() {
        push(&[
            "-chardev",
            &format!("socket,id=fs{i},path={}", sock.display()),
        ]);
        push(&[
            "-device",
            &format!("vhost-user-fs-device,chardev=fs{i},tag={}", share.tag),
        ]);
    }
    match boot {
        Boot::Cold => {}
        // Its run state left out of the saved state: a clone runs once loaded, where it would
        // otherwise stay paused as the template was when saved.
        Boot::Template { qmp } => push(&[
            "-qmp",
            &format!("unix:{},server=on,wait=off", qmp.display()),
            "-global",
            "migration.store-global-state=off",
        ]),
        // Its state loaded only once QMP has set `x-ignore-shared` (the saved state has no
        // RAM; QEMU 7.2 has no command-line switch for it).
        Boot::Restore => push(&[
            "-chardev",
            &format!("socket,id=qmp,fd={QMP_FD}"),
            "-mon",
            "chardev=qmp,mode=control",
            "-incoming",
            "defer",
        ]),
    }
    a
}

impl VmBackend for QemuBackend {
    fn name(&self) -> &'static str {
        match self.accel {
            Accel::Kvm => "qemu (kvm)",
            Accel::Tcg => "qemu (tcg)",
        }
    }

    fn start(&self, spec: &VmSpec) -> Result<Box<dyn VmHandle>, Error> {
        spec.validate()?;
        if !is_elf(&spec.kernel) {
            // Measured with QEMU 7.2: a bzImage boots under microvm, but the guest's reset
            // then hangs the VM instead of ending QEMU.
            tracing::warn!(
                kernel = %spec.kernel.display(),
                "not an ELF vmlinux: microvm boots a bzImage, but the guest's power-off (reset) \
                 will not end QEMU; use the PVH-capable vmlinux"
            );
        }
        if let Some(vm) = template::start_from_template(self, spec) {
            return Ok(Box::new(vm));
        }
        Ok(Box::new(self.launch(
            spec,
            Boot::Cold,
            Inherit::default(),
        )?))
    }
}

impl QemuBackend {
    /// Starts QEMU and its helpers for `spec`, booting as `boot` says; `inherit`: what a
    /// template VM or a clone gets besides its disks and TAPs.
    pub(super) fn launch(
        &self,
        spec: &VmSpec,
        boot: Boot<'_>,
        inherit: Inherit<'_>,
    ) -> Result<ProcessVm, Error> {
        let log = child::open_console_log(&spec.console_log)?;
        let mut leftovers = Leftovers::default();
        // Its id and cgroup first: the helpers run as that id, in that cgroup.
        let confinement = confined::for_vm(spec, self.overhead(spec), self.confine)?;
        // Every helper is spawned first, then waited for: their start-ups overlap.
        let mut agent_link = None;
        if let Some(v) = &spec.vsock {
            let bin = match &self.agent_mux {
                Some(b) => b.clone(),
                None => agent_mux::find_binary()?,
            };
            let link = agent_mux::link_socket_for(v);
            // Registered before the daemon runs, so a failed start removes them too.
            leftovers.files.push(link.clone());
            leftovers.files.push(v.uds_path.clone());
            // Both its sockets are bound and listening before it runs: nothing to wait for.
            let daemon = agent_mux::start(
                &bin,
                v,
                &link,
                &log,
                &spec.console_log,
                confinement.as_ref(),
            )?;
            tracing::debug!(pid = daemon.pid(), "husk-agent-mux started");
            leftovers.add_helper(daemon);
            agent_link = Some(link);
        }
        let mut layer_socket = None;
        if let Some(layers) = &spec.layer_disk {
            let bin = match &self.layer_disk {
                Some(b) => b.clone(),
                None => layer_disk::find_binary()?,
            };
            let sock = layer_disk::socket_for(spec);
            leftovers.files.push(sock.clone());
            // Its socket is bound and listening before it runs: nothing to wait for.
            let daemon = layer_disk::start(
                &bin,
                layers,
                &sock,
                &log,
                &spec.console_log,
                confinement.as_ref(),
            )?;
            tracing::debug!(
                pid = daemon.pid(),
                layers = layers.layers.len(),
                "husk-layer-disk started"
            );
            leftovers.add_helper(daemon);
            layer_socket = Some(sock);
        }
        let mut fs_sockets = Vec::new();
        let mut fs_starting = Vec::new();
        if !spec.shared_dirs.is_empty() {
            let bin = match &self.virtiofsd {
                Some(b) => b.clone(),
                None => virtiofsd::find_binary()?,
            };
            for (i, share) in spec.shared_dirs.iter().enumerate() {
                let sock = virtiofsd::socket_for(&spec.console_log, i);
                leftovers.files.push(sock.clone());
                let starting = virtiofsd::launch(
                    &bin,
                    share,
                    &sock,
                    virtiofsd::Sandbox::Namespace,
                    &log,
                    &spec.console_log,
                )?;
                fs_starting.push((bin.clone(), share, starting));
                fs_sockets.push(sock);
            }
        }
        for (bin, share, starting) in fs_starting {
            let daemon = virtiofsd::ready(starting, &bin, share, &log, &spec.console_log)?;
            tracing::debug!(pid = daemon.pid(), tag = %share.tag, "virtiofsd ready");
            leftovers.add_helper(daemon);
        }
        timings::mark("helper daemons");
        let mut cmd = Command::new(&self.qemu);
        cmd.args(args(
            spec,
            self.accel,
            self.tsc_khz,
            agent_link.as_deref(),
            &fs_sockets,
            layer_socket.as_deref(),
            boot,
        ));
        if let Some(c) = &confinement {
            let empty = launch::empty_dir().map_err(|source| Error::File {
                path: launch::EMPTY_DIR.into(),
                source,
            })?;
            cmd.args(confinement_args(c.ids(), &empty));
        }
        child::quiet_stdio(&mut cmd, &log, &spec.console_log)?;
        let disks = match boot {
            Boot::Cold => Vec::new(),
            Boot::Template { .. } | Boot::Restore => disk_fds(spec)?,
        };
        pass_fds(&mut cmd, spec, inherit, &disks);
        let qemu = confined::spawn(
            &self.qemu.display().to_string(),
            &mut cmd,
            confinement.as_ref(),
            namespaces(spec),
            Some(QEMU_CAPS),
        )?;
        leftovers.confinement = confinement;
        timings::mark("VMM spawn");
        tracing::debug!(
            pid = qemu.pid(),
            accel = self.accel.as_str(),
            "QEMU started"
        );
        Ok(ProcessVm::new(
            qemu,
            leftovers,
            spec.console_log.clone(),
            spec.vsock.as_ref().map(|v| v.uds_path.clone()),
            // A restored guest said it was ready before its template was saved, and says
            // nothing now: its agent answers as soon as the state is loaded.
            spec.vsock
                .as_ref()
                .filter(|_| boot != Boot::Restore)
                .map(|_| husk_protocol::GUEST_READY_MARKER),
        ))
    }
}

impl QemuBackend {
    /// What QEMU's cgroup allows beyond guest memory: under TCG its translation cache (up to
    /// a few hundred MiB on a busy guest) and its own heap; under KVM, heap and I/O buffers.
    /// pids: its vCPU, RCU and I/O worker threads (QEMU's pool grows to 64).
    fn overhead(&self, spec: &VmSpec) -> confined::Overhead {
        confined::Overhead {
            memory_mib: match self.accel {
                Accel::Tcg => 512,
                Accel::Kvm => 128,
            },
            pids: 80 + u64::from(spec.vcpus),
        }
    }
}

/// QEMU's own confinement, on top of the namespaces, PID namespace and cgroup it is born in:
/// its seccomp sandbox (no obsolete syscalls, no spawning, no resource-control calls), and,
/// once it has opened everything, a chroot into an empty directory as the jail's uid/gid.
///
/// `elevateprivileges=deny` would forbid the very set*id calls `-runas` makes (QEMU 7.2
/// installs its filter first and dies of SIGSYS at `-runas`: measured), so set*id stays
/// allowed; QEMU drops to a non-root uid with no capabilities and `no_new_privs` (set by its
/// seccomp library), from which no set*id call can climb back.
pub fn confinement_args(ids: Ids, empty_dir: &Path) -> Vec<String> {
    vec![
        "-sandbox".into(),
        "on,obsolete=deny,elevateprivileges=allow,spawn=deny,resourcecontrol=deny".into(),
        "-runas".into(),
        format!("{}:{}", ids.uid, ids.gid),
        "-chroot".into(),
        empty_dir.display().to_string(),
    ]
}

/// The only capabilities QEMU starts with: those `-runas` and `-chroot` use, after it has
/// opened its files (all root's own, so no DAC override is needed).
const QEMU_CAPS: &[u32] = &[
    launch::CAP_SETGID,
    launch::CAP_SETUID,
    launch::CAP_SYS_CHROOT,
];

/// The namespaces QEMU is born in: mount, IPC, UTS, and network unless it opens a TAP by name
/// (a pre-opened TAP fd works from any namespace).
fn namespaces(spec: &VmSpec) -> libc::c_int {
    let mut flags = libc::CLONE_NEWNS | libc::CLONE_NEWIPC | libc::CLONE_NEWUTS;
    if spec.taps.iter().all(|t| t.fd.is_some()) {
        flags |= libc::CLONE_NEWNET;
    }
    flags
}

/// The fd number QEMU finds the pre-opened TAP of NIC `i` at (`-netdev tap,fd=N`): high,
/// so it cannot collide with the stdio and the few fds a spawn keeps.
pub fn tap_fd_number(i: usize) -> i32 {
    200 + i as i32
}

/// The descriptors disk `i` comes as to a saved or restored VM, with whether each is
/// writable: read-write and read-only for a writable disk, read-only for a read-only one.
/// Below [`QMP_FD`], clear of the stdio and the few a spawn keeps.
fn disk_fd_numbers(i: usize, read_only: bool) -> Vec<(i32, bool)> {
    let base = 100 + 2 * i as i32;
    match read_only {
        true => vec![(base + 1, false)],
        false => vec![(base, true), (base + 1, false)],
    }
}

/// Opens `spec`'s disks as QEMU takes them when saved or restored ([`disk_fd_numbers`]):
/// each descriptor with the number it gets in QEMU.
fn disk_fds(spec: &VmSpec) -> Result<Vec<(std::fs::File, i32)>, Error> {
    let mut fds = Vec::new();
    for (i, d) in spec.disks.iter().enumerate() {
        for (fd, write) in disk_fd_numbers(i, d.read_only) {
            let f = std::fs::OpenOptions::new()
                .read(true)
                .write(write)
                .open(&d.path)
                .map_err(|source| Error::File {
                    path: d.path.clone(),
                    source,
                })?;
            fds.push((f, fd));
        }
    }
    Ok(fds)
}

/// Makes the pre-opened TAP fds of `spec` appear in QEMU at [`tap_fd_number`], `inherit`'s
/// at theirs and `disks` at their numbers, inheritable.
fn pass_fds(
    cmd: &mut Command,
    spec: &VmSpec,
    inherit: Inherit<'_>,
    disks: &[(std::fs::File, i32)],
) {
    use std::os::fd::AsRawFd;
    let fds: Vec<(i32, i32)> = spec
        .taps
        .iter()
        .enumerate()
        .filter_map(|(i, t)| t.fd.as_ref().map(|f| (f.0.as_raw_fd(), tap_fd_number(i))))
        .chain(inherit.state.map(|f| (f.as_raw_fd(), STATE_FD)))
        .chain(inherit.ram.map(|f| (f.as_raw_fd(), RAM_FD)))
        .chain(inherit.qmp.map(|s| (s.as_raw_fd(), QMP_FD)))
        .chain(disks.iter().map(|(f, n)| (f.as_raw_fd(), *n)))
        .collect();
    child::inherit_fds(cmd, fds);
}

fn is_elf(kernel: &Path) -> bool {
    use std::io::Read;
    let mut magic = [0u8; 4];
    std::fs::File::open(kernel)
        .and_then(|mut f| f.read_exact(&mut magic))
        .is_ok()
        && magic == *b"\x7fELF"
}
