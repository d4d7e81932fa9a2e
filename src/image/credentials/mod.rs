//! Registry credentials, kept where docker and podman users already have them.
//!
//! Lookup order (the first file with an entry for the registry wins):
//!
//! 1. `$REGISTRY_AUTH_FILE` (podman's override), when set;
//! 2. podman's `${XDG_RUNTIME_DIR}/containers/auth.json` (`/run/containers/0/auth.json` for
//!    root without `XDG_RUNTIME_DIR`), then `~/.config/containers/auth.json`;
//! 3. docker's `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`.
//!
//! Within a file: a `credHelpers` entry for the registry, else an inline `auths` entry
//! (base64 `user:pass`), else the `credsStore` helper ([`helper`]). `husk login` writes where
//! docker would (`$REGISTRY_AUTH_FILE` when set): to the helper the file names for the
//! registry, else inline ([`file`]). Docker Hub's names — `docker.io`, `index.docker.io`,
//! `registry-1.docker.io`, `https://index.docker.io/v1/` — are one entry, kept under docker's
//! key `https://index.docker.io/v1/`.
//!
//! Secrets are never printed or logged: [`Credential`]'s `Debug` leaves them out.

pub mod file;
pub mod helper;

use std::fmt;
use std::path::{Path, PathBuf};

pub use file::AuthFile;
pub use helper::Helper;

/// Docker's key for Docker Hub in `auths` and what its helpers are asked for.
pub const DOCKER_HUB_SERVER: &str = "https://index.docker.io/v1/";
const DOCKER_HUB: &str = "docker.io";

#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    #[error("{path}: {source}")]
    File {
        path: PathBuf,
        #[source]
        source: file::FileError,
    },
    #[error("{path}: {source}")]
    Helper {
        path: PathBuf,
        #[source]
        source: helper::HelperError,
    },
    #[error("no place to keep credentials: set REGISTRY_AUTH_FILE, DOCKER_CONFIG or HOME")]
    NoHome,
}

/// A user name and its password or token.
#[derive(Clone, PartialEq, Eq)]
pub struct Credential {
    pub username: String,
    pub secret: String,
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credential")
            .field("username", &self.username)
            .field("secret", &"<redacted>")
            .finish()
    }
}

/// Credentials found for a registry, and where (for error messages: which entry to fix).
#[derive(Debug, Clone)]
pub struct Found {
    pub credential: Credential,
    pub origin: String,
}

/// The files credentials are looked up in, in order, and the one `login` writes.
#[derive(Debug, Clone, Default)]
pub struct Locations {
    pub auth_file: Option<PathBuf>,
    pub podman: Vec<PathBuf>,
    pub docker: Option<PathBuf>,
}

impl Locations {
    /// From `REGISTRY_AUTH_FILE`, `XDG_RUNTIME_DIR`, `DOCKER_CONFIG` and `HOME`.
    pub fn from_env() -> Self {
        let var = |k: &str| {
            std::env::var_os(k)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        let home = var("HOME");
        let mut podman = Vec::new();
        match var("XDG_RUNTIME_DIR") {
            Some(d) => podman.push(d.join("containers/auth.json")),
            // SAFETY: geteuid has no preconditions.
            None if unsafe { libc::geteuid() } == 0 => {
                podman.push("/run/containers/0/auth.json".into())
            }
            None => {}
        }
        if let Some(h) = &home {
            podman.push(h.join(".config/containers/auth.json"));
        }
        let docker = var("DOCKER_CONFIG")
            .map(|d| d.join("config.json"))
            .or_else(|| home.map(|h| h.join(".docker/config.json")));
        Locations {
            auth_file: var("REGISTRY_AUTH_FILE"),
            podman,
            docker,
        }
    }

    /// Every file looked in, first to last.
    pub fn search_order(&self) -> Vec<&Path> {
        self.auth_file
            .iter()
            .chain(&self.podman)
            .chain(&self.docker)
            .map(PathBuf::as_path)
            .collect()
    }

    /// Where `login` writes and `logout` removes: `$REGISTRY_AUTH_FILE`, else docker's config.
    pub fn write_target(&self) -> Result<&Path, CredentialsError> {
        self.auth_file
            .as_deref()
            .or(self.docker.as_deref())
            .ok_or(CredentialsError::NoHome)
    }
}

/// The one key a registry's entries are matched by: scheme and path dropped, Docker Hub's
/// aliases folded into `docker.io`.
pub fn registry_key(s: &str) -> String {
    let s = s
        .strip_prefix("https://")
        .or_else(|| s.strip_prefix("http://"))
        .unwrap_or(s);
    let host = s.split('/').next().unwrap_or(s);
    match host {
        "docker.io" | "index.docker.io" | "registry-1.docker.io" => DOCKER_HUB.to_string(),
        h => h.to_string(),
    }
}

/// What docker calls a registry in `auths`, in helper requests and in its messages.
pub fn server_address(key: &str) -> String {
    if registry_key(key) == DOCKER_HUB {
        DOCKER_HUB_SERVER.to_string()
    } else {
        registry_key(key)
    }
}

/// The credentials for `registry`, from the first file that has any (see the module doc).
pub fn lookup(locs: &Locations, registry: &str) -> Result<Option<Found>, CredentialsError> {
    let key = registry_key(registry);
    for path in locs.search_order() {
        let f = AuthFile::read(path).map_err(|source| CredentialsError::File {
            path: path.to_path_buf(),
            source,
        })?;
        if let Some(found) = lookup_in(&f, &key)? {
            return Ok(Some(found));
        }
    }
    Ok(None)
}

fn lookup_in(f: &AuthFile, key: &str) -> Result<Option<Found>, CredentialsError> {
    let file_err = |source| CredentialsError::File {
        path: f.path().to_path_buf(),
        source,
    };
    let helper_err = |source| CredentialsError::Helper {
        path: f.path().to_path_buf(),
        source,
    };
    let via_helper = |name: String, kind: &str| -> Result<Option<Found>, CredentialsError> {
        let h = Helper::named(&name).map_err(helper_err)?;
        Ok(h.get(&server_address(key))
            .map_err(helper_err)?
            .map(|c| Found {
                credential: c,
                origin: format!("{} ({kind} in {})", h.program(), f.path().display()),
            }))
    };
    if let Some(name) = f.helper_for(key) {
        return via_helper(name, "credHelpers");
    }
    if let Some(c) = f.inline(key).map_err(file_err)? {
        return Ok(Some(Found {
            credential: c,
            origin: f.path().display().to_string(),
        }));
    }
    match f.creds_store() {
        Some(name) => via_helper(name, "credsStore"),
        None => Ok(None),
    }
}

/// Where `store` put a credential.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stored {
    /// Inline in this file (base64, unencrypted).
    Inline(PathBuf),
    /// With this helper program.
    Helper(String),
}

/// Stores `cred` for `registry` in [`Locations::write_target`]: with the helper that file
/// names for it, else inline. An inline entry left from before goes either way.
pub fn store(
    locs: &Locations,
    registry: &str,
    cred: &Credential,
) -> Result<Stored, CredentialsError> {
    let path = locs.write_target()?;
    let file_err = |source| CredentialsError::File {
        path: path.to_path_buf(),
        source,
    };
    let mut f = AuthFile::read(path).map_err(file_err)?;
    let key = registry_key(registry);
    match f.helper_for(&key).or_else(|| f.creds_store()) {
        Some(name) => {
            let helper_err = |source| CredentialsError::Helper {
                path: path.to_path_buf(),
                source,
            };
            let h = Helper::named(&name).map_err(helper_err)?;
            h.store(&server_address(&key), cred).map_err(helper_err)?;
            if f.remove(&key) {
                f.save().map_err(file_err)?;
            }
            Ok(Stored::Helper(h.program()))
        }
        None => {
            f.set_inline(&server_address(&key), cred);
            f.save().map_err(file_err)?;
            Ok(Stored::Inline(path.to_path_buf()))
        }
    }
}

/// Removes `registry`'s credentials from [`Locations::write_target`] (and its helper);
/// whether there were any.
pub fn erase(locs: &Locations, registry: &str) -> Result<bool, CredentialsError> {
    let path = locs.write_target()?;
    let file_err = |source| CredentialsError::File {
        path: path.to_path_buf(),
        source,
    };
    let mut f = AuthFile::read(path).map_err(file_err)?;
    let key = registry_key(registry);
    let mut had = false;
    if let Some(name) = f.helper_for(&key).or_else(|| f.creds_store()) {
        let helper_err = |source| CredentialsError::Helper {
            path: path.to_path_buf(),
            source,
        };
        had |= Helper::named(&name)
            .and_then(|h| h.erase(&server_address(&key)))
            .map_err(helper_err)?;
    }
    if f.remove(&key) {
        f.save().map_err(file_err)?;
        had = true;
    }
    Ok(had)
}

#[cfg(test)]
mod tests;
