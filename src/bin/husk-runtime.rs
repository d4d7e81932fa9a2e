//! `husk-runtime`: a runc-compatible OCI runtime; each container runs in its own microVM.

#![deny(clippy::undocumented_unsafe_blocks)]

use husk::cli::runtime::{RuntimeCli, RuntimeCommand};
use husk::ociruntime::{commands, log};

fn main() {
    let cli = match husk::cli::parse_args::<RuntimeCli>() {
        Ok(cli) => cli,
        Err(line) => {
            // The engine reads the reason from --log: honour it even when parsing failed.
            log::init(log::from_raw_args(std::env::args().skip(1)));
            log::error(&line);
            std::process::exit(1);
        }
    };
    // The internal processes' stdio belongs to the container: their errors go to --log.
    let internal = matches!(
        cli.command,
        RuntimeCommand::VmHolder(_) | RuntimeCommand::ExecHolder(_)
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
