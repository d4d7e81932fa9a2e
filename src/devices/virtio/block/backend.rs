//! Disk backends: where virtio-blk sectors live on the host.
//!
//! A backend moves bytes between a disk offset and guest memory ([`VolatileSlice`]s, so the
//! data goes straight from the file into guest RAM with `pread`/`pwrite` — no bounce buffer
//! and no Rust reference to memory the guest may change under us).

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use vm_memory::VolatileSlice;

/// Bytes per virtio-blk sector (fixed by the spec, whatever the backend's block size).
pub const SECTOR_SIZE: u64 = 512;
/// Length of a GET_ID answer.
pub const ID_BYTES: usize = 20;

/// Guest memory as a backend sees it.
pub type GuestSlice<'a> = VolatileSlice<'a, ()>;

/// Why a backend could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("opening disk image {path}: {source}")]
    Open { path: PathBuf, source: io::Error },
    #[error("reading metadata of disk image {path}: {source}")]
    Metadata { path: PathBuf, source: io::Error },
    #[error("disk image {path} is not a regular file or block device")]
    NotAFile { path: PathBuf },
}

/// Storage behind a virtio-blk device. Methods take `&self` so one backend can be shared by
/// the device (config space) and its worker (data path) without a lock; every request is
/// already bounds-checked against [`capacity`](Self::capacity) by the caller.
pub trait DiskBackend: Send + Sync {
    /// Size in bytes (a multiple of [`SECTOR_SIZE`]).
    fn capacity(&self) -> u64;
    /// Whether writes must be refused.
    fn read_only(&self) -> bool;
    /// The 20-byte GET_ID serial (NUL-padded).
    fn id(&self) -> [u8; ID_BYTES];
    /// Fills `buf` from `offset` (all of it, or an error).
    fn read_at(&self, offset: u64, buf: &GuestSlice<'_>) -> io::Result<()>;
    /// Writes all of `buf` at `offset`.
    fn write_at(&self, offset: u64, buf: &GuestSlice<'_>) -> io::Result<()>;
    /// Makes completed writes durable.
    fn flush(&self) -> io::Result<()>;
}

/// Runs `op(done, file_offset)` — one `pread`/`pwrite` of the bytes from `done` on — until
/// `len` bytes are through, retrying short transfers and EINTR; 0 bytes is `at_zero`.
fn transfer_exact(
    len: usize,
    offset: u64,
    at_zero: io::ErrorKind,
    mut op: impl FnMut(usize, libc::off_t) -> isize,
) -> io::Result<()> {
    let mut done = 0usize;
    while done < len {
        let off = offset
            .checked_add(done as u64)
            .and_then(|o| libc::off_t::try_from(o).ok())
            .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
        match op(done, off) {
            0 => return Err(at_zero.into()),
            n if n < 0 => {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
            n => done += n as usize,
        }
    }
    Ok(())
}

/// `pread` of exactly `len` bytes at `offset` into `ptr` (retrying short reads and EINTR).
///
/// # Safety
/// `ptr..ptr+len` must be valid for writes for the duration of the call.
pub(crate) unsafe fn pread_exact(
    file: &File,
    ptr: *mut u8,
    len: usize,
    offset: u64,
) -> io::Result<()> {
    transfer_exact(len, offset, io::ErrorKind::UnexpectedEof, |done, off| {
        // SAFETY: the caller guarantees the range is writable; we stay inside it.
        unsafe { libc::pread(file.as_raw_fd(), ptr.add(done).cast(), len - done, off) }
    })
}

/// `pwrite` of exactly `len` bytes from `ptr` at `offset`.
///
/// # Safety
/// `ptr..ptr+len` must be valid for reads for the duration of the call.
pub(crate) unsafe fn pwrite_all(
    file: &File,
    ptr: *const u8,
    len: usize,
    offset: u64,
) -> io::Result<()> {
    transfer_exact(len, offset, io::ErrorKind::WriteZero, |done, off| {
        // SAFETY: the caller guarantees the range is readable; we stay inside it.
        unsafe { libc::pwrite(file.as_raw_fd(), ptr.add(done).cast(), len - done, off) }
    })
}

/// Reads into a guest slice from `file` at `offset`.
pub(crate) fn read_file_into(file: &File, offset: u64, buf: &GuestSlice<'_>) -> io::Result<()> {
    let guard = buf.ptr_guard_mut();
    // SAFETY: the guard pins a mapping of `buf.len()` bytes of guest memory.
    unsafe { pread_exact(file, guard.as_ptr(), buf.len(), offset) }
}

/// An id for GET_ID from a file's identity: stable for the same file, distinct across files.
pub fn id_from_metadata(meta: &std::fs::Metadata) -> [u8; ID_BYTES] {
    let s = format!("husk{:x}.{:x}", meta.dev(), meta.ino());
    id_from_str(&s)
}

/// NUL-pads (or truncates) `s` to an id.
pub fn id_from_str(s: &str) -> [u8; ID_BYTES] {
    let mut id = [0u8; ID_BYTES];
    let n = s.len().min(ID_BYTES);
    id[..n].copy_from_slice(&s.as_bytes()[..n]);
    id
}

/// A raw disk image file (or block device). Read-only images are opened `O_RDONLY`.
pub struct RawFile {
    file: File,
    capacity: u64,
    read_only: bool,
    id: [u8; ID_BYTES],
}

impl RawFile {
    pub fn open(path: &Path, read_only: bool) -> Result<Self, BackendError> {
        let file = OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(path)
            .map_err(|source| BackendError::Open {
                path: path.into(),
                source,
            })?;
        let meta = file.metadata().map_err(|source| BackendError::Metadata {
            path: path.into(),
            source,
        })?;
        let size = if meta.file_type().is_file() {
            meta.len()
        } else if std::os::unix::fs::FileTypeExt::is_block_device(&meta.file_type()) {
            block_device_size(&file).map_err(|source| BackendError::Metadata {
                path: path.into(),
                source,
            })?
        } else {
            return Err(BackendError::NotAFile { path: path.into() });
        };
        Ok(Self {
            file,
            // A trailing partial sector is not addressable by the guest.
            capacity: size - size % SECTOR_SIZE,
            read_only,
            id: id_from_metadata(&meta),
        })
    }

    /// Overrides the GET_ID serial.
    pub fn with_id(mut self, id: &str) -> Self {
        self.id = id_from_str(id);
        self
    }

    pub fn file(&self) -> &File {
        &self.file
    }
}

fn block_device_size(file: &File) -> io::Result<u64> {
    use std::io::{Seek, SeekFrom};
    let mut f = file.try_clone()?;
    f.seek(SeekFrom::End(0))
}

impl DiskBackend for RawFile {
    fn capacity(&self) -> u64 {
        self.capacity
    }

    fn read_only(&self) -> bool {
        self.read_only
    }

    fn id(&self) -> [u8; ID_BYTES] {
        self.id
    }

    fn read_at(&self, offset: u64, buf: &GuestSlice<'_>) -> io::Result<()> {
        read_file_into(&self.file, offset, buf)
    }

    fn write_at(&self, offset: u64, buf: &GuestSlice<'_>) -> io::Result<()> {
        if self.read_only {
            return Err(io::Error::from_raw_os_error(libc::EROFS));
        }
        let guard = buf.ptr_guard();
        // SAFETY: the guard pins a mapping of `buf.len()` bytes of guest memory.
        unsafe { pwrite_all(&self.file, guard.as_ptr(), buf.len(), offset) }
    }

    fn flush(&self) -> io::Result<()> {
        if self.read_only {
            return Ok(());
        }
        self.file.sync_data()
    }
}
