//! runc's logging contract: `--log FILE` gets one line per message, `--log-format json` makes
//! that runc's JSON line (`{"level":"error","msg":"...","time":"..."}`, which conmon and the
//! containerd shim parse to report a failed `create`), `text` logrus-style `key=value`
//! pairs. Errors also go to stderr as one plain line.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::PathBuf;
use std::sync::OnceLock;

use super::state::rfc3339_now;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    #[default]
    Text,
    Json,
}

impl std::str::FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "text" => Ok(Format::Text),
            "json" => Ok(Format::Json),
            other => Err(format!("unknown log format {other:?}: use text or json")),
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct Logger {
    pub file: Option<PathBuf>,
    pub format: Format,
    pub debug: bool,
}

static LOGGER: OnceLock<Logger> = OnceLock::new();

/// Sets the process-wide logger (first call wins).
pub fn init(logger: Logger) {
    let _ = LOGGER.set(logger);
}

pub fn current() -> Logger {
    LOGGER.get().cloned().unwrap_or_default()
}

/// One log line in `format`.
pub fn line(format: Format, level: &str, msg: &str) -> String {
    let time = rfc3339_now();
    match format {
        Format::Json => serde_json::json!({"level": level, "msg": msg, "time": time}).to_string(),
        Format::Text => format!("time={time:?} level={level} msg={msg:?}"),
    }
}

fn write(level: &str, msg: &str) {
    let l = current();
    if let Some(path) = &l.file {
        if let Ok(mut f) = OpenOptions::new().create(true).append(true).open(path) {
            let _ = writeln!(f, "{}", line(l.format, level, msg));
        }
    }
}

/// An error: to the log file and to stderr.
pub fn error(msg: &str) {
    write("error", msg);
    eprintln!("husk-runtime: {msg}");
}

/// An error to the log file only (the sandbox's stderr belongs to the container).
pub fn error_to_file(msg: &str) {
    write("error", msg);
}

pub fn warn(msg: &str) {
    write("warning", msg);
}

/// Only with `--debug`.
pub fn debug(msg: &str) {
    if current().debug {
        write("debug", msg);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_lines_are_runcs_shape() {
        let l = line(Format::Json, "error", "container \"x\" does not exist");
        let v: serde_json::Value = serde_json::from_str(&l).unwrap();
        assert_eq!(v["level"], "error");
        assert_eq!(v["msg"], "container \"x\" does not exist");
        assert!(v["time"].as_str().unwrap().ends_with('Z'));
        assert!(!l.contains('\n'));
        let t = line(Format::Text, "warning", "a \"b\"");
        assert!(t.contains("level=warning msg=\"a \\\"b\\\"\""), "{t}");
    }
}
