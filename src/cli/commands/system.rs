//! `husk system check|df|prune`: whether this host can run containers; df and prune live
//! in `df.rs` and `prune.rs`.

use std::path::PathBuf;

use crate::backend::{agent_mux, husk_vmm, qemu, virtiofsd, BackendKind};
use crate::cli::{Error, GlobalOpts, SystemArgs, SystemCommand};
use crate::pod::assets::{initramfs_candidates, kernel_candidates};
use crate::util::fs::which_or_in;
use crate::vmm::probe::HostProbe;

/// One line of the report.
struct Check {
    what: &'static str,
    ok: bool,
    /// Whether a failure makes the host unable to run containers.
    required: bool,
    detail: String,
}

impl Check {
    /// A helper program husk starts: its path, or why it was not found.
    fn program(
        what: &'static str,
        found: Result<PathBuf, impl std::fmt::Display>,
        required: bool,
    ) -> Check {
        Check {
            what,
            ok: found.is_ok(),
            required,
            detail: match found {
                Ok(p) => p.display().to_string(),
                Err(e) => e.to_string(),
            },
        }
    }
}

pub fn run(g: &GlobalOpts, a: SystemArgs) -> Result<i32, Error> {
    match a.command {
        SystemCommand::Check => check(g),
        SystemCommand::Df(a) => super::df::run(g, a),
        SystemCommand::Prune(a) => super::prune::system(g, a),
    }
}

fn check(g: &GlobalOpts) -> Result<i32, Error> {
    let kind = BackendKind::from_flag_or_env(g.vmm.as_deref())?;
    let picked = kind.resolve();
    let mut c = Vec::new();

    let probe = HostProbe::run();
    let kvm = probe.facts.kvm_open();
    c.push(Check {
        what: "KVM access",
        ok: kvm.is_ok(),
        required: picked == BackendKind::Husk,
        detail: match kvm {
            Ok(_) => "/dev/kvm opens read-write".into(),
            Err(e) => format!(
                "/dev/kvm: {e}; load kvm_intel/kvm_amd and add this user to the kvm group \
                 (QEMU/TCG still works without it)"
            ),
        },
    });
    c.push(Check {
        what: "husk-vmm guests",
        ok: probe.can_run_linux_guests,
        required: picked == BackendKind::Husk,
        detail: probe.reason.clone(),
    });
    c.push(Check {
        what: "backend",
        ok: true,
        required: false,
        detail: format!(
            "--vmm {kind} picks {picked}{}",
            if picked == BackendKind::Qemu && kind == BackendKind::Auto {
                " (husk-vmm cannot run Linux guests here)"
            } else {
                ""
            }
        ),
    });
    c.push(Check::program(
        "husk-vmm",
        husk_vmm::find_binary(),
        picked == BackendKind::Husk,
    ));
    // QEMU reaches an image's layer disk only through it.
    c.push(Check::program(
        "husk-layer-disk",
        crate::backend::layer_disk::find_binary(),
        picked == BackendKind::Qemu,
    ));
    // `husk run -d` and `husk start` leave each container to one.
    c.push(Check::program(
        "husk-monitor",
        crate::runtime::monitor::find_binary(),
        true,
    ));
    let found = |cands: Vec<PathBuf>| cands.iter().find(|p| p.is_file()).cloned();
    let kernel = kernel_candidates(g.kernel.as_deref());
    c.push(Check {
        what: "guest kernel",
        ok: found(kernel.clone()).is_some(),
        required: true,
        detail: match found(kernel.clone()) {
            Some(p) => p.display().to_string(),
            None => format!(
                "not found (looked at {}); build it with kernel-config/build.sh or run \
                 scripts/setup.sh, or set HUSK_KERNEL",
                list(&kernel)
            ),
        },
    });
    let initrd = initramfs_candidates(g.initramfs.as_deref());
    c.push(Check {
        what: "agent initramfs",
        ok: found(initrd.clone()).is_some(),
        required: true,
        detail: match found(initrd.clone()) {
            Some(p) => p.display().to_string(),
            None => format!(
                "not found (looked at {}); build it with scripts/build-initramfs.sh or run \
                 scripts/setup.sh, or set HUSK_INITRAMFS",
                list(&initrd)
            ),
        },
    });
    // The backend as `husk run` would start it: the binary and the accelerator it gets.
    let q = qemu::QemuBackend::from_env();
    c.push(Check {
        what: "qemu",
        ok: q.is_ok(),
        required: picked == BackendKind::Qemu,
        detail: match q {
            Ok(b) => format!(
                "{} (-accel {}{})",
                b.qemu.display(),
                b.accel.as_str(),
                if b.accel == qemu::Accel::Tcg {
                    ": every guest instruction emulated"
                } else {
                    ""
                }
            ),
            Err(e) => e.to_string(),
        },
    });
    c.push(Check::program(
        "husk-agent-mux",
        agent_mux::find_binary(),
        picked == BackendKind::Qemu,
    ));
    let f = virtiofsd::find_binary();
    c.push(Check {
        what: "virtiofsd",
        ok: f.is_ok(),
        // Only `-v` needs it; containers without volumes run without it.
        required: false,
        detail: match f {
            Ok(p) => format!("{} (for -v)", p.display()),
            Err(e) => e.to_string(),
        },
    });
    for (tool, pkg, why, required) in [
        (
            "mkfs.erofs",
            "erofs-utils",
            "turns image layers into read-only disks",
            true,
        ),
        (
            "mkfs.ext4",
            "e2fsprogs",
            "makes each container's writable layer",
            true,
        ),
        // Networking: `--network none` runs without them, the default bridge does not.
        (
            "ip",
            "iproute2",
            "sets up the bridge and TAPs of --network bridge",
            false,
        ),
        ("nft", "nftables", "adds the NAT and -p rules", false),
        (
            "tc",
            "iproute2",
            "mirrors an engine's veth (--network ns:)",
            false,
        ),
    ] {
        let p = which_or_in(tool, &["/usr/sbin", "/sbin"]);
        c.push(Check {
            what: tool,
            ok: p.is_some(),
            required,
            detail: match p {
                Some(p) => p.display().to_string(),
                None => format!("not found: it {why}; install it (apt-get install {pkg})"),
            },
        });
    }
    let tun = std::path::Path::new("/dev/net/tun");
    c.push(Check {
        what: "/dev/net/tun",
        ok: tun.exists(),
        required: false,
        detail: if tun.exists() {
            "present (TAPs for container networks)".into()
        } else {
            "missing: load the tun module (modprobe tun) for --network bridge".into()
        },
    });

    let mut failed = false;
    for x in &c {
        let mark = match (x.ok, x.required) {
            (true, _) => "ok  ",
            (false, true) => "FAIL",
            (false, false) => "--  ",
        };
        failed |= !x.ok && x.required;
        println!("{mark} {:<20} {}", x.what, x.detail);
    }
    if failed {
        println!("husk cannot run containers here until the FAIL lines are fixed");
        return Ok(1);
    }
    println!("husk can run containers here (backend: {picked})");
    Ok(0)
}

fn list(p: &[PathBuf]) -> String {
    p.iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}
