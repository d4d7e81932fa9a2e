//! The image store as the commands see it. Until `crate::image` lands this is the seam's
//! stand-in: every lookup fails with the fix, so `husk run` of an unknown image already
//! behaves as it will.

use std::path::{Path, PathBuf};

use crate::runtime::{self, ImageSource, ResolvedImage};

use super::Error;

/// The images under `--root`.
pub struct Images {
    #[allow(dead_code)]
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

impl ImageSource for Images {
    fn resolve(&self, reference: &str) -> Result<ResolvedImage, runtime::Error> {
        Err(runtime::Error::Image {
            reference: reference.to_string(),
            detail: "no such image; load it (`husk load -i FILE`) or pull it (`husk pull REF`)"
                .into(),
        })
    }
}
