//! Test registries: Debian's docker-registry as `scripts/start-test-registry.sh` starts it (a
//! free port, a config in a fresh `/tmp/husk-registry.*` directory; see the script for TLS,
//! htpasswd and token options).

use std::ffi::OsStr;
use std::path::Path;
use std::process::Command;

/// A running registry: SIGTERM and its temp directory removed on drop.
pub struct Registry {
    pub port: u16,
    pid: i32,
}

impl Registry {
    /// Starts one with the script's `args`; the script's stderr when it could not.
    pub fn start<I, S>(args: I) -> Result<Registry, String>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let o = Command::new(super::repo_root().join("scripts/start-test-registry.sh"))
            .args(args)
            .output()
            .map_err(|e| e.to_string())?;
        if !o.status.success() {
            return Err(String::from_utf8_lossy(&o.stderr).into_owned());
        }
        // stdout: "PORT PID"
        let out = String::from_utf8_lossy(&o.stdout);
        let mut it = out.split_whitespace();
        let port = it.next().and_then(|v| v.parse::<u16>().ok());
        let pid = it.next().and_then(|v| v.parse::<i32>().ok());
        match (port, pid) {
            (Some(port), Some(pid)) => Ok(Registry { port, pid }),
            _ => Err(format!(
                "start-test-registry.sh printed {out:?}, not PORT PID"
            )),
        }
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        // Its temp dir holds the config it was started with: `docker-registry serve DIR/config.yml`.
        let dir = std::fs::read(format!("/proc/{}/cmdline", self.pid))
            .ok()
            .and_then(|c| {
                let cfg = c
                    .split(|b| *b == 0)
                    .rfind(|a| a.ends_with(b"config.yml"))?
                    .to_vec();
                Path::new(std::str::from_utf8(&cfg).ok()?)
                    .parent()
                    .map(Path::to_path_buf)
            });
        // SAFETY: signalling the registry process this test started.
        unsafe { libc::kill(self.pid, libc::SIGTERM) };
        if let Some(d) =
            dir.filter(|d| d.starts_with("/tmp") && d.to_string_lossy().contains("husk-registry"))
        {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}
