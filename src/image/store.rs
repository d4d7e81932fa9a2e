//! The image store under one root directory (default `/var/lib/husk`):
//!
//! ```text
//! <root>/blobs/sha256/<hex>   content-addressed blobs: manifests, configs, layer tars
//! <root>/layers/<hex>.erofs   each layer converted once to a read-only disk, by layer digest
//! <root>/index.json           reference → manifest digest
//! <root>/lock, index.lock     see index.rs
//! <root>/tmp/                 staging for imports and layer conversion (mode 0700)
//! ```
//!
//! Every blob is written to a temp file, its digest checked, and only then renamed into
//! place, so a blob path always holds exactly the content its name promises.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use oci_spec::image::{ImageConfiguration, ImageManifest};

use super::digest::{digest_reader, Digest, HashingWriter};
use super::index::{Index, IndexError, Lock};
use super::record::{Image, Layer};
use super::reference::{Reference, ReferenceError};

/// Where the store lives unless the caller says otherwise (`--root`).
pub const DEFAULT_ROOT: &str = "/var/lib/husk";

/// Bounds on what an image may make husk do. Everything in an image is untrusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Total bytes of file content one layer may unpack to (also bounds an archive import).
    pub max_unpacked_bytes: u64,
    /// Tar entries in one layer or archive.
    pub max_entries: u64,
    /// Largest manifest, index or config JSON read into memory.
    pub max_json_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_unpacked_bytes: 64 << 30,
            max_entries: 4_000_000,
            max_json_bytes: 8 << 20,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error(transparent)]
    Index(#[from] IndexError),
    #[error(transparent)]
    Reference(#[from] ReferenceError),
    #[error("no such image: {0} (see `husk images`)")]
    NotFound(String),
    #[error("{prefix:?} matches several images ({matches}); give more of the ID or a name")]
    Ambiguous { prefix: String, matches: String },
    #[error(
        "blob {expected}: content has digest {actual}; the source is corrupt or was tampered with"
    )]
    DigestMismatch { expected: Digest, actual: Digest },
    #[error("blob {digest}: larger than {limit} bytes")]
    TooLarge { digest: String, limit: u64 },
    #[error("cannot tag with {0}: a name with a digest names content; give a tag")]
    DigestTag(String),
    #[error("blob {0} is missing from the store")]
    MissingBlob(Digest),
    #[error("{what} {digest} is not valid: {source}")]
    Invalid {
        what: &'static str,
        digest: Digest,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> StoreError + 'a {
    move |source| StoreError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// What garbage collection removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GcStats {
    pub blobs_removed: u64,
    pub layers_removed: u64,
    pub bytes_freed: u64,
}

/// An image store rooted at one directory.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
    limits: Limits,
}

impl Store {
    /// Opens (creating if needed) the store at `root`.
    pub fn open(root: impl Into<PathBuf>) -> Result<Store, StoreError> {
        let store = Store {
            root: root.into(),
            limits: Limits::default(),
        };
        // husk's whole state lives under the root (images, containers, leases): root only.
        crate::util::fs::create_private_dir(&store.root)
            .map_err(io_err("cannot create store directory", &store.root))?;
        for dir in [
            store.root.join("blobs/sha256"),
            store.root.join("layers"),
            store.tmp_dir(),
        ] {
            fs::create_dir_all(&dir).map_err(io_err("cannot create store directory", &dir))?;
        }
        // Staging holds files of any owner and mode (setuid binaries, device nodes) while a
        // layer is converted: keep everyone else out.
        let tmp = store.tmp_dir();
        fs::set_permissions(&tmp, fs::Permissions::from_mode(0o700))
            .map_err(io_err("cannot chmod", &tmp))?;
        Ok(store)
    }

    pub fn with_limits(mut self, limits: Limits) -> Store {
        self.limits = limits;
        self
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.root.join("blobs/sha256").join(digest.hex())
    }

    /// Where the read-only disk image of layer `digest` is cached.
    pub fn layer_image_path(&self, digest: &Digest) -> PathBuf {
        self.root
            .join("layers")
            .join(format!("{}.erofs", digest.hex()))
    }

    pub(crate) fn layers_dir(&self) -> PathBuf {
        self.root.join("layers")
    }

    pub(crate) fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    pub(super) fn index_path(&self) -> PathBuf {
        self.root.join("index.json")
    }

    pub(super) fn index_lock_path(&self) -> PathBuf {
        self.root.join("index.lock")
    }

    /// Held by anything that adds blobs, so GC (exclusive) waits for it.
    pub(crate) fn ingest_lock(&self) -> Result<Lock, StoreError> {
        Ok(Lock::shared(&self.root.join("lock"))?)
    }

    pub fn has_blob(&self, digest: &Digest) -> bool {
        self.blob_path(digest).is_file()
    }

    /// A writer for a new blob; nothing appears in the store until [`BlobWriter::commit`].
    pub fn blob_writer(&self, max: Option<u64>) -> Result<BlobWriter<'_>, StoreError> {
        let dir = self.root.join("blobs/sha256");
        let tmp = tempfile::Builder::new()
            .prefix(".tmp-")
            .tempfile_in(&dir)
            .map_err(io_err("cannot create temp blob in", &dir))?;
        Ok(BlobWriter {
            store: self,
            inner: HashingWriter::new(io::BufWriter::with_capacity(256 << 10, tmp)),
            limit: max.unwrap_or(u64::MAX),
            exceeded: false,
        })
    }

    /// Streams `reader` into the store. With `expected`, the content must have that digest;
    /// `max` bounds its size. The blob appears under its name only once complete and checked.
    pub fn write_blob(
        &self,
        mut reader: impl Read,
        expected: Option<&Digest>,
        max: Option<u64>,
    ) -> Result<Digest, StoreError> {
        let mut w = self.blob_writer(max)?;
        match io::copy(&mut reader, &mut w) {
            Ok(_) => w.commit(expected),
            Err(e) if w.over_limit() => {
                let digest = expected.map_or_else(|| "(unknown)".to_string(), |d| d.to_string());
                drop(e);
                Err(StoreError::TooLarge {
                    digest,
                    limit: w.limit,
                })
            }
            Err(e) => Err(io_err(
                "cannot write blob in",
                &self.root.join("blobs/sha256"),
            )(e)),
        }
    }

    /// Stores `data` and returns its digest.
    pub fn write_blob_bytes(&self, data: &[u8]) -> Result<Digest, StoreError> {
        self.write_blob(data, None, None)
    }

    /// Moves `path` (a file on the store's filesystem, e.g. in its tmp dir) into the store
    /// after checking its digest against `expected` if given: no second copy of a large layer.
    pub(crate) fn adopt_blob(
        &self,
        path: &Path,
        expected: Option<&Digest>,
    ) -> Result<Digest, StoreError> {
        let f = File::open(path).map_err(io_err("cannot open", path))?;
        let (actual, _) = digest_reader(io::BufReader::with_capacity(256 << 10, f))
            .map_err(io_err("cannot read", path))?;
        if let Some(expected) = expected {
            if actual != *expected {
                return Err(StoreError::DigestMismatch {
                    expected: expected.clone(),
                    actual,
                });
            }
        }
        if !self.has_blob(&actual) {
            let dest = self.blob_path(&actual);
            File::open(path)
                .and_then(|f| f.sync_all())
                .map_err(io_err("cannot sync", path))?;
            fs::rename(path, &dest).map_err(io_err("cannot move blob to", &dest))?;
        }
        Ok(actual)
    }

    fn persist_blob(
        &self,
        tmp: tempfile::NamedTempFile,
        digest: &Digest,
    ) -> Result<(), StoreError> {
        let dest = self.blob_path(digest);
        tmp.as_file()
            .sync_all()
            .map_err(io_err("cannot sync blob", &dest))?;
        tmp.persist(&dest)
            .map_err(|e| io_err("cannot store blob", &dest)(e.error))?;
        Ok(())
    }

    /// Reads a JSON blob (manifest, index, config) of at most `limits.max_json_bytes`.
    pub(crate) fn read_blob_bytes(&self, digest: &Digest) -> Result<Vec<u8>, StoreError> {
        let path = self.blob_path(digest);
        let f = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(StoreError::MissingBlob(digest.clone()))
            }
            Err(e) => return Err(io_err("cannot open blob", &path)(e)),
        };
        let mut data = Vec::new();
        f.take(self.limits.max_json_bytes + 1)
            .read_to_end(&mut data)
            .map_err(io_err("cannot read blob", &path))?;
        if data.len() as u64 > self.limits.max_json_bytes {
            return Err(StoreError::TooLarge {
                digest: digest.to_string(),
                limit: self.limits.max_json_bytes,
            });
        }
        Ok(data)
    }

    /// The image whose manifest is blob `manifest_digest`, with its config parsed and its
    /// layer digests validated.
    pub fn image_by_manifest(
        &self,
        manifest_digest: &Digest,
        references: Vec<Reference>,
    ) -> Result<Image, StoreError> {
        fn invalid(
            what: &'static str,
            digest: &Digest,
            source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
        ) -> StoreError {
            StoreError::Invalid {
                what,
                digest: digest.clone(),
                source: source.into(),
            }
        }
        let data = self.read_blob_bytes(manifest_digest)?;
        let manifest = ImageManifest::from_reader(&data[..])
            .map_err(|e| invalid("manifest", manifest_digest, e))?;
        let config_digest: Digest = manifest
            .config()
            .digest()
            .to_string()
            .parse()
            .map_err(|e: super::digest::DigestError| invalid("manifest", manifest_digest, e))?;
        let cdata = self.read_blob_bytes(&config_digest)?;
        let config = ImageConfiguration::from_reader(&cdata[..])
            .map_err(|e| invalid("image config", &config_digest, e))?;
        let mut layers = Vec::with_capacity(manifest.layers().len());
        for l in manifest.layers() {
            let digest = l
                .digest()
                .to_string()
                .parse()
                .map_err(|e: super::digest::DigestError| invalid("manifest", manifest_digest, e))?;
            layers.push(Layer {
                digest,
                media_type: l.media_type().to_string(),
                size: l.size(),
            });
        }
        let diff_ids = config.rootfs().diff_ids().len();
        if diff_ids != layers.len() {
            let reason = format!(
                "{} layers but the config lists {diff_ids} diff_ids",
                layers.len()
            );
            return Err(invalid("manifest", manifest_digest, reason));
        }
        Ok(Image {
            references,
            manifest_digest: manifest_digest.clone(),
            config_digest,
            manifest,
            config,
            layers,
        })
    }

    fn read_index(&self) -> Result<Index, StoreError> {
        Ok(Index::read(&self.index_path())?)
    }

    /// Points each of `references` at `manifest_digest`.
    pub(crate) fn tag(
        &self,
        references: &[Reference],
        manifest_digest: &Digest,
    ) -> Result<(), StoreError> {
        Index::update(&self.index_path(), &self.index_lock_path(), |index| {
            for r in references {
                index.name(r.to_string(), manifest_digest);
            }
        })?;
        Ok(())
    }

    /// `husk tag SOURCE TARGET`: `target` names the image `source` finds from now on; the
    /// image it named before keeps its other names, or stays as a dangling image.
    pub fn tag_image(&self, source: &str, target: &str) -> Result<Image, StoreError> {
        let image = self.get(source)?;
        let target: Reference = target.parse()?;
        if target.digest().is_some() {
            return Err(StoreError::DigestTag(target.to_string()));
        }
        self.tag(std::slice::from_ref(&target), &image.manifest_digest)?;
        self.get(&target.to_string())
    }

    /// All images, each once, with every reference that names it.
    pub fn list(&self) -> Result<Vec<Image>, StoreError> {
        let index = self.read_index()?;
        let mut by_manifest: BTreeMap<Digest, Vec<Reference>> = index
            .dangling
            .iter()
            .map(|d| (d.clone(), Vec::new()))
            .collect();
        for (name, digest) in index.images {
            let r: Reference = name.parse()?;
            by_manifest.entry(digest).or_default().push(r);
        }
        by_manifest
            .into_iter()
            .map(|(d, refs)| self.image_by_manifest(&d, refs))
            .collect()
    }

    /// Looks an image up by reference (`busybox`, `localhost:5000/x:t`, `name@sha256:…`),
    /// by manifest digest (`sha256:…`), or by a prefix of its ID (≥ 4 hex digits), in that
    /// order, as docker does.
    pub fn get(&self, what: &str) -> Result<Image, StoreError> {
        match self.lookup(what) {
            // Removed (and its blobs collected) between the read of the index and of its
            // blobs: a second look finds it gone, or whole again if it was loaded again. A
            // GC keeps every blob an indexed image reaches, so a blob still missing then is
            // missing indeed.
            Err(StoreError::MissingBlob(_)) => self.lookup(what),
            found => found,
        }
    }

    fn lookup(&self, what: &str) -> Result<Image, StoreError> {
        let index = self.read_index()?;
        let refs_of = |d: &Digest| -> Result<Vec<Reference>, StoreError> {
            let mut v = Vec::new();
            for (n, m) in &index.images {
                if m == d {
                    v.push(n.parse()?);
                }
            }
            Ok(v)
        };
        if let Ok(r) = what.parse::<Reference>() {
            if let Some(d) = index.images.get(&r.to_string()) {
                return self.image_by_manifest(d, refs_of(d)?);
            }
            // `name@sha256:M` of a stored manifest also names it.
            if let Some(d) = r.digest() {
                if index.manifests().contains(d) {
                    return self.image_by_manifest(d, refs_of(d)?);
                }
            }
        }
        let hex = what.strip_prefix("sha256:").unwrap_or(what);
        if hex.len() >= 4 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            let mut found = Vec::new();
            for m in index.manifests() {
                let img = self.image_by_manifest(m, refs_of(m)?)?;
                if img.manifest_digest.hex().starts_with(hex)
                    || img.config_digest.hex().starts_with(hex)
                {
                    found.push(img);
                }
            }
            found.dedup_by(|a, b| a.config_digest == b.config_digest);
            match found.len() {
                0 => {}
                1 => return Ok(found.remove(0)),
                _ => {
                    let matches = found
                        .iter()
                        .map(|i| i.manifest_digest.to_string())
                        .collect::<Vec<_>>()
                        .join(", ");
                    return Err(StoreError::Ambiguous {
                        prefix: what.to_string(),
                        matches,
                    });
                }
            }
        }
        Err(StoreError::NotFound(what.to_string()))
    }

    /// Removes `what` (as [`Store::forget`] does), then collects garbage. Returns the image
    /// removed.
    pub fn remove(&self, what: &str) -> Result<(Image, GcStats), StoreError> {
        let image = self.forget(what)?;
        let stats = self.gc()?;
        Ok((image, stats))
    }

    /// Takes `what` (as [`Store::get`] finds it) out of the index: a reference loses just that
    /// name; an ID or digest removes every name of the image. Nothing finds it from now on;
    /// its files stay until [`Store::gc`]. Quick, so a caller may hold a lock of its own
    /// across its check and this (`rmi` holds the containers' lock, which `run` holds while it
    /// resolves the image and links its layers).
    pub fn forget(&self, what: &str) -> Result<Image, StoreError> {
        let image = self.get(what)?;
        let by_name = what.parse::<Reference>().ok().map(|r| r.to_string());
        Index::update(
            &self.index_path(),
            &self.index_lock_path(),
            |index| match by_name {
                Some(n) if index.images.contains_key(&n) => {
                    index.images.remove(&n);
                }
                _ => index.forget(&image.manifest_digest),
            },
        )?;
        Ok(image)
    }

    /// After a failed load or pull (its ingest lock released): collects what it left (blobs,
    /// layer disks, staging files), so a rejected archive or a broken pull takes no space.
    /// The caller reports the failure it had; a sweep that fails too is only logged.
    pub(super) fn sweep(&self) {
        if let Err(e) = self.gc() {
            tracing::debug!(
                "sweeping {} after a failed import: {e}",
                self.root.display()
            );
        }
    }

    /// Deletes blobs and layer images that no indexed image reaches, and stale staging files.
    /// Waits for imports in flight (they hold the ingest lock shared).
    pub fn gc(&self) -> Result<GcStats, StoreError> {
        let _guard = Lock::exclusive(&self.root.join("lock"))?;
        let mut keep_blobs = BTreeSet::new();
        let mut keep_layers = BTreeSet::new();
        for m in self.read_index()?.manifests() {
            keep_blobs.insert(m.clone());
            // A manifest that cannot be read keeps only itself; its image is broken anyway.
            match self.image_by_manifest(m, Vec::new()) {
                Ok(img) => {
                    keep_blobs.insert(img.config_digest.clone());
                    for l in img.layers {
                        keep_layers.insert(l.digest.hex().to_string());
                        keep_blobs.insert(l.digest);
                    }
                }
                Err(e) => tracing::warn!("gc: keeping manifest {m} only: {e}"),
            }
        }
        let mut stats = GcStats::default();
        let blobs = self.root.join("blobs/sha256");
        for entry in fs::read_dir(&blobs).map_err(io_err("cannot list", &blobs))? {
            let entry = entry.map_err(io_err("cannot list", &blobs))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let keep = Digest::from_hex(&name).is_ok_and(|d| keep_blobs.contains(&d));
            if !keep {
                stats.bytes_freed += remove_path(&entry.path())?;
                stats.blobs_removed += 1;
            }
        }
        let layers = self.layers_dir();
        for entry in fs::read_dir(&layers).map_err(io_err("cannot list", &layers))? {
            let entry = entry.map_err(io_err("cannot list", &layers))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let keep = name
                .strip_suffix(".erofs")
                .is_some_and(|h| keep_layers.contains(h));
            if !keep {
                stats.bytes_freed += remove_path(&entry.path())?;
                stats.layers_removed += 1;
            }
        }
        // No import runs while we hold the lock exclusively: whatever is in tmp/ is left over
        // from a process that died.
        let tmp = self.tmp_dir();
        for entry in fs::read_dir(&tmp).map_err(io_err("cannot list", &tmp))? {
            let entry = entry.map_err(io_err("cannot list", &tmp))?;
            remove_path(&entry.path())?;
        }
        Ok(stats)
    }
}

/// A blob being written: hashed as it goes, bounded, renamed into place by `commit` only if
/// its digest is the one expected. Dropped without `commit`, it leaves nothing behind.
pub struct BlobWriter<'s> {
    store: &'s Store,
    inner: HashingWriter<io::BufWriter<tempfile::NamedTempFile>>,
    limit: u64,
    exceeded: bool,
}

impl BlobWriter<'_> {
    fn over_limit(&self) -> bool {
        self.exceeded
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.inner.written()
    }

    /// Checks the digest and stores the blob under it.
    pub fn commit(self, expected: Option<&Digest>) -> Result<Digest, StoreError> {
        let dir = self.store.root.join("blobs/sha256");
        let (actual, buf) = self.inner.finish();
        let tmp = buf
            .into_inner()
            .map_err(|e| io_err("cannot write blob in", &dir)(e.into_error()))?;
        if let Some(expected) = expected {
            if *expected != actual {
                return Err(StoreError::DigestMismatch {
                    expected: expected.clone(),
                    actual,
                });
            }
        }
        self.store.persist_blob(tmp, &actual)?;
        Ok(actual)
    }
}

impl Write for BlobWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.inner.written().saturating_add(buf.len() as u64) > self.limit {
            self.exceeded = true;
            return Err(io::Error::other(format!(
                "blob larger than {} bytes",
                self.limit
            )));
        }
        self.inner.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Removes a file or a whole directory (without following symlinks); returns the bytes of
/// plain files removed.
fn remove_path(path: &Path) -> Result<u64, StoreError> {
    let meta = fs::symlink_metadata(path).map_err(io_err("cannot stat", path))?;
    if meta.is_dir() {
        fs::remove_dir_all(path).map_err(io_err("cannot remove", path))?;
        Ok(0)
    } else {
        fs::remove_file(path).map_err(io_err("cannot remove", path))?;
        Ok(meta.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blob_written_only_when_digest_matches() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let d = store.write_blob_bytes(b"hello").unwrap();
        assert_eq!(fs::read(store.blob_path(&d)).unwrap(), b"hello");
        let wrong = Digest::of(b"other");
        let e = store
            .write_blob(&b"hello"[..], Some(&wrong), None)
            .unwrap_err();
        assert!(matches!(e, StoreError::DigestMismatch { .. }), "{e}");
        assert!(!store.has_blob(&wrong));
        let e = store.write_blob(&b"hello"[..], None, Some(4)).unwrap_err();
        assert!(matches!(e, StoreError::TooLarge { .. }), "{e}");
        // Only the one good blob: no temp files left behind.
        assert_eq!(
            fs::read_dir(dir.path().join("blobs/sha256"))
                .unwrap()
                .count(),
            1
        );
    }

    #[test]
    fn the_root_is_root_only_new_or_not() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("husk");
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        Store::open(&root).unwrap();
        assert_eq!(mode(&root), 0o700);
        fs::set_permissions(&root, fs::Permissions::from_mode(0o755)).unwrap();
        Store::open(&root).unwrap();
        assert_eq!(mode(&root), 0o700);
    }

    #[test]
    fn get_unknown_is_not_found() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        assert!(matches!(store.get("busybox"), Err(StoreError::NotFound(_))));
        assert!(store.list().unwrap().is_empty());
    }

    #[test]
    fn a_failed_load_sweeps_what_no_image_uses() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("store")).unwrap();
        // A blob no image names, as a load that broke off leaves one.
        let stray = store.write_blob_bytes(b"half an import").unwrap();
        let archive = dir.path().join("other.tar");
        let mut tar = tar::Builder::new(File::create(&archive).unwrap());
        let mut header = tar::Header::new_gnu();
        header.set_size(1);
        header.set_mode(0o644);
        header.set_cksum();
        tar.append_data(&mut header, "hello", &b"x"[..]).unwrap();
        tar.finish().unwrap();
        drop(tar);
        assert!(store.load(&archive).is_err(), "neither archive format");
        assert!(!store.has_blob(&stray), "swept after the failure");
    }
}
