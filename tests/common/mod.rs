//! Shared helpers for the integration tests: where the built artifacts are, and how a
//! test that cannot run on this host says so.
//!
//! A test never passes silently when it could not do its job: it prints `NOT RUN: …` with
//! the reason, and under `CI=true` a missing artifact or a missing /dev/kvm fails the run.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn in_ci() -> bool {
    std::env::var("CI").map(|v| v == "true" || v == "1").unwrap_or(false)
}

/// Where build scripts keep cached artifacts outside the repo (the kernel).
pub fn cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("HUSK_CACHE") {
        return PathBuf::from(d);
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
    Path::new(&home).join(".cache/husk")
}

/// Reports a test that could not run here. Under CI, `must_run` turns it into a failure.
pub fn not_run(test: &str, reason: &str, must_run: bool) {
    if must_run && in_ci() {
        panic!("{test}: required under CI=true but cannot run: {reason}");
    }
    eprintln!("NOT RUN: {test}: {reason}");
}

fn artifact(env: &str, default: PathBuf, hint: &str, test: &str) -> Option<PathBuf> {
    let path = std::env::var_os(env).map(PathBuf::from).unwrap_or(default);
    if path.exists() {
        Some(path)
    } else {
        not_run(test, &format!("{} not found ({env}); build it with {hint}", path.display()), true);
        None
    }
}

/// The guest kernel (ELF vmlinux) built by kernel-config/build.sh.
pub fn kernel(test: &str) -> Option<PathBuf> {
    artifact("HUSK_KERNEL", cache_dir().join("kernel/vmlinux"), "kernel-config/build.sh", test)
}

/// The guest kernel as a bzImage, built beside the vmlinux.
pub fn bzimage(test: &str) -> Option<PathBuf> {
    artifact("HUSK_BZIMAGE", cache_dir().join("kernel/bzImage"), "kernel-config/build.sh", test)
}

/// The agent initramfs built by scripts/build-initramfs.sh.
pub fn initramfs(test: &str) -> Option<PathBuf> {
    artifact(
        "HUSK_INITRAMFS",
        repo_root().join("target/husk/initramfs.cpio.gz"),
        "scripts/build-initramfs.sh",
        test,
    )
}

/// /dev/kvm usable by this process (open read-write).
pub fn kvm_available(test: &str) -> bool {
    match std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm") {
        Ok(_) => true,
        Err(e) => {
            not_run(test, &format!("cannot open /dev/kvm: {e}"), true);
            false
        }
    }
}

/// Path of a binary of this package built by cargo for the integration tests.
pub fn bin(name: &str) -> PathBuf {
    match name {
        "husk-vmm" => PathBuf::from(env!("CARGO_BIN_EXE_husk-vmm")),
        other => panic!("unknown binary {other}"),
    }
}
