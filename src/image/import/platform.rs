//! Picks linux/amd64 from a multi-platform index (OCI image index or docker manifest list).

use super::super::digest::Digest;

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

/// The linux/amd64 entry of `entries`; a lone entry without a platform also counts.
/// On failure, the platforms that were there.
pub fn select(entries: &[Entry]) -> Result<(Digest, Entry), String> {
    let candidates: Vec<&Entry> = entries.iter().filter(|e| !is_attestation(e)).collect();
    let pick = candidates
        .iter()
        .find(|e| {
            e.platform
                .as_ref()
                .is_some_and(|p| p.os == "linux" && p.architecture == "amd64")
        })
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
                e.platform.as_ref().map_or("unknown".to_string(), |p| {
                    format!("{}/{}", p.os, p.architecture)
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
        assert_eq!(select(&doc.manifests).unwrap().0.hex(), b);
        let err = select(&doc.manifests[..1]).unwrap_err();
        assert_eq!(err, "linux/arm64");
        assert_eq!(media_type_of(br#"{"manifests":[]}"#), OCI_INDEX);
    }
}
