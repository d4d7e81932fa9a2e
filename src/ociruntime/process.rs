//! The OCI process (`config.json`'s `process`, or `exec --process FILE`) → the agent's
//! [`ProcessSpec`]. Capability names this agent does not know are dropped, as runc drops
//! names its kernel does not know.

use std::collections::HashSet;

use husk_protocol::{Capabilities, Capability, ConsoleSize, ProcessSpec, Rlimit, User};
use oci_spec::runtime::{Capability as OciCapability, Process};

/// Why a process cannot be run; the caller says which file it came from.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("process.args is empty: name the program to run")]
    NoArgs,
    #[error("process.cwd {0:?} is not an absolute path")]
    RelativeCwd(String),
    #[error("process.rlimits: {kind}: {source}")]
    Rlimit {
        /// The rlimit's type as the spec wrote it (`RLIMIT_NOFILE`, as Debug prints it).
        kind: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("process: {0}")]
    Invalid(#[source] husk_protocol::ValidationError),
}

/// The agent's process from an OCI process. `default_console`: the size to give a terminal
/// process whose spec has no `consoleSize`.
pub fn convert(p: &Process, default_console: (u16, u16)) -> Result<ProcessSpec, ProcessError> {
    let args = p.args().clone().unwrap_or_default();
    if args.is_empty() {
        return Err(ProcessError::NoArgs);
    }
    let cwd = p.cwd().to_string_lossy().into_owned();
    let cwd = if cwd.is_empty() { "/".to_string() } else { cwd };
    if !cwd.starts_with('/') {
        return Err(ProcessError::RelativeCwd(cwd));
    }
    let terminal = p.terminal().unwrap_or(false);
    let console_size = terminal.then(|| match p.console_size() {
        Some(b) if b.height() > 0 && b.width() > 0 => ConsoleSize {
            rows: b.height().min(u16::MAX as u64) as u16,
            cols: b.width().min(u16::MAX as u64) as u16,
        },
        _ => ConsoleSize {
            rows: default_console.0,
            cols: default_console.1,
        },
    });
    let rlimits = p
        .rlimits()
        .iter()
        .flatten()
        .map(|r| {
            let v = serde_json::json!({"type": r.typ(), "soft": r.soft(), "hard": r.hard()});
            serde_json::from_value::<Rlimit>(v).map_err(|source| ProcessError::Rlimit {
                kind: format!("{:?}", r.typ()),
                source,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let capabilities = p.capabilities().as_ref().map(|c| Capabilities {
        bounding: caps(c.bounding().as_ref()),
        effective: caps(c.effective().as_ref()),
        inheritable: caps(c.inheritable().as_ref()),
        permitted: caps(c.permitted().as_ref()),
        ambient: caps(c.ambient().as_ref()),
    });
    let user = p.user();
    let spec = ProcessSpec {
        args,
        env: p.env().clone().unwrap_or_default(),
        cwd,
        user: User {
            uid: user.uid(),
            gid: user.gid(),
            additional_gids: user.additional_gids().clone().unwrap_or_default(),
            umask: user.umask(),
        },
        terminal,
        console_size,
        rlimits,
        no_new_privileges: p.no_new_privileges().unwrap_or(false),
        capabilities,
        oom_score_adj: p.oom_score_adj(),
    };
    spec.validate().map_err(ProcessError::Invalid)?;
    Ok(spec)
}

fn caps(set: Option<&HashSet<OciCapability>>) -> Vec<Capability> {
    let mut v: Vec<Capability> = set
        .into_iter()
        .flatten()
        .filter_map(|c| serde_json::to_value(c).ok())
        .filter_map(|v| serde_json::from_value(v).ok())
        .collect();
    v.sort();
    v.dedup();
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn process(json: serde_json::Value) -> Process {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn converts_every_field() {
        let p = process(serde_json::json!({
            "terminal": true,
            "consoleSize": {"height": 30, "width": 100},
            "user": {"uid": 1000, "gid": 1000, "additionalGids": [10, 20], "umask": 18},
            "args": ["sh", "-c", "id"],
            "env": ["PATH=/bin", "A=b"],
            "cwd": "/tmp",
            "capabilities": {"bounding": ["CAP_KILL", "CAP_CHOWN"],
                             "effective": ["CAP_KILL"]},
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 512}],
            "noNewPrivileges": true,
            "oomScoreAdj": 100
        }));
        let s = convert(&p, (24, 80)).unwrap();
        assert_eq!(s.args, ["sh", "-c", "id"]);
        assert_eq!((s.user.uid, s.user.gid), (1000, 1000));
        assert_eq!(s.user.additional_gids, [10, 20]);
        assert_eq!(s.user.umask, Some(18));
        assert_eq!(
            s.console_size,
            Some(ConsoleSize {
                rows: 30,
                cols: 100
            })
        );
        assert_eq!(s.rlimits[0].soft, 512);
        assert!(s.no_new_privileges);
        assert_eq!(s.oom_score_adj, Some(100));
        let c = s.capabilities.unwrap();
        assert_eq!(c.bounding, [Capability::Chown, Capability::Kill]);
        assert_eq!(c.effective, [Capability::Kill]);
        assert!(c.ambient.is_empty());
    }

    #[test]
    fn refuses_what_cannot_run() {
        let empty = process(serde_json::json!({"user": {"uid": 0, "gid": 0}, "cwd": "/"}));
        assert!(matches!(
            convert(&empty, (24, 80)),
            Err(ProcessError::NoArgs)
        ));
        let rel =
            process(serde_json::json!({"user": {"uid": 0, "gid": 0}, "args": ["x"], "cwd": "tmp"}));
        assert!(matches!(
            convert(&rel, (24, 80)),
            Err(ProcessError::RelativeCwd(_))
        ));
        let soft = process(
            serde_json::json!({"user": {"uid": 0, "gid": 0}, "args": ["x"], "cwd": "/",
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1, "soft": 2}]}),
        );
        assert!(convert(&soft, (24, 80)).is_err());
        let tty = process(
            serde_json::json!({"user": {"uid": 0, "gid": 0}, "args": ["x"], "cwd": "/", "terminal": true}),
        );
        assert_eq!(
            convert(&tty, (25, 81)).unwrap().console_size,
            Some(ConsoleSize { rows: 25, cols: 81 })
        );
    }
}

#[cfg(test)]
mod engine_tests {
    use super::*;

    /// The `exec --process` files podman (conmon) and containerd's shim wrote for `exec -t`.
    #[test]
    fn engines_exec_process_files_convert() {
        for (name, text) in [
            (
                "podman",
                include_str!("bundle/fixtures/engine-process-podman-exec-tty.json"),
            ),
            (
                "containerd",
                include_str!("bundle/fixtures/engine-process-containerd-exec-tty.json"),
            ),
        ] {
            let p: Process = serde_json::from_str(text).unwrap_or_else(|e| panic!("{name}: {e}"));
            let s = convert(&p, (24, 80)).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(s.terminal, "{name}");
            assert!(!s.args.is_empty(), "{name}");
            assert!(s.console_size.is_some(), "{name}");
        }
    }
}
