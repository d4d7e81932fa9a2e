//! One function per `husk-runtime` subcommand; [`dispatch`] picks it.

mod create;
mod exec;
mod info;
mod lifecycle;
mod signal;

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command};

use super::runc_log::{self, Format, Logger};
use super::state::Store;
use super::Error;
use crate::cli::runtime::{RuntimeCli, RuntimeCommand};

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

/// Re-executes husk-runtime with the global flags and `args`, in a session of its own, with
/// the write end of a pipe as fd [`READY_FD`](super::vm_holder::READY_FD); the stdio is
/// inherited. Returns the child and the pipe's read end.
fn spawn_helper(
    g: &crate::cli::runtime::RuntimeGlobal,
    args: &[&std::ffi::OsStr],
) -> Result<(Child, std::fs::File), Error> {
    use std::os::fd::{FromRawFd, IntoRawFd};
    let exe = std::env::current_exe().map_err(Error::io("/proc/self/exe"))?;
    let mut fds = [0i32; 2];
    // SAFETY: pipe2 fills the two fds.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(Error::io("pipe")(std::io::Error::last_os_error()));
    }
    // SAFETY: fresh fds from pipe2, owned here.
    let (read_end, write_end) = unsafe {
        (
            std::fs::File::from_raw_fd(fds[0]),
            std::fs::File::from_raw_fd(fds[1]),
        )
    };
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
    cmd.env(
        super::vm_holder::READY_FD_ENV,
        super::vm_holder::READY_FD.to_string(),
    );
    let wfd = write_end.into_raw_fd();
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // dup2 leaves the new fd without CLOEXEC, so it survives the exec.
            if libc::dup2(wfd, super::vm_holder::READY_FD) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let spawned = cmd.spawn();
    // SAFETY: our copy of the write end; the child has its own.
    unsafe { libc::close(wfd) };
    Ok((spawned.map_err(Error::io(&exe))?, read_end))
}

/// The helper's one-line answer: `Ok` for `ok`, else what it said.
fn read_ready(read_end: std::fs::File) -> Result<(), String> {
    let mut answer = String::new();
    let _ = std::io::BufRead::read_line(&mut std::io::BufReader::new(read_end), &mut answer);
    match answer.trim() {
        "ok" => Ok(()),
        "" => Err("it exited without saying why (see --log)".into()),
        msg => Err(msg.to_string()),
    }
}

/// Writes `pid` to `path` through a temp file and a rename, as runc does (no newline).
fn write_pid_file(path: &Path, pid: u32) -> Result<(), Error> {
    crate::util::fs::write_atomic(path, pid.to_string().as_bytes()).map_err(Error::io(path))
}
