//! Stages the members of an image archive (docker-archive or oci-archive tar, optionally
//! gzip/zstd-compressed) as flat files in the store's tmp dir.
//!
//! Members are never unpacked under their own names: each regular file gets a numbered name
//! in the staging dir, and a name → file map remembers where it went, so a hostile archive
//! cannot place anything anywhere. Symlinks and hardlinks (`docker save` links repeated
//! layers) become aliases resolved lexically inside the archive.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{self, BufReader, Read};
use std::path::{Path, PathBuf};

use tar::EntryType;

use super::ImportError;
use crate::image::layer::compression::Compression;
use crate::image::layer::path::components;
use crate::image::store::Store;

const MAX_ALIAS_HOPS: usize = 16;
const MAX_NAME_BYTES: u64 = 64 << 10;

/// An archive's members, staged.
pub struct Staged {
    archive: PathBuf,
    dir: tempfile::TempDir,
    files: BTreeMap<String, PathBuf>,
    aliases: BTreeMap<String, String>,
}

fn normalize(raw: &[u8]) -> Option<String> {
    let comps = components(raw).ok()?;
    if comps.is_empty() {
        return None;
    }
    let parts: Option<Vec<&str>> = comps.iter().map(|c| c.to_str()).collect();
    Some(parts?.join("/"))
}

impl Staged {
    /// Extracts `archive` into a fresh directory under the store's tmp dir.
    pub fn extract(store: &Store, archive: &Path) -> Result<Staged, ImportError> {
        let io_err = |what: &'static str, path: &Path| {
            let path = path.to_path_buf();
            move |source| ImportError::Io { what, path, source }
        };
        let corrupt = |reason: String| ImportError::Archive {
            path: archive.to_path_buf(),
            reason,
        };
        let unreadable = |source: io::Error| ImportError::ArchiveRead {
            path: archive.to_path_buf(),
            source,
        };
        let file = File::open(archive).map_err(io_err("cannot open archive", archive))?;
        let mut reader = BufReader::with_capacity(256 << 10, file);
        let compression =
            Compression::detect(&mut reader).map_err(io_err("cannot read archive", archive))?;
        let tar = compression
            .decoder(reader)
            .map_err(io_err("cannot read archive", archive))?;
        let tmp = store.tmp_dir();
        let dir = tempfile::Builder::new()
            .prefix("import-")
            .tempdir_in(&tmp)
            .map_err(io_err("cannot create staging dir in", &tmp))?;
        let mut staged = Staged {
            archive: archive.to_path_buf(),
            dir,
            files: BTreeMap::new(),
            aliases: BTreeMap::new(),
        };
        let limits = *store.limits();
        let (mut bytes, mut count) = (0u64, 0u64);
        let mut long_name: Option<Vec<u8>> = None;
        let mut long_link: Option<Vec<u8>> = None;
        let mut ar = tar::Archive::new(tar);
        // Raw mode for the same reason as in layer::unpack: extension headers are read here,
        // with a bound, not by the tar crate into unbounded memory.
        for entry in ar.entries().map_err(unreadable)?.raw(true) {
            let mut entry = entry.map_err(unreadable)?;
            count += 1;
            if count > limits.max_entries {
                return Err(corrupt(format!("more than {} entries", limits.max_entries)));
            }
            let kind = entry.header().entry_type();
            if matches!(
                kind,
                EntryType::GNULongName
                    | EntryType::GNULongLink
                    | EntryType::XHeader
                    | EntryType::XGlobalHeader
            ) {
                let mut v = Vec::new();
                (&mut entry)
                    .take(MAX_NAME_BYTES + 1)
                    .read_to_end(&mut v)
                    .map_err(unreadable)?;
                if v.len() as u64 > MAX_NAME_BYTES {
                    return Err(corrupt("oversized extension header".into()));
                }
                while v.last() == Some(&0) {
                    v.pop();
                }
                match kind {
                    EntryType::GNULongName => long_name = Some(v),
                    EntryType::GNULongLink => long_link = Some(v),
                    EntryType::XHeader => {
                        for rec in tar::PaxExtensions::new(&v).flatten() {
                            match rec.key_bytes() {
                                b"path" => long_name = Some(rec.value_bytes().to_vec()),
                                b"linkpath" => long_link = Some(rec.value_bytes().to_vec()),
                                _ => {}
                            }
                        }
                    }
                    _ => {}
                }
                continue;
            }
            let raw_name = long_name
                .take()
                .unwrap_or_else(|| entry.header().path_bytes().into_owned());
            let raw_link = long_link
                .take()
                .or_else(|| entry.header().link_name_bytes().map(|l| l.into_owned()));
            let shown = String::from_utf8_lossy(&raw_name).into_owned();
            let Some(name) = normalize(&raw_name) else {
                if kind == EntryType::Directory {
                    continue;
                }
                return Err(corrupt(format!(
                    "member {shown:?} has an unsafe or empty path"
                )));
            };
            match kind {
                EntryType::Regular | EntryType::Continuous => {
                    let size = entry.header().entry_size().map_err(unreadable)?;
                    bytes = bytes.saturating_add(size);
                    if bytes > limits.max_unpacked_bytes {
                        return Err(corrupt(format!(
                            "unpacks to more than {} bytes",
                            limits.max_unpacked_bytes
                        )));
                    }
                    let dest = staged.dir.path().join(staged.files.len().to_string());
                    let mut out = OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .open(&dest)
                        .map_err(io_err("cannot create", &dest))?;
                    let n = io::copy(&mut entry, &mut out)
                        .map_err(|e| corrupt(format!("member {shown:?}: {e}")))?;
                    if n != size {
                        return Err(corrupt(format!(
                            "member {shown:?} is truncated ({n} of {size} bytes)"
                        )));
                    }
                    staged.files.insert(name, dest);
                }
                EntryType::Symlink | EntryType::Link => {
                    let target =
                        raw_link.ok_or_else(|| corrupt(format!("link {shown:?} has no target")))?;
                    // A symlink is relative to its directory, a hardlink to the archive root.
                    let base = if kind == EntryType::Symlink && target.first() != Some(&b'/') {
                        name.rsplit_once('/')
                            .map(|(d, _)| format!("{d}/"))
                            .unwrap_or_default()
                    } else {
                        String::new()
                    };
                    let mut full = base.into_bytes();
                    full.extend_from_slice(target.strip_prefix(b"/").unwrap_or(&target));
                    let t = normalize(&full).ok_or_else(|| {
                        corrupt(format!("link {shown:?} points outside the archive"))
                    })?;
                    staged.aliases.insert(name, t);
                }
                _ => {}
            }
        }
        // Drain so a compressed archive's trailer (gzip CRC) is checked.
        let mut rest = ar.into_inner();
        io::copy(
            &mut (&mut rest).take(limits.max_unpacked_bytes),
            &mut io::sink(),
        )
        .map_err(unreadable)?;
        Ok(staged)
    }

    /// The staged file of member `name`, following aliases.
    pub fn path(&self, name: &str) -> Option<&Path> {
        let mut cur = normalize(name.as_bytes())?;
        for _ in 0..MAX_ALIAS_HOPS {
            if let Some(p) = self.files.get(&cur) {
                return Some(p);
            }
            cur = self.aliases.get(&cur)?.clone();
        }
        None
    }

    pub fn has(&self, name: &str) -> bool {
        self.path(name).is_some()
    }

    /// Member `name`, or an error naming the archive and the member.
    pub fn require(&self, name: &str) -> Result<&Path, ImportError> {
        self.path(name).ok_or_else(|| ImportError::Archive {
            path: self.archive.clone(),
            reason: format!("member {name:?} is missing"),
        })
    }

    pub fn archive(&self) -> &Path {
        &self.archive
    }
}
