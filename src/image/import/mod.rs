//! Imports images into the store: `load` for docker-archive and oci-archive tars,
//! `import_layout` for OCI image-layout directories. Both end in [`commit`]: every layer is
//! converted to its read-only disk *before* the image's names are written to the index, so
//! an image that is listed can always run, and a hostile layer leaves no name behind (its
//! blobs are unreferenced and go at the next GC).

pub mod archive;
pub mod docker_archive;
pub mod layout;
pub mod oci_archive;
pub mod platform;

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use super::digest::Digest;
use super::layer::{convert, ConvertError};
use super::record::Image;
use super::reference::{Reference, ReferenceError};
use super::store::{Store, StoreError};
use archive::Staged;

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("archive {path}: {reason}")]
    Archive { path: PathBuf, reason: String },
    #[error("archive {path}: {source}")]
    ArchiveRead {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path}: neither a docker-archive (manifest.json) nor an oci-archive (oci-layout + index.json)")]
    UnknownFormat { path: PathBuf },
    #[error("{path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error("{path}: image {manifest} has no name; name it when saving (docker save NAME:TAG, skopeo …:NAME:TAG)")]
    NoName { path: PathBuf, manifest: Digest },
    #[error("{path}: no image for linux/amd64 (found: {found})")]
    NoPlatform { path: PathBuf, found: String },
    #[error("{path}: bad image name {name:?}: {source}")]
    Name {
        path: PathBuf,
        name: String,
        source: ReferenceError,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Convert(#[from] ConvertError),
}

/// Where an importer reads blobs from: a layout directory (copied) or a staged archive
/// (moved into the store, no second copy).
pub(crate) enum Source<'a> {
    Dir(&'a Path),
    Staged {
        staged: &'a Staged,
        moved: RefCell<BTreeMap<PathBuf, Digest>>,
    },
}

impl<'a> Source<'a> {
    pub(crate) fn staged(staged: &'a Staged) -> Source<'a> {
        Source::Staged {
            staged,
            moved: RefCell::new(BTreeMap::new()),
        }
    }

    pub(crate) fn origin(&self) -> &Path {
        match self {
            Source::Dir(d) => d,
            Source::Staged { staged, .. } => staged.archive(),
        }
    }

    fn member(&self, rel: &str) -> Result<PathBuf, ImportError> {
        match self {
            Source::Dir(d) => {
                let p = d.join(rel);
                // Layout members are named by digests we validated; still never follow a
                // symlink out of a layout someone else wrote.
                match std::fs::symlink_metadata(&p) {
                    Ok(m) if m.is_file() => Ok(p),
                    Ok(_) => Err(ImportError::Invalid {
                        path: p,
                        reason: "not a regular file".into(),
                    }),
                    Err(source) => Err(ImportError::Io {
                        what: "cannot read",
                        path: p,
                        source,
                    }),
                }
            }
            Source::Staged { staged, .. } => staged.require(rel).map(Path::to_path_buf),
        }
    }

    /// Reads a small JSON member (bounded by the store's limit).
    pub(crate) fn read_json_member(
        &self,
        store: &Store,
        rel: &str,
    ) -> Result<Vec<u8>, ImportError> {
        let p = self.member(rel)?;
        let f = File::open(&p).map_err(|source| ImportError::Io {
            what: "cannot open",
            path: p.clone(),
            source,
        })?;
        let max = store.limits().max_json_bytes;
        let mut v = Vec::new();
        io::Read::read_to_end(&mut io::Read::take(f, max + 1), &mut v).map_err(|source| {
            ImportError::Io {
                what: "cannot read",
                path: p.clone(),
                source,
            }
        })?;
        if v.len() as u64 > max {
            return Err(ImportError::Invalid {
                path: self.origin().join(rel),
                reason: format!("larger than {max} bytes"),
            });
        }
        Ok(v)
    }

    /// Puts member `rel` into the store, checking it against `expected` if given (and its
    /// size against `size`). Returns its digest.
    pub(crate) fn ingest(
        &self,
        store: &Store,
        rel: &str,
        expected: Option<&Digest>,
        size: Option<u64>,
    ) -> Result<Digest, ImportError> {
        if let Some(d) = expected {
            if store.has_blob(d) {
                return Ok(d.clone());
            }
        }
        let p = self.member(rel)?;
        let digest = match self {
            Source::Dir(_) => {
                let f = File::open(&p).map_err(|source| ImportError::Io {
                    what: "cannot open",
                    path: p.clone(),
                    source,
                })?;
                store.write_blob(io::BufReader::with_capacity(256 << 10, f), expected, size)?
            }
            Source::Staged { moved, .. } => {
                if let Some(d) = moved.borrow().get(&p) {
                    return Ok(d.clone());
                }
                let d = store.adopt_blob(&p, expected)?;
                moved.borrow_mut().insert(p, d.clone());
                d
            }
        };
        Ok(digest)
    }
}

/// Converts every layer of the image whose manifest is stored as `manifest`, then points
/// `names` at it.
pub(crate) fn commit(
    store: &Store,
    manifest: &Digest,
    names: Vec<Reference>,
) -> Result<Image, ImportError> {
    let image = store.image_by_manifest(manifest, names.clone())?;
    for layer in &image.layers {
        if !store.has_blob(&layer.digest) {
            return Err(StoreError::MissingBlob(layer.digest.clone()).into());
        }
        convert(store, &layer.digest)?;
    }
    store.tag(&names, manifest)?;
    Ok(image)
}

impl Store {
    /// Loads every image of a docker-archive or oci-archive tar (plain, gzip or zstd), as
    /// `docker load -i` does. The format is told by the members: `manifest.json` is a
    /// docker-archive, `oci-layout` + `index.json` an oci-archive. On failure the store is
    /// swept, so a rejected archive leaves no blob or layer disk behind.
    pub fn load(&self, path: &Path) -> Result<Vec<Image>, ImportError> {
        let loaded = self.load_unswept(path);
        if loaded.is_err() {
            self.sweep();
        }
        loaded
    }

    fn load_unswept(&self, path: &Path) -> Result<Vec<Image>, ImportError> {
        let _ingest = self.ingest_lock()?;
        let staged = Staged::extract(self, path)?;
        if staged.has("manifest.json") {
            docker_archive::import(self, &staged)
        } else if staged.has("oci-layout") && staged.has("index.json") {
            layout::import(self, &Source::staged(&staged), None)
        } else {
            Err(ImportError::UnknownFormat {
                path: path.to_path_buf(),
            })
        }
    }

    /// Imports the images of an OCI image-layout directory. Names come from each manifest's
    /// `io.containerd.image.name` or `org.opencontainers.image.ref.name` annotation, or
    /// from `name` (which then must be the only image).
    pub fn import_layout(
        &self,
        dir: &Path,
        name: Option<&Reference>,
    ) -> Result<Vec<Image>, ImportError> {
        let _ingest = self.ingest_lock()?;
        layout::import(self, &Source::Dir(dir), name)
    }

    /// The read-only disk images of `image`'s layers, bottom first (converted now if a GC or
    /// a crash removed them).
    pub fn layer_disks(&self, image: &Image) -> Result<Vec<PathBuf>, ConvertError> {
        image
            .layers
            .iter()
            .map(|l| convert(self, &l.digest).map(|c| c.path))
            .collect()
    }
}
