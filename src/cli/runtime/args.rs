//! One struct per `husk-runtime` subcommand, with runc's flag names.

use std::path::PathBuf;

#[derive(Debug, Clone, clap::Args)]
pub struct CreateArgs {
    /// The bundle directory (config.json and the rootfs).
    #[arg(long, short = 'b', default_value = ".")]
    pub bundle: PathBuf,
    /// Where to write the VM holder process's pid.
    #[arg(long)]
    pub pid_file: Option<PathBuf>,
    /// A unix socket to send the pty master to (terminal: true).
    #[arg(long)]
    pub console_socket: Option<PathBuf>,
    /// Accepted for compatibility (the rootfs is the guest's own).
    #[arg(long)]
    pub no_pivot: bool,
    /// Accepted for compatibility.
    #[arg(long)]
    pub no_new_keyring: bool,
    /// Accepted for compatibility (fds are not passed into the VM).
    #[arg(long, default_value_t = 0)]
    pub preserve_fds: u32,
    pub id: String,
}

#[derive(Debug, Clone, clap::Args)]
pub struct IdArgs {
    pub id: String,
}

#[derive(Debug, Clone, clap::Args)]
pub struct KillArgs {
    /// Signal every process of the container (all of its cgroup in the guest), not just its
    /// init.
    #[arg(long, short = 'a')]
    pub all: bool,
    pub id: String,
    /// A name (TERM, SIGKILL) or number; default TERM.
    #[arg(default_value = "TERM")]
    pub signal: String,
}

#[derive(Debug, Clone, clap::Args)]
pub struct DeleteArgs {
    /// Kill a running container first.
    #[arg(long, short = 'f')]
    pub force: bool,
    pub id: String,
}

#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    #[arg(long, short = 'b', default_value = ".")]
    pub bundle: PathBuf,
    #[arg(long)]
    pub pid_file: Option<PathBuf>,
    #[arg(long)]
    pub console_socket: Option<PathBuf>,
    /// Leave the container after it exits (default: delete it, as runc does; a detached
    /// container is always left for `delete`).
    #[arg(long)]
    pub keep: bool,
    #[arg(long)]
    pub no_pivot: bool,
    #[arg(long)]
    pub no_new_keyring: bool,
    /// Create and start, then return; the container keeps this command's stdio.
    #[arg(long, short = 'd')]
    pub detach: bool,
    pub id: String,
}

#[derive(Debug, Clone, clap::Args)]
pub struct ExecArgs {
    /// An OCI process JSON file (instead of ARGS).
    #[arg(long, short = 'p')]
    pub process: Option<PathBuf>,
    /// Leave a host process relaying the exec'd process's stdio and return.
    #[arg(long, short = 'd')]
    pub detach: bool,
    #[arg(long)]
    pub pid_file: Option<PathBuf>,
    #[arg(long, short = 't')]
    pub tty: bool,
    #[arg(long)]
    pub console_socket: Option<PathBuf>,
    #[arg(long)]
    pub cwd: Option<String>,
    /// KEY=VALUE (repeatable).
    #[arg(long, short = 'e')]
    pub env: Vec<String>,
    /// UID[:GID].
    #[arg(long, short = 'u')]
    pub user: Option<String>,
    /// Additional gids (repeatable).
    #[arg(long, short = 'g')]
    pub additional_gids: Vec<u32>,
    #[arg(long)]
    pub no_new_privs: bool,
    /// Accepted for compatibility.
    #[arg(long)]
    pub preserve_fds: Option<u32>,
    pub id: String,
    /// The command and its arguments (without --process).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub args: Vec<String>,
}

#[derive(Debug, Clone, clap::Args)]
pub struct PsArgs {
    /// table or json.
    #[arg(long, short = 'f', default_value = "table")]
    pub format: String,
    pub id: String,
    /// ps(1) options (accepted, ignored: the processes are listed by pid).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub ps_args: Vec<String>,
}

#[derive(Debug, Clone, clap::Args)]
pub struct ListArgs {
    /// table or json.
    #[arg(long, short = 'f', default_value = "table")]
    pub format: String,
    /// Print only the ids.
    #[arg(long, short = 'q')]
    pub quiet: bool,
}

#[derive(Debug, Clone, clap::Args)]
pub struct SpecArgs {
    /// Where to write config.json.
    #[arg(long, short = 'b', default_value = ".")]
    pub bundle: PathBuf,
}

#[derive(Debug, Clone, clap::Args)]
pub struct VmHolderArgs {
    #[arg(long)]
    pub console_socket: Option<PathBuf>,
    pub id: String,
}

#[derive(Debug, Clone, clap::Args)]
pub struct ExecHolderArgs {
    /// The converted process (written by `exec`).
    #[arg(long)]
    pub spec: PathBuf,
    #[arg(long)]
    pub console_socket: Option<PathBuf>,
    pub id: String,
}
