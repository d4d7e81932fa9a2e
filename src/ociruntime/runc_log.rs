//! runc's logging contract: `--log FILE` gets one line per message, `--log-format json` makes
//! that runc's JSON line (`{"level":"error","msg":"...","time":"..."}`, which conmon and the
//! containerd shim parse to report a failed `create`), `text` logrus-style `key=value`
//! pairs. Errors also go to stderr as one plain line.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::PathBuf;
use std::sync::OnceLock;

use crate::util::time::rfc3339_now;

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

/// `--log`/`--log-format` picked out of raw arguments, for errors met before the command
/// line could be parsed (the engine still reads the reason from the log file).
pub fn from_raw_args(args: impl IntoIterator<Item = String>) -> Logger {
    let mut l = Logger::default();
    let mut it = args.into_iter();
    while let Some(a) = it.next() {
        let (flag, inline) = match a.split_once('=') {
            Some((f, v)) => (f.to_string(), Some(v.to_string())),
            None => (a.clone(), None),
        };
        let value = |it: &mut dyn Iterator<Item = String>| inline.clone().or_else(|| it.next());
        match flag.as_str() {
            "--log" => l.file = value(&mut it).map(PathBuf::from),
            "--log-format" => {
                if let Some(f) = value(&mut it).and_then(|v| v.parse().ok()) {
                    l.format = f;
                }
            }
            _ => {}
        }
    }
    l
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

/// An error to the log file only (the VM holder's stderr belongs to the container).
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
    fn log_flags_are_found_in_unparsed_arguments() {
        let args = [
            "--root",
            "/r",
            "--log=/l.json",
            "--log-format",
            "json",
            "create",
            "--bogus",
        ];
        let l = from_raw_args(args.iter().map(|s| s.to_string()));
        assert_eq!(l.file.as_deref(), Some(std::path::Path::new("/l.json")));
        assert_eq!(l.format, Format::Json);
        let l = from_raw_args(["--log".to_string(), "/x".into(), "--log-format=text".into()]);
        assert_eq!(
            (l.file.unwrap(), l.format),
            (PathBuf::from("/x"), Format::Text)
        );
    }

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
