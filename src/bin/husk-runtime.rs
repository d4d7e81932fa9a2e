//! `husk-runtime`: a runc-compatible OCI runtime; each container runs in its own microVM.

use clap::error::ErrorKind;
use clap::Parser;
use husk::cli::runtime::{RuntimeCli, RuntimeCommand};
use husk::ociruntime::{commands, log};

fn main() {
    let cli = match RuntimeCli::try_parse() {
        Ok(cli) => cli,
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
            // The engine reads the reason from --log: honour it even when parsing failed.
            log::init(log::from_raw_args(std::env::args().skip(1)));
            let text = e.render().to_string();
            let first = text.lines().next().unwrap_or("invalid arguments");
            log::error(first.trim_start_matches("error: "));
            std::process::exit(1);
        }
    };
    // The internal processes' stdio belongs to the container: their errors go to --log.
    let internal = matches!(
        cli.command,
        RuntimeCommand::Sandbox(_) | RuntimeCommand::ExecHolder(_)
    );
    let code = match commands::dispatch(cli) {
        Ok(code) => code,
        Err(e) if internal => {
            log::error_to_file(&e.to_string());
            1
        }
        Err(e) => {
            log::error(&e.to_string());
            1
        }
    };
    std::process::exit(code);
}
