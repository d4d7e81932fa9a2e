//! One function per `husk-runtime` subcommand; [`dispatch`] picks it.

mod create;
mod exec;
mod info;
mod lifecycle;
mod signal;

use std::path::Path;
use std::process::{Child, Command};

use super::runc_log::{self, Format, Logger};
use super::state::Store;
use super::Error;
use crate::cli::runtime::{RuntimeCli, RuntimeCommand};
use crate::pod::ready_pipe;

pub use signal::parse_signal;

/// Runs the command; the exit code for the process.
pub fn dispatch(cli: RuntimeCli) -> Result<i32, Error> {
    let g = &cli.global;
    let format: Format = g.log_format.parse().map_err(Error::Usage)?;
    runc_log::init(Logger {
        file: g.log.clone(),
        format,
        debug: g.debug,
    });
    let store = || Store::open(&g.root);
    match &cli.command {
        RuntimeCommand::Create(a) => create::create(&store()?, g, a),
        RuntimeCommand::Run(a) => create::run(&store()?, g, a),
        RuntimeCommand::Start(a) => lifecycle::start(&store()?, &a.id),
        RuntimeCommand::State(a) => lifecycle::state(&store()?, &a.id),
        RuntimeCommand::Kill(a) => lifecycle::kill(&store()?, a),
        RuntimeCommand::Delete(a) => lifecycle::delete(&store()?, &a.id, a.force),
        RuntimeCommand::Pause(a) => lifecycle::pause(&store()?, &a.id, true),
        RuntimeCommand::Resume(a) => lifecycle::pause(&store()?, &a.id, false),
        RuntimeCommand::Exec(a) => exec::exec(&store()?, g, a),
        RuntimeCommand::Ps(a) => info::ps(&store()?, a),
        RuntimeCommand::List(a) => info::list(&store()?, a),
        RuntimeCommand::Spec(a) => info::spec(a),
        RuntimeCommand::Features => info::features(),
        RuntimeCommand::VmHolder(a) => Ok(super::vm_holder::run(
            &store()?,
            &a.id,
            a.console_socket.as_deref(),
            None,
        )),
        RuntimeCommand::ExecHolder(a) => exec::holder(&store()?, a),
    }
}

/// Re-executes husk-runtime with the global flags and `args`, in a session of its own, with a
/// ready pipe ([`crate::pod::ready_pipe`], named by [`READY_FD_ENV`](super::vm_holder::READY_FD_ENV));
/// the stdio is inherited. Returns the child and the pipe's read end.
fn spawn_helper(
    g: &crate::cli::runtime::RuntimeGlobal,
    args: &[&std::ffi::OsStr],
) -> Result<(Child, std::fs::File), Error> {
    let exe = std::env::current_exe().map_err(Error::io("/proc/self/exe"))?;
    let mut cmd = Command::new(&exe);
    cmd.arg("--root").arg(&g.root);
    if let Some(l) = &g.log {
        cmd.arg("--log").arg(l);
    }
    cmd.arg("--log-format").arg(&g.log_format);
    if g.debug {
        cmd.arg("--debug");
    }
    cmd.args(args);
    ready_pipe::spawn(cmd, super::vm_holder::READY_FD_ENV).map_err(Error::io(&exe))
}

/// The helper's one-line answer: `Ok` for `ok`, else what it said.
fn read_ready(read_end: std::fs::File) -> Result<(), String> {
    ready_pipe::read_answer(read_end)
        .map_err(|said| said.unwrap_or_else(|| "it exited without saying why (see --log)".into()))
}

/// Writes `pid` to `path` through a temp file and a rename, as runc does (no newline).
fn write_pid_file(path: &Path, pid: u32) -> Result<(), Error> {
    crate::util::fs::write_atomic(path, pid.to_string().as_bytes()).map_err(Error::io(path))
}
