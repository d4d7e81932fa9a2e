//! What containers hold on the host, as `system df` reports it and `prune` frees it: the
//! images they were made from and the disk their directories use.

use std::collections::BTreeSet;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use crate::cli::Error;
use crate::image::Digest;
use crate::runtime::{Runtime, State};

/// The IDs of the images some container (running or not) was made from.
pub(super) fn images_in_use(rt: &Runtime) -> Result<BTreeSet<Digest>, Error> {
    Ok(rt
        .store
        .list()?
        .into_iter()
        .filter_map(|s| s.image_id.and_then(|id| id.parse().ok()))
        .collect())
}

/// Bytes allocated on disk under `path` (a sparse writable layer counts what it holds).
fn allocated(path: &Path) -> u64 {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return 0;
    };
    let own = meta.blocks() * 512;
    if !meta.is_dir() {
        return own;
    }
    let children: u64 = std::fs::read_dir(path)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| allocated(&e.path()))
        .sum();
    own + children
}

/// What removing container `s` frees.
pub(super) fn container_size(rt: &Runtime, s: &State) -> u64 {
    allocated(&rt.store.dir(&s.id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocated_counts_blocks_not_length() {
        let dir = tempfile::tempdir().unwrap();
        let sparse = std::fs::File::create(dir.path().join("sparse")).unwrap();
        sparse.set_len(1 << 30).unwrap();
        std::fs::write(dir.path().join("data"), vec![1u8; 8192]).unwrap();
        let n = allocated(dir.path());
        assert!((8192..1 << 20).contains(&n), "{n}");
    }
}
