//! Pull from a real registry: Debian's docker-registry on 127.0.0.1 (started by
//! scripts/start-test-registry.sh, stopped by the test), the busybox OCI image pushed with
//! skopeo, pulled with `Store::pull` over plain HTTP, digests and the converted layer checked.

#![deny(clippy::undocumented_unsafe_blocks)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::registry::Registry;
use husk::image::{Digest, Progress, PullOptions, Store};

fn quiet() -> PullOptions {
    PullOptions {
        progress: Progress::Quiet,
        ..Default::default()
    }
}

fn have(cmd: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {cmd}"))
        .output()
        .is_ok_and(|o| o.status.success())
}

/// A registry for `test`, or None after reporting NOT RUN: these tests need root (layer
/// conversion), skopeo, docker-registry, mkfs.erofs and python3.
fn start_registry(test: &str) -> Option<Registry> {
    // SAFETY: no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        common::not_run(test, "needs root (layer conversion)", true);
        return None;
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
            return None;
        }
    }
    match Registry::start(std::iter::empty::<&str>()) {
        Ok(r) => Some(r),
        Err(e) => {
            common::not_run(test, &format!("start-test-registry.sh failed: {e}"), true);
            None
        }
    }
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
    let img = store.pull(&dest, &quiet()).unwrap();
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
    let again = store.pull(&by_digest, &quiet()).unwrap();
    assert_eq!(again.manifest_digest, remote_digest);
    assert_eq!(
        std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&erofs).unwrap()),
        ino
    );
    assert!(store.get(&by_digest).is_ok());

    // A tag that is not there: a clear error naming the reference.
    let missing = format!("127.0.0.1:{}/busybox:nope", reg.port);
    let e = store.pull(&missing, &quiet()).unwrap_err().to_string();
    assert!(e.contains("busybox:nope"), "{e}");
    // A digest the registry does not have.
    let wrong = format!("127.0.0.1:{}/busybox@{}", reg.port, Digest::of(b"nothing"));
    assert!(store.pull(&wrong, &quiet()).is_err());
    drop(reg);
}

/// The flaky proxy in front of a registry; killed on drop.
struct Proxy {
    port: u16,
    child: std::process::Child,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `tests/helpers/flaky_registry_proxy.py` in front of the registry on `upstream`, cutting the
/// first `cut` blob downloads off halfway (-1: all of them).
fn flaky_proxy(upstream: u16, cut: i32) -> Proxy {
    use std::io::BufRead;
    let mut child = Command::new("python3")
        .arg(common::repo_root().join("tests/helpers/flaky_registry_proxy.py"))
        .arg(upstream.to_string())
        .arg(cut.to_string())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    Proxy {
        port: line.trim().parse().expect("the proxy's port"),
        child,
    }
}

/// A registry that drops the connection mid-layer: two cut transfers are retried and the
/// pull completes with the right digests; one that always drops ends the pull with one line
/// naming the blob and the tries, and leaves nothing in the store; one that sends a blob
/// whose bytes do not match its digest is refused at once, the same way.
#[test]
fn a_dropped_connection_mid_layer_is_retried_then_given_up() {
    let test = "a_dropped_connection_mid_layer_is_retried_then_given_up";
    let Some(reg) = start_registry(test) else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let layout = busybox_layout(work.path());
    skopeo(&[
        "copy",
        "--dest-tls-verify=false",
        &format!("oci:{}", layout.display()),
        &format!("docker://127.0.0.1:{}/busybox:test", reg.port),
    ])
    .expect("skopeo copy to the local registry");

    let flaky = flaky_proxy(reg.port, 2);
    let store = Store::open(work.path().join("store")).unwrap();
    let img = store
        .pull(&format!("127.0.0.1:{}/busybox:test", flaky.port), &quiet())
        .expect("two cut transfers are retried");
    assert!(store.layer_image_path(&img.layers[0].digest).is_file());
    drop(flaky);

    let broken = flaky_proxy(reg.port, -1);
    let store = Store::open(work.path().join("store2")).unwrap();
    let err = store
        .pull(&format!("127.0.0.1:{}/busybox:test", broken.port), &quiet())
        .unwrap_err()
        .to_string();
    assert!(err.contains("gave up after 3 tries"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        store.list().unwrap().is_empty(),
        "no image after a failed pull"
    );
    let blobs: Vec<_> = std::fs::read_dir(work.path().join("store2/blobs/sha256"))
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(blobs.is_empty(), "blobs left behind: {blobs:?}");
    drop(broken);

    // A registry that sends other bytes than the digest names: refused at once (never
    // retried), one line, nothing kept.
    let lying = flaky_proxy(reg.port, -2);
    let store = Store::open(work.path().join("store3")).unwrap();
    let err = store
        .pull(&format!("127.0.0.1:{}/busybox:test", lying.port), &quiet())
        .unwrap_err()
        .to_string();
    assert!(err.to_lowercase().contains("digest"), "{err}");
    assert!(
        !err.contains("tries"),
        "a wrong digest is not retried: {err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(store.list().unwrap().is_empty());
    let blobs: Vec<_> = std::fs::read_dir(work.path().join("store3/blobs/sha256"))
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(blobs.is_empty(), "blobs left behind: {blobs:?}");
    drop(reg);
}

/// Adds an arm64 twin to the busybox layout (same layers, a config saying arm64) and makes
/// its index list both with their platforms. Returns (amd64, arm64) manifest digests.
fn make_multi_platform(layout: &Path) -> (Digest, Digest) {
    let blobs = layout.join("blobs/sha256");
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let amd_entry = index["manifests"][0].clone();
    let amd: Digest = amd_entry["digest"].as_str().unwrap().parse().unwrap();
    let mut manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(blobs.join(amd.hex())).unwrap()).unwrap();
    let config_digest: Digest = manifest["config"]["digest"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let mut config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(blobs.join(config_digest.hex())).unwrap()).unwrap();
    config["architecture"] = "arm64".into();
    let config_bytes = serde_json::to_vec(&config).unwrap();
    let arm_config = Digest::of(&config_bytes);
    std::fs::write(blobs.join(arm_config.hex()), &config_bytes).unwrap();
    manifest["config"]["digest"] = arm_config.to_string().into();
    manifest["config"]["size"] = config_bytes.len().into();
    let manifest_bytes = serde_json::to_vec(&manifest).unwrap();
    let arm = Digest::of(&manifest_bytes);
    std::fs::write(blobs.join(arm.hex()), &manifest_bytes).unwrap();
    let mut arm_entry = amd_entry.clone();
    arm_entry["digest"] = arm.to_string().into();
    arm_entry["size"] = manifest_bytes.len().into();
    arm_entry["platform"] =
        serde_json::json!({"os": "linux", "architecture": "arm64", "variant": "v8"});
    // The nested index that a registry serves as the tag's manifest list.
    let nested = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [amd_entry.clone(), arm_entry.clone()],
    });
    let nested_bytes = serde_json::to_vec(&nested).unwrap();
    let nested_digest = Digest::of(&nested_bytes);
    std::fs::write(blobs.join(nested_digest.hex()), &nested_bytes).unwrap();
    let mut top = index.clone();
    top["manifests"] = serde_json::json!([{
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "digest": nested_digest.to_string(),
        "size": nested_bytes.len(),
        "annotations": amd_entry["annotations"].clone(),
    }]);
    std::fs::write(layout.join("index.json"), serde_json::to_vec(&top).unwrap()).unwrap();
    (amd, arm)
}

/// A multi-platform tag: this host's platform by default, `--platform` picks another, and a
/// platform the index lacks is one line listing what it has.
#[test]
fn a_multi_platform_tag_resolves_to_the_asked_platform() {
    let test = "a_multi_platform_tag_resolves_to_the_asked_platform";
    let Some(reg) = start_registry(test) else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let layout = busybox_layout(work.path());
    let (amd, arm) = make_multi_platform(&layout);
    let dest = format!("127.0.0.1:{}/multi:test", reg.port);
    skopeo(&[
        "copy",
        "--all",
        "--dest-tls-verify=false",
        &format!("oci:{}", layout.display()),
        &format!("docker://{dest}"),
    ])
    .expect("skopeo copy --all to the local registry");
    let store = Store::open(work.path().join("store")).unwrap();
    assert_eq!(store.pull(&dest, &quiet()).unwrap().manifest_digest, amd);
    let mut opts = quiet();
    opts.platform = "linux/arm64".parse().unwrap();
    assert_eq!(store.pull(&dest, &opts).unwrap().manifest_digest, arm);
    // Pulled, but not runnable here: one line that says so and how to get this host's.
    let err = husk::image::ImageSource::resolve(&store, &dest)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("built for linux/arm64") && err.contains("--platform linux/amd64"),
        "{err}"
    );
    opts.platform = "linux/s390x".parse().unwrap();
    let err = store.pull(&dest, &opts).unwrap_err().to_string();
    assert!(
        err.contains("no image for linux/s390x") && err.contains("linux/amd64, linux/arm64/v8"),
        "{err}"
    );
    drop(reg);
}
