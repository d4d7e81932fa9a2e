//! `husk-runtime`: a runc-compatible OCI runtime; each container runs in its own microVM.

#![deny(clippy::undocumented_unsafe_blocks)]

use husk::cli::runtime::{RuntimeCli, RuntimeCommand};
use husk::ociruntime::{commands, runc_log};

fn main() {
    let cli = match husk::cli::parse_args::<RuntimeCli>() {
        Ok(cli) => cli,
        Err(line) => {
            // The engine reads the reason from --log: honour it even when parsing failed.
            runc_log::init(runc_log::from_raw_args(std::env::args().skip(1)));
            runc_log::error(&line);
            std::process::exit(1);
        }
    };
    if let Err(e) = husk::util::privilege::require_root() {
        runc_log::init(runc_log::from_raw_args(std::env::args().skip(1)));
        runc_log::error(&e.to_string());
        std::process::exit(1);
    }
    // The internal processes' stdio belongs to the container: their errors go to --log.
    let internal = matches!(
        cli.command,
        RuntimeCommand::VmHolder(_) | RuntimeCommand::ExecHolder(_)
    );
    let code = match commands::dispatch(cli) {
        Ok(code) => code,
        // A signal during the boot ended it: that is the outcome, not the boot's failure.
        Err(e) => husk::pod::attach::ending_for_signal().unwrap_or_else(|| {
            if internal {
                runc_log::error_to_file(&e.to_string());
            } else {
                runc_log::error(&e.to_string());
            }
            1
        }),
    };
    std::process::exit(code);
}
