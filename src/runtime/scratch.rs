//! The container's writable layer: a sparse ext4 image, kept until `husk rm`.

use std::path::Path;
use std::process::Command;

use super::Error;

/// Apparent size of a scratch disk; sparse, so it costs what the container writes.
pub const SCRATCH_SIZE: u64 = 8 << 30;

/// Creates a sparse ext4 image at `path`.
pub fn create(path: &Path, size: u64) -> Result<(), Error> {
    let io = |source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    let f = std::fs::File::create(path).map_err(io)?;
    f.set_len(size).map_err(io)?;
    drop(f);
    // lazy_itable_init and no discard: mkfs touches a few MiB instead of the whole image.
    let out = Command::new("mkfs.ext4")
        .args([
            "-q",
            "-F",
            "-E",
            "lazy_itable_init=1,lazy_journal_init=1,nodiscard",
        ])
        .arg(path)
        .output()
        .map_err(|source| Error::Tool {
            tool: "mkfs.ext4",
            detail: format!("{source} (install e2fsprogs)"),
        })?;
    if !out.status.success() {
        return Err(Error::Tool {
            tool: "mkfs.ext4",
            detail: format!(
                "on {}: {}",
                path.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        });
    }
    Ok(())
}
