//! `husk`: run OCI containers, each in its own microVM.

#![deny(clippy::undocumented_unsafe_blocks)]

use husk::cli::{commands, Cli};

/// docker's exit code for errors of the CLI itself (not the container's).
const CLI_ERROR: i32 = 125;

fn main() {
    let cli = match husk::cli::parse_args::<Cli>() {
        Ok(cli) => cli,
        Err(line) => {
            eprintln!("husk: {line} (see `husk --help`)");
            std::process::exit(CLI_ERROR);
        }
    };
    if let Err(e) = husk::util::privilege::require_root() {
        eprintln!("husk: {e}");
        std::process::exit(CLI_ERROR);
    }
    init_logging(&cli.global.log_level);
    let code = match commands::dispatch(cli).map_err(anyhow::Error::from) {
        Ok(code) => code,
        // A Ctrl-C during the boot ended it: that, not the boot's failure, is the outcome.
        Err(e) => husk::pod::attach::ending_for_signal().unwrap_or_else(|| {
            eprintln!("husk: {}", one_line(&e));
            CLI_ERROR
        }),
    };
    std::process::exit(code);
}

/// The error and its causes on one line, leaving out a cause whose text the line already
/// carries (most messages embed their source; `{:#}` would print it twice).
fn one_line(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

fn init_logging(level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    // Colour codes only for a terminal: a warning read from a pipe or a log is one plain line.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr)
        .without_time()
        .try_init();
}
