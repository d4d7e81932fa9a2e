//! The container's process from its image config and `husk run` flags, merged exactly as
//! `docker run` merges them, plus the size flags (`--memory`, `--cpus`).

use super::state::Volume;
use super::Error;
use crate::image::ImageConfig;

/// The process-shaping flags of `husk run`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProcessFlags {
    /// `--entrypoint`: `Some("")` clears the image's entrypoint.
    pub entrypoint: Option<String>,
    /// The `CMD…` after the image.
    pub cmd: Vec<String>,
    /// `-e K=V` (or `-e K`: take K from husk's own environment, dropped if unset).
    pub env: Vec<String>,
    pub workdir: Option<String>,
    pub user: Option<String>,
    pub tty: bool,
}

/// args, env, cwd, uid, gid after merging.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MergedProcess {
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub cwd: String,
    pub uid: u32,
    pub gid: u32,
}

const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Docker's rules: `--entrypoint` replaces Entrypoint and drops the image's Cmd (CMD args
/// still apply); CMD args replace Cmd; `-e` adds or overrides by key; `-w` replaces
/// WorkingDir; `-u` replaces User. PATH defaults when the image sets none, HOSTNAME is set,
/// and `-t` adds TERM=xterm.
pub fn merge(
    image: &ImageConfig,
    flags: &ProcessFlags,
    hostname: &str,
    host_env: impl Fn(&str) -> Option<String>,
) -> Result<MergedProcess, Error> {
    let (entrypoint, cmd) = match &flags.entrypoint {
        Some(e) => {
            let ep = if e.is_empty() {
                vec![]
            } else {
                vec![e.clone()]
            };
            (ep, flags.cmd.clone())
        }
        None => {
            let cmd = if flags.cmd.is_empty() {
                image.cmd.clone().unwrap_or_default()
            } else {
                flags.cmd.clone()
            };
            (image.entrypoint.clone().unwrap_or_default(), cmd)
        }
    };
    let args: Vec<String> = entrypoint.into_iter().chain(cmd).collect();
    if args.is_empty() {
        return Err(Error::NoCommand);
    }

    let mut env: Vec<String> = Vec::new();
    let mut set = |entry: String| {
        let key = entry.split('=').next().unwrap_or("").to_string();
        match env
            .iter_mut()
            .find(|e| e.split('=').next() == Some(key.as_str()))
        {
            Some(slot) => *slot = entry,
            None => env.push(entry),
        }
    };
    if !image.env.iter().any(|e| e.starts_with("PATH=")) {
        set(DEFAULT_PATH.to_string());
    }
    for e in &image.env {
        set(e.clone());
    }
    set(format!("HOSTNAME={hostname}"));
    if flags.tty {
        set("TERM=xterm".to_string());
    }
    for e in &flags.env {
        match e.split_once('=') {
            Some(("", _)) => return Err(Error::BadEnv(e.clone())),
            Some(_) => set(e.clone()),
            None if e.is_empty() => return Err(Error::BadEnv(e.clone())),
            None => {
                if let Some(v) = host_env(e) {
                    set(format!("{e}={v}"));
                }
            }
        }
    }

    let cwd = match flags.workdir.as_deref().or(image.working_dir.as_deref()) {
        None | Some("") => "/".to_string(),
        Some(w) if w.starts_with('/') => w.to_string(),
        Some(w) => return Err(Error::RelativeWorkdir(w.to_string())),
    };

    let user = flags
        .user
        .as_deref()
        .or(image.user.as_deref())
        .unwrap_or("");
    let (uid, gid) = parse_user(user)?;
    Ok(MergedProcess {
        args,
        env,
        cwd,
        uid,
        gid,
    })
}

/// `""` (root), `UID` or `UID:GID`. Docker gives a uid missing from /etc/passwd gid 0.
///
/// Names (`nobody`, `app:app`) need the image's /etc/passwd and /etc/group, which live on
/// the layer disks; the agent protocol carries numeric ids only, so they are refused here
/// with the fix.
pub fn parse_user(user: &str) -> Result<(u32, u32), Error> {
    if user.is_empty() {
        return Ok((0, 0));
    }
    let (u, g) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    let num = |s: &str| s.parse::<u32>().ok();
    match (num(u), g.map(num)) {
        (Some(uid), None) => Ok((uid, 0)),
        (Some(uid), Some(Some(gid))) => Ok((uid, gid)),
        _ => Err(Error::UserName(user.to_string())),
    }
}

/// A size as docker writes it: a number with an optional unit b, k, m, g (no unit = bytes;
/// `mb`, `gb` as `m`, `g`). None when it is not one.
fn parse_bytes(s: &str) -> Option<u64> {
    let t = s.trim().to_ascii_lowercase();
    let t = t
        .strip_suffix('b')
        .filter(|r| !r.is_empty() && r.ends_with(|c: char| c.is_ascii_alphabetic()))
        .unwrap_or(&t);
    let (num, mult): (&str, u64) = match t.chars().last() {
        Some('k') => (&t[..t.len() - 1], 1 << 10),
        Some('m') => (&t[..t.len() - 1], 1 << 20),
        Some('g') => (&t[..t.len() - 1], 1 << 30),
        Some('b') => (&t[..t.len() - 1], 1),
        _ => (t, 1),
    };
    num.parse::<u64>().ok()?.checked_mul(mult)
}

/// `--memory`: a size ([`parse_bytes`]). Returns MiB.
pub fn parse_memory(s: &str) -> Result<u32, Error> {
    let bad = || Error::BadMemory(s.to_string());
    let mib = parse_bytes(s).ok_or_else(bad)? >> 20;
    if mib < 32 {
        return Err(Error::BadMemory(format!(
            "{s} (at least 32m: a Linux guest needs it)"
        )));
    }
    u32::try_from(mib).map_err(|_| bad())
}

/// Smallest writable layer `--storage-opt size=` takes: ext4's journal and metadata need a
/// few MiB before the container can write anything.
pub const MIN_SCRATCH_SIZE: u64 = 16 << 20;
/// Largest: ext4 with 4 KiB blocks and husk's mkfs options handles far more, but a sparse
/// file past 16 TiB is refused by ext4 hosts.
pub const MAX_SCRATCH_SIZE: u64 = 16 << 40;

/// `--storage-opt KEY=VALUE` (repeatable, as docker's): only `size`, the apparent size of the
/// container's writable layer in bytes. None when no size is given.
pub fn parse_storage_opts(opts: &[String]) -> Result<Option<u64>, Error> {
    let mut size = None;
    for o in opts {
        let bad = |why: &str| Error::BadStorageOpt {
            opt: o.clone(),
            why: why.to_string(),
        };
        let (key, value) = o.split_once('=').ok_or_else(|| bad("use size=SIZE"))?;
        if !key.trim().eq_ignore_ascii_case("size") {
            return Err(bad("the only option is size (the writable layer's size)"));
        }
        let n = parse_bytes(value).ok_or_else(|| bad("use a size such as 64m or 20g"))?;
        if !(MIN_SCRATCH_SIZE..=MAX_SCRATCH_SIZE).contains(&n) {
            return Err(bad("the size must be from 16m to 16t"));
        }
        // Whole 4 KiB blocks: the disk is a block device to the guest.
        size = Some(n & !4095);
    }
    Ok(size)
}

/// `--cpus`: docker takes a fraction; a VM has whole vCPUs, so it is rounded up.
pub fn parse_cpus(s: &str) -> Result<u8, Error> {
    let f: f64 = s
        .trim()
        .parse()
        .map_err(|_| Error::BadCpus(s.to_string()))?;
    if !(f > 0.0 && f <= 255.0) {
        return Err(Error::BadCpus(s.to_string()));
    }
    Ok(f.ceil() as u8)
}

/// `-v HOST:GUEST[:ro|:rw]`: HOST an existing directory (made canonical, so the share names
/// the real directory whatever the caller's cwd or symlinks), GUEST an absolute path other
/// than `/` (normalised: no `.`/`..`, no repeated or trailing `/`).
pub fn parse_volume(s: &str) -> Result<Volume, Error> {
    let bad = |why: String| Error::BadVolume {
        spec: s.to_string(),
        why,
    };
    let parts: Vec<&str> = s.split(':').collect();
    let (host, guest, read_only) = match parts.as_slice() {
        [h, g] => (*h, *g, false),
        [h, g, "ro"] => (*h, *g, true),
        [h, g, "rw"] => (*h, *g, false),
        [_, _, o] => return Err(bad(format!("unknown option {o:?} (use ro or rw)"))),
        _ => return Err(bad("use HOST:GUEST[:ro|:rw]".into())),
    };
    if host.is_empty() {
        return Err(bad("the host directory is empty".into()));
    }
    let canon = std::fs::canonicalize(host)
        .map_err(|e| bad(format!("host directory {host}: {}", io_reason(&e))))?;
    if !canon.is_dir() {
        return Err(bad(format!(
            "host path {} is not a directory (only directories can be shared)",
            canon.display()
        )));
    }
    if canon.to_string_lossy().contains(',') {
        return Err(bad(format!(
            "host directory {} contains ',', which VMM command lines cannot carry",
            canon.display()
        )));
    }
    if !guest.starts_with('/') {
        return Err(bad(format!(
            "the container path {guest:?} must be absolute"
        )));
    }
    let mut comps = Vec::new();
    for c in guest.split('/').filter(|c| !c.is_empty() && *c != ".") {
        if c == ".." {
            return Err(bad(format!(
                "the container path {guest:?} must not contain .."
            )));
        }
        comps.push(c);
    }
    if comps.is_empty() {
        return Err(bad(
            "the container path cannot be / (the rootfs itself)".into()
        ));
    }
    Ok(Volume {
        host: canon,
        guest: format!("/{}", comps.join("/")),
        read_only,
    })
}

/// Parses each `-v`; two volumes on the same container path are refused.
pub fn parse_volumes(specs: &[String]) -> Result<Vec<Volume>, Error> {
    let mut out: Vec<Volume> = Vec::new();
    for s in specs {
        let v = parse_volume(s)?;
        if out.iter().any(|o| o.guest == v.guest) {
            return Err(Error::BadVolume {
                spec: s.clone(),
                why: format!("{} is already a volume of this container", v.guest),
            });
        }
        out.push(v);
    }
    Ok(out)
}

fn io_reason(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::NotFound => "no such directory".into(),
        _ => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image() -> ImageConfig {
        ImageConfig {
            entrypoint: Some(vec!["/docker-entrypoint.sh".into()]),
            cmd: Some(vec!["nginx".into(), "-g".into()]),
            env: vec!["PATH=/usr/bin".into(), "A=image".into()],
            working_dir: Some("/srv".into()),
            user: Some("101:102".into()),
        }
    }

    fn m(flags: ProcessFlags) -> Result<MergedProcess, Error> {
        merge(&image(), &flags, "h", |k| {
            (k == "FROMHOST").then(|| "x".to_string())
        })
    }

    #[test]
    fn image_defaults_apply() {
        let p = m(ProcessFlags::default()).unwrap();
        assert_eq!(p.args, ["/docker-entrypoint.sh", "nginx", "-g"]);
        assert_eq!(p.cwd, "/srv");
        assert_eq!((p.uid, p.gid), (101, 102));
        assert_eq!(p.env, ["PATH=/usr/bin", "A=image", "HOSTNAME=h"]);
    }

    #[test]
    fn cmd_args_replace_cmd_only() {
        let p = m(ProcessFlags {
            cmd: vec!["sh".into()],
            ..Default::default()
        })
        .unwrap();
        assert_eq!(p.args, ["/docker-entrypoint.sh", "sh"]);
    }

    #[test]
    fn entrypoint_flag_clears_image_cmd() {
        let p = m(ProcessFlags {
            entrypoint: Some("/bin/sh".into()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(p.args, ["/bin/sh"]);
        let p = m(ProcessFlags {
            entrypoint: Some("/bin/sh".into()),
            cmd: vec!["-c".into(), "id".into()],
            ..Default::default()
        })
        .unwrap();
        assert_eq!(p.args, ["/bin/sh", "-c", "id"]);
        // An empty entrypoint drops it; with no CMD there is nothing to run.
        let e = m(ProcessFlags {
            entrypoint: Some(String::new()),
            ..Default::default()
        });
        assert!(matches!(e, Err(Error::NoCommand)));
    }

    #[test]
    fn env_workdir_user_flags() {
        let p = m(ProcessFlags {
            env: vec![
                "A=flag".into(),
                "B=1".into(),
                "FROMHOST".into(),
                "UNSET".into(),
            ],
            workdir: Some("/tmp".into()),
            user: Some("1000".into()),
            tty: true,
            ..Default::default()
        })
        .unwrap();
        assert_eq!(
            p.env,
            [
                "PATH=/usr/bin",
                "A=flag",
                "HOSTNAME=h",
                "TERM=xterm",
                "B=1",
                "FROMHOST=x"
            ]
        );
        assert_eq!(p.cwd, "/tmp");
        assert_eq!((p.uid, p.gid), (1000, 0));
        assert!(matches!(
            m(ProcessFlags {
                workdir: Some("rel".into()),
                ..Default::default()
            }),
            Err(Error::RelativeWorkdir(_))
        ));
        assert!(matches!(
            m(ProcessFlags {
                env: vec!["=x".into()],
                ..Default::default()
            }),
            Err(Error::BadEnv(_))
        ));
    }

    #[test]
    fn empty_image_gets_default_path_and_root() {
        let p = merge(
            &ImageConfig {
                cmd: Some(vec!["sh".into()]),
                ..Default::default()
            },
            &ProcessFlags::default(),
            "h",
            |_| None,
        )
        .unwrap();
        assert_eq!(p.env[0], DEFAULT_PATH);
        assert_eq!((p.cwd.as_str(), p.uid, p.gid), ("/", 0, 0));
    }

    #[test]
    fn users() {
        assert_eq!(parse_user("").unwrap(), (0, 0));
        assert_eq!(parse_user("5:6").unwrap(), (5, 6));
        assert!(matches!(parse_user("nobody"), Err(Error::UserName(_))));
        assert!(matches!(parse_user("1:staff"), Err(Error::UserName(_))));
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_memory("512m").unwrap(), 512);
        assert_eq!(parse_memory("1g").unwrap(), 1024);
        assert_eq!(parse_memory("1GB").unwrap(), 1024);
        assert_eq!(parse_memory("268435456").unwrap(), 256);
        assert!(parse_memory("16m").is_err());
        assert!(parse_memory("lots").is_err());
        assert_eq!(parse_cpus("2").unwrap(), 2);
        assert_eq!(parse_cpus("1.5").unwrap(), 2);
        assert!(parse_cpus("0").is_err());
    }

    #[test]
    fn storage_opts() {
        let opts =
            |v: &[&str]| parse_storage_opts(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(opts(&[]).unwrap(), None);
        assert_eq!(opts(&["size=64m"]).unwrap(), Some(64 << 20));
        assert_eq!(opts(&["SIZE=1GB"]).unwrap(), Some(1 << 30));
        // The last one counts, as docker's; whole blocks only.
        assert_eq!(
            opts(&["size=1g", "size=20000000"]).unwrap(),
            Some(19_996_672)
        );
        for bad in [
            "size=1m",
            "size=lots",
            "size",
            "dm.basesize=1g",
            "size=99999999t",
        ] {
            let e = opts(&[bad]).unwrap_err().to_string();
            assert!(
                e.starts_with(&format!("invalid --storage-opt {bad:?}: ")),
                "{e}"
            );
        }
    }

    #[test]
    fn volumes_parse_and_bad_ones_say_why_in_one_line() {
        let d = tempfile::tempdir().unwrap();
        let host = d.path().to_str().unwrap();
        let canon = std::fs::canonicalize(d.path()).unwrap();
        let v = parse_volume(&format!("{host}:/data")).unwrap();
        assert_eq!(
            (v.host.as_path(), v.guest.as_str(), v.read_only),
            (canon.as_path(), "/data", false)
        );
        let v = parse_volume(&format!("{host}/.:/a//b/./:ro")).unwrap();
        assert_eq!((v.guest.as_str(), v.read_only), ("/a/b", true));
        assert!(!parse_volume(&format!("{host}:/x:rw")).unwrap().read_only);
        let file = d.path().join("f");
        std::fs::write(&file, "x").unwrap();
        for (spec, want) in [
            (format!("{host}/nope:/data"), "no such directory"),
            (format!("{}:/data", file.display()), "not a directory"),
            (format!("{host}:data"), "must be absolute"),
            (format!("{host}:/"), "cannot be /"),
            (format!("{host}:/a/../b"), "must not contain .."),
            (format!("{host}:/data:rx"), "unknown option"),
            (host.to_string(), "HOST:GUEST"),
            (":/data".to_string(), "empty"),
        ] {
            let e = parse_volume(&spec).unwrap_err().to_string();
            assert!(e.contains(want), "{spec}: {e}");
            assert!(!e.contains('\n'), "{e}");
        }
        let e = parse_volumes(&[format!("{host}:/d"), format!("{host}:/d/")]).unwrap_err();
        assert!(e.to_string().contains("already a volume"), "{e}");
    }
}
