//! Picks one platform (this host's unless asked otherwise) from a multi-platform index (OCI
//! image index or docker manifest list).

use super::super::digest::Digest;

/// An OS/architecture[/variant] pair as docker and podman write it (`linux/amd64`,
/// `linux/arm64/v8`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
}

impl Platform {
    /// The platform of this host (`linux/amd64` on x86_64).
    pub fn host() -> Self {
        let architecture = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            "x86" => "386",
            other => other,
        };
        Platform {
            os: "linux".into(),
            architecture: architecture.into(),
            variant: None,
        }
    }

    /// Whether an index entry's platform is this one (any variant when none is asked).
    pub fn matches(&self, p: &PlatformSpec) -> bool {
        p.os == self.os
            && p.architecture == self.architecture
            && self
                .variant
                .as_ref()
                .is_none_or(|v| p.variant.as_deref() == Some(v.as_str()))
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

impl std::str::FromStr for Platform {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let parts: Vec<&str> = s.split('/').collect();
        let ok = |p: &&str| {
            !p.is_empty()
                && p.len() <= 32
                && p.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        };
        match parts.as_slice() {
            [os, arch] | [os, arch, _] if parts.iter().all(ok) => Ok(Platform {
                os: os.to_string(),
                architecture: arch.to_string(),
                variant: parts.get(2).map(|v| v.to_string()),
            }),
            _ => Err(format!(
                "platform {s:?}: want OS/ARCH[/VARIANT], e.g. linux/amd64"
            )),
        }
    }
}

pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";

pub fn is_index(media_type: &str) -> bool {
    media_type == OCI_INDEX || media_type == DOCKER_LIST
}

/// One entry of an index.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct Entry {
    #[serde(rename = "mediaType", default)]
    pub media_type: String,
    pub digest: String,
    #[serde(default)]
    pub size: u64,
    #[serde(default)]
    pub platform: Option<PlatformSpec>,
    #[serde(default)]
    pub annotations: std::collections::BTreeMap<String, String>,
}

#[derive(Debug, Clone, serde::Deserialize)]
pub struct PlatformSpec {
    #[serde(default)]
    pub os: String,
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub variant: Option<String>,
}

/// An index document (also the shape of a layout's index.json).
#[derive(Debug, Clone, serde::Deserialize)]
pub struct IndexDoc {
    #[serde(rename = "mediaType", default)]
    pub media_type: Option<String>,
    #[serde(default)]
    pub manifests: Vec<Entry>,
}

/// The media type a manifest document declares (empty if none).
pub fn media_type_of(json: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    struct Probe {
        #[serde(rename = "mediaType", default)]
        media_type: Option<String>,
        #[serde(default)]
        manifests: Option<serde_json::Value>,
    }
    match serde_json::from_slice::<Probe>(json) {
        Ok(Probe {
            media_type: Some(m),
            ..
        }) => m,
        // An index without mediaType still has "manifests".
        Ok(Probe {
            manifests: Some(_), ..
        }) => OCI_INDEX.to_string(),
        _ => String::new(),
    }
}

fn is_attestation(e: &Entry) -> bool {
    e.annotations
        .get("vnd.docker.reference.type")
        .is_some_and(|t| t == "attestation-manifest")
}

/// The entry of `entries` for `want`; a lone entry without a platform also counts.
/// On failure, the platforms that were there.
pub fn select(entries: &[Entry], want: &Platform) -> Result<(Digest, Entry), String> {
    let candidates: Vec<&Entry> = entries.iter().filter(|e| !is_attestation(e)).collect();
    let pick = candidates
        .iter()
        .find(|e| e.platform.as_ref().is_some_and(|p| want.matches(p)))
        .or_else(|| match candidates.as_slice() {
            [only] if only.platform.is_none() => Some(only),
            _ => None,
        });
    match pick {
        Some(e) => {
            let d = e.digest.parse().map_err(|err| format!("{err}"))?;
            Ok((d, (*e).clone()))
        }
        None => Err(candidates
            .iter()
            .map(|e| {
                e.platform
                    .as_ref()
                    .map_or("unknown".to_string(), |p| match &p.variant {
                        Some(v) => format!("{}/{}/{v}", p.os, p.architecture),
                        None => format!("{}/{}", p.os, p.architecture),
                    })
            })
            .collect::<Vec<_>>()
            .join(", ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_linux_amd64() {
        let a = "a".repeat(64);
        let b = "b".repeat(64);
        let doc: IndexDoc = serde_json::from_str(&format!(
            r#"{{"manifests":[
            {{"mediaType":"{OCI_MANIFEST}","digest":"sha256:{a}","size":1,"platform":{{"os":"linux","architecture":"arm64"}}}},
            {{"mediaType":"{OCI_MANIFEST}","digest":"sha256:{b}","size":1,"platform":{{"os":"linux","architecture":"amd64"}}}}]}}"#
        ))
        .unwrap();
        let host = Platform::host();
        assert_eq!(host.to_string(), "linux/amd64");
        assert_eq!(select(&doc.manifests, &host).unwrap().0.hex(), b);
        let arm: Platform = "linux/arm64".parse().unwrap();
        assert_eq!(select(&doc.manifests, &arm).unwrap().0.hex(), a);
        let err = select(&doc.manifests[..1], &host).unwrap_err();
        assert_eq!(err, "linux/arm64");
        let v8: Platform = "linux/arm64/v8".parse().unwrap();
        assert_eq!(v8.variant.as_deref(), Some("v8"));
        assert!(select(&doc.manifests, &v8).is_err(), "no variant listed");
        for bad in ["linux", "linux/", "/amd64", "a/b/c/d", "linux/am d64"] {
            assert!(bad.parse::<Platform>().is_err(), "{bad}");
        }
        assert_eq!(media_type_of(br#"{"manifests":[]}"#), OCI_INDEX);
    }
}
