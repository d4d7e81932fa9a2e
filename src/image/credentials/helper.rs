//! docker's credential helper protocol: `docker-credential-NAME get|store|erase`, found on
//! PATH. `get` and `erase` read the server address on stdin; `store` reads
//! `{"ServerURL","Username","Secret"}`; `get` answers `{"Username","Secret"}` on stdout, or
//! fails saying "credentials not found in native keychain". What a helper says on failure is
//! reported as its first line; what husk sends it is never echoed.

use std::io::{self, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};

use serde::{Deserialize, Serialize};

use super::Credential;

/// How helpers say they have nothing for a server.
const NOT_FOUND: &str = "credentials not found in native keychain";

#[derive(Debug, thiserror::Error)]
pub enum HelperError {
    #[error("invalid credential helper name {0:?}")]
    Name(String),
    #[error("credential helper {program} not found on PATH")]
    Missing { program: String },
    #[error("credential helper {program}: {source}")]
    Spawn {
        program: String,
        #[source]
        source: io::Error,
    },
    #[error("credential helper {program} {action} failed: {message}")]
    Failed {
        program: String,
        action: &'static str,
        message: String,
    },
    #[error("credential helper {program} get: answer is not the protocol's JSON")]
    Answer { program: String },
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct StoreRequest<'a> {
    #[serde(rename = "ServerURL")]
    server_url: &'a str,
    username: &'a str,
    secret: &'a str,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct GetAnswer {
    username: String,
    secret: String,
}

/// One helper program.
#[derive(Debug, Clone)]
pub struct Helper {
    program: PathBuf,
}

impl Helper {
    /// `docker-credential-NAME`, looked up on PATH when run.
    pub fn named(name: &str) -> Result<Helper, HelperError> {
        if name.is_empty() || name.contains('/') || name.contains('\0') {
            return Err(HelperError::Name(name.to_string()));
        }
        Ok(Helper {
            program: format!("docker-credential-{name}").into(),
        })
    }

    /// A helper at an explicit path.
    pub fn at(program: PathBuf) -> Helper {
        Helper { program }
    }

    pub fn program(&self) -> String {
        self.program.display().to_string()
    }

    /// The credentials the helper keeps for `server`; `None` when it has none.
    pub fn get(&self, server: &str) -> Result<Option<Credential>, HelperError> {
        let (ok, out) = self.call("get", server.as_bytes())?;
        if !ok {
            if out.trim() == NOT_FOUND {
                return Ok(None);
            }
            return Err(self.failed("get", &out));
        }
        let a: GetAnswer = serde_json::from_str(&out).map_err(|_| HelperError::Answer {
            program: self.program(),
        })?;
        if a.username.is_empty() && a.secret.is_empty() {
            return Ok(None);
        }
        Ok(Some(Credential {
            username: a.username,
            secret: a.secret,
        }))
    }

    pub fn store(&self, server: &str, c: &Credential) -> Result<(), HelperError> {
        let req = serde_json::to_vec(&StoreRequest {
            server_url: server,
            username: &c.username,
            secret: &c.secret,
        })
        .expect("serializing strings");
        let (ok, out) = self.call("store", &req)?;
        if !ok {
            return Err(self.failed("store", &out));
        }
        Ok(())
    }

    /// Forgets `server`; whether the helper had it.
    pub fn erase(&self, server: &str) -> Result<bool, HelperError> {
        let (ok, out) = self.call("erase", server.as_bytes())?;
        match (ok, out.trim() == NOT_FOUND) {
            (true, _) => Ok(true),
            (false, true) => Ok(false),
            (false, false) => Err(self.failed("erase", &out)),
        }
    }

    fn failed(&self, action: &'static str, out: &str) -> HelperError {
        let line = out.lines().map(str::trim).find(|l| !l.is_empty());
        HelperError::Failed {
            program: self.program(),
            action,
            message: line.unwrap_or("no message").chars().take(200).collect(),
        }
    }

    /// Runs `program action` with `input` on stdin: whether it succeeded, and its stdout
    /// (its stderr when stdout is empty: where helpers put their failures).
    fn call(&self, action: &str, input: &[u8]) -> Result<(bool, String), HelperError> {
        let mut child = Command::new(&self.program)
            .arg(action)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| match source.kind() {
                io::ErrorKind::NotFound => HelperError::Missing {
                    program: self.program(),
                },
                _ => HelperError::Spawn {
                    program: self.program(),
                    source,
                },
            })?;
        let spawn_err = |source| HelperError::Spawn {
            program: self.program(),
            source,
        };
        if let Some(mut stdin) = child.stdin.take() {
            // A helper that exits without reading its input is judged by its exit status.
            match stdin.write_all(input) {
                Err(e) if e.kind() != io::ErrorKind::BrokenPipe => return Err(spawn_err(e)),
                _ => {}
            }
        }
        let o = child.wait_with_output().map_err(spawn_err)?;
        let stdout = String::from_utf8_lossy(&o.stdout).into_owned();
        let out = if stdout.trim().is_empty() {
            String::from_utf8_lossy(&o.stderr).into_owned()
        } else {
            stdout
        };
        Ok((o.status.success(), out))
    }
}
