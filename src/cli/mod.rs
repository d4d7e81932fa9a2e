//! The `husk` command line: clap definitions (one struct per subcommand, in [`args`]) and
//! the commands behind them ([`commands`]). `src/bin/husk.rs` only parses and dispatches.

pub mod args;
pub mod commands;
pub mod exit_handoff;
pub mod format;
pub mod images;
pub mod runtime;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

pub use args::*;
pub use format::Format;

/// Run OCI containers, each in its own microVM.
#[derive(Debug, Parser)]
#[command(name = "husk", version, about, propagate_version = true)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalOpts,
    #[command(subcommand)]
    pub command: Command,
}

/// Flags every subcommand takes.
#[derive(Debug, Clone, clap::Args)]
pub struct GlobalOpts {
    /// Where images and containers are kept.
    #[arg(long, global = true, default_value = "/var/lib/husk")]
    pub root: PathBuf,
    /// VM backend: auto (husk-vmm where KVM runs Linux guests, else QEMU), husk or qemu
    /// (default: $HUSK_VMM, else auto).
    #[arg(long, global = true)]
    pub vmm: Option<String>,
    /// Guest kernel (default: $HUSK_KERNEL, <prefix>/share/husk/vmlinux, ~/.cache/husk/kernel/vmlinux).
    #[arg(long, global = true)]
    pub kernel: Option<PathBuf>,
    /// Agent initramfs (default: $HUSK_INITRAMFS, <prefix>/share/husk/initramfs.cpio).
    #[arg(long, global = true)]
    pub initramfs: Option<PathBuf>,
    /// error, warn, info, debug or trace (or a tracing filter).
    #[arg(long, global = true, default_value = "warn")]
    pub log_level: String,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a command in a new container.
    Run(Box<RunArgs>),
    /// List containers.
    Ps(PsArgs),
    /// Print a container's output.
    Logs(LogsArgs),
    /// Run a command in a running container.
    Exec(ExecArgs),
    /// Stop running containers (SIGTERM, then SIGKILL).
    Stop(StopArgs),
    /// Boot stopped containers again on their kept writable layer.
    Start(StartArgs),
    /// Send a signal to a container's process.
    Kill(KillArgs),
    /// Remove containers.
    Rm(RmArgs),
    /// Show a container or image as JSON.
    Inspect(InspectArgs),
    /// List images.
    Images(ImagesArgs),
    /// Remove images.
    Rmi(RmiArgs),
    /// Give an image another name (moved here if another image had it).
    Tag(TagArgs),
    /// Write images to a docker-archive or oci-archive tar.
    Save(SaveArgs),
    /// Manage images (prune).
    Image(ImageArgs),
    /// Load an image from a docker-archive or oci-archive tar.
    Load(LoadArgs),
    /// Pull an image from a registry.
    Pull(PullArgs),
    /// Log in to a registry (keeps the credentials where docker would).
    Login(LoginArgs),
    /// Log out from a registry.
    Logout(LogoutArgs),
    /// Host checks.
    System(SystemArgs),
}

/// Why a command failed; the binary prints it on one line and exits 125.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Runtime(#[from] crate::runtime::Error),
    #[error(transparent)]
    Backend(#[from] crate::backend::ParseBackendKindError),
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    Image(String),
    #[error("writing output: {0}")]
    Output(#[from] std::io::Error),
    #[error(transparent)]
    Format(#[from] format::TemplateError),
}

/// Parses the process's arguments as `T`. Help and version requests are printed as clap
/// prints them and end the process (exit 0); any other parse error comes back as one line,
/// clap's first, without its usage block, for the binary to report its own way.
pub fn parse_args<T: clap::Parser>() -> Result<T, String> {
    use clap::error::ErrorKind;
    match T::try_parse() {
        Ok(t) => Ok(t),
        Err(e)
            if matches!(
                e.kind(),
                ErrorKind::DisplayHelp
                    | ErrorKind::DisplayVersion
                    | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
            ) =>
        {
            e.exit()
        }
        Err(e) => {
            let text = e.render().to_string();
            let first = text.lines().next().unwrap_or("invalid arguments");
            Err(first.trim_start_matches("error: ").to_string())
        }
    }
}
