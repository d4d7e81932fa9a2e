//! OCI hooks, run on the host as runc runs them: `path` with `args` (args[0] is argv[0]) and
//! only `env`, the container's state JSON on stdin, killed after `timeout` seconds. A hook
//! that fails fails the operation (prestart, createRuntime, poststart) or is logged
//! (poststop, which runs while everything is torn down anyway).

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use oci_spec::runtime::Hook;

use super::Error;

/// Runs `hooks` in order with `state` on their stdin; the first failure stops the rest.
pub fn run(kind: &'static str, hooks: &[Hook], state: &serde_json::Value) -> Result<(), Error> {
    for h in hooks {
        run_one(kind, h, state)?;
    }
    Ok(())
}

fn run_one(kind: &'static str, hook: &Hook, state: &serde_json::Value) -> Result<(), Error> {
    let path = hook.path().to_string_lossy().into_owned();
    let fail = |detail: String| Error::Hook {
        kind,
        path: path.clone(),
        detail,
    };
    let args = hook.args().clone().unwrap_or_default();
    let mut cmd = Command::new(hook.path());
    if let Some((argv0, rest)) = args.split_first() {
        cmd.arg0(argv0).args(rest);
    }
    cmd.env_clear();
    for e in hook.env().iter().flatten() {
        if let Some((k, v)) = e.split_once('=') {
            cmd.env(k, v);
        }
    }
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .map_err(|e| fail(format!("cannot run it: {e}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        // A hook that does not read its stdin is fine.
        let _ = stdin.write_all(state.to_string().as_bytes());
    }
    let deadline = hook
        .timeout()
        .filter(|&t| t > 0)
        .map(|t| Instant::now() + Duration::from_secs(t as u64));
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break s,
            Ok(None) => {}
            Err(e) => return Err(fail(format!("waiting for it: {e}"))),
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            let _ = child.kill();
            let _ = child.wait();
            return Err(fail(format!(
                "timed out after {} s",
                hook.timeout().unwrap_or(0)
            )));
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    if status.success() {
        return Ok(());
    }
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut e, &mut err);
    }
    let err = err.lines().next().unwrap_or("").trim().to_string();
    Err(fail(if err.is_empty() {
        format!("{status}")
    } else {
        format!("{status}: {err}")
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hook(v: serde_json::Value) -> Hook {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn hooks_get_state_args_and_env() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let h = hook(serde_json::json!({
            "path": "/bin/sh",
            "args": ["sh", "-c", format!("echo \"$0 $X\" > {0}; cat >> {0}", out.display()), "one"],
            "env": ["X=ex"]
        }));
        run("prestart", &[h], &serde_json::json!({"id": "c1"})).unwrap();
        let text = std::fs::read_to_string(&out).unwrap();
        assert!(text.starts_with("one ex\n"), "{text}");
        assert!(text.contains("\"id\":\"c1\""), "{text}");
    }

    #[test]
    fn failures_and_timeouts_are_errors() {
        let f = hook(
            serde_json::json!({"path": "/bin/sh", "args": ["sh", "-c", "echo nope >&2; exit 3"]}),
        );
        let e = run("poststart", &[f], &serde_json::json!({})).unwrap_err();
        assert!(e.to_string().contains("nope"), "{e}");
        let slow =
            hook(serde_json::json!({"path": "/bin/sleep", "args": ["sleep", "5"], "timeout": 1}));
        let t = Instant::now();
        assert!(run("prestart", &[slow], &serde_json::json!({})).is_err());
        assert!(t.elapsed() < Duration::from_secs(4));
        let missing = hook(serde_json::json!({"path": "/nonexistent/hook"}));
        assert!(run("prestart", &[missing], &serde_json::json!({})).is_err());
    }
}
