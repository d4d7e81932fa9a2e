//! husk-monitor: owns one detached container's VM from boot to exit (`husk run -d`,
//! `husk start`), as conmon does for podman. `husk` starts it in a session of its own, with a
//! ready pipe named by `HUSK_MONITOR_READY_FD`; it boots the container, says `ok` (or why it
//! failed) on that pipe, writes the container's output to its log file, records the exit
//! status and applies `--rm`. Its stderr is the container's `monitor.log`.
//!
//! It is a binary of its own, not a subcommand of `husk`, so that a process which lives as
//! long as its container maps only the code it runs: no image store, registry client or TLS
//! library (`scripts/bench.sh` measures its PSS beside the VMM's).

#![deny(clippy::undocumented_unsafe_blocks)]

use std::path::PathBuf;

use clap::Parser;
use husk::backend::BackendKind;
use husk::runtime::{monitor, Runtime};

/// Own a detached container's VM until it ends (started by `husk`, not by hand).
#[derive(Debug, Parser)]
#[command(name = "husk-monitor", version)]
struct Args {
    /// The husk root the container is kept under.
    #[arg(long)]
    root: PathBuf,
    /// The VM backend (auto, husk or qemu).
    #[arg(long)]
    vmm: String,
    /// The guest kernel, when `husk` was given one.
    #[arg(long)]
    kernel: Option<PathBuf>,
    /// The agent initramfs, when `husk` was given one.
    #[arg(long)]
    initramfs: Option<PathBuf>,
    /// The container's full id.
    id: String,
}

fn main() {
    let args = Args::parse();
    // Warnings (a VM that went before its process exited) go to monitor.log.
    let _ = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::WARN)
        .with_ansi(false)
        .with_writer(std::io::stderr)
        .without_time()
        .try_init();
    let code = run(args).unwrap_or_else(|e| {
        eprintln!("husk-monitor: {e:#}");
        125
    });
    std::process::exit(code);
}

fn run(args: Args) -> anyhow::Result<i32> {
    let mut rt = Runtime::new(&args.root, BackendKind::from_flag_or_env(Some(&args.vmm))?)?;
    rt.kernel = args.kernel;
    rt.initramfs = args.initramfs;
    Ok(monitor::run_monitor(&rt, &args.id)?)
}
