//! husk-vmm: one KVM microVM from flags or a JSON config. See `husk::vmm`.
//!
//! Exit status: 0 when the guest resets (reboot, or poweroff with `reboot=k`); 1 with one
//! line on stderr for any failure (triple fault, KVM or emulation error, watchdog, bad
//! input, no /dev/kvm); `--probe`: 0 if this host can run Linux guests, 2 if not.

#![deny(clippy::undocumented_unsafe_blocks)]

use clap::Parser;
use husk::confine::seccomp;
use husk::vmm::cli::Args;
use husk::vmm::probe::HostProbe;
use husk::vmm::Vmm;

fn main() {
    // The sockets and files husk-vmm makes (its vsock socket) are its owner's only.
    // SAFETY: umask only sets this process's file mode mask.
    unsafe { libc::umask(0o077) };
    let args = Args::parse();
    if args.probe {
        let probe = HostProbe::run();
        if args.json {
            match serde_json::to_string_pretty(&probe) {
                Ok(s) => println!("{s}"),
                Err(e) => eprintln!("husk-vmm: {e}"),
            }
        } else {
            print!("{}", probe.report());
        }
        std::process::exit(if probe.can_run_linux_guests { 0 } else { 2 });
    }
    // The VM stays alive (not dropped) until the process exits: see `teardown`.
    let mut vmm = None;
    let mut fast_exit = false;
    let selftest = args.seccomp_selftest;
    let result = args
        .into_config()
        .map_err(anyhow::Error::from)
        .and_then(|cfg| {
            fast_exit = cfg.fast_exit;
            // Compiled before anything else; each thread installs its own once it starts.
            seccomp::prepare(cfg.seccomp, cfg.fast_exit, selftest)?;
            Ok(vmm.insert(Vmm::new(cfg)?).run()?)
        });
    let code = match result {
        Ok(reason) if reason.is_clean() => 0,
        Ok(reason) => {
            eprintln!("husk-vmm: {reason}");
            reason.exit_code()
        }
        Err(e) => {
            eprintln!("husk-vmm: {e}");
            1
        }
    };
    // Exit without unwinding: vCPU threads may still be leaving KVM_RUN.
    if vmm.is_some() && fast_exit {
        husk::vmm::teardown::exit_now(code);
    }
    std::process::exit(code);
}
