//! One auth file — docker's `config.json` or podman's `auth.json`, the same format — read and
//! rewritten: `auths` entries (`{"auth": base64("user:pass")}`), `credHelpers` and
//! `credsStore`. Everything else in the file is kept as it was. A save replaces the file
//! atomically (temp file beside it + rename) with mode 0600.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde_json::{Map, Value};

use super::{registry_key, Credential};

#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("cannot read: {0}")]
    Read(#[source] io::Error),
    #[error("not a valid auth file (JSON object): {0}")]
    Json(#[source] serde_json::Error),
    #[error("entry {key:?}: `auth` is not base64 of user:password")]
    BadAuth { key: String },
    #[error("cannot write: {0}")]
    Write(#[source] io::Error),
}

/// A parsed auth file; a missing file reads as an empty one.
#[derive(Debug)]
pub struct AuthFile {
    path: PathBuf,
    doc: Map<String, Value>,
}

impl AuthFile {
    pub fn read(path: &Path) -> Result<AuthFile, FileError> {
        let doc = match fs::read(path) {
            Ok(b) if b.iter().all(u8::is_ascii_whitespace) => Map::new(),
            Ok(b) => serde_json::from_slice(&b).map_err(FileError::Json)?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Map::new(),
            Err(e) => return Err(FileError::Read(e)),
        };
        Ok(AuthFile {
            path: path.to_path_buf(),
            doc,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn object(&self, field: &str) -> Option<&Map<String, Value>> {
        self.doc.get(field).and_then(Value::as_object)
    }

    /// The `credHelpers` helper named for the registry `key` (see [`registry_key`]).
    pub fn helper_for(&self, key: &str) -> Option<String> {
        self.object("credHelpers")?
            .iter()
            .find(|(k, _)| registry_key(k) == key)
            .and_then(|(_, v)| v.as_str())
            .filter(|s| !s.is_empty())
            .map(str::to_string)
    }

    /// The `credsStore` helper, for registries without their own.
    pub fn creds_store(&self) -> Option<String> {
        self.doc
            .get("credsStore")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
    }

    /// The inline credentials for `key`: `auth` (base64 `user:pass`), else `username` and
    /// `password` fields. An entry with neither (docker leaves `{}` beside a helper) is none.
    pub fn inline(&self, key: &str) -> Result<Option<Credential>, FileError> {
        let Some(auths) = self.object("auths") else {
            return Ok(None);
        };
        for (k, v) in auths.iter().filter(|(k, _)| registry_key(k) == key) {
            let field = |f: &str| v.get(f).and_then(Value::as_str).filter(|s| !s.is_empty());
            if let Some(auth) = field("auth") {
                return decode(auth)
                    .map(Some)
                    .ok_or_else(|| FileError::BadAuth { key: k.clone() });
            }
            if let (Some(u), Some(p)) = (field("username"), field("password")) {
                return Ok(Some(Credential {
                    username: u.to_string(),
                    secret: p.to_string(),
                }));
            }
        }
        Ok(None)
    }

    /// Replaces every `auths` entry of the registry with one under `server` (docker's key).
    pub fn set_inline(&mut self, server: &str, cred: &Credential) {
        self.remove(&registry_key(server));
        let auths = self
            .doc
            .entry("auths")
            .or_insert_with(|| Value::Object(Map::new()));
        if !auths.is_object() {
            *auths = Value::Object(Map::new());
        }
        if let Value::Object(m) = auths {
            let mut entry = Map::new();
            entry.insert("auth".into(), Value::String(encode(cred)));
            m.insert(server.to_string(), Value::Object(entry));
        }
    }

    /// Drops every `auths` entry of the registry `key`; whether there was one.
    pub fn remove(&mut self, key: &str) -> bool {
        let Some(Value::Object(auths)) = self.doc.get_mut("auths") else {
            return false;
        };
        let before = auths.len();
        auths.retain(|k, _| registry_key(k) != key);
        auths.len() != before
    }

    /// Writes the file: a 0600 temp file beside it, fsynced, renamed over it. A missing
    /// directory is made 0700.
    pub fn save(&self) -> Result<(), FileError> {
        let dir = self.path.parent().unwrap_or(Path::new("."));
        if !dir.as_os_str().is_empty() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(FileError::Write)?;
        }
        let mut json = serde_json::to_vec_pretty(&self.doc).map_err(FileError::Json)?;
        json.push(b'\n');
        let name = self
            .path
            .file_name()
            .map_or("auth.json".into(), |n| n.to_string_lossy().into_owned());
        let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
        let written = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .and_then(|mut f| {
                f.write_all(&json)?;
                f.sync_all()
            })
            .and_then(|()| fs::rename(&tmp, &self.path));
        if written.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        written.map_err(FileError::Write)
    }
}

/// `auth`'s value: base64 of `user:password`.
pub fn encode(c: &Credential) -> String {
    STANDARD.encode(format!("{}:{}", c.username, c.secret))
}

/// The credential in an `auth` value; `None` if it is not base64 of `user:password`.
pub fn decode(auth: &str) -> Option<Credential> {
    let raw = STANDARD.decode(auth.trim()).ok()?;
    let text = String::from_utf8(raw).ok()?;
    let (u, p) = text.split_once(':')?;
    Some(Credential {
        username: u.to_string(),
        secret: p.to_string(),
    })
}
