//! OCI mounts → the guest's mounts, and the host directories they need shared.
//!
//! Kernel filesystems (proc, sysfs, tmpfs, devpts, mqueue, cgroup) are mounted by the agent
//! as given. A bind mount of a host path crosses the VM boundary through virtio-fs: a
//! directory is shared as it is; a file (engines bind `/etc/hosts`, `/etc/resolv.conf`,
//! `/etc/hostname`, `/run/.containerenv` from one per-container directory) shares its parent
//! directory once and the agent binds the file out of it (`source: "TAG:NAME"`). `/dev/shm`
//! becomes a tmpfs of the guest: an engine's host-side shm directory means nothing to a
//! process that runs in another kernel.

use std::path::{Path, PathBuf};

use husk_protocol::MountSpec;
use oci_spec::runtime::Mount;

use super::Error;
use crate::backend::SharedDirSpec;

/// Mount tag of shared directory `i` (the rootfs has its own tag).
pub fn share_tag(i: usize) -> String {
    format!("husk-bind-{i}")
}

/// Filesystems the agent mounts itself.
const KERNEL_FS: [&str; 7] = [
    "proc", "sysfs", "tmpfs", "devpts", "mqueue", "cgroup2", "ramfs",
];

/// Options that only say "bind" or propagation; the share's mount gets its own.
fn is_bind_only(o: &str) -> bool {
    matches!(
        o,
        "bind"
            | "rbind"
            | "private"
            | "rprivate"
            | "shared"
            | "rshared"
            | "slave"
            | "rslave"
            | "unbindable"
            | "runbindable"
            | "z"
            | "Z"
            | "idmap"
            | "ridmap"
    )
}

/// The guest mounts and the host directories shared for them, in spec order.
#[derive(Debug, Default)]
pub struct Translated {
    pub mounts: Vec<MountSpec>,
    pub shares: Vec<SharedDirSpec>,
}

pub fn translate(mounts: &[Mount]) -> Result<Translated, Error> {
    let mut t = Translated::default();
    for m in mounts {
        let dest = m.destination().to_string_lossy().into_owned();
        if !dest.starts_with('/') {
            return Err(Error::BadConfig {
                path: "config.json".into(),
                detail: format!("mounts: destination {dest:?} is not absolute"),
            });
        }
        let options = m.options().clone().unwrap_or_default();
        let typ = m.typ().clone().unwrap_or_default();
        let source = m
            .source()
            .as_ref()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let bind = typ == "bind" || options.iter().any(|o| o == "bind" || o == "rbind");
        if bind && dest == "/dev/shm" {
            t.mounts.push(spec(
                &dest,
                "tmpfs",
                "shm",
                &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
            ));
            continue;
        }
        if bind {
            t.bind(&dest, Path::new(&source), &options)?;
            continue;
        }
        let fs = if typ == "cgroup" {
            "cgroup2"
        } else {
            typ.as_str()
        };
        if !KERNEL_FS.contains(&fs) {
            return Err(Error::Unsupported(format!(
                "mounts: {dest}: filesystem type {typ:?} (the guest mounts proc, sysfs, tmpfs, \
                 devpts, mqueue, cgroup and binds of host paths)"
            )));
        }
        let source = if source.is_empty() {
            fs.to_string()
        } else {
            source
        };
        let opts: Vec<&str> = options.iter().map(String::as_str).collect();
        t.mounts.push(spec(&dest, fs, &source, &opts));
    }
    Ok(t)
}

impl Translated {
    fn bind(&mut self, dest: &str, source: &Path, options: &[String]) -> Result<(), Error> {
        let meta = std::fs::metadata(source).map_err(|e| Error::BadConfig {
            path: "config.json".into(),
            detail: format!("mounts: {dest}: bind source {}: {e}", source.display()),
        })?;
        let read_only = options.iter().any(|o| o == "ro");
        let mut opts: Vec<&str> = options
            .iter()
            .map(String::as_str)
            .filter(|o| !is_bind_only(o) && *o != "ro" && *o != "rw")
            .collect();
        opts.push(if read_only { "ro" } else { "rw" });
        opts.push("rprivate");
        if meta.is_dir() {
            let tag = self.share(source, read_only);
            self.mounts.push(spec(dest, "virtiofs", &tag, &opts));
            return Ok(());
        }
        if !meta.is_file() {
            return Err(Error::Unsupported(format!(
                "mounts: {dest}: bind of {}, which is neither a file nor a directory \
                 (host devices and sockets stay on the host)",
                source.display()
            )));
        }
        let (Some(dir), Some(name)) = (source.parent(), source.file_name()) else {
            return Err(Error::BadConfig {
                path: "config.json".into(),
                detail: format!("mounts: {dest}: bad bind source {}", source.display()),
            });
        };
        let tag = self.share(dir, false);
        let src = format!("{tag}:{}", name.to_string_lossy());
        self.mounts.push(spec(dest, "virtiofs", &src, &opts));
        Ok(())
    }

    /// The tag of `dir`'s share, adding it once. A share used read-write anywhere is shared
    /// read-write; each mount still carries its own `ro`.
    fn share(&mut self, dir: &Path, read_only: bool) -> String {
        if let Some(s) = self.shares.iter_mut().find(|s| s.host_path == dir) {
            s.read_only &= read_only;
            return s.tag.clone();
        }
        let tag = share_tag(self.shares.len());
        self.shares
            .push(SharedDirSpec::volume(PathBuf::from(dir), &tag, read_only));
        tag
    }
}

fn spec(dest: &str, fs: &str, source: &str, options: &[&str]) -> MountSpec {
    MountSpec {
        destination: dest.into(),
        source: source.into(),
        fs_type: fs.into(),
        options: options.iter().map(|o| o.to_string()).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mounts(v: serde_json::Value) -> Vec<Mount> {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn kernel_filesystems_pass_and_binds_become_shares() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir(d.join("data")).unwrap();
        std::fs::write(d.join("hosts"), "x").unwrap();
        std::fs::write(d.join("resolv.conf"), "x").unwrap();
        let m = mounts(serde_json::json!([
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup", "options": ["ro"]},
            {"destination": "/data", "type": "bind", "source": d.join("data"), "options": ["rbind", "ro"]},
            {"destination": "/etc/hosts", "type": "bind", "source": d.join("hosts"), "options": ["bind", "rprivate"]},
            {"destination": "/etc/resolv.conf", "source": d.join("resolv.conf"), "options": ["bind"]},
            {"destination": "/dev/shm", "type": "bind", "source": d.join("data"), "options": ["bind"]}
        ]));
        let t = translate(&m).unwrap();
        assert_eq!(t.shares.len(), 2, "{:?}", t.shares);
        assert!(t.shares[0].read_only && !t.shares[1].read_only);
        let got: Vec<_> = t
            .mounts
            .iter()
            .map(|m| {
                (
                    m.destination.as_str(),
                    m.fs_type.as_str(),
                    m.source.as_str(),
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                ("/proc", "proc", "proc"),
                ("/sys/fs/cgroup", "cgroup2", "cgroup"),
                ("/data", "virtiofs", "husk-bind-0"),
                ("/etc/hosts", "virtiofs", "husk-bind-1:hosts"),
                ("/etc/resolv.conf", "virtiofs", "husk-bind-1:resolv.conf"),
                ("/dev/shm", "tmpfs", "shm"),
            ]
        );
        assert_eq!(t.mounts[2].options, ["ro", "rprivate"]);
        assert_eq!(t.mounts[3].options, ["rw", "rprivate"]);
        for m in &t.mounts {
            m.validate().unwrap();
        }
    }

    #[test]
    fn refuses_foreign_filesystems_devices_and_missing_sources() {
        let m = mounts(
            serde_json::json!([{"destination": "/x", "type": "ext4", "source": "/dev/sda1"}]),
        );
        assert!(matches!(translate(&m), Err(Error::Unsupported(_))));
        let m = mounts(
            serde_json::json!([{"destination": "/x", "type": "bind", "source": "/dev/null"}]),
        );
        assert!(matches!(translate(&m), Err(Error::Unsupported(_))));
        let m = mounts(
            serde_json::json!([{"destination": "/x", "type": "bind", "source": "/nonexistent/x"}]),
        );
        assert!(matches!(translate(&m), Err(Error::BadConfig { .. })));
    }
}
