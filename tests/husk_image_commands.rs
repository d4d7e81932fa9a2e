//! The image commands people reach for, through the `husk` binary, each test with its own
//! `--root`: `tag` (a moved name leaves a dangling image), `save` in both formats loaded back
//! by `husk load` into a fresh root and by `podman load`, `image prune` / `system prune` /
//! `system df` against docker's rules (nothing a container uses goes; the numbers agree with
//! what a prune frees), `--format` templates and `--digests`, and bad input refused with one
//! line and nothing left behind.

mod common;

use common::cli::Husk;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use husk::image::Digest;
use serde_json::Value;

fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// A root with busybox loaded, booting nothing.
fn busybox_root(test: &str) -> Option<Husk> {
    Husk::with_busybox(
        test,
        PathBuf::from("/nonexistent"),
        PathBuf::from("/nonexistent"),
    )
}

impl Husk {
    /// `husk images --format json`.
    fn images_json(&self) -> Vec<Value> {
        let v: Value = serde_json::from_str(&self.ok(&["images", "--format", "json"])).unwrap();
        v.as_array().unwrap().clone()
    }

    /// `husk inspect IMAGE`.
    fn inspect(&self, image: &str) -> Value {
        let v: Value = serde_json::from_str(&self.ok(&["inspect", image])).unwrap();
        v.as_array().map_or(v.clone(), |a| a[0].clone())
    }

    /// The `system df --format json` row of `kind`.
    fn df(&self, kind: &str) -> Value {
        self.ok(&["system", "df", "--format", "json"])
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .find(|v| v["Type"] == kind)
            .unwrap_or_else(|| panic!("no {kind} row"))
    }
}

/// A docker-archive of a one-layer image named `name` holding /hello.txt = `text`.
fn small_archive(path: &Path, name: &str, text: &str) {
    let mut layer = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(text.len() as u64);
    h.set_mode(0o644);
    h.set_mtime(1_700_000_000);
    h.set_uid(0);
    h.set_gid(0);
    h.set_cksum();
    layer
        .append_data(&mut h, "hello.txt", text.as_bytes())
        .unwrap();
    let layer = layer.into_inner().unwrap();
    let diff_id = Digest::of(&layer);
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux", "created": "2024-01-01T00:00:00Z",
        "config": {"Cmd": ["sh"]},
        "rootfs": {"type": "layers", "diff_ids": [diff_id.to_string()]},
    })
    .to_string();
    let config_name = format!("{}.json", Digest::of(config.as_bytes()).hex());
    let layer_name = format!("{}/layer.tar", diff_id.hex());
    let manifest =
        serde_json::json!([{"Config": config_name, "RepoTags": [name], "Layers": [layer_name]}])
            .to_string();
    let mut b = tar::Builder::new(Vec::new());
    for (n, data) in [
        (layer_name.as_str(), layer.as_slice()),
        (config_name.as_str(), config.as_bytes()),
        ("manifest.json", manifest.as_bytes()),
    ] {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, n, data).unwrap();
    }
    std::fs::write(path, b.into_inner().unwrap()).unwrap();
}

/// One line on stderr, non-zero exit; returns the line.
fn one_line_failure(out: &Output) -> String {
    assert!(!out.status.success(), "expected failure");
    let err = String::from_utf8_lossy(&out.stderr).trim().to_string();
    assert_eq!(err.lines().count(), 1, "one error line: {err}");
    err
}

/// The names in `dir`.
fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn tag_moves_a_name_and_prune_takes_the_dangling_image() {
    let test = "tag_moves_a_name_and_prune_takes_the_dangling_image";
    let Some(h) = busybox_root(test) else { return };
    let busybox_id = h.inspect("busybox")["Id"].as_str().unwrap().to_string();
    assert_eq!(h.ok(&["tag", "busybox", "mybox:1"]), "");
    let imgs = h.images_json();
    assert_eq!(imgs.len(), 1, "{imgs:?}");
    assert_eq!(
        imgs[0]["names"],
        serde_json::json!(["busybox:latest", "mybox:1"])
    );
    let lines = h.ok(&[
        "images",
        "--format",
        "{{.Repository}}:{{.Tag}} {{.ID}} {{.Digest}}",
    ]);
    let id12 = &busybox_id[7..19];
    assert_eq!(
        lines,
        format!("busybox:latest {id12} <none>\nmybox:1 {id12} <none>\n"),
        "a docker-archive load has no repo digest"
    );

    let other = h.root.path().join("other.tar");
    small_archive(&other, "other:1", "other\n");
    h.ok(&["load", "-i", path_str(&other)]);
    // Both names move to `other`: busybox is left dangling, as docker leaves it.
    h.ok(&["tag", "other:1", "busybox"]);
    h.ok(&["tag", "other:1", "mybox:1"]);
    let imgs = h.images_json();
    assert_eq!(imgs.len(), 2, "{imgs:?}");
    let dangling: Vec<&Value> = imgs
        .iter()
        .filter(|i| i["names"].as_array().unwrap().is_empty())
        .collect();
    assert_eq!(dangling.len(), 1, "{imgs:?}");
    assert_eq!(dangling[0]["id"], busybox_id.as_str());
    let table = h.ok(&["images"]);
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("<none>") && l.contains(id12)),
        "{table}"
    );

    // df: nothing in use, so every byte is reclaimable; prune -a frees exactly that.
    let before = h.df("Images");
    assert_eq!(before["TotalCount"], "2");
    assert_eq!(before["Active"], "0");
    let size = before["Size"].as_str().unwrap().to_string();
    assert_eq!(before["Reclaimable"], format!("{size} (100%)").as_str());

    let out = h.ok(&["image", "prune", "-f"]);
    assert_eq!(
        out.lines().take(2).collect::<Vec<_>>(),
        ["Deleted Images:", &format!("deleted: {busybox_id}")],
        "{out}"
    );
    assert!(out
        .lines()
        .last()
        .unwrap()
        .starts_with("Total reclaimed space: "));
    let imgs = h.images_json();
    assert_eq!(imgs.len(), 1);
    assert_eq!(
        imgs[0]["names"],
        serde_json::json!(["busybox:latest", "mybox:1", "other:1"])
    );
    // Nothing dangling is left: a second prune frees nothing.
    assert_eq!(
        h.ok(&["image", "prune", "-f"]),
        "Total reclaimed space: 0B\n"
    );

    let left = h.df("Images");
    let left_size = left["Size"].as_str().unwrap().to_string();
    let out = h.ok(&["image", "prune", "-a", "-f"]);
    assert!(out.contains("untagged: other:1\n"), "{out}");
    assert!(
        out.ends_with(&format!("Total reclaimed space: {left_size}\n")),
        "prune -a frees what df called reclaimable ({left_size}): {out}"
    );
    assert!(h.images_json().is_empty());
    assert_eq!(h.df("Images")["Size"], "0B");
    for d in ["blobs/sha256", "layers"] {
        assert!(entries(&h.root.path().join(d)).is_empty(), "{d} emptied");
    }
}

#[test]
fn save_then_load_gives_the_same_image_in_both_formats() {
    let test = "save_then_load_gives_the_same_image_in_both_formats";
    let Some(h) = busybox_root(test) else { return };
    h.ok(&["tag", "busybox", "localhost:5000/team/box:v2"]);
    let want = h.inspect("busybox");
    let dir = tempfile::tempdir().unwrap();
    for format in ["docker-archive", "oci-archive"] {
        let file = dir.path().join(format!("{format}.tar"));
        h.ok(&[
            "save",
            "--format",
            format,
            "-o",
            path_str(&file),
            "busybox",
            "localhost:5000/team/box:v2",
        ]);
        // The same bytes to a pipe: the archive is deterministic.
        let piped = h
            .cmd(&[
                "save",
                "--format",
                format,
                "busybox",
                "localhost:5000/team/box:v2",
            ])
            .output()
            .unwrap();
        assert!(piped.status.success(), "{}", common::text(&piped.stderr));
        assert!(
            piped.stdout == std::fs::read(&file).unwrap(),
            "{format}: stdout and -o differ"
        );
        let fresh = Husk::new(h.kernel.clone(), h.initramfs.clone());
        let loaded = fresh.ok(&["load", "-i", path_str(&file)]);
        assert_eq!(
            loaded, "Loaded image: busybox:latest\nLoaded image: localhost:5000/team/box:v2\n",
            "{format}"
        );
        let got = fresh.inspect("localhost:5000/team/box:v2");
        assert_eq!(got["Id"], want["Id"], "{format}: same image ID");
        assert_eq!(got["RootFS"], want["RootFS"], "{format}: same layers");
        assert_eq!(got["RepoTags"], want["RepoTags"], "{format}");
        if format == "oci-archive" {
            assert_eq!(got["Digest"], want["Digest"], "blobs travel as they are");
        }
    }
    assert_eq!(
        entries(dir.path()),
        ["docker-archive.tar", "oci-archive.tar"],
        "no temp files"
    );
}

#[test]
fn podman_loads_what_husk_saves() {
    let test = "podman_loads_what_husk_saves";
    let Some(h) = busybox_root(test) else { return };
    if !Command::new("podman")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        common::not_run(test, "podman not installed", true);
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    for format in ["docker-archive", "oci-archive"] {
        let file = dir.path().join(format!("{format}.tar"));
        h.ok(&["save", "--format", format, "-o", path_str(&file), "busybox"]);
        let storage = tempfile::tempdir().unwrap();
        let podman = |args: &[&str]| common::engine::podman_in(storage.path(), args);
        podman(&["load", "-i", path_str(&file)]);
        let shown = podman(&["images", "--format", "{{.Repository}}:{{.Tag}} {{.ID}}"]);
        let id = h.inspect("busybox")["Id"].as_str().unwrap()[7..19].to_string();
        assert_eq!(
            shown.trim(),
            format!("docker.io/library/busybox:latest {id}"),
            "{format}"
        );
    }
}

#[test]
fn bad_input_is_one_line_and_leaves_nothing() {
    let test = "bad_input_is_one_line_and_leaves_nothing";
    let Some(h) = busybox_root(test) else { return };
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("out.tar");

    let err = one_line_failure(&h.run(&["save", "-o", path_str(&target), "busybox", "nope"]));
    assert!(err.contains("no such image: nope"), "{err}");
    assert!(entries(dir.path()).is_empty(), "nothing written");

    // A failed save leaves an existing file as it was.
    std::fs::write(&target, b"keep").unwrap();
    one_line_failure(&h.run(&["save", "-o", path_str(&target), "nope"]));
    assert_eq!(std::fs::read(&target).unwrap(), b"keep");
    assert_eq!(entries(dir.path()), ["out.tar"]);

    // Under a plain file: no directory to write in.
    let bad = target.join("x.tar");
    let err = one_line_failure(&h.run(&["save", "-o", path_str(&bad), "busybox"]));
    assert!(err.contains(path_str(&target)), "{err}");
    let err = one_line_failure(&h.run(&["save", "--format", "tar", "-o", "x", "busybox"]));
    assert!(err.contains("docker-archive or oci-archive"), "{err}");

    let err = one_line_failure(&h.run(&["images", "--format", "{{.ID}} {{.Nope}}"]));
    assert!(err.contains("no field .Nope"), "{err}");
    let err = one_line_failure(&h.run(&["ps", "--format", "{{.Names}} {{.Repository}}"]));
    assert!(err.contains("no field .Repository"), "{err}");
    let err = one_line_failure(&h.run(&["images", "--format", "{{json .}}"]));
    assert!(err.contains("not supported"), "{err}");

    let err = one_line_failure(&h.run(&["tag", "nope", "x:1"]));
    assert!(err.contains("no such image: nope"), "{err}");
    let err = one_line_failure(&h.run(&["tag", "busybox", &format!("x@{}", Digest::of(b"x"))]));
    assert!(err.contains("give a tag"), "{err}");

    // No -f and no terminal to ask on: refused, nothing removed.
    for args in [&["image", "prune", "-a"][..], &["system", "prune", "-a"]] {
        let err = one_line_failure(&h.run(args));
        assert!(err.contains("-f"), "{err}");
    }
    assert_eq!(h.images_json().len(), 1);
}

#[test]
fn prune_and_df_spare_what_a_container_uses() {
    let test = "prune_and_df_spare_what_a_container_uses";
    let (Some(kernel), Some(initramfs)) = (common::kernel(test), common::initramfs(test)) else {
        return;
    };
    let Some(mut h) = Husk::with_busybox(test, kernel, initramfs) else {
        return;
    };
    // system prune removes VM templates too: this root's own, not the host's.
    let templates = h.root.path().join("vm-templates");
    h.env
        .push(format!("HUSK_VM_TEMPLATES={}", templates.display()));
    let other = h.root.path().join("other.tar");
    small_archive(&other, "other:1", "other\n");
    h.ok(&["load", "-i", path_str(&other)]);
    h.ok(&["run", "--name", "c1", "busybox", "true"]);
    let id = h.ok(&["ps", "-a", "--format", "{{.ID}} {{.Names}} {{.State}}"]);
    let short = id.split(' ').next().unwrap().to_string();
    assert!(id.ends_with(" c1 exited\n"), "{id}");

    let images = h.df("Images");
    assert_eq!(
        (&images["TotalCount"], &images["Active"]),
        (&"2".into(), &"1".into())
    );
    // On QEMU the run built a VM template (husk-vmm has none): all of it reclaimable.
    let vm_templates = h.df("VM Templates");
    let built = vm_templates["TotalCount"] == "1";
    assert!(built || vm_templates["Size"] == "0B", "{vm_templates}");
    assert_eq!(vm_templates["Active"], "0");
    let containers = h.df("Containers");
    assert_eq!(containers["TotalCount"], "1");
    assert_eq!(containers["Active"], "0");
    assert!(
        containers["Reclaimable"]
            .as_str()
            .unwrap()
            .ends_with("(100%)"),
        "{containers}"
    );

    // The image a container was made from stays, even with -a.
    let out = h.ok(&["image", "prune", "-a", "-f"]);
    assert!(out.contains("untagged: other:1\n"), "{out}");
    assert!(!out.contains("busybox"), "{out}");
    assert_eq!(h.images_json().len(), 1);

    // system prune: the stopped container, then (with -a) the image it alone used.
    let out = h.ok(&["system", "prune", "-a", "-f"]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "Deleted Containers:", "{out}");
    assert!(lines[1].starts_with(&short), "{out}");
    assert!(out.contains("untagged: busybox:latest\n"), "{out}");
    assert_eq!(out.contains("Deleted VM Templates: 1\n"), built, "{out}");
    assert_eq!(h.df("VM Templates")["TotalCount"], "0");
    assert!(h.images_json().is_empty());
    assert!(h.ok(&["ps", "-a", "-q"]).is_empty());
    assert_eq!(h.df("Containers")["Size"], "0B");
}

#[test]
fn prune_asks_on_a_terminal_and_save_refuses_one() {
    let test = "prune_asks_on_a_terminal_and_save_refuses_one";
    let Some(h) = busybox_root(test) else { return };
    if !Path::new("/usr/bin/script").is_file() {
        common::not_run(test, "script(1) missing (apt-get install bsdutils)", true);
        return;
    }
    // `script` gives husk a terminal; what it types comes from our stdin.
    let on_tty = |args: &str, typed: &[u8]| {
        let line = format!(
            "{} --root {} {args}",
            common::bin("husk").display(),
            h.root.path().display()
        );
        let mut c = Command::new("/usr/bin/script");
        c.args(["-qec", &line, "/dev/null"]);
        let out = common::run_bounded(c, Some(typed), std::time::Duration::from_secs(60));
        common::text(&out.stdout)
    };
    let other = h.root.path().join("other.tar");
    small_archive(&other, "other:1", "other\n");
    h.ok(&["load", "-i", path_str(&other)]);
    h.ok(&["tag", "other:1", "busybox"]);
    assert_eq!(h.images_json().len(), 2);

    let out = on_tty("image prune", b"n\n");
    assert!(
        out.contains("WARNING! This will remove all dangling images."),
        "{out}"
    );
    assert!(!out.contains("Deleted Images:"), "{out}");
    assert_eq!(h.images_json().len(), 2, "answered no");
    let out = on_tty("image prune", b"y\n");
    assert!(out.contains("Deleted Images:"), "{out}");
    assert_eq!(h.images_json().len(), 1, "answered yes");

    let out = on_tty("save busybox", b"");
    assert!(
        out.contains("cowardly refusing to save to a terminal"),
        "{out}"
    );
    assert!(out.len() < 200, "no archive on the terminal: {out:?}");
}
