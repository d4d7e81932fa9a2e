//! oci-archive: an OCI image layout packed in a tar (what `skopeo copy … oci-archive:` and
//! `buildah push … oci-archive:` write). Staged, then read as a layout.

use std::path::Path;

use super::archive::Staged;
use super::{layout, ImportError, Source};
use crate::image::record::Image;
use crate::image::reference::Reference;
use crate::image::store::Store;

/// Imports an oci-archive tar; `name` as for [`Store::import_layout`].
pub fn import(
    store: &Store,
    archive: &Path,
    name: Option<&Reference>,
) -> Result<Vec<Image>, ImportError> {
    let _ingest = store.ingest_lock()?;
    let staged = Staged::extract(store, archive)?;
    layout::import(store, &Source::staged(&staged), name)
}
