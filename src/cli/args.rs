//! One clap struct per subcommand.

use std::path::PathBuf;

use clap::{ArgAction, Args, Subcommand};

use super::format::Format;
use crate::image::ArchiveFormat;

/// `--pids-limit`'s default: podman's (containers.conf `pids_limit`).
pub const DEFAULT_PIDS_LIMIT: i64 = 2048;

#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// Remove the container when it exits.
    #[arg(long)]
    pub rm: bool,
    /// Run in the background and print the container id.
    #[arg(short = 'd', long)]
    pub detach: bool,
    /// Print how long each phase took (image, disks, network, helpers, VMM spawn, boot to
    /// agent ready, create, start, run, teardown) on stderr at the end. With -d: the phases
    /// up to the start of the monitor.
    #[arg(long)]
    pub timings: bool,
    /// Keep stdin open and pass it to the container.
    #[arg(short = 'i', long)]
    pub interactive: bool,
    /// Give the process a terminal.
    #[arg(short = 't', long)]
    pub tty: bool,
    /// Name the container.
    #[arg(long)]
    pub name: Option<String>,
    /// Set an environment variable (KEY=VALUE, or KEY to copy husk's own).
    #[arg(short = 'e', long = "env", value_name = "KEY=VALUE", action = ArgAction::Append)]
    pub env: Vec<String>,
    /// Working directory inside the container.
    #[arg(short = 'w', long = "workdir", value_name = "DIR")]
    pub workdir: Option<String>,
    /// User to run as: UID[:GID].
    #[arg(short = 'u', long = "user", value_name = "UID[:GID]")]
    pub user: Option<String>,
    /// Share a host directory, live, at a path in the container (repeatable; needs virtiofsd).
    #[arg(short = 'v', long = "volume", value_name = "HOST:GUEST[:ro|:rw]", action = ArgAction::Append)]
    pub volume: Vec<String>,
    /// Network: bridge (a host bridge with NAT), none, or ns:PATH (an existing network
    /// namespace holding a veth). Default: $HUSK_NETWORK, else bridge.
    #[arg(long, value_name = "bridge|none|ns:PATH")]
    pub network: Option<String>,
    /// Publish a container port on the host (repeatable; bridge network only).
    #[arg(short = 'p', long = "publish", value_name = "[IP:]HOST:CONTAINER[/tcp|udp]", action = ArgAction::Append)]
    pub publish: Vec<String>,
    /// Container hostname (default: the short id).
    #[arg(long)]
    pub hostname: Option<String>,
    /// vCPUs of the VM (fractions round up).
    #[arg(long, default_value = "1")]
    pub cpus: String,
    /// Memory of the VM (e.g. 256m, 1g).
    #[arg(short = 'm', long, default_value = "256m")]
    pub memory: String,
    /// Most processes the container may have at once, as podman's default (0 or -1:
    /// unlimited). A fork bomb then stops at the limit instead of starving the guest.
    #[arg(long, default_value_t = DEFAULT_PIDS_LIMIT, allow_negative_numbers = true)]
    pub pids_limit: i64,
    /// Writable layer options, as docker's: size=SIZE is the most the container may write
    /// (default 8g; sparse on the host, so it costs what is written).
    #[arg(long = "storage-opt", value_name = "size=SIZE", action = ArgAction::Append)]
    pub storage_opt: Vec<String>,
    /// Override the image's entrypoint ("" clears it).
    #[arg(long)]
    pub entrypoint: Option<String>,
    /// The image to run.
    pub image: String,
    /// The command and its arguments (replace the image's Cmd).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<String>,
}

#[derive(Debug, Clone, Args)]
pub struct PsArgs {
    /// Show all containers (default: running ones).
    #[arg(short = 'a', long)]
    pub all: bool,
    /// Only print ids.
    #[arg(short = 'q', long)]
    pub quiet: bool,
    /// table, json, or a template of docker's fields: '{{.ID}} {{.Names}} {{.Status}}'
    /// (.ID .Image .Command .CreatedAt .RunningFor .Ports .Status .State .Names).
    #[arg(long, default_value = "table")]
    pub format: Format,
}

#[derive(Debug, Clone, Args)]
pub struct LogsArgs {
    /// Keep printing as the container writes.
    #[arg(short = 'f', long)]
    pub follow: bool,
    pub container: String,
}

#[derive(Debug, Clone, Args)]
pub struct ExecArgs {
    #[arg(short = 'i', long)]
    pub interactive: bool,
    #[arg(short = 't', long)]
    pub tty: bool,
    #[arg(short = 'e', long = "env", value_name = "KEY=VALUE", action = ArgAction::Append)]
    pub env: Vec<String>,
    #[arg(short = 'w', long = "workdir", value_name = "DIR")]
    pub workdir: Option<String>,
    #[arg(short = 'u', long = "user", value_name = "UID[:GID]")]
    pub user: Option<String>,
    pub container: String,
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<String>,
}

#[derive(Debug, Clone, Args)]
pub struct StopArgs {
    /// Seconds to wait after SIGTERM before SIGKILL.
    #[arg(short = 't', long = "time", default_value_t = 10)]
    pub time: u64,
    #[arg(required = true)]
    pub containers: Vec<String>,
}

#[derive(Debug, Clone, Args)]
pub struct StartArgs {
    #[arg(required = true)]
    pub containers: Vec<String>,
}

#[derive(Debug, Clone, Args)]
pub struct KillArgs {
    /// Signal name or number.
    #[arg(short = 's', long, default_value = "KILL")]
    pub signal: String,
    #[arg(required = true)]
    pub containers: Vec<String>,
}

#[derive(Debug, Clone, Args)]
pub struct RmArgs {
    /// Kill running containers first.
    #[arg(short = 'f', long)]
    pub force: bool,
    #[arg(required = true)]
    pub containers: Vec<String>,
}

#[derive(Debug, Clone, Args)]
pub struct InspectArgs {
    /// Container (id, prefix or name) or image reference.
    #[arg(required = true)]
    pub targets: Vec<String>,
}

#[derive(Debug, Clone, Args)]
pub struct ImagesArgs {
    /// Only print image IDs.
    #[arg(short = 'q', long)]
    pub quiet: bool,
    /// Show a DIGEST column: the registry's manifest digest, <none> for an image whose
    /// manifest husk wrote itself (a docker-archive load).
    #[arg(long)]
    pub digests: bool,
    /// table, json, or a template of docker's fields: '{{.Repository}}:{{.Tag}} {{.ID}}'
    /// (.ID .Repository .Tag .Digest .CreatedSince .CreatedAt .Size).
    #[arg(long, default_value = "table")]
    pub format: Format,
}

#[derive(Debug, Clone, Args)]
pub struct TagArgs {
    /// The image (name, ID or digest).
    pub source: String,
    /// Its new name, moved here if another image had it.
    pub target: String,
}

#[derive(Debug, Clone, Args)]
pub struct SaveArgs {
    /// Write to this file (default: stdout, which must not be a terminal).
    #[arg(short = 'o', long = "output")]
    pub output: Option<PathBuf>,
    /// docker-archive (what docker save writes) or oci-archive.
    #[arg(long, default_value = "docker-archive")]
    pub format: ArchiveFormat,
    /// Images (names, IDs or digests).
    #[arg(required = true)]
    pub images: Vec<String>,
}

#[derive(Debug, Clone, Args)]
pub struct ImageArgs {
    #[command(subcommand)]
    pub command: ImageCommand,
}

#[derive(Debug, Clone, Subcommand)]
pub enum ImageCommand {
    /// Remove dangling images (with -a: every image no container uses).
    Prune(PruneArgs),
}

#[derive(Debug, Clone, Args)]
pub struct PruneArgs {
    /// Remove every image no container uses, not only dangling ones.
    #[arg(short = 'a', long)]
    pub all: bool,
    /// Do not ask for confirmation.
    #[arg(short = 'f', long)]
    pub force: bool,
}

#[derive(Debug, Clone, Args)]
pub struct DfArgs {
    /// Show the space each image and container takes.
    #[arg(short = 'v', long)]
    pub verbose: bool,
    /// table or json (one object per line, as docker prints).
    #[arg(long, default_value = "table")]
    pub format: Format,
}

#[derive(Debug, Clone, Args)]
pub struct RmiArgs {
    #[arg(short = 'f', long)]
    pub force: bool,
    #[arg(required = true)]
    pub images: Vec<String>,
}

#[derive(Debug, Clone, Args)]
pub struct LoadArgs {
    /// The archive (docker save or oci-archive tar).
    #[arg(short = 'i', long = "input")]
    pub input: PathBuf,
}

#[derive(Debug, Clone, Args)]
pub struct PullArgs {
    /// Check the registry's TLS certificate (`--tls-verify=false`: don't, and fall back to
    /// plain HTTP when the registry has no TLS).
    #[arg(long, value_name = "BOOL", default_value_t = true, num_args = 0..=1,
          require_equals = true, default_missing_value = "true", action = ArgAction::Set)]
    pub tls_verify: bool,
    pub reference: String,
    /// Pull this platform's image from a multi-platform index (OS/ARCH[/VARIANT]) [default:
    /// this host's].
    #[arg(long, value_name = "OS/ARCH[/VARIANT]")]
    pub platform: Option<crate::image::import::platform::Platform>,
    /// No progress bars.
    #[arg(short = 'q', long)]
    pub quiet: bool,
}

#[derive(Debug, Clone, Args)]
pub struct LoginArgs {
    /// Username.
    #[arg(short = 'u', long)]
    pub username: Option<String>,
    /// Password (visible to other users of this host: prefer --password-stdin).
    #[arg(short = 'p', long, conflicts_with = "password_stdin")]
    pub password: Option<String>,
    /// Read the password from stdin.
    #[arg(long)]
    pub password_stdin: bool,
    /// Check the registry's TLS certificate (see `husk pull --help`).
    #[arg(long, value_name = "BOOL", default_value_t = true, num_args = 0..=1,
          require_equals = true, default_missing_value = "true", action = ArgAction::Set)]
    pub tls_verify: bool,
    /// The registry (default: Docker Hub).
    pub registry: Option<String>,
}

#[derive(Debug, Clone, Args)]
pub struct LogoutArgs {
    /// The registry (default: Docker Hub).
    pub registry: Option<String>,
}

#[derive(Debug, Clone, Args)]
pub struct SystemArgs {
    #[command(subcommand)]
    pub command: SystemCommand,
}

#[derive(Debug, Clone, Subcommand)]
pub enum SystemCommand {
    /// Check that this host can run containers, and say how to fix what is missing.
    Check,
    /// Show the disk space images and containers take.
    Df(DfArgs),
    /// Remove stopped containers and dangling images (with -a: every unused image).
    Prune(PruneArgs),
}
