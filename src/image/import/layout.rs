//! OCI image layout: `oci-layout`, `index.json`, `blobs/sha256/<hex>`. Each top-level entry
//! of index.json is an image (or a multi-platform index, from which linux/amd64 is taken).

use super::platform::{self, Entry, IndexDoc};
use super::{commit, ImportError, Source};
use crate::image::digest::Digest;
use crate::image::record::Image;
use crate::image::reference::Reference;
use crate::image::store::Store;

/// Nested indexes deeper than this are refused (a loop of indexes would never end).
const MAX_DEPTH: usize = 4;
const CONTAINERD_NAME: &str = "io.containerd.image.name";
const REF_NAME: &str = "org.opencontainers.image.ref.name";

fn blob_rel(d: &Digest) -> String {
    format!("blobs/sha256/{}", d.hex())
}

fn invalid(src: &Source<'_>, reason: impl Into<String>) -> ImportError {
    ImportError::Invalid {
        path: src.origin().to_path_buf(),
        reason: reason.into(),
    }
}

/// The name an index.json entry gives its image, if any. `ref.name` counts only when it is
/// a full name (`busybox:1.36`, `localhost:5000/x:t`); a bare tag names no repository.
fn entry_name(src: &Source<'_>, e: &Entry) -> Result<Option<Reference>, ImportError> {
    let candidate = e.annotations.get(CONTAINERD_NAME).or_else(|| {
        e.annotations
            .get(REF_NAME)
            .filter(|n| n.contains(':') || n.contains('/'))
    });
    match candidate {
        None => Ok(None),
        Some(n) => n.parse().map(Some).map_err(|source| ImportError::Name {
            path: src.origin().to_path_buf(),
            name: n.clone(),
            source,
        }),
    }
}

pub(crate) fn import(
    store: &Store,
    src: &Source<'_>,
    name: Option<&Reference>,
) -> Result<Vec<Image>, ImportError> {
    let layout = src.read_json_member(store, "oci-layout")?;
    let version = serde_json::from_slice::<serde_json::Value>(&layout)
        .ok()
        .and_then(|v| {
            v.get("imageLayoutVersion")
                .and_then(|x| x.as_str())
                .map(str::to_string)
        })
        .ok_or_else(|| invalid(src, "oci-layout has no imageLayoutVersion"))?;
    if !version.starts_with("1.") {
        return Err(invalid(
            src,
            format!("unsupported image layout version {version:?}"),
        ));
    }
    let index: IndexDoc = serde_json::from_slice(&src.read_json_member(store, "index.json")?)
        .map_err(|e| invalid(src, format!("index.json: {e}")))?;
    // Top-level entries for other platforms are skipped, as in a nested index.
    let host = platform::Platform::host();
    let entries: Vec<&Entry> = index
        .manifests
        .iter()
        .filter(|e| e.platform.as_ref().is_none_or(|p| host.matches(p)))
        .collect();
    if entries.is_empty() {
        return Err(ImportError::NoPlatform {
            path: src.origin().to_path_buf(),
            found: platform::select(&index.manifests, &host)
                .err()
                .unwrap_or_default(),
        });
    }
    if name.is_some() && entries.len() > 1 {
        return Err(invalid(
            src,
            format!(
                "{} images in the layout; a name can be given only for one",
                entries.len()
            ),
        ));
    }
    let mut images = Vec::new();
    for e in entries {
        let manifest = resolve(store, src, e, 0)?;
        let names = match name {
            Some(n) => vec![n.clone()],
            None => entry_name(src, e)?.into_iter().collect(),
        };
        if names.is_empty() {
            return Err(ImportError::NoName {
                path: src.origin().to_path_buf(),
                manifest,
            });
        }
        images.push(commit(store, &manifest, names)?);
    }
    Ok(images)
}

/// Ingests the image `e` points at (through nested indexes) and returns its manifest digest.
fn resolve(
    store: &Store,
    src: &Source<'_>,
    e: &Entry,
    depth: usize,
) -> Result<Digest, ImportError> {
    if depth > MAX_DEPTH {
        return Err(invalid(src, "indexes nested too deep"));
    }
    let digest: Digest = e
        .digest
        .parse()
        .map_err(|err| invalid(src, format!("index entry: {err}")))?;
    let json = src.read_json_member(store, &blob_rel(&digest))?;
    if Digest::of(&json) != digest {
        return Err(invalid(
            src,
            format!("{} does not match its digest", blob_rel(&digest)),
        ));
    }
    let media_type = if e.media_type.is_empty() {
        platform::media_type_of(&json)
    } else {
        e.media_type.clone()
    };
    if platform::is_index(&media_type) {
        let nested: IndexDoc = serde_json::from_slice(&json)
            .map_err(|err| invalid(src, format!("index {digest}: {err}")))?;
        let (_, chosen) = platform::select(&nested.manifests, &platform::Platform::host())
            .map_err(|found| ImportError::NoPlatform {
                path: src.origin().to_path_buf(),
                found,
            })?;
        return resolve(store, src, &chosen, depth + 1);
    }
    let manifest = oci_spec::image::ImageManifest::from_reader(&json[..])
        .map_err(|err| invalid(src, format!("manifest {digest}: {err}")))?;
    let config: Digest = manifest
        .config()
        .digest()
        .to_string()
        .parse()
        .map_err(|err| invalid(src, format!("manifest {digest}: {err}")))?;
    src.ingest(
        store,
        &blob_rel(&config),
        Some(&config),
        Some(manifest.config().size()),
    )?;
    for l in manifest.layers() {
        let ld: Digest = l
            .digest()
            .to_string()
            .parse()
            .map_err(|err| invalid(src, format!("manifest {digest}: {err}")))?;
        src.ingest(store, &blob_rel(&ld), Some(&ld), Some(l.size()))?;
    }
    store.write_blob(&json[..], Some(&digest), None)?;
    Ok(digest)
}
