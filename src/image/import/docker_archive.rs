//! docker-archive: what `docker save` writes — `manifest.json` listing, per image, its config
//! file, its `RepoTags` and its layer tars (legacy `<id>/layer.tar` or, since docker 25,
//! `blobs/sha256/<hex>`). The layers are stored as they are (usually plain tars) and an OCI
//! manifest is written for them, so a loaded image looks like any other in the store.

use std::fs::File;
use std::io::BufReader;

use oci_spec::image::{Descriptor, ImageConfiguration, ImageManifestBuilder, MediaType};

use super::archive::Staged;
use super::{commit, ImportError, Source};
use crate::image::digest::Digest;
use crate::image::layer::compression::Compression;
use crate::image::record::{Image, SYNTHESIZED};
use crate::image::reference::Reference;
use crate::image::store::{Store, StoreError};

#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Entry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

fn oci_digest(d: &Digest) -> Result<oci_spec::image::Digest, ImportError> {
    d.to_string().parse().map_err(|e| ImportError::Invalid {
        path: "digest".into(),
        reason: format!("{d}: {e}"),
    })
}

pub(crate) fn import(store: &Store, staged: &Staged) -> Result<Vec<Image>, ImportError> {
    let src = Source::staged(staged);
    let archive = staged.archive().to_path_buf();
    let invalid = |reason: String| ImportError::Invalid {
        path: archive.clone(),
        reason,
    };
    let entries: Vec<Entry> =
        serde_json::from_slice(&src.read_json_member(store, "manifest.json")?)
            .map_err(|e| invalid(format!("manifest.json: {e}")))?;
    if entries.is_empty() {
        return Err(invalid("manifest.json lists no image".into()));
    }
    let mut images = Vec::new();
    for e in entries {
        let names = e
            .repo_tags
            .iter()
            .flatten()
            .map(|t| {
                t.parse::<Reference>().map_err(|source| ImportError::Name {
                    path: archive.clone(),
                    name: t.clone(),
                    source,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let config_json = src.read_json_member(store, &e.config)?;
        // Parse before storing: a config that is not one fails here, naming the archive.
        let parsed = ImageConfiguration::from_reader(&config_json[..])
            .map_err(|err| invalid(format!("config {}: {err}", e.config)))?;
        let diff_ids = parsed.rootfs().diff_ids();
        if diff_ids.len() != e.layers.len() {
            return Err(invalid(format!(
                "manifest.json lists {} layers but config {} has {} diff_ids",
                e.layers.len(),
                e.config,
                diff_ids.len()
            )));
        }
        let config = store.write_blob_bytes(&config_json)?;
        let mut layers = Vec::with_capacity(e.layers.len());
        for (rel, diff_id) in e.layers.iter().zip(diff_ids) {
            let path = staged.require(rel)?;
            // Compression decides the media type; read it before the file is moved.
            let compression = match File::open(path) {
                Ok(f) => Compression::detect(&mut BufReader::new(f)),
                Err(err) => Err(err),
            }
            .map_err(|source| ImportError::Io {
                what: "cannot read",
                path: path.to_path_buf(),
                source,
            })?;
            let size = std::fs::metadata(path).map(|m| m.len());
            // An uncompressed layer's digest is its diff_id: check it as it is stored.
            let expected = match compression {
                Compression::None => Some(
                    diff_id
                        .parse::<Digest>()
                        .map_err(|err| invalid(format!("config {}: {err}", e.config)))?,
                ),
                _ => None,
            };
            let digest =
                src.ingest(store, rel, expected.as_ref(), None)
                    .map_err(|err| match err {
                        ImportError::Store(err @ StoreError::DigestMismatch { .. }) => {
                            invalid(format!("layer {rel} does not match its diff_id: {err}"))
                        }
                        other => other,
                    })?;
            let size = match size {
                Ok(s) => s,
                Err(_) => std::fs::metadata(store.blob_path(&digest))
                    .map_err(|source| ImportError::Io {
                        what: "cannot stat",
                        path: store.blob_path(&digest),
                        source,
                    })?
                    .len(),
            };
            layers.push(Descriptor::new(
                MediaType::from(compression.media_type()),
                size,
                oci_digest(&digest)?,
            ));
        }
        let manifest = ImageManifestBuilder::default()
            .schema_version(2u32)
            .media_type(MediaType::ImageManifest)
            .config(Descriptor::new(
                MediaType::ImageConfig,
                config_json.len() as u64,
                oci_digest(&config)?,
            ))
            .layers(layers)
            .annotations(std::collections::HashMap::from([(
                SYNTHESIZED.to_string(),
                "docker-archive".to_string(),
            )]))
            .build()
            .map_err(|err| invalid(format!("cannot build a manifest: {err}")))?;
        let manifest_json = serde_json::to_vec(&manifest)
            .map_err(|err| invalid(format!("cannot serialize a manifest: {err}")))?;
        let manifest_digest = store.write_blob_bytes(&manifest_json)?;
        if names.is_empty() {
            return Err(ImportError::NoName {
                path: archive.clone(),
                manifest: manifest_digest,
            });
        }
        images.push(commit(store, &manifest_digest, names)?);
    }
    Ok(images)
}
