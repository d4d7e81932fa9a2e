//! What the runtime needs from an image: its config and its layers as read-only disks.
//! The image store (`crate::image`) implements [`ImageSource`]; tests can use a double.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::Error;

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

/// Finds images by reference.
pub trait ImageSource {
    fn resolve(&self, reference: &str) -> Result<ResolvedImage, Error>;

    /// Numeric ids of a `USER[:GROUP]` spec that names users or groups, looked up in
    /// `image`'s /etc/passwd and /etc/group. A source without file access takes numbers only.
    /// The third value: supplementary gids from the image's /etc/group.
    fn user_ids(&self, image: &ResolvedImage, user: &str) -> Result<(u32, u32, Vec<u32>), Error> {
        let _ = image;
        super::spec::parse_user(user).map(|(u, g)| (u, g, Vec::new()))
    }
}
