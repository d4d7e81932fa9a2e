//! The image store as the commands see it. Until `crate::image` lands this is the seam's
//! stand-in: images are "prebuilt" manifests, `<root>/images/prebuilt/<name>.json`
//! (`{"reference", "config": {entrypoint, cmd, env, working_dir, user}, "layers": [paths],
//! "layerFs"}`), and every other lookup fails with the fix, as the store will.

use std::path::{Path, PathBuf};

use crate::runtime::{self, ImageSource, ResolvedImage};

use super::Error;

/// The images under `--root`.
pub struct Images {
    root: PathBuf,
}

impl Images {
    pub fn open(root: &Path) -> Result<Images, Error> {
        Ok(Images {
            root: root.to_path_buf(),
        })
    }

    fn unavailable() -> Error {
        Error::Image("the image store is not part of this build yet (src/image)".into())
    }

    pub fn list(&self) -> Result<Vec<serde_json::Value>, Error> {
        Ok(Vec::new())
    }

    pub fn inspect(&self, reference: &str) -> Result<Option<serde_json::Value>, Error> {
        let _ = reference;
        Ok(None)
    }

    pub fn remove(&self, reference: &str, _force: bool) -> Result<String, Error> {
        Err(Error::Image(format!(
            "no such image: {reference} (see `husk images`)"
        )))
    }

    pub fn load(&self, _archive: &Path) -> Result<Vec<String>, Error> {
        Err(Self::unavailable())
    }

    pub fn pull(&self, _reference: &str) -> Result<String, Error> {
        Err(Self::unavailable())
    }
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct Prebuilt {
    reference: String,
    config: runtime::ImageConfig,
    layers: Vec<PathBuf>,
    layer_fs: String,
}

impl ImageSource for Images {
    fn resolve(&self, reference: &str) -> Result<ResolvedImage, runtime::Error> {
        let name = reference.rsplit('/').next().unwrap_or(reference);
        let name = name.split(':').next().unwrap_or(name);
        let manifest = self
            .root
            .join("images/prebuilt")
            .join(format!("{name}.json"));
        if let Ok(bytes) = std::fs::read(&manifest) {
            let p: Prebuilt =
                serde_json::from_slice(&bytes).map_err(|e| runtime::Error::Image {
                    reference: reference.to_string(),
                    detail: format!("{}: {e}", manifest.display()),
                })?;
            return Ok(ResolvedImage {
                reference: p.reference,
                id: None,
                config: p.config,
                layer_disks: p.layers,
                layer_fs: p.layer_fs,
            });
        }
        Err(runtime::Error::Image {
            reference: reference.to_string(),
            detail: "no such image; load it (`husk load -i FILE`) or pull it (`husk pull REF`)"
                .into(),
        })
    }
}
