//! Paths inside the container root, resolved as the container itself will resolve them.
//!
//! The init helper sets up the container from the agent's view of the filesystem, but every
//! path it takes from the spec (mount destinations, masked and read-only paths, the cwd, the
//! mount points it creates) names a place *inside* the image, and the image may hold
//! symlinks such as `/etc -> /` or `/x -> ../../..`. Joining such a path onto the rootfs
//! path and handing it to the kernel would follow them on the agent's view and escape.
//! Instead every lookup goes through `openat2(RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)`
//! relative to a descriptor of the rootfs (what runc's securejoin does in user space), and
//! the result is used as a descriptor: mount(2) gets `/proc/self/fd/N`, which names exactly
//! that directory entry, never a path that could be re-resolved elsewhere.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// Symlinks resolve inside the root; `/proc/*/fd`-style magic links are refused outright.
const IN_ROOT: u64 = libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS;
/// For a component just created by us: no symlink at all, and nothing above it.
const JUST_MADE: u64 =
    libc::RESOLVE_BENEATH | libc::RESOLVE_NO_SYMLINKS | libc::RESOLVE_NO_MAGICLINKS;

fn cstr(s: &str) -> io::Result<CString> {
    CString::new(s).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in a path"))
}

fn openat2(dir: RawFd, path: &str, flags: i32, mode: u32, resolve: u64) -> io::Result<OwnedFd> {
    let c = cstr(path)?;
    // SAFETY: open_how is a plain C struct; all-zero bytes are a valid value (no flags, no resolve
    // restrictions).
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (flags | libc::O_CLOEXEC) as u64;
    how.mode = mode as u64;
    how.resolve = resolve;
    // RESOLVE_IN_ROOT answers EAGAIN when a rename raced a ".." walk: try again.
    for _ in 0..64 {
        // SAFETY: `c` is a live NUL-terminated path and `how` a live open_how whose exact size is
        // passed; openat2 only reads both. `dir` is a directory fd the caller holds open.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                dir,
                c.as_ptr(),
                &how as *const libc::open_how,
                std::mem::size_of::<libc::open_how>(),
            )
        };
        if fd >= 0 {
            // SAFETY: openat2 just returned `fd` (checked non-negative); nothing else owns it.
            return Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) });
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EAGAIN) {
            return Err(e);
        }
    }
    Err(io::Error::from_raw_os_error(libc::EAGAIN))
}

/// A descriptor of the rootfs directory (trusted: the agent made it).
pub fn open_root(path: &Path) -> io::Result<OwnedFd> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in a path"))?;
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

/// `path` (absolute or not, as the container sees it) opened with `flags`, every symlink on
/// the way resolved inside `root`.
pub fn open(root: BorrowedFd, path: &str, flags: i32) -> io::Result<OwnedFd> {
    openat2(root.as_raw_fd(), rel(path), flags, 0, IN_ROOT)
}

/// An `O_PATH` descriptor of `path` inside `root`, following symlinks inside the root.
pub fn resolve(root: BorrowedFd, path: &str) -> io::Result<OwnedFd> {
    open(root, path, libc::O_PATH)
}

/// Like `mkdir -p` inside `root`: every missing directory of `path` created where the
/// container would see it. A component that exists but is not a directory, or a dangling
/// symlink, is an error rather than something to create through.
pub fn mkdir_all(root: BorrowedFd, path: &str, mode: u32) -> io::Result<OwnedFd> {
    let dir_flags = libc::O_PATH | libc::O_DIRECTORY;
    let mut cur = openat2(root.as_raw_fd(), ".", dir_flags, 0, IN_ROOT)?;
    let mut prefix = String::new();
    for comp in components(path) {
        if !prefix.is_empty() {
            prefix.push('/');
        }
        prefix.push_str(comp);
        // The whole prefix from the root, so a symlink met on the way resolves as the
        // container would resolve it (absolute targets at the container's /).
        match openat2(root.as_raw_fd(), &prefix, dir_flags, 0, IN_ROOT) {
            Ok(fd) => cur = fd,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) && comp != ".." => {
                let c = cstr(comp)?;
                // SAFETY: `c` is a live NUL-terminated name and `cur` a directory fd we hold;
                // mkdirat only reads the name.
                if unsafe { libc::mkdirat(cur.as_raw_fd(), c.as_ptr(), mode) } < 0 {
                    let e = io::Error::last_os_error();
                    return Err(if e.raw_os_error() == Some(libc::EEXIST) {
                        dangling(&prefix)
                    } else {
                        e
                    });
                }
                cur = openat2(cur.as_raw_fd(), comp, dir_flags, 0, JUST_MADE)?;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(cur)
}

/// An `O_PATH` descriptor of the file `path` inside `root`, created empty (with its
/// missing parents) if absent: a mount point for a bind-mounted file.
pub fn create_file(root: BorrowedFd, path: &str, mode: u32) -> io::Result<OwnedFd> {
    match resolve(root, path) {
        Ok(fd) => return Ok(fd),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
        Err(e) => return Err(e),
    }
    let comps: Vec<&str> = components(path).collect();
    let Some((name, parents)) = comps.split_last().filter(|(n, _)| **n != "..") else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{path:?} does not name a file"),
        ));
    };
    let parent = mkdir_all(root, &parents.join("/"), 0o755)?;
    let flags = libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_WRONLY;
    match openat2(parent.as_raw_fd(), name, flags, mode, JUST_MADE) {
        Ok(_) => openat2(parent.as_raw_fd(), name, libc::O_PATH, 0, JUST_MADE),
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Err(dangling(path)),
        Err(e) => Err(e),
    }
}

/// The name mount(2) and friends accept for an open descriptor: the kernel follows it to
/// exactly the object the descriptor holds.
pub fn fd_path(fd: &OwnedFd) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

fn dangling(path: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::AlreadyExists,
        format!("{path:?} exists but does not resolve to anything inside the root (a dangling symlink?)"),
    )
}

fn rel(path: &str) -> &str {
    let r = path.trim_start_matches('/');
    if r.is_empty() {
        "."
    } else {
        r
    }
}

fn components(path: &str) -> impl Iterator<Item = &str> {
    path.split('/').filter(|c| !c.is_empty() && *c != ".")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::fd::AsFd;
    use std::os::unix::fs::symlink;

    /// `<tmp>/outside` stands for the agent's filesystem, `<tmp>/root` for the image, with
    /// symlinks that point out of it every way a hostile image can.
    fn hostile() -> (tempfile::TempDir, PathBuf, OwnedFd) {
        let t = tempfile::tempdir().unwrap();
        let outside = t.path().join("outside");
        let root = t.path().join("root");
        fs::create_dir_all(outside.join("etc")).unwrap();
        fs::write(outside.join("secret"), b"host").unwrap();
        fs::create_dir_all(root.join("real/sub")).unwrap();
        fs::write(root.join("secret"), b"image").unwrap();
        symlink(&outside, root.join("abs")).unwrap(); // absolute, to the agent's view
        symlink("../../../../../../outside", root.join("up")).unwrap();
        symlink("/", root.join("etc")).unwrap();
        symlink("../..", root.join("real/sub/dotdot")).unwrap();
        symlink("/nonexistent/x", root.join("dangling")).unwrap();
        symlink("/proc/self/root", root.join("magic")).unwrap();
        let fd = open_root(&root).unwrap();
        (t, root, fd)
    }

    fn is_same(fd: &OwnedFd, p: &Path) -> bool {
        let a = fs::metadata(fd_path(fd)).unwrap();
        let b = fs::metadata(p).unwrap();
        use std::os::unix::fs::MetadataExt;
        (a.dev(), a.ino()) == (b.dev(), b.ino())
    }

    #[test]
    fn symlinks_resolve_inside_the_root() {
        let (t, root, fd) = hostile();
        let r = fd.as_fd();
        // `/abs` points at <tmp>/outside on the agent's view: inside the root that is
        // <root>/<tmp>/outside, which does not exist.
        assert_eq!(
            resolve(r, "/abs/secret").unwrap_err().raw_os_error(),
            Some(libc::ENOENT)
        );
        // `..` past the root stays at the root.
        let up = resolve(r, "/up").err();
        assert_eq!(up.and_then(|e| e.raw_os_error()), Some(libc::ENOENT));
        assert!(is_same(
            &resolve(r, "/real/sub/dotdot/../../..").unwrap(),
            &root
        ));
        assert!(is_same(
            &resolve(r, "/etc/secret").unwrap(),
            &root.join("secret")
        ));
        assert!(is_same(
            &resolve(r, "../../secret").unwrap(),
            &root.join("secret")
        ));
        assert!(is_same(&resolve(r, "/").unwrap(), &root));
        assert!(
            resolve(r, "/magic").is_err(),
            "a magic link must not be followed"
        );
        drop(t);
    }

    #[test]
    fn mkdir_all_creates_through_symlinks_inside_the_root() {
        let (t, root, fd) = hostile();
        let outside = t.path().join("outside");
        let r = fd.as_fd();
        // /etc -> / : /etc/newdir lands at <root>/newdir, never at the agent's /newdir.
        let d = mkdir_all(r, "/etc/newdir/deeper", 0o755).unwrap();
        assert!(is_same(&d, &root.join("newdir/deeper")));
        // /up -> ../../../outside is clamped to <root>/outside, absent: a dangling link
        // is refused, never created through.
        let e = mkdir_all(r, "/up/etc/x", 0o755).unwrap_err();
        assert!(e.to_string().contains("dangling"), "{e}");
        assert!(!outside.join("etc/x").exists());
        // Once the image has /outside, the link leads there.
        fs::create_dir(root.join("outside")).unwrap();
        let d = mkdir_all(r, "/up/etc/x", 0o755).unwrap();
        assert!(is_same(&d, &root.join("outside/etc/x")));
        assert!(!outside.join("etc/x").exists());
        // An absolute link to the agent's path is re-rooted too.
        let abs_in_root = root.join(outside.strip_prefix("/").unwrap());
        assert!(mkdir_all(r, "/abs/m", 0o755).is_err());
        assert!(!outside.join("m").exists());
        fs::create_dir_all(&abs_in_root).unwrap();
        let d = mkdir_all(r, "/abs/m", 0o755).unwrap();
        assert!(is_same(&d, &abs_in_root.join("m")));
        assert!(!outside.join("m").exists());
        // `..` components are clamped as well.
        let d = mkdir_all(r, "/../../../../q", 0o755).unwrap();
        assert!(is_same(&d, &root.join("q")));
        // Existing path: nothing new, same directory.
        assert!(is_same(
            &mkdir_all(r, "/real/sub", 0o755).unwrap(),
            &root.join("real/sub")
        ));
        assert!(is_same(&mkdir_all(r, "/", 0o755).unwrap(), &root));
        // A dangling link is refused, not created through; a file is not a directory.
        let e = mkdir_all(r, "/dangling/y", 0o755).unwrap_err();
        assert!(e.to_string().contains("dangling"), "{e}");
        assert!(!t.path().join("nonexistent").exists() && !Path::new("/nonexistent").exists());
        assert_eq!(
            mkdir_all(r, "/secret/z", 0o755).unwrap_err().raw_os_error(),
            Some(libc::ENOTDIR)
        );
        assert!(mkdir_all(r, "/magic/z", 0o755).is_err());
    }

    #[test]
    fn create_file_stays_inside_the_root() {
        let (t, root, fd) = hostile();
        let outside = t.path().join("outside");
        let r = fd.as_fd();
        fs::create_dir(root.join("outside")).unwrap();
        let f = create_file(r, "/up/etc/resolv.conf", 0o644).unwrap();
        assert!(is_same(&f, &root.join("outside/etc/resolv.conf")));
        assert!(!outside.join("etc/resolv.conf").exists());
        // An existing file is used as it is, through symlinks inside the root.
        let f = create_file(r, "/etc/secret", 0o644).unwrap();
        assert!(is_same(&f, &root.join("secret")));
        assert_eq!(fs::read(root.join("secret")).unwrap(), b"image");
        assert!(create_file(r, "/dangling", 0o644).is_err());
    }

    #[test]
    fn open_reads_the_image_not_the_agent() {
        let (_t, _root, fd) = hostile();
        let f = open(fd.as_fd(), "/etc/etc/secret", libc::O_RDONLY).unwrap();
        let got = fs::read(fd_path(&f)).unwrap();
        assert_eq!(got, b"image");
    }
}
