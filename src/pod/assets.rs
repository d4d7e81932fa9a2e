//! Where the guest kernel and the agent initramfs are, without flags: `--kernel`/
//! `--initramfs`, then `HUSK_KERNEL`/`HUSK_INITRAMFS`, then `<prefix>/share/husk/` beside the
//! installed binary (and `/usr/local/share/husk/`), then the build caches of a checkout
//! (`~/.cache/husk/kernel/vmlinux`, `<repo>/target/husk/initramfs.cpio`). An initramfs is
//! `initramfs.cpio` (uncompressed, the default since it boots fastest) or, as built before
//! that, `initramfs.cpio.gz`.

use std::path::{Path, PathBuf};

/// A guest kernel or initramfs that is not where it was looked for.
#[derive(Debug, thiserror::Error)]
#[error("{what} not found; looked at {}; run scripts/setup.sh or set {}", list(.looked), env_for(.what))]
pub struct MissingAsset {
    pub what: &'static str,
    pub looked: Vec<PathBuf>,
}

fn list(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

fn env_for(what: &str) -> &'static str {
    if what.contains("kernel") {
        KERNEL_ENV
    } else {
        INITRAMFS_ENV
    }
}

pub const KERNEL_ENV: &str = "HUSK_KERNEL";
pub const INITRAMFS_ENV: &str = "HUSK_INITRAMFS";

/// The guest kernel and initramfs a container boots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestAssets {
    pub kernel: PathBuf,
    pub initramfs: PathBuf,
}

fn share_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Ok(exe) = std::env::current_exe() {
        // <prefix>/bin/husk -> <prefix>/share/husk
        if let Some(prefix) = exe.parent().and_then(Path::parent) {
            dirs.push(prefix.join("share/husk"));
        }
    }
    dirs.push(PathBuf::from("/usr/local/share/husk"));
    dirs.push(PathBuf::from("/usr/share/husk"));
    dirs.dedup();
    dirs
}

/// The places looked at for the kernel, in order.
pub fn kernel_candidates(flag: Option<&Path>) -> Vec<PathBuf> {
    let mut c: Vec<PathBuf> = flag.map(Path::to_path_buf).into_iter().collect();
    c.extend(std::env::var_os(KERNEL_ENV).map(PathBuf::from));
    c.extend(share_dirs().into_iter().map(|d| d.join("vmlinux")));
    c.push(crate::util::fs::husk_cache_dir().join("kernel/vmlinux"));
    c
}

/// File names of the initramfs, preferred first (scripts/build-initramfs.sh's default, then
/// its gzip form, which older builds and installs have).
const INITRAMFS_NAMES: [&str; 2] = ["initramfs.cpio", "initramfs.cpio.gz"];

/// The places looked at for the initramfs, in order.
pub fn initramfs_candidates(flag: Option<&Path>) -> Vec<PathBuf> {
    let mut c: Vec<PathBuf> = flag.map(Path::to_path_buf).into_iter().collect();
    c.extend(std::env::var_os(INITRAMFS_ENV).map(PathBuf::from));
    let checkout = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/husk");
    for d in share_dirs().into_iter().chain([checkout]) {
        c.extend(INITRAMFS_NAMES.iter().map(|n| d.join(n)));
    }
    c
}

fn first(
    what: &'static str,
    candidates: Vec<PathBuf>,
    explicit: bool,
) -> Result<PathBuf, MissingAsset> {
    // An explicit flag or variable that names a missing file is an error, not a fallthrough.
    if explicit {
        let p = &candidates[0];
        return if p.is_file() {
            Ok(p.clone())
        } else {
            Err(MissingAsset {
                what,
                looked: vec![p.clone()],
            })
        };
    }
    candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .ok_or(MissingAsset {
            what,
            looked: candidates,
        })
}

impl GuestAssets {
    pub fn find(
        kernel: Option<&Path>,
        initramfs: Option<&Path>,
    ) -> Result<GuestAssets, MissingAsset> {
        Ok(GuestAssets {
            kernel: first(
                "guest kernel",
                kernel_candidates(kernel),
                kernel.is_some() || std::env::var_os(KERNEL_ENV).is_some(),
            )?,
            initramfs: first(
                "agent initramfs",
                initramfs_candidates(initramfs),
                initramfs.is_some() || std::env::var_os(INITRAMFS_ENV).is_some(),
            )?,
        })
    }
}
