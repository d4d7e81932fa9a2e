//! What each subcommand does; `src/bin/husk.rs` calls [`dispatch`]. Each returns the
//! process exit code.

pub mod df;
pub mod exec;
pub mod images;
pub mod inspect;
pub mod kill;
pub mod login;
pub mod logs;
pub mod prune;
pub mod ps;
pub mod rm;
pub mod run;
pub mod save;
pub mod start;
pub mod stop;
pub mod system;
mod usage;

use crate::backend::BackendKind;
use crate::runtime::Runtime;

use super::{Cli, Command, Error, GlobalOpts, ImageCommand};

/// Runs the parsed command line; returns the exit code.
pub fn dispatch(cli: Cli) -> Result<i32, Error> {
    let g = &cli.global;
    if matches!(
        cli.command,
        Command::Ps(_)
            | Command::Inspect(_)
            | Command::Images(_)
            | Command::Logs(_)
            | Command::System(_)
    ) {
        // Commands that only print end quietly when their reader goes (`husk ps | head`),
        // as `ps` and `ls` do. Not the others: they relay on sockets and must see EPIPE.
        // SAFETY: resetting a signal disposition before any thread starts.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    match cli.command {
        Command::Run(a) => run::run(g, *a),
        Command::Ps(a) => ps::run(g, a),
        Command::Logs(a) => logs::run(g, a),
        Command::Exec(a) => exec::run(g, a),
        Command::Stop(a) => stop::run(g, a),
        Command::Start(a) => start::run(g, a),
        Command::Kill(a) => kill::run(g, a),
        Command::Rm(a) => rm::run(g, a),
        Command::Inspect(a) => inspect::run(g, a),
        Command::Images(a) => images::list(g, a),
        Command::Rmi(a) => images::rmi(g, a),
        Command::Load(a) => images::load(g, a),
        Command::Pull(a) => images::pull(g, a),
        Command::Login(a) => login::login(a),
        Command::Logout(a) => login::logout(a),
        Command::Tag(a) => images::tag(g, a),
        Command::Save(a) => save::run(g, a),
        Command::Image(a) => match a.command {
            ImageCommand::Prune(p) => prune::image(g, p),
        },
        Command::System(a) => system::run(g, a),
    }
}

/// The runtime the global flags describe.
pub fn runtime(g: &GlobalOpts) -> Result<Runtime, Error> {
    let kind = BackendKind::from_flag_or_env(g.vmm.as_deref())?;
    let mut rt = Runtime::new(&g.root, kind)?;
    rt.kernel = g.kernel.clone();
    rt.initramfs = g.initramfs.clone();
    Ok(rt)
}

/// Runs `f` on each container argument, printing what it returns; the first failure is
/// reported after the others were tried (as docker does), and makes the exit code 1.
pub fn each(
    names: &[String],
    mut f: impl FnMut(&str) -> Result<String, Error>,
) -> Result<i32, Error> {
    let mut code = 0;
    for n in names {
        match f(n) {
            Ok(out) => println!("{out}"),
            Err(e) => {
                eprintln!("husk: {e}");
                code = 1;
            }
        }
    }
    Ok(code)
}
