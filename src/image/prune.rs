//! Removing images in bulk (`husk image prune`, `husk system prune`) and measuring what the
//! store holds for them (`husk system df`). Removal goes through the index and the store's
//! one garbage collector, as `rmi` does; the caller says which images containers still use.

use std::collections::BTreeSet;
use std::fs;

use super::digest::Digest;
use super::index::Index;
use super::record::Image;
use super::store::{GcStats, Store, StoreError};

/// Which images a prune removes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PruneScope {
    /// Images with no name left (docker's `<none>:<none>`).
    Dangling,
    /// Every image no container uses.
    Unused,
}

/// What a prune removed.
#[derive(Debug, Default)]
pub struct Pruned {
    /// The images removed, with the names they had.
    pub images: Vec<Image>,
    pub stats: GcStats,
}

impl Store {
    /// Removes the images of `scope` whose ID (config digest) is not in `in_use`, then
    /// collects their blobs and layer disks.
    pub fn prune(
        &self,
        scope: PruneScope,
        in_use: &BTreeSet<Digest>,
    ) -> Result<Pruned, StoreError> {
        let images = self.forget_unused(scope, in_use)?;
        if images.is_empty() {
            return Ok(Pruned::default());
        }
        let stats = self.gc()?;
        Ok(Pruned { images, stats })
    }

    /// Takes the images of `scope` whose ID is not in `in_use` out of the index (as
    /// [`Store::forget`]); returns them. Their files stay until [`Store::gc`].
    pub fn forget_unused(
        &self,
        scope: PruneScope,
        in_use: &BTreeSet<Digest>,
    ) -> Result<Vec<Image>, StoreError> {
        let images: Vec<Image> = self
            .list()?
            .into_iter()
            .filter(|i| !in_use.contains(i.id()))
            .filter(|i| scope == PruneScope::Unused || i.references.is_empty())
            .collect();
        if images.is_empty() {
            return Ok(images);
        }
        // Under the index lock, an image named since the listing is no longer dangling.
        let images = Index::update(&self.index_path(), &self.index_lock_path(), |index| {
            let images: Vec<Image> = images
                .into_iter()
                .filter(|i| {
                    scope == PruneScope::Unused || index.dangling.contains(&i.manifest_digest)
                })
                .collect();
            for i in &images {
                index.forget(&i.manifest_digest);
            }
            images
        })?;
        Ok(images)
    }

    /// Bytes on disk of everything `images` need: manifests, configs, layer blobs and layer
    /// disks, each counted once however many of the images share it. What a prune of exactly
    /// these images (and nothing else sharing their layers) frees.
    pub fn disk_usage<'a>(&self, images: impl IntoIterator<Item = &'a Image>) -> u64 {
        let mut blobs = BTreeSet::new();
        let mut layers = BTreeSet::new();
        for i in images {
            blobs.insert(i.manifest_digest.clone());
            blobs.insert(i.config_digest.clone());
            for l in &i.layers {
                blobs.insert(l.digest.clone());
                layers.insert(l.digest.clone());
            }
        }
        let size = |p: std::path::PathBuf| fs::metadata(p).map_or(0, |m| m.len());
        blobs
            .into_iter()
            .map(|d| size(self.blob_path(&d)))
            .sum::<u64>()
            + layers
                .into_iter()
                .map(|d| size(self.layer_image_path(&d)))
                .sum::<u64>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_to_prune_in_an_empty_store() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        for scope in [PruneScope::Dangling, PruneScope::Unused] {
            let p = store.prune(scope, &BTreeSet::new()).unwrap();
            assert!(p.images.is_empty());
            assert_eq!(p.stats, GcStats::default());
        }
        assert_eq!(store.disk_usage(&[]), 0);
    }
}
