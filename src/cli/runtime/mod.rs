//! The `husk-runtime` command line: runc's CLI contract, one clap struct per subcommand
//! (in [`args`]); the commands are in [`crate::ociruntime::commands`].

pub mod args;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

pub use args::*;

/// A runc-compatible OCI runtime: each container runs in its own microVM.
#[derive(Debug, Parser)]
#[command(
    name = "husk-runtime",
    version,
    long_version = concat!("version ", env!("CARGO_PKG_VERSION"), "\nspec: 1.2.0\nvm: one microVM per container (husk)"),
    about,
    // As runc (urfave/cli): a flag given twice takes the last value, so a wrapper's
    // `--root` can be overridden by the engine's.
    args_override_self = true
)]
pub struct RuntimeCli {
    #[command(flatten)]
    pub global: RuntimeGlobal,
    #[command(subcommand)]
    pub command: RuntimeCommand,
}

/// runc's global flags.
#[derive(Debug, Clone, clap::Args)]
pub struct RuntimeGlobal {
    /// Where container state is kept.
    #[arg(long, global = true, default_value = "/run/husk-runtime")]
    pub root: PathBuf,
    /// Log file (errors, and with --debug more).
    #[arg(long, global = true)]
    pub log: Option<PathBuf>,
    /// text or json (runc's JSON lines).
    #[arg(long, global = true, default_value = "text")]
    pub log_format: String,
    /// Also log debug messages.
    #[arg(long, global = true)]
    pub debug: bool,
    /// Accepted for compatibility; cgroups live in the guest.
    #[arg(long, global = true)]
    pub systemd_cgroup: bool,
    /// Accepted for compatibility (runc's rootless mode); ignored.
    #[arg(long, global = true)]
    pub rootless: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum RuntimeCommand {
    /// Create a container: boot its VM, prepare its process, do not start it.
    Create(CreateArgs),
    /// Start a created container's process.
    Start(IdArgs),
    /// Print a container's state as JSON.
    State(IdArgs),
    /// Send a signal to a container's process.
    Kill(KillArgs),
    /// Remove a container and everything it has on the host.
    Delete(DeleteArgs),
    /// Create and start a container, in the foreground (or detached with --detach).
    Run(RunArgs),
    /// Run another process in a running container.
    Exec(ExecArgs),
    /// List the host processes of a container.
    Ps(PsArgs),
    /// List containers.
    List(ListArgs),
    /// Pause a container's VM (its vCPUs stop).
    Pause(IdArgs),
    /// Resume a paused container.
    Resume(IdArgs),
    /// Write a default config.json.
    Spec(SpecArgs),
    /// Print what this runtime supports, as JSON.
    Features,
    /// (internal) The process that owns a container's VM.
    #[command(name = "vm-holder", hide = true)]
    VmHolder(VmHolderArgs),
    /// (internal) The process that relays a detached exec's stdio.
    #[command(name = "exec-holder", hide = true)]
    ExecHolder(ExecHolderArgs),
}
