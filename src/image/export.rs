//! Writing stored images out as archives (`husk save`) that `husk load`, `docker load` and
//! `podman load` read back:
//!
//! - docker-archive, what `docker save` writes: `manifest.json` (per image its config, its
//!   `RepoTags` and its layers) and the blobs under `blobs/sha256/`. Its layers must be plain
//!   tars whose sha256 are the config's diff_ids, so a layer stored compressed (as a registry
//!   sent it) is decompressed on the way out, and checked against its diff_id first.
//! - oci-archive: an OCI image layout in a tar, carrying the stored manifest, config and
//!   layer blobs exactly as they are, so the image keeps its manifest digest; each name is an
//!   `index.json` entry annotated as containerd and docker name it.
//!
//! The store's ingest lock is held while the archive is written, so a concurrent `rmi` or
//! prune cannot collect a blob halfway through; [`Store::save_to_file`] writes a temp file
//! beside the target and renames it, so a failed save leaves nothing at the target.

use std::collections::BTreeSet;
use std::fmt;
use std::fs::File;
use std::io::{self, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde_json::json;

use super::digest::{digest_reader, Digest};
use super::import::platform;
use super::layer::compression::Compression;
use super::record::Image;
use super::reference::Reference;
use super::store::{Store, StoreError};

/// The archive formats `husk save` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArchiveFormat {
    DockerArchive,
    OciArchive,
}

impl FromStr for ArchiveFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "docker-archive" => Ok(ArchiveFormat::DockerArchive),
            "oci-archive" => Ok(ArchiveFormat::OciArchive),
            _ => Err(format!(
                "unknown archive format {s:?}: docker-archive or oci-archive"
            )),
        }
    }
}

impl fmt::Display for ArchiveFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ArchiveFormat::DockerArchive => "docker-archive",
            ArchiveFormat::OciArchive => "oci-archive",
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot write the archive: {0}")]
    Write(#[source] io::Error),
    #[error(
        "layer {layer} of image {image} uncompresses to {actual}, not its diff_id {expected}; \
         the store is corrupt: remove the image and load or pull it again"
    )]
    DiffId {
        image: Digest,
        layer: Digest,
        expected: String,
        actual: Digest,
    },
}

/// One image to save and the names it is saved under.
#[derive(Debug, Clone)]
pub struct SaveItem {
    pub image: Image,
    pub names: Vec<Reference>,
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> ExportError + 'a {
    move |source| ExportError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

fn blob_name(d: &Digest) -> String {
    format!("blobs/sha256/{}", d.hex())
}

/// Appends tar members with fixed owner, mode and time, so the same images always make the
/// same archive.
struct Members<W: Write> {
    tar: tar::Builder<W>,
    written: BTreeSet<String>,
}

impl<W: Write> Members<W> {
    fn new(out: W) -> Result<Members<W>, ExportError> {
        let mut m = Members {
            tar: tar::Builder::new(out),
            written: BTreeSet::new(),
        };
        for dir in ["blobs/", "blobs/sha256/"] {
            let mut h = Self::header(tar::EntryType::Directory, 0, 0o755);
            m.tar
                .append_data(&mut h, dir, io::empty())
                .map_err(ExportError::Write)?;
        }
        Ok(m)
    }

    fn header(kind: tar::EntryType, size: u64, mode: u32) -> tar::Header {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(kind);
        h.set_size(size);
        h.set_mode(mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h
    }

    /// Whether `name` is already in the archive (a layer two images share goes in once).
    fn has(&self, name: &str) -> bool {
        self.written.contains(name)
    }

    fn add(&mut self, name: &str, size: u64, data: impl Read) -> Result<(), ExportError> {
        let mut h = Self::header(tar::EntryType::Regular, size, 0o644);
        self.tar
            .append_data(&mut h, name, data.take(size))
            .map_err(ExportError::Write)?;
        self.written.insert(name.to_string());
        Ok(())
    }

    fn add_bytes(&mut self, name: &str, data: &[u8]) -> Result<(), ExportError> {
        self.add(name, data.len() as u64, data)
    }

    /// Blob `d` of the store as it is stored.
    fn add_blob(&mut self, store: &Store, d: &Digest) -> Result<String, ExportError> {
        let name = blob_name(d);
        if !self.has(&name) {
            let path = store.blob_path(d);
            let f = File::open(&path).map_err(|e| match e.kind() {
                io::ErrorKind::NotFound => StoreError::MissingBlob(d.clone()).into(),
                _ => io_err("cannot open blob", &path)(e),
            })?;
            let size = f
                .metadata()
                .map_err(io_err("cannot stat blob", &path))?
                .len();
            self.add(&name, size, BufReader::with_capacity(256 << 10, f))?;
        }
        Ok(name)
    }

    fn finish(self) -> Result<W, ExportError> {
        self.tar.into_inner().map_err(ExportError::Write)
    }
}

impl Store {
    /// The images `args` name (as [`Store::get`] finds them), each once, in the order first
    /// named. An image named by one of its names is saved under that name; one named by ID
    /// or digest under all its names (docker would save it nameless, which no `load` can
    /// name again).
    pub fn resolve_for_save(&self, args: &[String]) -> Result<Vec<SaveItem>, StoreError> {
        let mut items: Vec<SaveItem> = Vec::new();
        for a in args {
            let image = self.get(a)?;
            let names: Vec<Reference> = match a.parse::<Reference>() {
                Ok(r) if image.references.contains(&r) => vec![r],
                _ => image.references.clone(),
            };
            let names = names.into_iter().filter(|r| r.tag().is_some());
            match items
                .iter_mut()
                .find(|i| i.image.manifest_digest == image.manifest_digest)
            {
                Some(item) => {
                    for n in names {
                        if !item.names.contains(&n) {
                            item.names.push(n);
                        }
                    }
                }
                None => items.push(SaveItem {
                    names: names.collect(),
                    image,
                }),
            }
        }
        Ok(items)
    }

    /// Writes `items` to `out` as one archive of `format`.
    pub fn save(
        &self,
        items: &[SaveItem],
        format: ArchiveFormat,
        out: impl Write,
    ) -> Result<(), ExportError> {
        let _ingest = self.ingest_lock()?;
        let mut out = match format {
            ArchiveFormat::DockerArchive => self.write_docker_archive(items, out)?,
            ArchiveFormat::OciArchive => self.write_oci_archive(items, out)?,
        };
        out.flush().map_err(ExportError::Write)
    }

    /// Writes the archive to a temp file beside `path`, then renames it to `path`: a save
    /// that fails leaves `path` as it was.
    pub fn save_to_file(
        &self,
        items: &[SaveItem],
        format: ArchiveFormat,
        path: &Path,
    ) -> Result<(), ExportError> {
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        let tmp = tempfile::Builder::new()
            .prefix(".husk-save-")
            .tempfile_in(dir)
            .map_err(io_err("cannot create a temporary file in", dir))?;
        let mut w = io::BufWriter::with_capacity(256 << 10, tmp);
        self.save(items, format, &mut w)?;
        let tmp = w
            .into_inner()
            .map_err(|e| ExportError::Write(e.into_error()))?;
        tmp.as_file()
            .set_permissions(std::fs::Permissions::from_mode(0o644))
            .and_then(|()| tmp.as_file().sync_all())
            .map_err(io_err("cannot write", tmp.path()))?;
        tmp.persist(path)
            .map_err(|e| io_err("cannot write", path)(e.error))?;
        Ok(())
    }

    fn write_docker_archive<W: Write>(&self, items: &[SaveItem], out: W) -> Result<W, ExportError> {
        let mut m = Members::new(out)?;
        let mut entries = Vec::new();
        for item in items {
            let img = &item.image;
            let config = m.add_blob(self, &img.config_digest)?;
            let mut layers = Vec::new();
            for (layer, diff_id) in img.layers.iter().zip(img.config.rootfs().diff_ids()) {
                layers.push(self.add_plain_layer(&mut m, img, &layer.digest, diff_id)?);
            }
            // Full names: docker shortens them on load, podman would otherwise file a short
            // name under localhost/.
            let tags: Vec<String> = item.names.iter().map(Reference::to_string).collect();
            entries.push(json!({"Config": config, "RepoTags": tags, "Layers": layers}));
        }
        let manifest = serde_json::to_vec(&entries).expect("JSON values serialize");
        m.add_bytes("manifest.json", &manifest)?;
        m.finish()
    }

    /// Layer `digest` as a plain tar named by its diff_id: as stored when it is one,
    /// otherwise decompressed twice (once to check the diff_id and learn the size a tar
    /// header needs first, once into the archive) rather than staged on disk.
    fn add_plain_layer<W: Write>(
        &self,
        m: &mut Members<W>,
        img: &Image,
        digest: &Digest,
        diff_id: &str,
    ) -> Result<String, ExportError> {
        let path = self.blob_path(digest);
        let open = || -> Result<BufReader<File>, ExportError> {
            match File::open(&path) {
                Ok(f) => Ok(BufReader::with_capacity(256 << 10, f)),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    Err(StoreError::MissingBlob(digest.clone()).into())
                }
                Err(e) => Err(io_err("cannot open blob", &path)(e)),
            }
        };
        let mut r = open()?;
        let compression = Compression::detect(&mut r).map_err(io_err("cannot read", &path))?;
        let (actual, size) = compression
            .decoder(r)
            .and_then(digest_reader)
            .map_err(io_err("cannot read layer", &path))?;
        if actual.to_string() != diff_id {
            return Err(ExportError::DiffId {
                image: img.id().clone(),
                layer: digest.clone(),
                expected: diff_id.to_string(),
                actual,
            });
        }
        let name = blob_name(&actual);
        if !m.has(&name) {
            let plain = compression
                .decoder(open()?)
                .map_err(io_err("cannot read layer", &path))?;
            m.add(&name, size, plain)?;
        }
        Ok(name)
    }

    fn write_oci_archive<W: Write>(&self, items: &[SaveItem], out: W) -> Result<W, ExportError> {
        let mut m = Members::new(out)?;
        let mut manifests = Vec::new();
        for item in items {
            let img = &item.image;
            m.add_blob(self, &img.config_digest)?;
            for l in &img.layers {
                m.add_blob(self, &l.digest)?;
            }
            let json = self.read_blob_bytes(&img.manifest_digest)?;
            m.add_blob(self, &img.manifest_digest)?;
            let media_type = match platform::media_type_of(&json) {
                t if t.is_empty() => "application/vnd.oci.image.manifest.v1+json".to_string(),
                t => t,
            };
            let descriptor = |annotations: Option<serde_json::Value>| {
                let mut d = json!({
                    "mediaType": media_type,
                    "digest": img.manifest_digest.to_string(),
                    "size": json.len(),
                    "platform": {
                        "architecture": img.config.architecture().to_string(),
                        "os": img.config.os().to_string(),
                    },
                });
                if let Some(a) = annotations {
                    d["annotations"] = a;
                }
                d
            };
            if item.names.is_empty() {
                manifests.push(descriptor(None));
            }
            // containerd and docker read the full name; podman and skopeo read ref.name.
            for n in &item.names {
                manifests.push(descriptor(Some(json!({
                    "io.containerd.image.name": n.to_string(),
                    "org.opencontainers.image.ref.name": n.to_string(),
                }))));
            }
        }
        m.add_bytes("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)?;
        let index = json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": manifests,
        });
        m.add_bytes(
            "index.json",
            &serde_json::to_vec(&index).expect("JSON values serialize"),
        )?;
        m.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_parse_and_print() {
        for f in [ArchiveFormat::DockerArchive, ArchiveFormat::OciArchive] {
            assert_eq!(f.to_string().parse::<ArchiveFormat>(), Ok(f));
        }
        let e = "tar".parse::<ArchiveFormat>().unwrap_err();
        assert!(e.contains("docker-archive or oci-archive"), "{e}");
    }

    #[test]
    fn a_failed_save_leaves_no_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("store")).unwrap();
        let target = dir.path().join("out.tar");
        // A manifest whose blobs are missing: the save fails partway.
        let item = SaveItem {
            image: fake_image(&store),
            names: vec!["x:1".parse().unwrap()],
        };
        for f in [ArchiveFormat::DockerArchive, ArchiveFormat::OciArchive] {
            let e = store.save_to_file(std::slice::from_ref(&item), f, &target);
            assert!(
                matches!(e, Err(ExportError::Store(StoreError::MissingBlob(_)))),
                "{e:?}"
            );
            let left: Vec<_> = std::fs::read_dir(dir.path())
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            assert_eq!(left, vec![std::ffi::OsString::from("store")], "{left:?}");
        }
    }

    /// An image whose manifest and config are stored but whose one layer is not.
    fn fake_image(store: &Store) -> Image {
        let layer = Digest::of(b"layer");
        let config = json!({
            "architecture": "amd64", "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": [layer.to_string()]},
        })
        .to_string();
        let config_digest = store.write_blob_bytes(config.as_bytes()).unwrap();
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                       "digest": config_digest.to_string(), "size": config.len()},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                        "digest": layer.to_string(), "size": 5}],
        })
        .to_string();
        let m = store.write_blob_bytes(manifest.as_bytes()).unwrap();
        store.image_by_manifest(&m, Vec::new()).unwrap()
    }
}
