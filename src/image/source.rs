//! What a container needs from an image, and the store as its provider: a reference → the
//! image's run config and its layers as read-only disks, and `USER` names → ids from the
//! image's own files. `husk`'s runtime takes any [`ImageSource`]; the [`Store`] is the one.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::import::platform::Platform;
use super::{users, ConvertError, Reference, Store, StoreError};

/// The parts of an OCI image config (`config` object) that shape the process.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageConfig {
    pub entrypoint: Option<Vec<String>>,
    pub cmd: Option<Vec<String>>,
    pub env: Vec<String>,
    pub working_dir: Option<String>,
    pub user: Option<String>,
}

/// An image ready to boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedImage {
    /// The normalized reference (`docker.io/library/busybox:latest`).
    pub reference: String,
    /// The image id (config digest), if known.
    pub id: Option<String>,
    pub config: ImageConfig,
    /// One read-only filesystem image per layer, bottom layer first.
    pub layer_disks: Vec<PathBuf>,
    /// `"erofs"` or `"ext4"`.
    pub layer_fs: String,
}

/// Why an image could not be resolved for a container.
#[derive(Debug, thiserror::Error)]
#[error("image {reference}: {detail}")]
pub struct SourceError {
    pub reference: String,
    pub detail: String,
}

/// What a reference that names no image in the store says.
const NO_SUCH_IMAGE: &str =
    "no such image; load it (`husk load -i FILE`) or pull it (`husk pull REF`)";

/// Finds images by reference.
pub trait ImageSource {
    fn resolve(&self, reference: &str) -> Result<ResolvedImage, SourceError>;

    /// Numeric ids of a `USER[:GROUP]` spec that names users or groups, looked up in
    /// `image`'s /etc/passwd and /etc/group. The third value: supplementary gids from the
    /// image's /etc/group.
    fn user_ids(
        &self,
        image: &ResolvedImage,
        user: &str,
    ) -> Result<(u32, u32, Vec<u32>), SourceError>;
}

impl ImageSource for Store {
    fn resolve(&self, reference: &str) -> Result<ResolvedImage, SourceError> {
        let err = |detail: String| SourceError {
            reference: reference.to_string(),
            detail,
        };
        let no_such = || err(NO_SUCH_IMAGE.into());
        let img = match self.get(reference) {
            Ok(i) => i,
            Err(StoreError::NotFound(_)) => return Err(no_such()),
            Err(e) => return Err(err(e.to_string())),
        };
        let host = Platform::host();
        let arch = img.config.architecture().to_string();
        if arch != host.architecture {
            return Err(err(format!(
                "it is built for {}/{arch}; this host runs {host} (pull it with --platform {host})",
                img.config.os()
            )));
        }
        let disks = match self.layer_disks(&img) {
            Ok(d) => d,
            // Removed meanwhile (`rmi`), its layers collected: as if it had never been here.
            Err(ConvertError::MissingBlob { .. })
                if matches!(self.get(reference), Err(StoreError::NotFound(_))) =>
            {
                return Err(no_such())
            }
            Err(e) => return Err(err(e.to_string())),
        };
        let rc = img.run_config();
        let name = img
            .references
            .iter()
            .find(|r| reference.parse::<Reference>().is_ok_and(|q| q == **r))
            .or(img.references.first())
            .map_or_else(|| img.id().to_string(), |r| r.to_string());
        let some = |v: Vec<String>| (!v.is_empty()).then_some(v);
        Ok(ResolvedImage {
            reference: name,
            id: Some(img.id().to_string()),
            config: ImageConfig {
                entrypoint: some(rc.entrypoint),
                cmd: some(rc.cmd),
                env: rc.env,
                working_dir: rc.working_dir,
                user: rc.user,
            },
            layer_disks: disks,
            layer_fs: "erofs".into(),
        })
    }

    fn user_ids(
        &self,
        image: &ResolvedImage,
        user: &str,
    ) -> Result<(u32, u32, Vec<u32>), SourceError> {
        let err = |detail: String| SourceError {
            reference: image.reference.clone(),
            detail,
        };
        let what = image.id.as_deref().unwrap_or(&image.reference);
        let gone = || matches!(self.get(what), Err(StoreError::NotFound(_)));
        let img = match self.get(what) {
            Ok(i) => i,
            Err(StoreError::NotFound(_)) => return Err(err(NO_SUCH_IMAGE.into())),
            Err(e) => return Err(err(e.to_string())),
        };
        // Removed meanwhile (`rmi`), its blobs collected as they were read: as `resolve`
        // says it, not as the missing blob.
        users::resolve(self, &img, user).map_err(|e| match gone() {
            true => err(NO_SUCH_IMAGE.into()),
            false => err(e.to_string()),
        })
    }
}
