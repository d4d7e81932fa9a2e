//! docker-archive / oci-archive import (`husk load`): the archive (tar, tar.gz or tar.zst,
//! built from the line format of `husk_fuzz::archive`, or taken byte for byte) goes through
//! the real `Store::load` into a fresh store with small limits: manifest.json, index.json,
//! oci-layout, manifests, configs and layers are all hostile. A rejected archive must leave
//! no blob or layer disk behind; an accepted one must list images whose layer disks exist.
#![no_main]

use std::path::Path;

use husk::image::{Limits, Store};
use libfuzzer_sys::fuzz_target;

fn files_under(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() && !p.is_symlink() {
            out.extend(files_under(&p));
        } else {
            out.push(p.display().to_string());
        }
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let bytes = husk_fuzz::archive::build(data);
    let dir = tempfile::tempdir().expect("temp dir");
    let archive = dir.path().join("image.tar");
    std::fs::write(&archive, &bytes).expect("write archive");
    let store = Store::open(dir.path().join("store"))
        .expect("open store")
        .with_limits(Limits {
            max_unpacked_bytes: 4 << 20,
            max_entries: 512,
            max_json_bytes: 256 << 10,
        });
    match store.load(&archive) {
        Ok(images) => {
            for image in &images {
                for l in &image.layers {
                    assert!(
                        store.layer_image_path(&l.digest).is_file(),
                        "image {} listed without its layer disk",
                        image.manifest_digest
                    );
                }
            }
        }
        Err(_) => {
            let root = dir.path().join("store");
            for sub in ["blobs", "layers"] {
                let left = files_under(&root.join(sub));
                assert!(left.is_empty(), "a rejected archive left {left:?}");
            }
        }
    }
});
