//! Unpack tests on hand-built tars, hostile ones included. They need root (chown, mknod,
//! trusted.* xattrs); without it they say NOT RUN.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use tar::{EntryType, Header};

use super::unpack::{unpack, UnpackError};
use crate::image::digest::Digest;
use crate::image::store::Limits;

fn is_root(test: &str) -> bool {
    // SAFETY: no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        eprintln!("NOT RUN: {test}: needs root");
    }
    root
}

/// A tar built entry by entry with raw names, so hostile paths can be written.
pub(crate) struct RawTar(tar::Builder<Vec<u8>>);

impl RawTar {
    pub(crate) fn new() -> RawTar {
        RawTar(tar::Builder::new(Vec::new()))
    }

    pub(crate) fn add(
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
        h.set_mtime(1_700_000_000);
        if matches!(kind, EntryType::Char | EntryType::Block) {
            h.set_device_major(1).unwrap();
            h.set_device_minor(3).unwrap();
        }
        h.set_cksum();
        self.0.append(&h, data).unwrap();
        self
    }

    pub(crate) fn file(&mut self, path: &str, data: &[u8]) -> &mut Self {
        self.add(path, EntryType::Regular, None, data, 0o644, (0, 0))
    }

    pub(crate) fn dir(&mut self, path: &str) -> &mut Self {
        self.add(path, EntryType::Directory, None, b"", 0o755, (0, 0))
    }

    pub(crate) fn finish(self) -> Vec<u8> {
        self.0.into_inner().unwrap()
    }
}

fn run(data: &[u8], root: &Path) -> Result<super::unpack::UnpackStats, UnpackError> {
    unpack(data, root, &Digest::of(data), &Limits::default())
}

#[test]
fn keeps_owners_modes_links_devices_and_whiteouts() {
    if !is_root("keeps_owners_modes_links_devices_and_whiteouts") {
        return;
    }
    let mut t = RawTar::new();
    t.dir("./etc/")
        .add(
            "etc/shadow",
            EntryType::Regular,
            None,
            b"secret",
            0o640,
            (0, 42),
        )
        .add("bin/su", EntryType::Regular, None, b"elf", 0o4755, (0, 0))
        .add(
            "home/user/",
            EntryType::Directory,
            None,
            b"",
            0o700,
            (1000, 1000),
        )
        .add(
            "bin/sh",
            EntryType::Symlink,
            Some("/bin/busybox"),
            b"",
            0o777,
            (0, 0),
        )
        .add("bin/su2", EntryType::Link, Some("bin/su"), b"", 0, (0, 0))
        .add("dev/null", EntryType::Char, None, b"", 0o666, (0, 0))
        .add("gone/.wh.old", EntryType::Regular, None, b"", 0, (0, 0))
        .add(
            "opaque/.wh..wh..opq",
            EntryType::Regular,
            None,
            b"",
            0,
            (0, 0),
        )
        .add(".wh..wh.plnk", EntryType::Regular, None, b"", 0, (0, 0));
    let data = t.finish();
    let dir = tempfile::tempdir().unwrap();
    let stats = run(&data, dir.path()).unwrap();
    assert_eq!(stats.bytes, 9);
    let r = dir.path();
    let m = fs::metadata(r.join("etc/shadow")).unwrap();
    assert_eq!((m.mode() & 0o7777, m.uid(), m.gid()), (0o640, 0, 42));
    assert_eq!(m.mtime(), 1_700_000_000);
    assert_eq!(
        fs::metadata(r.join("bin/su")).unwrap().mode() & 0o7777,
        0o4755
    );
    let h = fs::metadata(r.join("home/user")).unwrap();
    assert_eq!(
        (h.uid(), h.mode() & 0o7777, h.mtime()),
        (1000, 0o700, 1_700_000_000)
    );
    assert_eq!(
        fs::read_link(r.join("bin/sh")).unwrap(),
        Path::new("/bin/busybox")
    );
    assert_eq!(
        fs::metadata(r.join("bin/su2")).unwrap().ino(),
        fs::metadata(r.join("bin/su")).unwrap().ino()
    );
    assert!(fs::symlink_metadata(r.join("dev/null"))
        .unwrap()
        .file_type()
        .is_char_device());
    let w = fs::symlink_metadata(r.join("gone/old")).unwrap();
    assert!(
        w.file_type().is_char_device() && w.rdev() == 0,
        "whiteout is a 0:0 char device"
    );
    assert!(!r.join("gone/.wh.old").exists());
    let mut buf = [0u8; 8];
    let c = std::ffi::CString::new(r.join("opaque").into_os_string().into_encoded_bytes()).unwrap();
    // SAFETY: valid C strings and buffer.
    let n = unsafe {
        libc::lgetxattr(
            c.as_ptr(),
            c"trusted.overlay.opaque".as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    assert_eq!(&buf[..n as usize], b"y");
    assert!(!r.join(".wh..wh.plnk").exists() && !r.join("opaque/.wh..wh..opq").exists());
}

fn assert_rejected(name: &str, data: &[u8], entry: &str) {
    let dir = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    let e = run(data, &dir.path().join("")).unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains(entry),
        "{name}: error should name entry {entry:?}: {msg}"
    );
    assert!(
        msg.contains("layer sha256:"),
        "{name}: error should name the layer: {msg}"
    );
    assert_eq!(fs::read_dir(outside.path()).unwrap().count(), 0);
}

#[test]
fn hostile_paths_are_rejected() {
    if !is_root("hostile_paths_are_rejected") {
        return;
    }
    let mut t = RawTar::new();
    t.file("ok", b"x").file("../escape", b"pwned");
    assert_rejected("dotdot", &t.finish(), "../escape");

    let mut t = RawTar::new();
    t.file("/etc/husk-absolute", b"pwned");
    assert_rejected("absolute", &t.finish(), "/etc/husk-absolute");
    assert!(!Path::new("/etc/husk-absolute").exists());

    // a -> /tmp/…, then a/file: must not be written through the symlink.
    let target = tempfile::tempdir().unwrap();
    let mut t = RawTar::new();
    t.add(
        "a",
        EntryType::Symlink,
        Some(target.path().to_str().unwrap()),
        b"",
        0o777,
        (0, 0),
    )
    .file("a/passwd", b"pwned");
    assert_rejected("symlink write-through", &t.finish(), "a/passwd");
    assert_eq!(
        fs::read_dir(target.path()).unwrap().count(),
        0,
        "nothing written through the symlink"
    );

    // Even a relative symlink that climbs out is never a parent.
    let mut t = RawTar::new();
    t.add(
        "up",
        EntryType::Symlink,
        Some("../../.."),
        b"",
        0o777,
        (0, 0),
    )
    .file("up/x", b"pwned");
    assert_rejected("relative symlink write-through", &t.finish(), "up/x");

    // A hardlink whose target is outside.
    let mut t = RawTar::new();
    t.add(
        "h",
        EntryType::Link,
        Some("../../etc/passwd"),
        b"",
        0,
        (0, 0),
    );
    assert_rejected("hardlink outside", &t.finish(), "\"h\"");

    // A hardlink through a symlink to outside.
    let mut t = RawTar::new();
    t.add("s", EntryType::Symlink, Some("/etc"), b"", 0o777, (0, 0))
        .add("h", EntryType::Link, Some("s/passwd"), b"", 0, (0, 0));
    assert_rejected("hardlink through symlink", &t.finish(), "\"h\"");

    // A whiteout through a symlink.
    let mut t = RawTar::new();
    t.add(
        "s",
        EntryType::Symlink,
        Some(target.path().to_str().unwrap()),
        b"",
        0o777,
        (0, 0),
    )
    .file("s/.wh.x", b"");
    assert_rejected("whiteout through symlink", &t.finish(), "s/.wh.x");
    assert_eq!(fs::read_dir(target.path()).unwrap().count(), 0);
}

#[test]
fn corrupt_and_oversized_layers_are_rejected() {
    if !is_root("corrupt_and_oversized_layers_are_rejected") {
        return;
    }
    let mut t = RawTar::new();
    t.file("big", &[7u8; 10000]).file("small", b"x");
    let data = t.finish();
    // Truncated in the middle of a file.
    let e = run(&data[..3000], tempfile::tempdir().unwrap().path()).unwrap_err();
    assert!(matches!(e, UnpackError::Corrupt { .. }), "{e}");
    // Truncated exactly at a header boundary (no end-of-archive blocks).
    let cut = 512 + 10240;
    let e = run(&data[..cut], tempfile::tempdir().unwrap().path()).unwrap_err();
    assert!(e.to_string().contains("end-of-archive"), "{e}");
    // Too large.
    let dir = tempfile::tempdir().unwrap();
    let limits = Limits {
        max_unpacked_bytes: 5000,
        ..Limits::default()
    };
    let e = unpack(&data[..], dir.path(), &Digest::of(&data), &limits).unwrap_err();
    assert!(matches!(e, UnpackError::TooLarge { .. }), "{e}");
    let limits = Limits {
        max_entries: 1,
        ..Limits::default()
    };
    let e = unpack(&data[..], dir.path(), &Digest::of(&data), &limits).unwrap_err();
    assert!(matches!(e, UnpackError::TooManyEntries { .. }), "{e}");
    // A gzip stream cut short fails in the decompressor.
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&data).unwrap();
    let gz = gz.finish().unwrap();
    let r = super::compression::Compression::Gzip
        .decoder(&gz[..gz.len() - 8])
        .unwrap();
    let e = unpack(
        r,
        tempfile::tempdir().unwrap().path(),
        &Digest::of(&gz),
        &Limits::default(),
    )
    .unwrap_err();
    assert!(matches!(e, UnpackError::Corrupt { .. }), "{e}");
}

fn xattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    let n = std::ffi::CString::new(name).unwrap();
    let mut buf = [0u8; 64];
    // SAFETY: valid C strings and buffer.
    let len =
        unsafe { libc::lgetxattr(c.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    (len >= 0).then(|| buf[..len as usize].to_vec())
}

#[test]
fn overlay_xattrs_from_the_layer_are_dropped_and_later_entries_win() {
    if !is_root("overlay_xattrs_from_the_layer_are_dropped_and_later_entries_win") {
        return;
    }
    let mut b = tar::Builder::new(Vec::new());
    let header = |kind, size| {
        let mut h = Header::new_ustar();
        h.set_entry_type(kind);
        h.set_size(size);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1);
        h
    };
    let pax: [(&str, &[u8]); 2] = [
        ("SCHILY.xattr.trusted.overlay.redirect", b"/etc"),
        ("SCHILY.xattr.user.note", b"hi"),
    ];
    b.append_pax_extensions(pax).unwrap();
    b.append_data(&mut header(EntryType::Regular, 1), "f", &b"a"[..])
        .unwrap();
    b.append_data(&mut header(EntryType::Regular, 1), "g", &b"a"[..])
        .unwrap();
    b.append_data(&mut header(EntryType::Directory, 0), "g", &b""[..])
        .unwrap();
    let data = b.into_inner().unwrap();
    let dir = tempfile::tempdir().unwrap();
    run(&data, dir.path()).unwrap();
    assert_eq!(
        xattr(&dir.path().join("f"), "user.note").as_deref(),
        Some(&b"hi"[..])
    );
    assert_eq!(
        xattr(&dir.path().join("f"), "trusted.overlay.redirect"),
        None
    );
    assert!(
        dir.path().join("g").is_dir(),
        "the later directory entry replaced the file"
    );
}
