//! `virtiofsd`: the vhost-user-fs backend that serves one host directory to the guest's
//! virtio-fs driver. Both VM backends use it: QEMU through `vhost-user-fs-device`, husk-vmm
//! through its vhost-user-fs frontend. One daemon per shared directory, so a share's flags
//! (read-only, its own sandbox) never leak into another's.
//!
//! Flags, and why:
//! - `--sandbox namespace`: the daemon pivots into the shared directory inside fresh mount,
//!   pid and net namespaces, so a guest that fools it still sees only that directory. Where
//!   namespaces cannot be created (a container without CAP_SYS_ADMIN) the daemon dies at
//!   once and we retry with `--sandbox chroot`, which still confines paths to the directory.
//! - `--seccomp kill`: a syscall outside virtiofsd's allow-list ends the daemon (the VM then
//!   ends with a clear error, see [`super::process_vm`]) rather than being logged and allowed.
//! - `--cache never` for volumes ([`ShareCache::Never`]): the host edits them under a running
//!   container, and with `auto` the guest keeps a file's size for the 1 s attribute timeout —
//!   measured here: a file the host grew from 3 to 20 bytes was read back as its first 3
//!   bytes. `never` makes every lookup, stat and read go to the host. Its price (no page
//!   cache; MAP_SHARED of such files needs the kernel's direct-I/O mmap) is paid only where
//!   coherence matters.
//! - `--cache auto` for rootfs directories ([`ShareCache::Auto`]): nothing on the host
//!   changes them while the container runs, and they are exec'd and mmap'd all the time.
//! - No `--writeback`: guest writes reach the host file before write(2) returns, so the host
//!   sees a container's output as soon as the command ends.
//! - `--announce-submounts`: host mount points inside the share keep distinct inode numbers
//!   in the guest (no st_ino collisions between filesystems).
//! - `--readonly` for read-only shares: the daemon itself refuses writes, whatever the guest
//!   mounts; the agent mounts such shares `ro` as well.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::child::{self, Guarded};
use super::listening::Starting;
use super::{Error, ShareCache, SharedDirSpec};

/// The version `scripts/install-virtiofsd.sh` installs.
pub const VERSION: &str = "1.14.0";

/// Overrides where the binary is looked for.
pub const BINARY_ENV: &str = "HUSK_VIRTIOFSD";

/// Longest mount tag the virtio-fs config space holds.
pub const MAX_TAG_LEN: usize = 36;

/// How the daemon confines itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sandbox {
    Namespace,
    Chroot,
}

impl Sandbox {
    fn as_str(self) -> &'static str {
        match self {
            Sandbox::Namespace => "namespace",
            Sandbox::Chroot => "chroot",
        }
    }
}

/// Finds the binary: `$HUSK_VIRTIOFSD`, then the install script's location under the husk
/// cache, then `PATH`, then Debian's `/usr/libexec/virtiofsd`.
pub fn find_binary() -> Result<PathBuf, Error> {
    let cached =
        crate::util::fs::husk_cache_dir().join(format!("tools/virtiofsd-{VERSION}/bin/virtiofsd"));
    child::find_helper(
        BINARY_ENV,
        &cached,
        "virtiofsd",
        &["/usr/libexec/virtiofsd"],
        format!(
            "shared directories need it; run scripts/install-virtiofsd.sh \
             (cargo install virtiofsd@{VERSION}) or set {BINARY_ENV}"
        ),
    )
}

/// The vhost-user socket of share number `index`, beside the VM's console log: that file is
/// unique per VM and lives in the VM's directory, so the socket shares both.
pub fn socket_for(console_log: &Path, index: usize) -> PathBuf {
    let mut s = console_log.as_os_str().to_owned();
    s.push(format!(".fs{index}.sock"));
    PathBuf::from(s)
}

/// The daemon's arguments for one share.
pub fn args(share: &SharedDirSpec, socket: &Path, sandbox: Sandbox) -> Vec<String> {
    let mut a = vec![
        format!("--socket-path={}", socket.display()),
        format!("--shared-dir={}", share.host_path.display()),
        format!("--sandbox={}", sandbox.as_str()),
        "--seccomp=kill".into(),
        match share.cache {
            ShareCache::Never => "--cache=never",
            ShareCache::Auto => "--cache=auto",
        }
        .into(),
        "--announce-submounts".into(),
        // Its info lines (connect, disconnect) would interleave with the guest console.
        "--log-level=warn".into(),
    ];
    if share.read_only {
        a.push("--readonly".into());
    }
    a
}

/// Checks a share before anything runs.
pub fn validate(share: &SharedDirSpec) -> Result<(), Error> {
    let t = &share.tag;
    if t.is_empty()
        || t.len() > MAX_TAG_LEN
        || !t
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
    {
        return Err(Error::InvalidSpec(format!(
            "shared directory tag {t:?} of {}: use 1 to {MAX_TAG_LEN} characters from \
             [A-Za-z0-9._-]",
            share.host_path.display()
        )));
    }
    if !share.host_path.is_dir() {
        return Err(Error::MissingFile {
            what: "shared directory",
            path: share.host_path.clone(),
        });
    }
    if share.host_path.to_string_lossy().contains(',') {
        return Err(Error::InvalidSpec(format!(
            "shared directory {} contains ',', which VMM command lines cannot carry",
            share.host_path.display()
        )));
    }
    Ok(())
}

/// Starts a daemon for `share` and waits until it listens on `socket`: with the namespace
/// sandbox, or the chroot one if the host cannot give it namespaces.
pub(super) fn start(
    binary: &Path,
    share: &SharedDirSpec,
    socket: &Path,
    log: &File,
    log_path: &Path,
) -> Result<Guarded, Error> {
    let starting = launch(binary, share, socket, Sandbox::Namespace, log, log_path)?;
    ready(starting, binary, share, log, log_path)
}

/// Waits for a daemon [`launch`]ed with the namespace sandbox to listen; if it died (a host
/// that cannot give it namespaces), starts it again with the chroot sandbox and waits.
pub(super) fn ready(
    starting: Starting,
    binary: &Path,
    share: &SharedDirSpec,
    log: &File,
    log_path: &Path,
) -> Result<Guarded, Error> {
    let socket = starting.socket.clone();
    match starting.ready(log_path) {
        Err(Error::HelperDied { status, .. }) => {
            tracing::warn!(
                share = %share.host_path.display(),
                %status,
                "virtiofsd could not use --sandbox=namespace; retrying with --sandbox=chroot"
            );
            launch(binary, share, &socket, Sandbox::Chroot, log, log_path)?.ready(log_path)
        }
        other => other,
    }
}

/// Spawns a daemon for `share` that will listen on `socket` (a stale socket file is removed
/// first); [`ready`] waits for it.
pub(super) fn launch(
    binary: &Path,
    share: &SharedDirSpec,
    socket: &Path,
    sandbox: Sandbox,
    log: &File,
    log_path: &Path,
) -> Result<Starting, Error> {
    child::remove_if_exists(socket);
    let mut cmd = Command::new(binary);
    cmd.args(args(share, socket, sandbox));
    child::quiet_stdio(&mut cmd, log, log_path)?;
    let program = format!("virtiofsd (share {})", share.tag);
    Ok(Starting {
        // Its sandbox forks a child that must go with it.
        daemon: Guarded::spawn_group(&program, &mut cmd)?,
        socket: socket.to_path_buf(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn share(tag: &str, ro: bool) -> SharedDirSpec {
        SharedDirSpec::volume(std::env::temp_dir(), tag, ro)
    }

    #[test]
    fn args_carry_the_defended_flags() {
        let a = args(
            &share("vol0", true),
            Path::new("/r/c.log.fs0.sock"),
            Sandbox::Namespace,
        );
        for want in [
            "--socket-path=/r/c.log.fs0.sock",
            "--sandbox=namespace",
            "--seccomp=kill",
            "--cache=never",
            "--announce-submounts",
            "--readonly",
        ] {
            assert!(a.iter().any(|x| x == want), "{want} missing from {a:?}");
        }
        let rw = args(&share("vol0", false), Path::new("/s"), Sandbox::Chroot);
        assert!(!rw.iter().any(|x| x == "--readonly"));
        assert!(rw.iter().any(|x| x == "--sandbox=chroot"));
        let root = SharedDirSpec::rootfs("/r", "root", false);
        assert!(args(&root, Path::new("/s"), Sandbox::Namespace)
            .iter()
            .any(|x| x == "--cache=auto"));
    }

    #[test]
    fn sockets_sit_beside_the_console_log() {
        assert_eq!(
            socket_for(Path::new("/run/husk/c1/console.log"), 2),
            PathBuf::from("/run/husk/c1/console.log.fs2.sock")
        );
    }

    #[test]
    fn tags_are_checked() {
        assert!(validate(&share("vol-0_a.b", false)).is_ok());
        for bad in ["", "a,b", "a b", &"x".repeat(37)] {
            assert!(
                matches!(validate(&share(bad, false)), Err(Error::InvalidSpec(_))),
                "{bad:?}"
            );
        }
        let mut missing = share("t", false);
        missing.host_path = PathBuf::from("/no/such/dir");
        assert!(matches!(validate(&missing), Err(Error::MissingFile { .. })));
    }
}
