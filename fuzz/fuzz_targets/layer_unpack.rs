//! Layer unpacking: a layer tar (plain, gzip or zstd; built from the line format of
//! `husk_fuzz::archive`, so whiteouts, opaque dirs, hard and symbolic links, devices, modes,
//! `..` and absolute names, long names and pax headers are all reachable) detected and
//! unpacked by the real `Compression::detect` + `unpack` into an empty directory. Nothing may
//! appear or change outside that directory.
#![no_main]

use std::io::BufReader;
use std::os::unix::fs::MetadataExt;

use husk::image::layer::compression::Compression;
use husk::image::layer::unpack::unpack;
use husk::image::{Digest, Limits};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let bytes = husk_fuzz::archive::build(data);
    let dir = tempfile::tempdir().expect("temp dir");
    let root = dir.path().join("rootfs");
    std::fs::create_dir(&root).expect("rootfs dir");
    // A neighbour a layer must not reach through `..` or a link.
    let outside = dir.path().join("outside");
    std::fs::create_dir(&outside).expect("outside dir");
    std::fs::write(outside.join("keep"), b"untouched").expect("outside file");
    let before = std::fs::symlink_metadata(outside.join("keep")).expect("stat keep");

    // Small limits: every way a layer can go wrong needs a handful of entries, and what
    // each entry costs is real file-system work (half of this target's time); a layer past
    // a limit still reaches the limit's own error path.
    let limits = Limits {
        max_unpacked_bytes: 256 << 10,
        max_entries: 64,
        max_json_bytes: 64 << 10,
    };
    let mut reader = BufReader::new(&bytes[..]);
    let Ok(compression) = Compression::detect(&mut reader) else {
        return;
    };
    let Ok(tar) = compression.decoder(reader) else {
        return;
    };
    let _ = unpack(tar, &root, &Digest::of(&bytes), &limits);

    let mut top: Vec<_> = std::fs::read_dir(dir.path())
        .expect("read temp dir")
        .map(|e| e.expect("dir entry").file_name())
        .collect();
    top.sort();
    assert_eq!(
        top,
        ["outside", "rootfs"],
        "the layer wrote next to its rootfs"
    );
    let mut out: Vec<_> = std::fs::read_dir(&outside)
        .expect("read outside")
        .map(|e| e.expect("dir entry").file_name())
        .collect();
    out.sort();
    assert_eq!(out, ["keep"], "the layer wrote outside its rootfs");
    assert_eq!(
        std::fs::read(outside.join("keep")).expect("read keep"),
        b"untouched"
    );
    let meta = std::fs::symlink_metadata(outside.join("keep")).expect("stat keep");
    assert!(
        meta.is_file(),
        "the layer replaced a file outside its rootfs"
    );
    assert_eq!(
        meta.nlink(),
        1,
        "the layer hard-linked a file outside its rootfs"
    );
    assert_eq!(
        (meta.mode(), meta.uid(), meta.gid(), meta.mtime()),
        (before.mode(), before.uid(), before.gid(), before.mtime()),
        "the layer changed a file outside its rootfs"
    );
});
