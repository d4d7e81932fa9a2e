//! `ps`, `list`, `spec`, `features`.

use super::super::state::{Status, Store, OCI_VERSION};
use super::super::Error;
use crate::cli::runtime::{ListArgs, PsArgs, SpecArgs};
use crate::pod::proc::ProcessRef;

/// The host processes of a container: the VM holder, the VMM, and the holders of detached
/// execs. (The container's own processes are in the guest; their pids mean nothing here.)
pub fn ps(store: &Store, a: &PsArgs) -> Result<i32, Error> {
    let state = store.load(&a.id)?;
    if state.effective_status() == Status::Stopped {
        return Err(Error::WrongState {
            id: a.id.clone(),
            status: "stopped",
            what: "it has no processes".into(),
        });
    }
    let pids: Vec<u32> = state
        .vm_holder
        .iter()
        .chain(state.vm.iter())
        .chain(state.execs.iter())
        .filter(|p| p.is_alive())
        .map(|p: &ProcessRef| p.pid)
        .collect();
    match a.format.as_str() {
        "json" => println!("{}", serde_json::to_string(&pids).unwrap_or_default()),
        "table" => {
            println!("{:>8} CMD", "PID");
            for p in pids {
                let comm = std::fs::read_to_string(format!("/proc/{p}/comm")).unwrap_or_default();
                println!("{p:>8} {}", comm.trim());
            }
        }
        other => {
            return Err(Error::Usage(format!(
                "invalid --format {other:?}: table or json"
            )))
        }
    }
    Ok(0)
}

pub fn list(store: &Store, a: &ListArgs) -> Result<i32, Error> {
    let all = store.list()?;
    if a.quiet {
        for s in &all {
            println!("{}", s.id);
        }
        return Ok(0);
    }
    match a.format.as_str() {
        "json" => {
            let v: Vec<_> = all.iter().map(|s| s.oci_json()).collect();
            println!("{}", serde_json::to_string(&v).unwrap_or_default());
        }
        "table" => {
            println!(
                "{:<20} {:<8} {:<10} {:<40} {:<31} OWNER",
                "ID", "PID", "STATUS", "BUNDLE", "CREATED"
            );
            for s in &all {
                println!(
                    "{:<20} {:<8} {:<10} {:<40} {:<31} root",
                    s.id,
                    s.pid(),
                    s.effective_status().as_str(),
                    s.bundle.display(),
                    s.created
                );
            }
        }
        other => {
            return Err(Error::Usage(format!(
                "invalid --format {other:?}: table or json"
            )))
        }
    }
    Ok(0)
}

/// A default config.json as `runc spec` writes it: `sh` on a terminal, a read-only
/// `rootfs`, the usual mounts, namespaces and masked paths.
pub fn spec(a: &SpecArgs) -> Result<i32, Error> {
    let path = a.bundle.join("config.json");
    if path.exists() {
        return Err(Error::Usage(format!(
            "{} exists: remove it first",
            path.display()
        )));
    }
    let mut v = serde_json::to_value(oci_spec::runtime::Spec::default())
        .map_err(|e| Error::io(&path)(std::io::Error::other(e)))?;
    v["ociVersion"] = OCI_VERSION.into();
    v["hostname"] = "husk".into();
    v["process"]["args"] = serde_json::json!(["sh"]);
    v["process"]["terminal"] = true.into();
    v["process"]["cwd"] = "/".into();
    v["process"]["env"] = serde_json::json!([
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "TERM=xterm"
    ]);
    let text = serde_json::to_string_pretty(&v).unwrap_or_default();
    std::fs::write(&path, text + "\n").map_err(Error::io(&path))?;
    Ok(0)
}

/// What this runtime supports, in `runc features`' shape.
pub fn features() -> Result<i32, Error> {
    let caps: Vec<&str> = husk_protocol::Capability::ALL
        .iter()
        .map(|c| c.name())
        .collect();
    let v = serde_json::json!({
        "ociVersionMin": "1.0.0",
        "ociVersionMax": OCI_VERSION,
        "hooks": ["prestart", "createRuntime", "poststart", "poststop"],
        "mountOptions": ["ro", "rw", "nosuid", "suid", "nodev", "dev", "noexec", "exec",
            "bind", "rbind", "private", "rprivate", "relatime", "norelatime", "strictatime",
            "noatime", "sync", "async", "remount", "mand", "nomand", "dirsync"],
        "linux": {
            "namespaces": ["cgroup", "ipc", "mount", "network", "pid", "uts"],
            "capabilities": caps,
            "cgroup": {"v1": false, "v2": true, "systemd": false, "systemdUser": false, "rdma": false},
            "seccomp": {
                "enabled": true,
                "actions": ["SCMP_ACT_ALLOW", "SCMP_ACT_ERRNO", "SCMP_ACT_KILL",
                    "SCMP_ACT_KILL_PROCESS", "SCMP_ACT_KILL_THREAD", "SCMP_ACT_LOG",
                    "SCMP_ACT_TRAP", "SCMP_ACT_TRACE"],
                "operators": ["SCMP_CMP_EQ", "SCMP_CMP_GE", "SCMP_CMP_GT", "SCMP_CMP_LE",
                    "SCMP_CMP_LT", "SCMP_CMP_MASKED_EQ", "SCMP_CMP_NE"],
                "archs": ["SCMP_ARCH_X86_64"],
                "knownFlags": [],
                "supportedFlags": []
            },
            "apparmor": {"enabled": false},
            "selinux": {"enabled": false},
            "intelRdt": {"enabled": false},
            "mountExtensions": {"idmap": {"enabled": false}}
        },
        "annotations": {
            "org.opencontainers.runtime-spec.features.husk.vm": "true",
            "io.github.husk.runtime.version": env!("CARGO_PKG_VERSION")
        }
    });
    println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
    Ok(0)
}
