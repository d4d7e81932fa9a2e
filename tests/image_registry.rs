//! Pull from a real registry: Debian's docker-registry on 127.0.0.1 (started by
//! scripts/start-test-registry.sh, stopped by the test), the busybox OCI image pushed with
//! skopeo, pulled with `Store::pull` over plain HTTP, digests and the converted layer checked.

#![deny(clippy::undocumented_unsafe_blocks)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use husk::image::{Digest, Progress, Store};

/// The registry process; killed (by its pid) and its temp dir removed on drop.
struct Registry {
    port: u16,
    pid: i32,
}

impl Drop for Registry {
    fn drop(&mut self) {
        // Its temp dir holds the config it was started with: `docker-registry serve DIR/config.yml`.
        let dir = std::fs::read(format!("/proc/{}/cmdline", self.pid))
            .ok()
            .and_then(|c| {
                let cfg = c
                    .split(|b| *b == 0)
                    .rfind(|a| a.ends_with(b"config.yml"))?
                    .to_vec();
                Path::new(std::str::from_utf8(&cfg).ok()?)
                    .parent()
                    .map(Path::to_path_buf)
            });
        // SAFETY: signalling the registry process this test started.
        unsafe { libc::kill(self.pid, libc::SIGTERM) };
        if let Some(d) =
            dir.filter(|d| d.starts_with("/tmp") && d.to_string_lossy().contains("husk-registry"))
        {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

fn have(cmd: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {cmd}"))
        .output()
        .is_ok_and(|o| o.status.success())
}

fn start_registry(test: &str) -> Option<Registry> {
    let o = Command::new(common::repo_root().join("scripts/start-test-registry.sh"))
        .output()
        .ok()?;
    if !o.status.success() {
        common::not_run(
            test,
            &format!(
                "start-test-registry.sh failed: {}",
                String::from_utf8_lossy(&o.stderr)
            ),
            true,
        );
        return None;
    }
    let out = String::from_utf8_lossy(&o.stdout);
    let mut it = out.split_whitespace();
    let port = it.next()?.parse().ok()?;
    let pid = it.next()?.parse().ok()?;
    Some(Registry { port, pid })
}

fn skopeo(args: &[&str]) -> Result<String, String> {
    let o = Command::new("skopeo")
        .args(args)
        .output()
        .map_err(|e| e.to_string())?;
    if !o.status.success() {
        return Err(String::from_utf8_lossy(&o.stderr).into_owned());
    }
    Ok(String::from_utf8_lossy(&o.stdout).into_owned())
}

fn busybox_layout(out: &Path) -> PathBuf {
    let o = Command::new(common::repo_root().join("scripts/make-busybox-image.sh"))
        .arg(out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    out.join("busybox-oci")
}

#[test]
fn pull_from_local_registry() {
    let test = "pull_from_local_registry";
    // SAFETY: no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        common::not_run(test, "needs root (layer conversion)", true);
        return;
    }
    for tool in ["skopeo", "docker-registry", "mkfs.erofs", "python3"] {
        if !have(tool) {
            common::not_run(
                test,
                &format!(
                    "{tool} not found: apt-get install skopeo docker-registry erofs-utils python3"
                ),
                true,
            );
            return;
        }
    }
    let Some(reg) = start_registry(test) else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let layout = busybox_layout(work.path());
    let dest = format!("127.0.0.1:{}/busybox:test", reg.port);
    skopeo(&[
        "copy",
        "--dest-tls-verify=false",
        &format!("oci:{}", layout.display()),
        &format!("docker://{dest}"),
    ])
    .expect("skopeo copy to the local registry");
    let inspect: serde_json::Value = serde_json::from_str(
        &skopeo(&["inspect", "--tls-verify=false", &format!("docker://{dest}")]).unwrap(),
    )
    .unwrap();
    let remote_digest: Digest = inspect["Digest"].as_str().unwrap().parse().unwrap();
    let remote_layer: Digest = inspect["Layers"][0].as_str().unwrap().parse().unwrap();

    let store = Store::open(work.path().join("store")).unwrap();
    let img = store.pull(&dest, Progress::Quiet).unwrap();
    assert_eq!(img.manifest_digest, remote_digest);
    assert_eq!(img.layers[0].digest, remote_layer);
    assert_eq!(img.run_config().cmd, ["sh"]);
    assert_eq!(img.references[0].to_string(), dest);
    // The layer blob is stored verified and converted.
    assert_eq!(
        std::fs::read(store.blob_path(&remote_layer))
            .map(|b| Digest::of(&b))
            .unwrap(),
        remote_layer
    );
    let erofs = store.layer_image_path(&remote_layer);
    assert!(erofs.is_file());
    // The same layer as the layout's: the pushed bytes are the ones skopeo read.
    assert!(layout
        .join("blobs/sha256")
        .join(remote_layer.hex())
        .is_file());

    // By digest: already present, nothing converted again.
    let ino = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&erofs).unwrap());
    let by_digest = format!("127.0.0.1:{}/busybox@{remote_digest}", reg.port);
    let again = store.pull(&by_digest, Progress::Quiet).unwrap();
    assert_eq!(again.manifest_digest, remote_digest);
    assert_eq!(
        std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&erofs).unwrap()),
        ino
    );
    assert!(store.get(&by_digest).is_ok());

    // A tag that is not there: a clear error naming the reference.
    let missing = format!("127.0.0.1:{}/busybox:nope", reg.port);
    let e = store
        .pull(&missing, Progress::Quiet)
        .unwrap_err()
        .to_string();
    assert!(e.contains("busybox:nope"), "{e}");
    // A digest the registry does not have.
    let wrong = format!("127.0.0.1:{}/busybox@{}", reg.port, Digest::of(b"nothing"));
    assert!(store.pull(&wrong, Progress::Quiet).is_err());
    drop(reg);
}
