//! Why the guest could not exec a container's program that *is* in the rootfs.
//!
//! execve(2) answers ENOENT ("No such file or directory") not only for a missing program but
//! also when the program is there and the interpreter it names is not: a dynamically linked
//! binary's ELF loader (`/lib64/ld-linux-x86-64.so.2` in a busybox rootfs, the usual case of a
//! test binary built with cgo), or a script's `#!` interpreter. runc gives the same bare
//! message; [`explain`] says which of the two it was.
//!
//! The rootfs belongs to the bundle and may hold any symlink, so it is read on the host only
//! through `openat2(RESOLVE_IN_ROOT)` relative to a descriptor of it: a symlink inside cannot
//! lead out. Only the first page of the program is read.

use std::ffi::CString;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// How much of the program is read: the ELF header, program headers and interpreter path of
/// any ordinary binary, or a `#!` line, are in its first page.
const HEAD: usize = 4096;
/// `PATH` as the guest agent uses it when the process's environment has none.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
const PT_INTERP: u32 = 3;

/// When `program` (as the process's `args[0]`, looked up in `env`'s `PATH` if it has no
/// slash) is a file in `rootfs` whose interpreter is not: a sentence saying so. `None` when
/// the program itself is missing, or the cause is something else.
pub fn explain(rootfs: &Path, program: &str, env: &[String]) -> Option<String> {
    let root = open_root(rootfs).ok()?;
    let candidates: Vec<String> = if program.contains('/') {
        vec![program.to_string()]
    } else {
        let path = env
            .iter()
            .find_map(|e| e.strip_prefix("PATH="))
            .unwrap_or(DEFAULT_PATH);
        path.split(':')
            .filter(|d| !d.is_empty())
            .map(|d| format!("{}/{program}", d.trim_end_matches('/')))
            .collect()
    };
    let (path, head) = candidates
        .iter()
        .find_map(|c| read_head(&root, c).ok().map(|h| (c, h)))?;
    let (interp, what) = if let Some(i) = elf_interpreter(&head) {
        (i, "ELF interpreter")
    } else {
        (shebang_interpreter(&head)?, "#! interpreter")
    };
    if open_in(&root, &interp, libc::O_PATH).is_ok() {
        return None;
    }
    Some(format!(
        "{path} is in the rootfs, but its {what} {interp} is not: a dynamically linked \
         program needs its loader and libraries in the rootfs (or build it static)"
    ))
}

/// The first [`HEAD`] bytes of the regular file `path` inside the root. It is found with
/// `O_PATH` and opened for reading only once it is known to be a regular file: opening a FIFO
/// would block, and opening a device node can act on the device.
fn read_head(root: &OwnedFd, path: &str) -> io::Result<Vec<u8>> {
    let found = std::fs::File::from(open_in(root, path, libc::O_PATH)?);
    if !found.metadata()?.is_file() {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    // The inode found above, whatever has been renamed since.
    let mut f = std::fs::File::open(format!("/proc/self/fd/{}", found.as_raw_fd()))?;
    let mut head = Vec::with_capacity(HEAD);
    (&mut f).take(HEAD as u64).read_to_end(&mut head)?;
    Ok(head)
}

/// The `PT_INTERP` path of a little-endian ELF file (32 or 64 bit) whose headers lie in
/// `head`; `None` for anything else, a static binary included.
fn elf_interpreter(head: &[u8]) -> Option<String> {
    if head.get(..4)? != b"\x7fELF" || *head.get(5)? != 1 {
        return None;
    }
    let wide = match head.get(4)? {
        1 => false,
        2 => true,
        _ => return None,
    };
    let bytes = |o: usize, n: usize| head.get(o..o.checked_add(n)?);
    let u16_at = |o: usize| Some(u16::from_le_bytes(bytes(o, 2)?.try_into().ok()?));
    let u32_at = |o: usize| Some(u32::from_le_bytes(bytes(o, 4)?.try_into().ok()?));
    let u64_at = |o: usize| Some(u64::from_le_bytes(bytes(o, 8)?.try_into().ok()?));
    let word = |o: usize| -> Option<usize> {
        if wide {
            usize::try_from(u64_at(o)?).ok()
        } else {
            usize::try_from(u32_at(o)?).ok()
        }
    };
    let (phoff, phentsize, phnum) = if wide {
        (word(0x20)?, u16_at(0x36)?, u16_at(0x38)?)
    } else {
        (word(0x1c)?, u16_at(0x2a)?, u16_at(0x2c)?)
    };
    let (off_at, size_at) = if wide { (8, 32) } else { (4, 16) };
    for i in 0..usize::from(phnum) {
        let ph = phoff.checked_add(i.checked_mul(usize::from(phentsize))?)?;
        if u32_at(ph)? != PT_INTERP {
            continue;
        }
        let start = word(ph.checked_add(off_at)?)?;
        let len = word(ph.checked_add(size_at)?)?;
        let raw = head.get(start..start.checked_add(len)?)?;
        let text = raw.split(|&b| b == 0).next()?;
        return std::str::from_utf8(text)
            .ok()
            .filter(|s| !s.is_empty())
            .map(str::to_string);
    }
    None
}

/// The interpreter a `#!` line names.
fn shebang_interpreter(head: &[u8]) -> Option<String> {
    let line = head.strip_prefix(b"#!")?;
    let line = &line[..line.iter().position(|&b| b == b'\n')?];
    let text = std::str::from_utf8(line).ok()?;
    text.split_whitespace().next().map(str::to_string)
}

fn open_root(path: &Path) -> io::Result<OwnedFd> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: `c` is a live NUL-terminated path; open only reads it.
    let fd = unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: open just returned `fd` (checked non-negative); nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `path` (as the container sees it) opened with `flags`, every symlink resolved inside the
/// root and magic links refused.
fn open_in(root: &OwnedFd, path: &str, flags: i32) -> io::Result<OwnedFd> {
    let rel = path.trim_start_matches('/');
    let c = CString::new(if rel.is_empty() { "." } else { rel })
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: open_how is a plain C struct; all-zero bytes are a valid value.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (flags | libc::O_CLOEXEC) as u64;
    how.resolve = libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS;
    // SAFETY: `c` is a live NUL-terminated path and `how` a live open_how whose exact size is
    // passed; openat2 only reads both. `root` is a directory fd we hold open.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            root.as_raw_fd(),
            c.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: openat2 just returned `fd` (checked non-negative); nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    /// A dynamically linked host binary (its loader is not in a bare rootfs).
    fn dynamic_binary() -> Option<&'static str> {
        ["/bin/true", "/usr/bin/true"].into_iter().find(|p| {
            std::fs::read(p)
                .ok()
                .and_then(|b| elf_interpreter(&b[..b.len().min(HEAD)]))
                .is_some()
        })
    }

    #[test]
    fn a_dynamic_binary_without_its_loader_is_explained() {
        let Some(bin) = dynamic_binary() else {
            eprintln!("NOT RUN: no dynamically linked /bin/true on this host");
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("bin")).unwrap();
        std::fs::copy(bin, dir.path().join("bin/prog")).unwrap();
        let why = explain(dir.path(), "/bin/prog", &[]).expect("explained");
        assert!(why.contains("ELF interpreter /lib"), "{why}");
        // Found through PATH too; and with the loader present, nothing to explain.
        let env = ["PATH=/nowhere:/bin".to_string()];
        assert!(explain(dir.path(), "prog", &env).is_some());
        let interp = elf_interpreter(&std::fs::read(bin).unwrap()[..HEAD]).unwrap();
        let inside = dir.path().join(interp.trim_start_matches('/'));
        std::fs::create_dir_all(inside.parent().unwrap()).unwrap();
        std::fs::write(&inside, b"").unwrap();
        assert_eq!(explain(dir.path(), "/bin/prog", &[]), None);
    }

    #[test]
    fn scripts_missing_programs_and_escapes() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir(&root).unwrap();
        std::fs::write(root.join("s"), b"#!/bin/bash -e\necho hi\n").unwrap();
        let why = explain(&root, "/s", &[]).expect("explained");
        assert!(why.contains("#! interpreter /bin/bash is not"), "{why}");
        // A missing program is its own explanation.
        assert_eq!(explain(&root, "/none", &[]), None);
        // A symlink cannot lead the check out of the rootfs: `/bin/bash` outside it exists
        // (on the host), but inside the root it resolves to the root's own missing one.
        std::fs::write(dir.path().join("outside"), b"#!/bin/sh\n").unwrap();
        symlink("../../outside", root.join("link")).unwrap();
        assert_eq!(explain(&root, "/link", &[]), None);
        // A symlink inside the root is followed there (as the guest's execve would).
        symlink("/s", root.join("via")).unwrap();
        assert!(explain(&root, "/via", &[]).is_some());
        // Neither a FIFO (opening it would block) nor a directory is read.
        let fifo = CString::new(root.join("fifo").as_os_str().as_bytes()).unwrap();
        // SAFETY: mkfifo reads the live NUL-terminated path only.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o755) }, 0);
        assert_eq!(explain(&root, "/fifo", &[]), None);
        std::fs::create_dir(root.join("dir")).unwrap();
        assert_eq!(explain(&root, "/dir", &[]), None);
        // A static file (not ELF, no #!) is not explained.
        std::fs::write(root.join("data"), b"\x7fELF").unwrap();
        assert_eq!(explain(&root, "/data", &[]), None);
    }

    #[test]
    fn elf_headers_are_read_within_bounds() {
        // Truncated and hostile headers give None, never a panic.
        let mut h = b"\x7fELF\x02\x01\x01".to_vec();
        h.resize(64, 0);
        h[0x20..0x28].copy_from_slice(&u64::MAX.to_le_bytes());
        h[0x38..0x3a].copy_from_slice(&3u16.to_le_bytes());
        assert_eq!(elf_interpreter(&h), None);
        assert_eq!(elf_interpreter(b"\x7fELF"), None);
        assert_eq!(
            shebang_interpreter(b"#!/bin/sh"),
            None,
            "no newline: not a whole line"
        );
    }
}
