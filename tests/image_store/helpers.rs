//! Helpers for `tests/image_store.rs`: the root and mkfs.erofs gate, layer tars with raw
//! (hostile) names, OCI layouts, the busybox image, self-undoing mounts and cache checks.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use husk::image::Digest;
use tar::{EntryType, Header};

use super::common;

fn is_root() -> bool {
    // SAFETY: no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Root and mkfs.erofs: what every conversion needs.
pub fn can_convert(test: &str) -> bool {
    if !is_root() {
        common::not_run(
            test,
            "needs root (layer conversion keeps ownership and device nodes)",
            true,
        );
        return false;
    }
    if Command::new("mkfs.erofs").arg("--help").output().is_err() {
        common::not_run(
            test,
            "mkfs.erofs not found: apt-get install erofs-utils",
            true,
        );
        return false;
    }
    true
}

/// A tar written entry by entry with raw header names (hostile paths included).
pub struct LayerTar(tar::Builder<Vec<u8>>);

impl LayerTar {
    pub fn new() -> Self {
        LayerTar(tar::Builder::new(Vec::new()))
    }

    pub fn entry(
        &mut self,
        path: &str,
        kind: EntryType,
        link: Option<&str>,
        data: &[u8],
        mode: u32,
        owner: (u64, u64),
    ) -> &mut Self {
        let mut h = Header::new_gnu();
        h.as_old_mut().name[..path.len()].copy_from_slice(path.as_bytes());
        if let Some(l) = link {
            h.as_old_mut().linkname[..l.len()].copy_from_slice(l.as_bytes());
        }
        h.set_entry_type(kind);
        h.set_size(data.len() as u64);
        h.set_mode(mode);
        h.set_uid(owner.0);
        h.set_gid(owner.1);
        h.set_mtime(1_600_000_000);
        h.set_device_major(if kind == EntryType::Char { 1 } else { 0 })
            .unwrap();
        h.set_device_minor(if kind == EntryType::Char { 3 } else { 0 })
            .unwrap();
        h.set_cksum();
        self.0.append(&h, data).unwrap();
        self
    }

    pub fn file(&mut self, path: &str, data: &[u8]) -> &mut Self {
        self.entry(path, EntryType::Regular, None, data, 0o644, (0, 0))
    }

    pub fn dir(&mut self, path: &str) -> &mut Self {
        self.entry(path, EntryType::Directory, None, b"", 0o755, (0, 0))
    }

    pub fn tar(&mut self) -> Vec<u8> {
        std::mem::replace(&mut self.0, tar::Builder::new(Vec::new()))
            .into_inner()
            .unwrap()
    }
}

pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(data).unwrap();
    gz.finish().unwrap()
}

/// Writes an OCI layout at `dir` with one image named `name` made of `layers` (blobs as
/// given: plain, gzip or zstd); `tag_in_config` makes configs (and so images) differ.
pub fn write_layout(dir: &Path, name: &str, layers: &[Vec<u8>], tag_in_config: &str) {
    let blobs = dir.join("blobs/sha256");
    fs::create_dir_all(&blobs).unwrap();
    let put = |data: &[u8]| {
        let d = Digest::of(data);
        fs::write(blobs.join(d.hex()), data).unwrap();
        d
    };
    let mut descs = Vec::new();
    let mut diff_ids = Vec::new();
    for l in layers {
        let d = put(l);
        descs.push(serde_json::json!({"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": d.to_string(), "size": l.len()}));
        diff_ids.push(Digest::of(l).to_string()); // not checked by husk; the shape matters
    }
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Entrypoint": ["/bin/app"], "Cmd": ["--serve"], "Env": ["PATH=/bin", "MODE=test"], "WorkingDir": "/srv",
                   "User": "1000:1000", "ExposedPorts": {"8080/tcp": {}}, "Labels": {"tag": tag_in_config}},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }))
    .unwrap();
    let c = put(&config);
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": c.to_string(), "size": config.len()},
        "layers": descs,
    }))
    .unwrap();
    let m = put(&manifest);
    let index = serde_json::json!({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": m.to_string(), "size": manifest.len(),
        "annotations": {"org.opencontainers.image.ref.name": name}}]});
    fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
    fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
}

pub fn busybox_image(test: &str, out: &Path) -> Option<PathBuf> {
    let script = common::repo_root().join("scripts/make-busybox-image.sh");
    match Command::new(&script).arg(out).output() {
        Ok(o) if o.status.success() => {
            Some(PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()))
        }
        Ok(o) => {
            common::not_run(
                test,
                &format!(
                    "make-busybox-image.sh failed: {}",
                    String::from_utf8_lossy(&o.stderr)
                ),
                true,
            );
            None
        }
        Err(e) => {
            common::not_run(test, &format!("cannot run {}: {e}", script.display()), true);
            None
        }
    }
}

pub fn count(dir: &Path) -> usize {
    fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
}

/// Mounts that undo themselves.
pub struct Mounts(pub Vec<PathBuf>);

impl Mounts {
    pub fn mount(&mut self, args: &[&str], target: &Path) -> Result<(), String> {
        fs::create_dir_all(target).unwrap();
        let o = Command::new("mount")
            .args(args)
            .arg(target)
            .output()
            .map_err(|e| e.to_string())?;
        if !o.status.success() {
            return Err(String::from_utf8_lossy(&o.stderr).into_owned());
        }
        self.0.push(target.to_path_buf());
        Ok(())
    }
}

impl Drop for Mounts {
    fn drop(&mut self) {
        for m in self.0.iter().rev() {
            let _ = Command::new("umount").arg(m).status();
        }
    }
}

pub fn xattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    let n = std::ffi::CString::new(name).unwrap();
    let mut buf = [0u8; 64];
    // SAFETY: valid C strings and buffer.
    let len =
        unsafe { libc::lgetxattr(c.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    (len >= 0).then(|| buf[..len as usize].to_vec())
}

pub fn assert_no_cache(store_root: &Path) {
    let layers: Vec<_> = fs::read_dir(store_root.join("layers"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(layers.is_empty(), "nothing cached: {layers:?}");
    assert_eq!(count(&store_root.join("tmp")), 0, "staging removed");
}
