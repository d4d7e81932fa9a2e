//! Unpacks one layer's tar stream into a staging directory, as root, keeping ownership,
//! modes, mtimes, xattrs, hardlinks, symlinks and device nodes, and turning OCI whiteouts into
//! overlayfs ones.
//!
//! The tar stream is hostile input. Entries are read in the tar crate's raw mode so that GNU
//! long names and pax headers — which the crate would otherwise read into memory whatever
//! their size — are read here with a bound. Paths are resolved by [`super::path`] (see there
//! why not `unpack_in`). File content is bounded in total, entries in number, and a stream
//! that ends early (a truncated tar, a bad gzip) is an error, never a short layer.

use std::ffi::{CString, OsString};
use std::fs::{self, OpenOptions};
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use tar::EntryType;

use super::path::{self, PathError};
use super::whiteout::{self, Kind};
use crate::image::digest::Digest;
use crate::image::store::Limits;

/// Largest GNU long name/link or pax header read into memory.
const MAX_EXTENSION_BYTES: u64 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error("layer {layer}: entry {entry:?} rejected: {source}")]
    Path {
        layer: String,
        entry: String,
        source: PathError,
    },
    #[error("layer {layer}: entry {entry:?} rejected: {reason}")]
    Entry {
        layer: String,
        entry: String,
        reason: String,
    },
    #[error("layer {layer}: corrupt or truncated archive after {entries} entries: {source}")]
    Corrupt {
        layer: String,
        entries: u64,
        source: io::Error,
    },
    #[error("layer {layer}: unpacks to more than {limit} bytes (the store's max_unpacked_bytes)")]
    TooLarge { layer: String, limit: u64 },
    #[error("layer {layer}: more than {limit} entries (the store's max_entries)")]
    TooManyEntries { layer: String, limit: u64 },
    #[error("layer {layer}: entry {entry:?}: cannot {op} {path}: {source}")]
    Io {
        layer: String,
        entry: String,
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },
}

/// What an unpack produced.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UnpackStats {
    pub entries: u64,
    pub bytes: u64,
}

/// GNU long name/link and pax records that apply to the next real entry.
#[derive(Default)]
struct Extensions {
    long_name: Option<Vec<u8>>,
    long_link: Option<Vec<u8>>,
    pax: Option<Vec<u8>>,
}

/// One entry's header with its extensions applied.
struct Meta {
    path: Vec<u8>,
    link: Option<Vec<u8>>,
    kind: EntryType,
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: i64,
    size: u64,
    dev: (u32, u32),
    xattrs: Vec<(String, Vec<u8>)>,
}

/// Counts bytes and remembers whether the stream hit its end, so a tar that stops at a
/// block boundary without its end-of-archive blocks is caught.
struct Tracked<R> {
    inner: R,
    eof: bool,
}

impl<R: Read> Read for Tracked<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n == 0 && !buf.is_empty() {
            self.eof = true;
        }
        Ok(n)
    }
}

struct Unpacker<'a> {
    root: &'a Path,
    layer: String,
    limits: &'a Limits,
    stats: UnpackStats,
    /// Directory mtimes, applied last: writing into a directory changes its mtime.
    dir_times: Vec<(PathBuf, i64)>,
}

/// Unpacks the (decompressed) tar `reader` of layer `layer` into the existing, empty
/// directory `root`. On error `root` holds a partial tree: the caller removes it.
pub fn unpack(
    reader: impl Read,
    root: &Path,
    layer: &Digest,
    limits: &Limits,
) -> Result<UnpackStats, UnpackError> {
    let mut u = Unpacker {
        root,
        layer: layer.to_string(),
        limits,
        stats: UnpackStats::default(),
        dir_times: Vec::new(),
    };
    let mut archive = tar::Archive::new(Tracked {
        inner: reader,
        eof: false,
    });
    let entries = archive.entries().map_err(|e| u.corrupt(e))?.raw(true);
    let mut ext = Extensions::default();
    for entry in entries {
        let mut entry = entry.map_err(|e| u.corrupt(e))?;
        u.stats.entries += 1;
        if u.stats.entries > limits.max_entries {
            return Err(UnpackError::TooManyEntries {
                layer: u.layer,
                limit: limits.max_entries,
            });
        }
        match entry.header().entry_type() {
            EntryType::GNULongName => ext.long_name = Some(u.read_extension(&mut entry)?),
            EntryType::GNULongLink => ext.long_link = Some(u.read_extension(&mut entry)?),
            EntryType::XHeader => ext.pax = Some(u.read_extension(&mut entry)?),
            EntryType::XGlobalHeader => {
                u.read_extension(&mut entry)?;
            }
            _ => {
                let meta = u.meta(entry.header(), std::mem::take(&mut ext))?;
                u.entry(&meta, &mut entry)?;
            }
        }
    }
    let mut tracked = archive.into_inner();
    // The tar crate ends at the first zero block *or* at end of stream; only the former is
    // a complete archive (an empty stream is an empty layer).
    if tracked.eof && u.stats.entries > 0 {
        return Err(u.corrupt(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "archive ends without its end-of-archive blocks",
        )));
    }
    // Read the rest (tar padding) so the decompressor checks its trailer (gzip CRC and length).
    let budget = limits.max_unpacked_bytes;
    let trailing =
        io::copy(&mut (&mut tracked).take(budget), &mut io::sink()).map_err(|e| u.corrupt(e))?;
    if trailing >= budget {
        return Err(UnpackError::TooLarge {
            layer: u.layer,
            limit: budget,
        });
    }
    for (dir, mtime) in u.dir_times.iter().rev() {
        set_mtime(dir, *mtime).map_err(|source| UnpackError::Io {
            layer: u.layer.clone(),
            entry: dir.strip_prefix(root).unwrap_or(dir).display().to_string(),
            op: "set mtime of",
            path: dir.clone(),
            source,
        })?;
    }
    Ok(u.stats)
}

fn cstr(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in path"))
}

fn set_mtime(path: &Path, mtime: i64) -> io::Result<()> {
    let c = cstr(path)?;
    let ts = libc::timespec {
        tv_sec: mtime as libc::time_t,
        tv_nsec: 0,
    };
    let times = [ts, ts];
    // SAFETY: valid C string and a two-element timespec array.
    if unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    } != 0
    {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn set_xattr(path: &Path, name: &str, value: &[u8]) -> io::Result<()> {
    let c = cstr(path)?;
    let n = CString::new(name)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in xattr name"))?;
    // SAFETY: valid C strings; the value pointer and length describe `value`.
    if unsafe {
        libc::lsetxattr(
            c.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    } != 0
    {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn mknod(path: &Path, kind: libc::mode_t, perm: u32, (major, minor): (u32, u32)) -> io::Result<()> {
    let c = cstr(path)?;
    // SAFETY: valid C string.
    if unsafe {
        libc::mknod(
            c.as_ptr(),
            kind | (perm & 0o7777) as libc::mode_t,
            libc::makedev(major, minor),
        )
    } != 0
    {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn parse_num(v: &[u8]) -> Option<u64> {
    // pax times may carry a fraction ("1700000000.5"): keep the seconds.
    let int = v.split(|b| *b == b'.').next()?;
    std::str::from_utf8(int).ok()?.parse().ok()
}

fn strip_nul(mut v: Vec<u8>) -> Vec<u8> {
    while v.last() == Some(&0) {
        v.pop();
    }
    v
}

/// A file being filled that remembers whether an error `io::copy` returned was its own.
struct WriteSide<'a> {
    file: &'a mut fs::File,
    failed: bool,
}

impl io::Write for WriteSide<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.file.write(buf).inspect_err(|_| self.failed = true)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush().inspect_err(|_| self.failed = true)
    }
}

impl Unpacker<'_> {
    fn corrupt(&self, source: io::Error) -> UnpackError {
        UnpackError::Corrupt {
            layer: self.layer.clone(),
            entries: self.stats.entries,
            source,
        }
    }

    fn reject(&self, meta: &Meta, reason: impl Into<String>) -> UnpackError {
        UnpackError::Entry {
            layer: self.layer.clone(),
            entry: String::from_utf8_lossy(&meta.path).into_owned(),
            reason: reason.into(),
        }
    }

    fn io(
        &self,
        meta: &Meta,
        op: &'static str,
        path: &Path,
    ) -> impl FnOnce(io::Error) -> UnpackError {
        let (layer, entry, path) = (
            self.layer.clone(),
            String::from_utf8_lossy(&meta.path).into_owned(),
            path.to_path_buf(),
        );
        move |source| UnpackError::Io {
            layer,
            entry,
            op,
            path,
            source,
        }
    }

    fn read_extension(&self, entry: &mut impl Read) -> Result<Vec<u8>, UnpackError> {
        let mut v = Vec::new();
        entry
            .take(MAX_EXTENSION_BYTES + 1)
            .read_to_end(&mut v)
            .map_err(|e| self.corrupt(e))?;
        if v.len() as u64 > MAX_EXTENSION_BYTES {
            return Err(self.corrupt(io::Error::other(format!(
                "extension header over {MAX_EXTENSION_BYTES} bytes"
            ))));
        }
        Ok(v)
    }

    fn meta(&self, h: &tar::Header, ext: Extensions) -> Result<Meta, UnpackError> {
        let bad = |what: &str, e: io::Error| {
            self.corrupt(io::Error::new(
                e.kind(),
                format!(
                    "{what} of {:?}: {e}",
                    String::from_utf8_lossy(&h.path_bytes())
                ),
            ))
        };
        let mut m = Meta {
            path: ext
                .long_name
                .map(strip_nul)
                .unwrap_or_else(|| h.path_bytes().into_owned()),
            link: ext
                .long_link
                .map(strip_nul)
                .or_else(|| h.link_name_bytes().map(|l| l.into_owned())),
            kind: h.entry_type(),
            mode: h.mode().map_err(|e| bad("mode", e))? & 0o7777,
            uid: 0,
            gid: 0,
            mtime: h.mtime().map_err(|e| bad("mtime", e))? as i64,
            size: h.entry_size().map_err(|e| bad("size", e))?,
            dev: (0, 0),
            xattrs: Vec::new(),
        };
        let (mut uid, mut gid) = (
            h.uid().map_err(|e| bad("uid", e))?,
            h.gid().map_err(|e| bad("gid", e))?,
        );
        if matches!(m.kind, EntryType::Char | EntryType::Block) {
            m.dev = (
                h.device_major()
                    .map_err(|e| bad("device major", e))?
                    .unwrap_or(0),
                h.device_minor()
                    .map_err(|e| bad("device minor", e))?
                    .unwrap_or(0),
            );
        }
        if let Some(pax) = &ext.pax {
            for rec in tar::PaxExtensions::new(pax) {
                let rec = rec.map_err(|e| self.corrupt(e))?;
                let (k, v) = (rec.key_bytes(), rec.value_bytes());
                let num = || {
                    parse_num(v).ok_or_else(|| {
                        self.reject(
                            &m,
                            format!(
                                "bad pax {} {:?}",
                                String::from_utf8_lossy(k),
                                String::from_utf8_lossy(v)
                            ),
                        )
                    })
                };
                match k {
                    b"path" => m.path = v.to_vec(),
                    b"linkpath" => m.link = Some(v.to_vec()),
                    b"uid" => uid = num()?,
                    b"gid" => gid = num()?,
                    b"mtime" => m.mtime = num()? as i64,
                    b"size" if num()? != m.size => {
                        return Err(self
                            .reject(&m, "pax size override (files over 8 GiB) is not supported"))
                    }
                    _ => {
                        if let Some(name) = k.strip_prefix(b"SCHILY.xattr.") {
                            let name = String::from_utf8(name.to_vec())
                                .map_err(|_| self.reject(&m, "xattr name is not UTF-8"))?;
                            m.xattrs.push((name, v.to_vec()));
                        }
                    }
                }
            }
        }
        m.uid =
            u32::try_from(uid).map_err(|_| self.reject(&m, format!("uid {uid} out of range")))?;
        m.gid =
            u32::try_from(gid).map_err(|_| self.reject(&m, format!("gid {gid} out of range")))?;
        Ok(m)
    }

    /// Removes what is at `path` unless it is a directory and `keep_dir`; returns whether a
    /// directory was kept.
    fn clear(&self, meta: &Meta, path: &Path, keep_dir: bool) -> Result<bool, UnpackError> {
        match fs::symlink_metadata(path) {
            Ok(m) if m.is_dir() && keep_dir => Ok(true),
            Ok(m) if m.is_dir() => fs::remove_dir_all(path)
                .map(|_| false)
                .map_err(self.io(meta, "replace", path)),
            Ok(_) => fs::remove_file(path)
                .map(|_| false)
                .map_err(self.io(meta, "replace", path)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(self.io(meta, "stat", path)(e)),
        }
    }

    /// Owner, mode, xattrs, mtime — in that order: chown clears setuid bits and file
    /// capabilities, so mode and `security.capability` come after it.
    fn apply(
        &mut self,
        meta: &Meta,
        path: &Path,
        symlink: bool,
        dir: bool,
    ) -> Result<(), UnpackError> {
        std::os::unix::fs::lchown(path, Some(meta.uid), Some(meta.gid))
            .map_err(self.io(meta, "chown", path))?;
        if !symlink {
            fs::set_permissions(path, fs::Permissions::from_mode(meta.mode))
                .map_err(self.io(meta, "chmod", path))?;
        }
        for (name, value) in &meta.xattrs {
            if !whiteout::xattr_allowed(name) {
                tracing::warn!(
                    "layer {}: entry {:?}: ignoring xattr {name}",
                    self.layer,
                    String::from_utf8_lossy(&meta.path)
                );
                continue;
            }
            set_xattr(path, name, value).map_err(self.io(meta, "set xattr on", path))?;
        }
        if dir {
            self.dir_times.push((path.to_path_buf(), meta.mtime));
        } else {
            set_mtime(path, meta.mtime).map_err(self.io(meta, "set mtime of", path))?;
        }
        Ok(())
    }

    fn path_err(&self, meta: &Meta) -> impl FnOnce(PathError) -> UnpackError {
        let (layer, entry) = (
            self.layer.clone(),
            String::from_utf8_lossy(&meta.path).into_owned(),
        );
        move |source| UnpackError::Path {
            layer,
            entry,
            source,
        }
    }

    fn entry(&mut self, meta: &Meta, data: &mut impl Read) -> Result<(), UnpackError> {
        let comps: Vec<OsString> = path::components(&meta.path).map_err(self.path_err(meta))?;
        let Some((name, parents)) = comps.split_last() else {
            // The layer root itself ("./"): only its metadata.
            if meta.kind != EntryType::Directory {
                return Err(self.reject(meta, "the layer root must be a directory"));
            }
            let root = self.root.to_path_buf();
            return self.apply(meta, &root, false, true);
        };
        match whiteout::classify(name) {
            Kind::Plain => {}
            Kind::Internal => return Ok(()),
            Kind::Invalid => return Err(self.reject(meta, "invalid whiteout name")),
            Kind::Opaque => {
                let dir = path::walk_dirs(self.root, parents, true).map_err(self.path_err(meta))?;
                return set_xattr(&dir, whiteout::OPAQUE_XATTR, b"y").map_err(self.io(
                    meta,
                    "set opaque xattr on",
                    &dir,
                ));
            }
            Kind::Whiteout(hidden) => {
                let dir = path::walk_dirs(self.root, parents, true).map_err(self.path_err(meta))?;
                let target = dir.join(hidden);
                self.clear(meta, &target, false)?;
                mknod(&target, libc::S_IFCHR, 0, (0, 0)).map_err(self.io(
                    meta,
                    "create whiteout",
                    &target,
                ))?;
                return set_mtime(&target, meta.mtime).map_err(self.io(
                    meta,
                    "set mtime of",
                    &target,
                ));
            }
        }
        let dest = path::prepare(self.root, &comps).map_err(self.path_err(meta))?;
        match meta.kind {
            EntryType::Regular | EntryType::Continuous => {
                self.clear(meta, &dest, false)?;
                self.stats.bytes = self.stats.bytes.saturating_add(meta.size);
                if self.stats.bytes > self.limits.max_unpacked_bytes {
                    return Err(UnpackError::TooLarge {
                        layer: self.layer.clone(),
                        limit: self.limits.max_unpacked_bytes,
                    });
                }
                let mut f = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .custom_flags(libc::O_NOFOLLOW)
                    .open(&dest)
                    .map_err(self.io(meta, "create", &dest))?;
                // A failed write (a full store) is the store's fault, not the archive's.
                let mut sink = WriteSide {
                    file: &mut f,
                    failed: false,
                };
                let n = match io::copy(data, &mut sink) {
                    Ok(n) => n,
                    Err(e) if sink.failed => return Err(self.io(meta, "write", &dest)(e)),
                    Err(e) => return Err(self.corrupt(e)),
                };
                if n != meta.size {
                    let msg = format!(
                        "{:?}: {n} of {} bytes",
                        String::from_utf8_lossy(&meta.path),
                        meta.size
                    );
                    return Err(self.corrupt(io::Error::new(io::ErrorKind::UnexpectedEof, msg)));
                }
                drop(f);
                self.apply(meta, &dest, false, false)
            }
            EntryType::Directory => {
                if !self.clear(meta, &dest, true)? {
                    fs::create_dir(&dest).map_err(self.io(meta, "create directory", &dest))?;
                }
                self.apply(meta, &dest, false, true)
            }
            EntryType::Symlink => {
                // The target is stored as is, absolute or not: it is never followed here, and
                // in the guest it resolves inside the container's root.
                let target = meta
                    .link
                    .as_deref()
                    .filter(|l| !l.is_empty())
                    .ok_or_else(|| self.reject(meta, "symlink without target"))?;
                self.clear(meta, &dest, false)?;
                std::os::unix::fs::symlink(std::ffi::OsStr::from_bytes(target), &dest)
                    .map_err(self.io(meta, "create symlink", &dest))?;
                self.apply(meta, &dest, true, false)
            }
            EntryType::Link => {
                let target = meta
                    .link
                    .as_deref()
                    .ok_or_else(|| self.reject(meta, "hardlink without target"))?;
                let shown = String::from_utf8_lossy(target).into_owned();
                let via =
                    |e: PathError| self.reject(meta, format!("hardlink target {shown:?}: {e}"));
                let tcomps = path::components(target).map_err(via)?;
                let (tpath, tmeta) = path::existing(self.root, &tcomps).map_err(via)?;
                if tmeta.is_dir() {
                    return Err(self.reject(meta, "hardlink to a directory"));
                }
                if tpath == dest {
                    return Ok(());
                }
                self.clear(meta, &dest, false)?;
                // linkat without AT_SYMLINK_FOLLOW: a symlink target is linked, not followed.
                fs::hard_link(&tpath, &dest).map_err(self.io(meta, "hardlink", &dest))
            }
            EntryType::Char | EntryType::Block | EntryType::Fifo => {
                self.clear(meta, &dest, false)?;
                let kind = match meta.kind {
                    EntryType::Char => libc::S_IFCHR,
                    EntryType::Block => libc::S_IFBLK,
                    _ => libc::S_IFIFO,
                };
                mknod(&dest, kind, 0o600, meta.dev).map_err(self.io(meta, "mknod", &dest))?;
                self.apply(meta, &dest, false, false)
            }
            other => Err(self.reject(
                meta,
                format!("unsupported tar entry type {:?}", other.as_byte() as char),
            )),
        }
    }
}
