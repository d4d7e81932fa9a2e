//! Running the host's network tools (`ip`, `nft`, `tc`), optionally inside another network
//! namespace (through `nsenter --net=PATH`), with their stderr kept for the error.

use std::path::Path;
use std::process::Command;

use super::Error;

/// Runs `prog args…` (in the network namespace at `netns` when given) and returns stdout.
pub fn run(netns: Option<&Path>, prog: &str, args: &[&str]) -> Result<String, Error> {
    let mut cmd = match netns {
        Some(ns) => {
            let mut c = Command::new("nsenter");
            c.arg(format!("--net={}", ns.display())).arg("--").arg(prog);
            c
        }
        None => Command::new(prog),
    };
    cmd.args(args);
    // The sbin tools are not on every user's PATH.
    let path = std::env::var("PATH").unwrap_or_default();
    cmd.env("PATH", format!("{path}:/usr/sbin:/sbin"));
    let shown = || format!("{prog} {}", args.join(" "));
    let out = cmd.output().map_err(|e| Error::ToolMissing {
        tool: if netns.is_some() {
            "nsenter".into()
        } else {
            prog.into()
        },
        source: e,
    })?;
    if !out.status.success() {
        return Err(Error::Tool {
            command: shown(),
            detail: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Writes a sysctl under `/proc/sys` of the calling process's network namespace.
pub fn sysctl(key: &str, value: &str) -> Result<(), Error> {
    let path = Path::new("/proc/sys").join(key.replace('.', "/"));
    std::fs::write(&path, value).map_err(|source| Error::Io { path, source })
}
