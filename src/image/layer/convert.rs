//! Converts a layer blob into a read-only erofs image, once, cached by the layer's digest
//! at `<root>/layers/<hex>.erofs`.
//!
//! erofs-utils 1.5 has no `--tar`, so the layer is unpacked into a staging directory (as
//! root: ownership, device nodes and `trusted.*` xattrs need it) and `mkfs.erofs` packs that
//! directory. The image is built under a temp name and renamed into place only after
//! everything succeeded, so the cache never holds a partial image; the staging directory
//! and temp image are removed on every path out (their guards drop).

use std::fs::{self, File};
use std::io::{self, BufReader};
use std::os::unix::fs::DirBuilderExt;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use super::compression::Compression;
use super::unpack::{unpack, UnpackError, UnpackStats};
use crate::image::digest::Digest;
use crate::image::store::{Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    #[error("converting layer {layer} needs root (ownership, device nodes and trusted.* xattrs are kept); run husk as root")]
    NotRoot { layer: Digest },
    #[error("layer {layer}: its blob is not in the store ({path})")]
    MissingBlob { layer: Digest, path: PathBuf },
    #[error("layer {layer}: cannot {what} {path}: {source}")]
    Io {
        layer: Digest,
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error(transparent)]
    Unpack(#[from] UnpackError),
    #[error("layer {layer}: cannot run mkfs.erofs ({source}); install erofs-utils")]
    MkfsMissing { layer: Digest, source: io::Error },
    #[error("layer {layer}: mkfs.erofs failed ({status}): {stderr}")]
    Mkfs {
        layer: Digest,
        status: std::process::ExitStatus,
        stderr: String,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A layer's read-only image.
#[derive(Debug, Clone)]
pub struct Converted {
    pub path: PathBuf,
    /// True when the image was already cached and nothing was done.
    pub cached: bool,
    /// What the unpack produced (None on a cache hit).
    pub stats: Option<UnpackStats>,
    pub elapsed: Duration,
}

/// A stable filesystem UUID derived from the layer digest, so one layer always gives the
/// same image.
fn uuid_of(d: &Digest) -> String {
    let h = d.hex();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// The erofs image of layer `layer` (whose blob is in `store`), converting it if it is not
/// cached yet.
pub fn convert(store: &Store, layer: &Digest) -> Result<Converted, ConvertError> {
    let start = Instant::now();
    let out = store.layer_image_path(layer);
    if out.is_file() {
        return Ok(Converted {
            path: out,
            cached: true,
            stats: None,
            elapsed: start.elapsed(),
        });
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(ConvertError::NotRoot {
            layer: layer.clone(),
        });
    }
    let _ingest = store.ingest_lock()?;
    let io_err = |what: &'static str, path: &std::path::Path| {
        let (layer, path) = (layer.clone(), path.to_path_buf());
        move |source| ConvertError::Io {
            layer,
            what,
            path,
            source,
        }
    };
    let blob = store.blob_path(layer);
    let file = match File::open(&blob) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(ConvertError::MissingBlob {
                layer: layer.clone(),
                path: blob,
            })
        }
        Err(e) => return Err(io_err("open", &blob)(e)),
    };
    let tmp = store.tmp_dir();
    let staging = tempfile::Builder::new()
        .prefix(&format!("layer-{}-", layer.short()))
        .tempdir_in(&tmp)
        .map_err(io_err("create staging directory in", &tmp))?;
    let rootfs = staging.path().join("rootfs");
    fs::DirBuilder::new()
        .mode(0o755)
        .create(&rootfs)
        .map_err(io_err("create", &rootfs))?;

    let mut reader = BufReader::with_capacity(256 << 10, file);
    let compression = Compression::detect(&mut reader).map_err(io_err("read", &blob))?;
    let tar = compression
        .decoder(reader)
        .map_err(io_err("decompress", &blob))?;
    let stats = unpack(tar, &rootfs, layer, store.limits())?;

    let layers = store.layers_dir();
    let image = tempfile::Builder::new()
        .prefix(&format!(".tmp-{}-", layer.hex()))
        .tempfile_in(&layers)
        .map_err(io_err("create temp image in", &layers))?;
    let output = Command::new("mkfs.erofs")
        .arg("--quiet")
        // xattrs kept (a negative tolerance would drop them); mtimes kept per inode.
        .arg("-x1")
        .arg("--preserve-mtime")
        .arg(format!("-U{}", uuid_of(layer)))
        .arg(image.path())
        .arg(&rootfs)
        .output()
        .map_err(|source| ConvertError::MkfsMissing {
            layer: layer.clone(),
            source,
        })?;
    if !output.status.success() {
        // One line: mkfs.erofs reports a failure over several.
        let stderr: String = String::from_utf8_lossy(&output.stderr)
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>()
            .join("; ")
            .chars()
            .take(600)
            .collect();
        return Err(ConvertError::Mkfs {
            layer: layer.clone(),
            status: output.status,
            stderr,
        });
    }
    image
        .as_file()
        .sync_all()
        .map_err(io_err("sync", image.path()))?;
    image
        .persist(&out)
        .map_err(|e| io_err("store", &out)(e.error))?;
    drop(staging);
    Ok(Converted {
        path: out,
        cached: false,
        stats: Some(stats),
        elapsed: start.elapsed(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuid_is_derived_from_the_digest() {
        let d = Digest::of(b"x");
        let u = uuid_of(&d);
        assert_eq!(u.len(), 36);
        assert!(d.hex().starts_with(&u[..8]));
    }
}
