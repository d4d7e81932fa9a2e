//! Images through the `husk` binary, each test with its own `--root`, booting real microVMs
//! where a run is part of the test: a layered image with whiteouts and an opaque directory
//! shows the merged tree inside the container; `husk pull` from a local registry then `husk
//! run`; hostile and corrupt archives rejected by `husk load` with one line and nothing kept;
//! `rmi` of an image in use refused; `-u NAME` resolved from the image's /etc/passwd.

#![deny(clippy::undocumented_unsafe_blocks)]

mod common;

use common::cli::Husk;
use common::registry::Registry;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use husk::image::Digest;
use tar::{EntryType, Header};

impl Husk {
    /// Files under the store's blobs/, layers/ and tmp/.
    fn stored_files(&self) -> Vec<String> {
        ["blobs/sha256", "layers", "tmp"]
            .iter()
            .flat_map(|d| {
                std::fs::read_dir(self.root.path().join(d))
                    .into_iter()
                    .flatten()
            })
            .map(|e| e.unwrap().path().display().to_string())
            .collect()
    }

    fn image_count(&self) -> usize {
        let v: serde_json::Value =
            serde_json::from_str(&self.ok(&["images", "--format", "json"])).unwrap();
        v.as_array().unwrap().len()
    }
}

fn have(cmd: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("PATH=$PATH:/usr/sbin:/sbin command -v {cmd}"))
        .output()
        .is_ok_and(|o| o.status.success())
}

/// A root for `test`, or `None` after saying why this host cannot run it. `boots`: the test
/// starts VMs and needs the guest kernel and initramfs.
fn husk(test: &str, boots: bool) -> Option<Husk> {
    let (kernel, initramfs) = if boots {
        (common::kernel(test)?, common::initramfs(test)?)
    } else {
        (PathBuf::from("/nonexistent"), PathBuf::from("/nonexistent"))
    };
    if !common::cli::image_tools_present(test) {
        return None;
    }
    if !have("python3") {
        common::not_run(test, "python3 not installed", true);
        return None;
    }
    Some(Husk::new(kernel, initramfs))
}

/// A layer tar written entry by entry with raw header names (hostile paths included).
#[derive(Default)]
struct Layer(Vec<Entry>);

/// path, kind, link target, content, mode.
type Entry = (String, EntryType, Option<String>, Vec<u8>, u32);

impl Layer {
    fn file(mut self, path: &str, data: &[u8]) -> Self {
        self.0
            .push((path.into(), EntryType::Regular, None, data.to_vec(), 0o644));
        self
    }

    fn exe(mut self, path: &str, data: &[u8]) -> Self {
        self.0
            .push((path.into(), EntryType::Regular, None, data.to_vec(), 0o755));
        self
    }

    fn dir(mut self, path: &str) -> Self {
        self.0
            .push((path.into(), EntryType::Directory, None, vec![], 0o755));
        self
    }

    fn symlink(mut self, path: &str, target: &str) -> Self {
        self.0.push((
            path.into(),
            EntryType::Symlink,
            Some(target.into()),
            vec![],
            0o777,
        ));
        self
    }

    fn tar(&self) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, kind, link, data, mode) in &self.0 {
            let mut h = Header::new_gnu();
            h.as_old_mut().name[..path.len()].copy_from_slice(path.as_bytes());
            if let Some(l) = link {
                h.as_old_mut().linkname[..l.len()].copy_from_slice(l.as_bytes());
            }
            h.set_entry_type(*kind);
            h.set_size(data.len() as u64);
            h.set_mode(*mode);
            h.set_mtime(1_700_000_000);
            h.set_uid(0);
            h.set_gid(0);
            h.set_cksum();
            b.append(&h, &data[..]).unwrap();
        }
        b.into_inner().unwrap()
    }
}

/// A docker-archive (as `docker save` writes it) of one image named `name`, layers bottom
/// first; config Cmd `["sh"]`.
fn docker_archive(path: &Path, name: &str, layers: &[Vec<u8>]) {
    let mut b = tar::Builder::new(Vec::new());
    let mut add = |p: &str, data: &[u8]| {
        let mut h = Header::new_gnu();
        h.set_path(p).unwrap();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_700_000_000);
        h.set_cksum();
        b.append(&h, data).unwrap();
    };
    let mut names = Vec::new();
    let mut diff_ids = Vec::new();
    for l in layers {
        let d = Digest::of(l);
        let n = format!("{}/layer.tar", d.hex());
        add(&n, l);
        names.push(n);
        diff_ids.push(d.to_string());
    }
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux", "created": "2024-01-01T00:00:00Z",
        "config": {"Cmd": ["sh"], "Env": ["PATH=/bin"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    })
    .to_string();
    let config_name = format!("{}.json", Digest::of(config.as_bytes()).hex());
    add(&config_name, config.as_bytes());
    let manifest =
        serde_json::json!([{"Config": config_name, "RepoTags": [name], "Layers": names}]);
    add("manifest.json", manifest.to_string().as_bytes());
    std::fs::write(path, b.into_inner().unwrap()).unwrap();
}

fn busybox_bytes() -> Vec<u8> {
    std::fs::read("/bin/busybox").unwrap()
}

/// One line on stderr, non-zero exit, and the returned message.
fn one_line_failure(out: &Output) -> String {
    assert!(!out.status.success(), "expected failure");
    let err = String::from_utf8_lossy(&out.stderr).trim().to_string();
    assert_eq!(err.lines().count(), 1, "one error line: {err}");
    err
}

#[test]
fn layered_image_with_whiteout_and_opaque_dir_shows_the_merged_tree() {
    let test = "layered_image_with_whiteout_and_opaque_dir_shows_the_merged_tree";
    let Some(h) = husk(test, true) else { return };
    let base = Layer::default()
        .dir("bin")
        .exe("bin/busybox", &busybox_bytes())
        .symlink("bin/sh", "busybox")
        .dir("data")
        .file("data/keep.txt", b"keep v1\n")
        .file("data/gone.txt", b"gone\n")
        .dir("opq")
        .file("opq/old.txt", b"old\n")
        .dir("opq/sub")
        .file("opq/sub/deep.txt", b"deep\n")
        .tar();
    let middle = Layer::default()
        .file("data/.wh.gone.txt", b"")
        .file("data/added.txt", b"added\n")
        .file("opq/.wh..wh..opq", b"")
        .file("opq/new.txt", b"new\n")
        .tar();
    let top = Layer::default().file("data/keep.txt", b"keep v3\n").tar();
    let archive = h.root.path().join("layered.tar");
    docker_archive(&archive, "layered:test", &[base, middle, top]);
    assert_eq!(
        h.ok(&["load", "-i", archive.to_str().unwrap()]).trim(),
        "Loaded image: layered:test"
    );
    let out = h.ok(&[
        "run",
        "--rm",
        "layered:test",
        "sh",
        "-c",
        "cd /data && busybox ls -A; busybox cat keep.txt; cd /opq && busybox ls -A",
    ]);
    assert_eq!(out, "added.txt\nkeep.txt\nkeep v3\nnew.txt\n");
}

/// Layer counts the layer disk is tried with: one, QEMU microvm's old limit of eight
/// transports, a typical application image, a large one, and OCI's maximum.
const LAYER_COUNTS: [usize; 5] = [1, 8, 20, 64, 127];

/// Images of each of [`LAYER_COUNTS`] layers run: every layer's file is visible and the top
/// layer's whiteout hides the base layer's file. Layer N is partition N+1 of the one layer
/// disk, on either backend.
#[test]
fn images_of_1_to_127_layers_show_a_file_from_every_layer() {
    let test = "images_of_1_to_127_layers_show_a_file_from_every_layer";
    let Some(h) = husk(test, true) else { return };
    for n in LAYER_COUNTS {
        let mut base = Layer::default()
            .dir("bin")
            .exe("bin/busybox", &busybox_bytes())
            .symlink("bin/sh", "busybox")
            .dir("layers")
            .file("layers/000.txt", b"0\n");
        if n > 1 {
            base = base.file("layers/gone.txt", b"gone\n");
        }
        let mut layers = vec![base.tar()];
        for i in 1..n {
            let mut l =
                Layer::default().file(&format!("layers/{i:03}.txt"), format!("{i}\n").as_bytes());
            if i == n - 1 {
                l = l.file("layers/.wh.gone.txt", b"");
            }
            layers.push(l.tar());
        }
        let archive = h.root.path().join(format!("layers{n}.tar"));
        let name = format!("layers{n}:test");
        docker_archive(&archive, &name, &layers);
        h.ok(&["load", "-i", archive.to_str().unwrap()]);
        let started = std::time::Instant::now();
        let out = h.ok(&[
            "run",
            "--rm",
            &name,
            "sh",
            "-c",
            "cd /layers && busybox cat *",
        ]);
        let want: String = (0..n).map(|i| format!("{i}\n")).collect();
        assert_eq!(
            out, want,
            "{n} layers: a file from every layer, the whited-out one gone"
        );
        eprintln!(
            "{test}: {n} layers: husk run --rm in {:.2} s",
            started.elapsed().as_secs_f64()
        );
    }
}

#[test]
fn user_names_resolve_from_the_image_passwd() {
    let test = "user_names_resolve_from_the_image_passwd";
    let Some(h) = husk(test, true) else { return };
    let archive = common::cli::busybox_archive();
    h.ok(&["load", "-i", archive.to_str().unwrap()]);
    let out = h.ok(&["run", "--rm", "-u", "user", "busybox", "id"]);
    assert_eq!(out.trim(), "uid=1000(user) gid=1000(user)");
    let out = h.ok(&["run", "--rm", "-u", "user:root", "busybox", "id"]);
    assert_eq!(out.trim(), "uid=1000(user) gid=0(root)");
    let err = one_line_failure(&h.run(&["run", "--rm", "-u", "nobody", "busybox", "id"]));
    assert!(
        err.contains("\"nobody\"") && err.contains("/etc/passwd"),
        "{err}"
    );
    assert_eq!(
        h.ok(&["ps", "-aq"]),
        "",
        "a refused user leaves no container"
    );
}

#[test]
fn named_users_get_their_supplementary_groups() {
    let test = "named_users_get_their_supplementary_groups";
    let Some(h) = husk(test, true) else { return };
    let layer = Layer::default()
        .dir("bin")
        .exe("bin/busybox", &busybox_bytes())
        .symlink("bin/sh", "busybox")
        .dir("etc")
        .file(
            "etc/passwd",
            b"root:x:0:0:root:/root:/bin/sh\napp:x:1001:1001::/:/bin/sh\n",
        )
        .file(
            "etc/group",
            b"root:x:0:\nwheel:x:10:root,app\nstaff:x:50:app\napp:x:1001:\nother:x:60:root\n",
        )
        .tar();
    let archive = h.root.path().join("groups.tar");
    docker_archive(&archive, "groups:test", &[layer]);
    h.ok(&["load", "-i", archive.to_str().unwrap()]);
    let gids = |user: &str| -> Vec<u32> {
        let out = h.ok(&[
            "run",
            "--rm",
            "-u",
            user,
            "groups:test",
            "busybox",
            "id",
            "-G",
        ]);
        let mut gids: Vec<u32> = out
            .split_whitespace()
            .map(|g| g.parse().expect("numeric gid"))
            .collect();
        gids.sort_unstable();
        gids.dedup();
        gids
    };
    assert_eq!(gids("app"), [10, 50, 1001]);
    // An explicit group replaces the primary one; the memberships stay.
    assert_eq!(gids("app:other"), [10, 50, 60]);
}

#[test]
fn pull_from_local_registry_then_run() {
    let test = "pull_from_local_registry_then_run";
    let Some(h) = husk(test, true) else { return };
    for tool in ["skopeo", "docker-registry"] {
        if !have(tool) {
            common::not_run(
                test,
                &format!("{tool} not found: apt-get install skopeo docker-registry"),
                true,
            );
            return;
        }
    }
    let reg = Registry::start(std::iter::empty::<&str>())
        .unwrap_or_else(|e| panic!("start-test-registry.sh: {e}"));
    let port = reg.port;
    let archive = common::cli::busybox_archive();
    let dest = format!("127.0.0.1:{port}/busybox:test");
    let o = Command::new("skopeo")
        .args(["copy", "--dest-tls-verify=false"])
        .arg(format!("docker-archive:{}", archive.display()))
        .arg(format!("docker://{dest}"))
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "skopeo copy: {}",
        String::from_utf8_lossy(&o.stderr)
    );

    let pulled = h.ok(&["pull", &dest]);
    assert!(pulled.contains(&format!("Pulled: {dest}")), "{pulled}");
    assert!(h
        .ok(&["images"])
        .contains(&format!("127.0.0.1:{port}/busybox")));
    let out = h.ok(&["run", "--rm", &dest, "echo", "pulled and booted"]);
    assert_eq!(out, "pulled and booted\n");
    // A tag the registry does not have: one line, nothing new stored.
    let before = h.stored_files().len();
    let err = one_line_failure(&h.run(&["pull", &format!("127.0.0.1:{port}/busybox:nope")]));
    assert!(err.contains("busybox:nope"), "{err}");
    assert_eq!(h.stored_files().len(), before);
}

#[test]
fn malicious_layer_is_rejected_and_nothing_is_kept() {
    let test = "malicious_layer_is_rejected_and_nothing_is_kept";
    let Some(h) = husk(test, false) else { return };
    let evil = Layer::default()
        .file("ok.txt", b"fine\n")
        .file("../../escape", b"pwned\n")
        .tar();
    let good = Layer::default().file("a.txt", b"a\n").tar();
    let archive = h.root.path().join("evil.tar");
    docker_archive(&archive, "evil:1", &[good, evil.clone()]);
    let err = one_line_failure(&h.run(&["load", "-i", archive.to_str().unwrap()]));
    eprintln!("{err}");
    assert!(err.contains("../../escape"), "names the entry: {err}");
    assert!(
        err.contains(Digest::of(&evil).hex()),
        "names the layer: {err}"
    );
    assert_eq!(h.image_count(), 0);
    assert_eq!(
        h.stored_files(),
        Vec::<String>::new(),
        "no blob or layer disk kept"
    );
    assert!(!h.root.path().join("../escape").exists());
}

#[test]
fn corrupt_archive_is_rejected_and_nothing_is_kept() {
    let test = "corrupt_archive_is_rejected_and_nothing_is_kept";
    let Some(h) = husk(test, false) else { return };
    let layer = Layer::default().file("a.txt", &[7u8; 100_000]).tar();
    let archive = h.root.path().join("whole.tar");
    docker_archive(&archive, "cut:1", &[layer]);
    let bytes = std::fs::read(&archive).unwrap();
    // Cut inside the layer: the member is truncated.
    let cut = h.root.path().join("cut.tar");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let err = one_line_failure(&h.run(&["load", "-i", cut.to_str().unwrap()]));
    eprintln!("{err}");
    assert!(
        err.contains("cut.tar") && err.contains("layer.tar"),
        "{err}"
    );
    // A layer whose bytes do not match its diff_id.
    let mut tampered = bytes.clone();
    let at = tampered.windows(4).position(|w| w == [7, 7, 7, 7]).unwrap();
    tampered[at] = 8;
    let bad = h.root.path().join("tampered.tar");
    std::fs::write(&bad, &tampered).unwrap();
    let err = one_line_failure(&h.run(&["load", "-i", bad.to_str().unwrap()]));
    eprintln!("{err}");
    assert!(err.contains("digest") || err.contains("diff"), "{err}");
    assert_eq!(h.image_count(), 0);
    assert_eq!(
        h.stored_files(),
        Vec::<String>::new(),
        "no blob or layer disk kept"
    );
}

/// Waits (bounded) until `husk ps -a` shows the container as exited.
fn wait_exited(h: &common::cli::Husk, name: &str) {
    let mut line = String::new();
    let exited = common::poll_until(common::cli::LIMIT, || {
        let ps = h.ok(&["ps", "-a"]);
        line = ps
            .lines()
            .find(|l| l.ends_with(name))
            .unwrap_or_default()
            .to_string();
        line.contains("Exited").then_some(())
    });
    assert!(exited.is_some(), "{name} never exited: {line}");
}

#[test]
fn rmi_of_an_image_in_use_is_refused() {
    let test = "rmi_of_an_image_in_use_is_refused";
    let Some(h) = husk(test, true) else { return };
    let archive = common::cli::busybox_archive();
    h.ok(&["load", "-i", archive.to_str().unwrap()]);
    h.ok(&["run", "--name", "user1", "busybox", "true"]);
    let err = one_line_failure(&h.run(&["rmi", "busybox"]));
    assert!(err.contains("user1") && err.contains("-f"), "{err}");
    assert_eq!(h.image_count(), 1);
    // The kept container still boots on its image's layers.
    h.ok(&["start", "user1"]);
    wait_exited(&h, "user1");
    // -f removes the image all the same; the container holds its layers and still starts.
    let out = h.ok(&["rmi", "-f", "busybox"]);
    assert!(
        out.contains("Untagged: busybox:latest") && out.contains("Deleted: sha256:"),
        "{out}"
    );
    assert_eq!(h.image_count(), 0);
    assert_eq!(h.stored_files(), Vec::<String>::new());
    h.ok(&["start", "user1"]);
    wait_exited(&h, "user1");
    let gone = h.run(&["run", "--rm", "busybox", "true"]);
    assert!(!gone.status.success(), "the image is gone");
    h.ok(&["rm", "-f", "user1"]);
}

/// A layered image, again on both backends of a KVM that boots stock Linux: husk-vmm and QEMU
/// `-accel kvm` (on this project's PVM hosts: inside the nested-KVM rig); the layer counts on
/// husk-vmm too (QEMU runs them on this host under TCG).
const ON_KVM_BACKENDS: &[&str] =
    &["layered_image_with_whiteout_and_opaque_dir_shows_the_merged_tree"];

crate::on_kvm_backends! {
    husk_images_on_husk_vmm => &[
        ON_KVM_BACKENDS[0],
        "images_of_1_to_127_layers_show_a_file_from_every_layer",
    ],
    husk_images_on_qemu_kvm => ON_KVM_BACKENDS,
}
