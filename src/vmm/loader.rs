//! Putting the guest's software in memory: the kernel (ELF vmlinux or bzImage, told apart
//! by their magic), the initramfs, and the command line.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use linux_loader::bootparam::setup_header;
use linux_loader::cmdline::Cmdline;
use linux_loader::loader::{BzImage, Elf, KernelLoader};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryMmap};

use super::arch::x86_64::{boot_params, layout};

#[derive(Debug, thiserror::Error)]
pub enum LoaderError {
    /// A boot file could not be opened or read.
    #[error("cannot read {what} {path}: {source}")]
    Read {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    /// The kernel file is neither an ELF nor a bzImage.
    #[error("{0}: not a kernel (neither ELF vmlinux nor bzImage)")]
    UnknownFormat(PathBuf),
    /// linux-loader rejected the kernel.
    #[error("cannot load kernel {path}: {err}")]
    Kernel {
        path: PathBuf,
        #[source]
        err: linux_loader::loader::Error,
    },
    /// The initramfs does not fit in guest memory.
    #[error("initramfs {path} ({size} bytes) does not fit in guest memory: {err}")]
    InitrdPlace {
        path: PathBuf,
        size: usize,
        #[source]
        err: boot_params::Error,
    },
    /// Copying the initramfs into guest memory failed.
    #[error("cannot copy initramfs {path} into guest memory: {err}")]
    InitrdCopy {
        path: PathBuf,
        #[source]
        err: vm_memory::GuestMemoryError,
    },
    /// The command line is invalid or too long.
    #[error("invalid kernel command line: {0:?}")]
    Cmdline(#[source] linux_loader::cmdline::Error),
    /// Writing the command line into guest memory failed.
    #[error("cannot write the kernel command line: {0}")]
    CmdlineWrite(#[source] linux_loader::loader::Error),
}

/// A loaded kernel: where to start and, for bzImage, the header boot_params needs.
pub struct LoadedKernel {
    /// 64-bit entry point (Linux 64-bit boot protocol).
    pub entry: GuestAddress,
    pub setup_header: Option<setup_header>,
}

/// 64-bit entry of a bzImage: `startup_64` sits 0x200 into the protected-mode kernel.
const BZIMAGE_64BIT_ENTRY_OFFSET: u64 = 0x200;

/// Loads `path` into `mem`, ELF or bzImage by magic.
pub fn load_kernel(mem: &GuestMemoryMmap, path: &Path) -> Result<LoadedKernel, LoaderError> {
    let read_err = |source| LoaderError::Read {
        what: "kernel",
        path: path.to_path_buf(),
        source,
    };
    let mut file = File::open(path).map_err(read_err)?;
    let highmem = Some(GuestAddress(layout::HIMEM_START));
    let kernel_err = |err| LoaderError::Kernel {
        path: path.to_path_buf(),
        err,
    };
    match detect(&mut file).map_err(read_err)? {
        Format::Elf => {
            let r = Elf::load(mem, None, &mut file, highmem).map_err(kernel_err)?;
            Ok(LoadedKernel {
                entry: r.kernel_load,
                setup_header: None,
            })
        }
        Format::BzImage => {
            let r = BzImage::load(mem, None, &mut file, highmem).map_err(kernel_err)?;
            let entry = r
                .kernel_load
                .checked_add(BZIMAGE_64BIT_ENTRY_OFFSET)
                .ok_or(LoaderError::UnknownFormat(path.to_path_buf()))?;
            Ok(LoadedKernel {
                entry,
                setup_header: r.setup_header,
            })
        }
        Format::Unknown => Err(LoaderError::UnknownFormat(path.to_path_buf())),
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Format {
    Elf,
    BzImage,
    Unknown,
}

fn detect<F: Read + Seek>(f: &mut F) -> std::io::Result<Format> {
    let mut magic = [0u8; 4];
    f.seek(SeekFrom::Start(0))?;
    if f.read_exact(&mut magic).is_ok() && magic == *b"\x7fELF" {
        return Ok(Format::Elf);
    }
    // "HdrS" at 0x202: the Linux boot protocol header of a bzImage.
    f.seek(SeekFrom::Start(0x202))?;
    let format = if f.read_exact(&mut magic).is_ok() && magic == *b"HdrS" {
        Format::BzImage
    } else {
        Format::Unknown
    };
    f.seek(SeekFrom::Start(0))?;
    Ok(format)
}

/// Copies the initramfs where the arch code says it belongs (high, below the MMIO gap).
pub fn load_initrd(
    mem: &GuestMemoryMmap,
    path: &Path,
) -> Result<(GuestAddress, usize), LoaderError> {
    let read_err = |source| LoaderError::Read {
        what: "initramfs",
        path: path.to_path_buf(),
        source,
    };
    let mut file = File::open(path).map_err(read_err)?;
    let size = file.metadata().map_err(read_err)?.len() as usize;
    let addr = boot_params::initrd_load_addr(mem, size).map_err(|e| LoaderError::InitrdPlace {
        path: path.to_path_buf(),
        size,
        err: e,
    })?;
    mem.read_exact_volatile_from(addr, &mut file, size)
        .map_err(|err| LoaderError::InitrdCopy {
            path: path.to_path_buf(),
            err,
        })?;
    Ok((addr, size))
}

/// Parses the configured command line with room for what devices add later.
pub fn cmdline(text: &str) -> Result<Cmdline, LoaderError> {
    Cmdline::try_from(text, layout::CMDLINE_MAX_SIZE).map_err(LoaderError::Cmdline)
}

/// Writes `cmdline` at CMDLINE_START; returns its size including the NUL for boot_params.
pub fn write_cmdline(mem: &GuestMemoryMmap, cmdline: &Cmdline) -> Result<usize, LoaderError> {
    linux_loader::loader::load_cmdline(mem, GuestAddress(layout::CMDLINE_START), cmdline)
        .map_err(LoaderError::CmdlineWrite)?;
    let len = cmdline
        .as_cstring()
        .map_err(LoaderError::Cmdline)?
        .as_bytes_with_nul()
        .len();
    Ok(len)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    #[test]
    fn detects_formats_by_magic() {
        let mut elf = Cursor::new(b"\x7fELF\x02\x01\x01".to_vec());
        assert_eq!(detect(&mut elf).unwrap(), Format::Elf);
        let mut bz = vec![0u8; 0x300];
        bz[0x202..0x206].copy_from_slice(b"HdrS");
        assert_eq!(detect(&mut Cursor::new(bz)).unwrap(), Format::BzImage);
        assert_eq!(
            detect(&mut Cursor::new(vec![0u8; 16])).unwrap(),
            Format::Unknown
        );
    }

    #[test]
    fn cmdline_keeps_init_args_last() {
        let mut c = cmdline("console=ttyS0 -- init-arg").unwrap();
        c.insert_str("virtio_mmio.device=4K@0xd0000000:5").unwrap();
        let s = c.as_cstring().unwrap().into_string().unwrap();
        assert!(s.ends_with("-- init-arg"), "{s}");
    }
}
