//! Image references with docker's normalization: `busybox` is
//! `docker.io/library/busybox:latest`, `localhost:5000/x:tag` names a local registry, and
//! `name@sha256:…` pins a manifest digest.

use std::fmt;
use std::str::FromStr;

use super::digest::Digest;

/// Docker Hub's canonical name, as docker prints it.
pub const DEFAULT_REGISTRY: &str = "docker.io";
const DEFAULT_TAG: &str = "latest";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReferenceError {
    #[error("image reference {0:?} is empty or too long")]
    Length(String),
    #[error("image reference {reference:?}: invalid repository name {name:?} (lowercase letters, digits and . _ - separators only)")]
    Repository { reference: String, name: String },
    #[error("image reference {reference:?}: invalid tag {tag:?}")]
    Tag { reference: String, tag: String },
    #[error("image reference {reference:?}: invalid registry {registry:?}")]
    Registry { reference: String, registry: String },
    #[error("image reference {reference:?}: {source}")]
    Digest {
        reference: String,
        source: super::digest::DigestError,
    },
}

/// A normalized image reference: registry, repository, and a tag and/or a digest.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Reference {
    registry: String,
    repository: String,
    tag: Option<String>,
    digest: Option<Digest>,
}

impl Reference {
    pub fn registry(&self) -> &str {
        &self.registry
    }

    pub fn repository(&self) -> &str {
        &self.repository
    }

    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    pub fn digest(&self) -> Option<&Digest> {
        self.digest.as_ref()
    }

    /// `registry/repository`, without tag or digest.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// The same name pinned to `digest` (no tag): how a pulled image is also reachable.
    pub fn with_digest(&self, digest: Digest) -> Reference {
        Reference {
            tag: None,
            digest: Some(digest),
            ..self.clone()
        }
    }

    /// The shortest form docker prints: `busybox:latest` for Docker Hub's library images.
    pub fn familiar(&self) -> String {
        let full = self.to_string();
        if self.registry == DEFAULT_REGISTRY {
            let rest = &full[DEFAULT_REGISTRY.len() + 1..];
            return rest.strip_prefix("library/").unwrap_or(rest).to_string();
        }
        full
    }

    /// Whether the registry is this host, where plain HTTP is allowed.
    pub fn is_local_registry(&self) -> bool {
        super::transport::is_local(&self.registry)
    }
}

fn valid_tag(t: &str) -> bool {
    let b = t.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
}

/// One path component: `[a-z0-9]+` joined by `.`, `_`, `__` or runs of `-`.
fn valid_component(c: &str) -> bool {
    let b = c.as_bytes();
    if b.is_empty() || !b[0].is_ascii_alphanumeric() || !b[b.len() - 1].is_ascii_alphanumeric() {
        return false;
    }
    if !b
        .iter()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'.' | b'_' | b'-'))
    {
        return false;
    }
    // Separators: one '.', one or two '_', or any number of '-'; never mixed.
    let mut i = 0;
    while i < b.len() {
        if b[i].is_ascii_alphanumeric() {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !b[i].is_ascii_alphanumeric() {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-');
        if !ok {
            return false;
        }
    }
    true
}

fn valid_registry(r: &str) -> bool {
    let (host, port) = match r.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || r.starts_with('[') => (h, Some(p)),
        _ => (r, None),
    };
    let host_ok = if host.starts_with('[') && host.ends_with(']') {
        host[1..host.len() - 1]
            .bytes()
            .all(|c| c.is_ascii_hexdigit() || c == b':')
    } else {
        !host.is_empty()
            && host.split('.').all(|l| {
                !l.is_empty()
                    && l.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-')
                    && !l.starts_with('-')
                    && !l.ends_with('-')
            })
    };
    let port_ok =
        port.is_none_or(|p| !p.is_empty() && p.len() <= 5 && p.bytes().all(|c| c.is_ascii_digit()));
    host_ok && port_ok
}

impl FromStr for Reference {
    type Err = ReferenceError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() || s.len() > 512 {
            return Err(ReferenceError::Length(s.to_string()));
        }
        let (rest, digest) = match s.split_once('@') {
            Some((r, d)) => {
                let d = d
                    .parse::<Digest>()
                    .map_err(|source| ReferenceError::Digest {
                        reference: s.into(),
                        source,
                    })?;
                (r, Some(d))
            }
            None => (s, None),
        };
        // A tag is the part after the last ':' that follows the last '/' (a ':' before it
        // is a registry port).
        let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => (&rest[..last_slash + i], Some(&rest[last_slash + i + 1..])),
            None => (rest, None),
        };
        if let Some(t) = tag {
            if !valid_tag(t) {
                return Err(ReferenceError::Tag {
                    reference: s.into(),
                    tag: t.into(),
                });
            }
        }
        let (registry, repository) = match name.split_once('/') {
            Some((first, path))
                if first.contains('.')
                    || first.contains(':')
                    || first == "localhost"
                    || first.starts_with('[') =>
            {
                (first.to_string(), path.to_string())
            }
            _ => (DEFAULT_REGISTRY.to_string(), name.to_string()),
        };
        let registry = match registry.as_str() {
            "index.docker.io" | "registry-1.docker.io" => DEFAULT_REGISTRY.to_string(),
            _ => registry,
        };
        if !valid_registry(&registry) {
            return Err(ReferenceError::Registry {
                reference: s.into(),
                registry,
            });
        }
        if repository.is_empty()
            || repository.len() > 255
            || !repository.split('/').all(valid_component)
        {
            return Err(ReferenceError::Repository {
                reference: s.into(),
                name: repository,
            });
        }
        let repository = if registry == DEFAULT_REGISTRY && !repository.contains('/') {
            format!("library/{repository}")
        } else {
            repository
        };
        let tag = match (tag, &digest) {
            (Some(t), _) => Some(t.to_string()),
            (None, None) => Some(DEFAULT_TAG.to_string()),
            (None, Some(_)) => None,
        };
        Ok(Reference {
            registry,
            repository,
            tag,
            digest,
        })
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(s: &str) -> String {
        s.parse::<Reference>().unwrap().to_string()
    }

    #[test]
    fn docker_normalization() {
        assert_eq!(norm("busybox"), "docker.io/library/busybox:latest");
        assert_eq!(norm("busybox:1.36"), "docker.io/library/busybox:1.36");
        assert_eq!(norm("library/busybox"), "docker.io/library/busybox:latest");
        assert_eq!(
            norm("docker.io/busybox"),
            "docker.io/library/busybox:latest"
        );
        assert_eq!(
            norm("index.docker.io/library/busybox"),
            "docker.io/library/busybox:latest"
        );
        assert_eq!(norm("user/app:v1"), "docker.io/user/app:v1");
        assert_eq!(norm("localhost:5000/x:tag"), "localhost:5000/x:tag");
        assert_eq!(norm("localhost/x"), "localhost/x:latest");
        assert_eq!(norm("127.0.0.1:5000/a/b/c"), "127.0.0.1:5000/a/b/c:latest");
        assert_eq!(
            norm("quay.io/org/img-name__x.y:tag_1.2-3"),
            "quay.io/org/img-name__x.y:tag_1.2-3"
        );
        let hex = "a".repeat(64);
        assert_eq!(
            norm(&format!("busybox@sha256:{hex}")),
            format!("docker.io/library/busybox@sha256:{hex}")
        );
        assert_eq!(
            norm(&format!("localhost:5000/x:t@sha256:{hex}")),
            format!("localhost:5000/x:t@sha256:{hex}")
        );
    }

    #[test]
    fn parts_and_familiar() {
        let r: Reference = "localhost:5000/busybox:test".parse().unwrap();
        assert_eq!(r.registry(), "localhost:5000");
        assert_eq!(r.repository(), "busybox");
        assert_eq!(r.tag(), Some("test"));
        assert!(r.is_local_registry());
        assert_eq!(r.familiar(), "localhost:5000/busybox:test");
        let h: Reference = "busybox".parse().unwrap();
        assert!(!h.is_local_registry());
        assert_eq!(h.familiar(), "busybox:latest");
        assert_eq!(
            "user/app".parse::<Reference>().unwrap().familiar(),
            "user/app:latest"
        );
    }

    #[test]
    fn rejects_bad_references() {
        for bad in [
            "",
            "Busybox",
            "busybox:",
            "busybox:-x",
            "a//b",
            "../etc",
            "busy box",
            "x@sha256:12",
            "bad_registry.com:abc/x",
            "-a/b",
            "a/b-",
            "a..b",
            "a___b",
        ] {
            assert!(
                bad.parse::<Reference>().is_err(),
                "{bad:?} should be rejected"
            );
        }
    }
}
