//! A large real image through the whole path: a Debian rootfs (debootstrap, minbase, cached)
//! as three layers with whiteouts (scripts/make-debian-image.sh), pushed to a local
//! docker-registry with skopeo, `husk pull`ed, run, and checked from inside: the release, the
//! top layer's file, its whiteouts, dpkg's database and apt; then `husk save`d and loaded and
//! run by podman, which sees the same files.

#![deny(clippy::undocumented_unsafe_blocks)]

mod common;

use std::process::Command;

use common::cli::Husk;
use common::registry::Registry;

fn have(cmd: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("PATH=$PATH:/usr/sbin:/sbin command -v {cmd}"))
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn a_debian_image_of_three_layers_is_pushed_pulled_and_run() {
    let test = "a_debian_image_of_three_layers_is_pushed_pulled_and_run";
    let (Some(kernel), Some(initramfs)) = (common::kernel(test), common::initramfs(test)) else {
        return;
    };
    for tool in [
        "debootstrap",
        "skopeo",
        "docker-registry",
        "python3",
        "mkfs.erofs",
    ] {
        if !have(tool) {
            common::not_run(
                test,
                &format!("{tool} not found (scripts/setup.sh installs it)"),
                true,
            );
            return;
        }
    }
    let work = tempfile::tempdir().unwrap();
    let made = Command::new(common::repo_root().join("scripts/make-debian-image.sh"))
        .arg(work.path())
        .output()
        .unwrap();
    assert!(
        made.status.success(),
        "make-debian-image.sh: {}",
        String::from_utf8_lossy(&made.stderr)
    );
    let layout = String::from_utf8_lossy(&made.stdout).trim().to_string();

    let reg = Registry::start(std::iter::empty::<&str>())
        .unwrap_or_else(|e| panic!("start-test-registry.sh: {e}"));
    let dest = format!("127.0.0.1:{}/debian:husk-test", reg.port);
    let copy = Command::new("skopeo")
        .args(["copy", "--dest-tls-verify=false"])
        .arg(format!("oci:{layout}"))
        .arg(format!("docker://{dest}"))
        .output()
        .unwrap();
    assert!(
        copy.status.success(),
        "skopeo copy: {}",
        String::from_utf8_lossy(&copy.stderr)
    );

    let h = Husk::new(kernel, initramfs);
    let pulled = h.ok(&["pull", "-q", &dest]);
    assert!(pulled.contains("Digest: sha256:"), "{pulled}");
    let images: serde_json::Value =
        serde_json::from_str(&h.ok(&["images", "--format", "json"])).unwrap();
    assert_eq!(images.as_array().unwrap().len(), 1, "{images}");

    let script = "cat /etc/debian_version; cat /etc/husk-release; ls /usr/share/doc; \
                  test -e /etc/motd && echo motd-still-there; \
                  dpkg-query -W -f='${Package}\\n' | grep -cx -e dpkg -e apt -e bash; \
                  apt-get --version | head -n1 | cut -d' ' -f1";
    let out = h.ok(&["run", "--rm", &dest, "bash", "-c", script]);
    let lines: Vec<&str> = out.lines().collect();
    // The host's Debian release (the mirror may carry a newer point release).
    let host = std::fs::read_to_string("/etc/debian_version").unwrap();
    let major = host.split('.').next().unwrap().trim();
    assert!(
        lines
            .first()
            .is_some_and(|l| l.starts_with(&format!("{major}."))),
        "{out}"
    );
    assert_eq!(
        lines[1..],
        ["husk test image, three layers", "README.husk", "3", "apt",],
        "{out}"
    );

    // Saved by husk, loaded and run by podman (its own storage, no network; runc, which this
    // host's hybrid cgroups suit, where crun refuses them).
    let archive = work.path().join("debian.tar");
    h.ok(&["save", "-o", archive.to_str().unwrap(), &dest]);
    let storage = tempfile::tempdir().unwrap();
    let podman = |args: &[&str]| common::engine::podman_in(storage.path(), args);
    podman(&["load", "-i", archive.to_str().unwrap()]);
    let seen = podman(&[
        "--runtime",
        "runc",
        "run",
        "--rm",
        "--network",
        "none",
        &dest,
        "sh",
        "-c",
        "cat /etc/husk-release; ls /usr/share/doc",
    ]);
    assert_eq!(seen, "husk test image, three layers\nREADME.husk\n");
    drop(reg);
}
