//! The image store end to end: docker-archive and OCI-layout imports, multi-layer images
//! with whiteouts and opaque directories converted to erofs and checked by mounting them
//! (and stacking them with overlayfs), hostile and corrupt layers, the shared layer cache,
//! and remove + GC. Needs root, mkfs.erofs and loop mounts; says NOT RUN otherwise.

#![deny(clippy::undocumented_unsafe_blocks)]

mod common;
#[path = "image_store/helpers.rs"]
mod helpers;

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use husk::image::{Digest, ImportError, Store};
use tar::EntryType;

use helpers::{
    assert_no_cache, busybox_image, can_convert, count, gzip, write_layout, xattr, LayerTar, Mounts,
};

#[test]
fn load_docker_archive_and_read_config() {
    let test = "load_docker_archive_and_read_config";
    if !can_convert(test) {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let Some(archive) = busybox_image(test, work.path()) else {
        return;
    };
    let store = Store::open(work.path().join("store")).unwrap();
    let images = store.load(&archive).unwrap();
    assert_eq!(images.len(), 1);
    let img = store.get("busybox").unwrap();
    assert_eq!(img.references[0].familiar(), "busybox:latest");
    let rc = img.run_config();
    assert_eq!(rc.cmd, ["sh"]);
    assert!(rc
        .env
        .iter()
        .any(|e| e.starts_with("PATH=") && e.contains("/bin")));
    assert_eq!(img.layers.len(), 1);
    assert_eq!(
        img.layers[0].media_type,
        "application/vnd.oci.image.layer.v1.tar"
    );
    let disks = store.layer_disks(&img).unwrap();
    assert!(disks[0].is_file());
    // By ID prefix and by manifest digest too.
    assert_eq!(
        store.get(&img.id().hex()[..8]).unwrap().manifest_digest,
        img.manifest_digest
    );
    assert_eq!(
        store.get(&img.manifest_digest.to_string()).unwrap().id(),
        img.id()
    );
    assert_eq!(store.list().unwrap().len(), 1);
}

#[test]
fn import_oci_layout_and_read_config() {
    let test = "import_oci_layout_and_read_config";
    if !can_convert(test) {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    if busybox_image(test, work.path()).is_none() {
        return;
    }
    let store = Store::open(work.path().join("store")).unwrap();
    let images = store
        .import_layout(&work.path().join("busybox-oci"), None)
        .unwrap();
    assert_eq!(
        images[0].references[0].to_string(),
        "docker.io/library/busybox:latest"
    );
    assert_eq!(
        images[0].layers[0].media_type,
        "application/vnd.oci.image.layer.v1.tar+gzip"
    );
    assert_eq!(images[0].run_config().cmd, ["sh"]);
    // A name given by the caller wins.
    let named: husk::image::Reference = "localhost:5000/bb:v1".parse().unwrap();
    store
        .import_layout(&work.path().join("busybox-oci"), Some(&named))
        .unwrap();
    assert!(store.get("localhost:5000/bb:v1").is_ok());
    // Full config read back from a hand-made layout.
    let lay = work.path().join("app");
    write_layout(
        &lay,
        "example.com/app:1",
        &[LayerTar::new().file("bin/app", b"#!").tar()],
        "x",
    );
    let app = store.import_layout(&lay, None).unwrap().remove(0);
    let rc = app.run_config();
    assert_eq!(
        (rc.entrypoint, rc.cmd),
        (vec!["/bin/app".to_string()], vec!["--serve".to_string()])
    );
    assert_eq!(rc.env, ["PATH=/bin", "MODE=test"]);
    assert_eq!(rc.working_dir.as_deref(), Some("/srv"));
    assert_eq!(rc.user.as_deref(), Some("1000:1000"));
    assert_eq!(rc.exposed_ports, ["8080/tcp"]);
    assert_eq!(rc.labels["tag"], "x");
}

#[test]
fn load_oci_archive_and_compressed_docker_archive() {
    let test = "load_oci_archive_and_compressed_docker_archive";
    if !can_convert(test) {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let Some(archive) = busybox_image(test, work.path()) else {
        return;
    };
    // oci-archive: the layout in a tar, as `tar -C layout -cf` (and skopeo) write it.
    let oci_tar = work.path().join("busybox-oci.tar");
    let st = Command::new("tar")
        .arg("-C")
        .arg(work.path().join("busybox-oci"))
        .arg("-cf")
        .arg(&oci_tar)
        .arg(".")
        .status()
        .unwrap();
    assert!(st.success());
    let store = Store::open(work.path().join("store")).unwrap();
    let img = store.load(&oci_tar).unwrap().remove(0);
    assert_eq!(img.references[0].familiar(), "busybox:latest");
    assert_eq!(img.run_config().cmd, ["sh"]);
    // `docker save | gzip`: a compressed docker-archive loads the same.
    let gz = work.path().join("busybox.tar.gz");
    fs::write(&gz, gzip(&fs::read(&archive).unwrap())).unwrap();
    let from_gz = store.load(&gz).unwrap().remove(0);
    assert_eq!(
        from_gz.layers[0].media_type,
        "application/vnd.oci.image.layer.v1.tar"
    );
    assert_eq!(count(&store.root().join("tmp")), 0, "staging removed");
}

#[test]
fn hostile_and_unknown_archives_are_rejected() {
    let test = "hostile_and_unknown_archives_are_rejected";
    if !can_convert(test) {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let store = Store::open(work.path().join("store")).unwrap();
    let evil = work.path().join("evil.tar");
    fs::write(
        &evil,
        LayerTar::new()
            .file("manifest.json", b"[]")
            .file("../../outside", b"x")
            .tar(),
    )
    .unwrap();
    let msg = store.load(&evil).unwrap_err().to_string();
    assert!(
        msg.contains("../../outside") && msg.contains("evil.tar"),
        "{msg}"
    );
    let linked = work.path().join("linked.tar");
    let data = LayerTar::new()
        .entry(
            "manifest.json",
            EntryType::Symlink,
            Some("../../../etc/passwd"),
            b"",
            0o777,
            (0, 0),
        )
        .tar();
    fs::write(&linked, data).unwrap();
    let msg = store.load(&linked).unwrap_err().to_string();
    assert!(msg.contains("points outside the archive"), "{msg}");
    let other = work.path().join("other.tar");
    fs::write(&other, LayerTar::new().file("hello", b"x").tar()).unwrap();
    let msg = store.load(&other).unwrap_err().to_string();
    assert!(msg.contains("neither a docker-archive"), "{msg}");
    assert_eq!(count(&store.root().join("tmp")), 0, "staging removed");
    assert!(store.list().unwrap().is_empty());
}

#[test]
fn layered_image_with_whiteouts_mounts_and_stacks() {
    let test = "layered_image_with_whiteouts_mounts_and_stacks";
    if !can_convert(test) {
        return;
    }
    let mut t = LayerTar::new();
    let base = t
        .dir("a/")
        .file("a/keep", b"keep")
        .file("a/gone", b"gone")
        .dir("opq/")
        .file("opq/old1", b"1")
        .file("opq/old2", b"2")
        .entry(
            "home/user/",
            EntryType::Directory,
            None,
            b"",
            0o750,
            (1000, 1000),
        )
        .entry(
            "home/user/.profile",
            EntryType::Regular,
            None,
            b"PS1=$",
            0o600,
            (1000, 1000),
        )
        .entry("bin/su", EntryType::Regular, None, b"su", 0o4755, (0, 0))
        .entry(
            "link",
            EntryType::Symlink,
            Some("a/keep"),
            b"",
            0o777,
            (0, 0),
        )
        .entry("hard", EntryType::Link, Some("a/keep"), b"", 0o644, (0, 0))
        .entry("dev/null", EntryType::Char, None, b"", 0o666, (0, 0))
        .tar();
    let upper = gzip(
        &t.file("a/.wh.gone", b"")
            .dir("opq/")
            .file("opq/.wh..wh..opq", b"")
            .file("opq/new", b"new")
            .file("b/new", b"b")
            .tar(),
    );
    let top = zstd::stream::encode_all(&t.file("c", b"c").tar()[..], 3).unwrap();

    let work = tempfile::tempdir().unwrap();
    let store = Store::open(work.path().join("store")).unwrap();
    write_layout(
        &work.path().join("layout"),
        "example.com/layered:1",
        &[base, upper, top],
        "l",
    );
    let img = store
        .import_layout(&work.path().join("layout"), None)
        .unwrap()
        .remove(0);
    let disks = store.layer_disks(&img).unwrap();
    assert_eq!(disks.len(), 3);

    let mut mounts = Mounts(Vec::new());
    let mnt: Vec<PathBuf> = (0..3).map(|i| work.path().join(format!("m{i}"))).collect();
    for (disk, m) in disks.iter().zip(&mnt) {
        let opts = "loop,ro";
        if let Err(e) = mounts.mount(&["-t", "erofs", "-o", opts, disk.to_str().unwrap()], m) {
            common::not_run(test, &format!("cannot loop-mount erofs: {e}"), true);
            return;
        }
    }
    // Base layer: owners, modes, setuid, symlink, hardlink, device node.
    let l0 = &mnt[0];
    let home = fs::metadata(l0.join("home/user")).unwrap();
    assert_eq!(
        (home.uid(), home.gid(), home.mode() & 0o7777),
        (1000, 1000, 0o750)
    );
    let prof = fs::metadata(l0.join("home/user/.profile")).unwrap();
    assert_eq!(
        (prof.uid(), prof.mode() & 0o7777, prof.mtime()),
        (1000, 0o600, 1_600_000_000)
    );
    assert_eq!(
        fs::metadata(l0.join("bin/su")).unwrap().mode() & 0o7777,
        0o4755
    );
    assert_eq!(fs::read_link(l0.join("link")).unwrap(), Path::new("a/keep"));
    assert_eq!(
        fs::metadata(l0.join("hard")).unwrap().ino(),
        fs::metadata(l0.join("a/keep")).unwrap().ino()
    );
    assert_eq!(fs::metadata(l0.join("a/keep")).unwrap().nlink(), 2);
    let null = fs::metadata(l0.join("dev/null")).unwrap();
    assert!(null.file_type().is_char_device() && null.rdev() == libc::makedev(1, 3));
    // Upper layer: whiteout char device 0:0 and the opaque xattr.
    let wh = fs::symlink_metadata(mnt[1].join("a/gone")).unwrap();
    assert!(
        wh.file_type().is_char_device() && wh.rdev() == 0,
        "a/gone is a whiteout"
    );
    assert_eq!(
        xattr(&mnt[1].join("opq"), "trusted.overlay.opaque").as_deref(),
        Some(&b"y"[..])
    );
    assert!(!mnt[1].join("a/.wh.gone").exists() && !mnt[1].join("opq/.wh..wh..opq").exists());
    // Stacked: what the guest's overlayfs will show.
    let merged = work.path().join("merged");
    let lower = format!(
        "lowerdir={}:{}:{}",
        mnt[2].display(),
        mnt[1].display(),
        mnt[0].display()
    );
    if let Err(e) = mounts.mount(&["-t", "overlay", "overlay", "-o", &lower], &merged) {
        common::not_run(
            test,
            &format!("overlay merge check skipped, overlayfs mount failed: {e}"),
            false,
        );
        return;
    }
    assert_eq!(fs::read(merged.join("a/keep")).unwrap(), b"keep");
    assert!(!merged.join("a/gone").exists(), "whited out");
    let mut opq: Vec<_> = fs::read_dir(merged.join("opq"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    opq.sort();
    assert_eq!(opq, ["new"], "opaque dir hides the lower entries");
    assert_eq!(fs::read(merged.join("b/new")).unwrap(), b"b");
    assert_eq!(fs::read(merged.join("c")).unwrap(), b"c");
    assert_eq!(fs::read(merged.join("link")).unwrap(), b"keep");
}

#[test]
fn malicious_layers_are_rejected_with_nothing_cached() {
    let test = "malicious_layers_are_rejected_with_nothing_cached";
    if !can_convert(test) {
        return;
    }
    let outside = tempfile::tempdir().unwrap();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "dotdot",
            LayerTar::new()
                .file("ok", b"x")
                .file("../escape", b"pwned")
                .tar(),
            "../escape",
        ),
        (
            "absolute",
            LayerTar::new().file("/tmp/husk-abs-escape", b"pwned").tar(),
            "/tmp/husk-abs-escape",
        ),
        (
            "symlink write-through",
            LayerTar::new()
                .entry(
                    "a",
                    EntryType::Symlink,
                    Some(outside.path().to_str().unwrap()),
                    b"",
                    0o777,
                    (0, 0),
                )
                .file("a/passwd", b"pwned")
                .tar(),
            "a/passwd",
        ),
        (
            "hardlink outside",
            LayerTar::new()
                .entry(
                    "h",
                    EntryType::Link,
                    Some("../../../etc/shadow"),
                    b"",
                    0,
                    (0, 0),
                )
                .tar(),
            "\"h\"",
        ),
    ];
    for (what, layer, entry) in cases {
        let work = tempfile::tempdir().unwrap();
        let store = Store::open(work.path().join("store")).unwrap();
        write_layout(
            &work.path().join("layout"),
            "example.com/evil:1",
            &[gzip(&layer)],
            what,
        );
        let err = store
            .import_layout(&work.path().join("layout"), None)
            .unwrap_err();
        let msg = err.to_string();
        eprintln!("{what}: {msg}");
        let layer_digest = Digest::of(&gzip(&layer)).to_string();
        assert!(matches!(err, ImportError::Convert(_)), "{what}: {msg}");
        assert!(
            msg.contains(entry),
            "{what}: the error names the entry {entry}: {msg}"
        );
        assert!(
            msg.contains(&layer_digest),
            "{what}: the error names the layer: {msg}"
        );
        assert_no_cache(store.root());
        assert!(
            store.get("example.com/evil:1").is_err(),
            "{what}: not indexed"
        );
        assert_eq!(count(outside.path()), 0, "{what}: nothing written outside");
        assert!(!Path::new("/tmp/husk-abs-escape").exists());
        // The blobs it left are unreferenced: GC takes them.
        store.gc().unwrap();
        assert_eq!(count(&store.root().join("blobs/sha256")), 0);
    }
}

#[test]
fn corrupt_layers_are_rejected_with_nothing_cached() {
    let test = "corrupt_layers_are_rejected_with_nothing_cached";
    if !can_convert(test) {
        return;
    }
    let payload: Vec<u8> = (0..200_000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 24) as u8)
        .collect();
    let tar = LayerTar::new()
        .file("big", &payload)
        .file("small", b"s")
        .tar();
    let mut bad_gzip = gzip(&tar);
    let mid = bad_gzip.len() / 2;
    for b in &mut bad_gzip[mid..mid + 64] {
        *b ^= 0x5a;
    }
    let truncated_tar = tar[..tar.len() / 2].to_vec();
    let mut cut_gzip = gzip(&tar);
    cut_gzip.truncate(cut_gzip.len() - 100);
    for (what, blob) in [
        ("bad gzip", bad_gzip),
        ("truncated tar", truncated_tar),
        ("truncated gzip", cut_gzip),
    ] {
        let work = tempfile::tempdir().unwrap();
        let store = Store::open(work.path().join("store")).unwrap();
        write_layout(
            &work.path().join("layout"),
            "example.com/corrupt:1",
            std::slice::from_ref(&blob),
            what,
        );
        let msg = store
            .import_layout(&work.path().join("layout"), None)
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("corrupt or truncated") && msg.contains(&Digest::of(&blob).to_string()),
            "{what}: {msg}"
        );
        assert_no_cache(store.root());
    }
}

#[test]
fn a_layer_shared_by_two_images_is_converted_once() {
    let test = "a_layer_shared_by_two_images_is_converted_once";
    if !can_convert(test) {
        return;
    }
    let payload: Vec<u8> = (0..4_000_000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 24) as u8)
        .collect();
    let shared = LayerTar::new().file("data", &payload).tar();
    let work = tempfile::tempdir().unwrap();
    let store = Store::open(work.path().join("store")).unwrap();
    write_layout(
        &work.path().join("one"),
        "example.com/one:1",
        std::slice::from_ref(&shared),
        "one",
    );
    write_layout(
        &work.path().join("two"),
        "example.com/two:1",
        &[shared.clone(), LayerTar::new().file("x", b"x").tar()],
        "two",
    );
    let t = Instant::now();
    store.import_layout(&work.path().join("one"), None).unwrap();
    let first = t.elapsed();
    let disk = store.layer_image_path(&Digest::of(&shared));
    let ino = fs::metadata(&disk).unwrap().ino();
    let t = Instant::now();
    let two = store
        .import_layout(&work.path().join("two"), None)
        .unwrap()
        .remove(0);
    let second = t.elapsed();
    assert_eq!(
        fs::metadata(&disk).unwrap().ino(),
        ino,
        "the cached image was not rebuilt"
    );
    let again = husk::image::layer::convert(&store, &two.layers[0].digest).unwrap();
    assert!(again.cached);
    assert_eq!(count(&store.root().join("layers")), 2);
    eprintln!("shared layer: first import {first:?} (converted), second {second:?} (cache hit for it), lookup {:?}", again.elapsed);
}

#[test]
fn remove_and_gc_leave_nothing_behind() {
    let test = "remove_and_gc_leave_nothing_behind";
    if !can_convert(test) {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let store = Store::open(work.path().join("store")).unwrap();
    let shared = LayerTar::new().file("s", b"shared").tar();
    write_layout(
        &work.path().join("one"),
        "example.com/one:1",
        std::slice::from_ref(&shared),
        "one",
    );
    write_layout(
        &work.path().join("two"),
        "example.com/two:1",
        &[shared.clone(), LayerTar::new().file("t", b"t").tar()],
        "two",
    );
    store.import_layout(&work.path().join("one"), None).unwrap();
    store.import_layout(&work.path().join("two"), None).unwrap();
    assert_eq!(store.list().unwrap().len(), 2);
    let (_, stats) = store.remove("example.com/one:1").unwrap();
    assert_eq!(
        stats.layers_removed, 0,
        "the shared layer is still used by two"
    );
    assert!(store.layer_image_path(&Digest::of(&shared)).is_file());
    let (_, stats) = store.remove("example.com/two:1").unwrap();
    assert_eq!(stats.layers_removed, 2);
    assert!(store.list().unwrap().is_empty());
    assert_eq!(count(&store.root().join("blobs/sha256")), 0);
    assert_eq!(count(&store.root().join("layers")), 0);
    assert!(matches!(
        store.get("example.com/two:1"),
        Err(husk::image::StoreError::NotFound(_))
    ));
}

#[test]
fn scratch_disk_is_sparse_ext4() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("scratch.ext4");
    let took = husk::image::scratch::create(&p, 10 << 30).unwrap();
    assert!(
        fs::metadata(&p).unwrap().blocks() * 512 < 256 << 20,
        "sparse"
    );
    eprintln!("scratch: 10 GiB sparse ext4 in {took:?}");
}

/// `scripts/bench-image.sh`: converting and caching a 100 MB layer, median of 5 runs.
#[test]
#[ignore]
fn bench_convert_100mb_layer() {
    if !can_convert("bench_convert_100mb_layer") {
        return;
    }
    // ~100 MB over 400 files of 256 KB, mildly compressible (like binaries).
    let mut t = LayerTar::new();
    let mut x: u64 = 0x9e3779b97f4a7c15;
    for i in 0..400 {
        let data: Vec<u8> = (0..256 * 1024)
            .map(|j| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                if j % 4 == 0 {
                    0
                } else {
                    x as u8
                }
            })
            .collect();
        t.file(&format!("d{}/f{i}", i % 20), &data);
    }
    let layer = gzip(&t.tar());
    let work = tempfile::tempdir_in(
        std::env::var_os("HUSK_BENCH_DIR").unwrap_or_else(|| "/var/tmp".into()),
    )
    .unwrap();
    let store = Store::open(work.path()).unwrap();
    let d = store.write_blob_bytes(&layer).unwrap();
    let mut times = Vec::new();
    for _ in 0..5 {
        let _ = fs::remove_file(store.layer_image_path(&d));
        let c = husk::image::layer::convert(&store, &d).unwrap();
        assert!(!c.cached);
        times.push(c.elapsed);
    }
    times.sort();
    println!(
        "BENCH convert+cache 100 MB layer ({} MB gzip): median {:.3} s, min {:.3} s, max {:.3} s",
        layer.len() >> 20,
        times[2].as_secs_f64(),
        times[0].as_secs_f64(),
        times[4].as_secs_f64()
    );
}
