//! `images`, `tag`, `rmi`, `load`, `pull`: the image store under `--root`.

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::json;

use crate::cli::images::{ago, human_size, open, rows};
use crate::cli::{Error, Format, GlobalOpts, ImagesArgs, LoadArgs, PullArgs, RmiArgs, TagArgs};
use crate::image::{Image, Progress, PullOptions, Reference};
use crate::util::time::{docker_time, epoch_of};

/// `.Field`s of `husk images --format`, as docker names them.
const IMAGE_FIELDS: &[&str] = &[
    "ID",
    "Repository",
    "Tag",
    "Digest",
    "CreatedSince",
    "CreatedAt",
    "Size",
];

pub fn list(g: &GlobalOpts, a: ImagesArgs) -> Result<i32, Error> {
    if let Format::Template(t) = &a.format {
        t.check(IMAGE_FIELDS)?;
    }
    let store = open(&g.root)?;
    let all = store.list().map_err(|e| Error::Image(e.to_string()))?;
    if a.quiet {
        for i in &all {
            println!("{}", &i.id().hex()[..12]);
        }
        return Ok(0);
    }
    let repo_digest = |i: &Image| i.repo_digest().map_or("<none>".into(), |d| d.to_string());
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let t = match a.format {
        Format::Json => {
            let v: Vec<_> = all
                .iter()
                .map(|i| {
                    json!({
                        "id": i.id().to_string(),
                        "names": i.references.iter().map(|r| r.familiar()).collect::<Vec<_>>(),
                        "digest": i.manifest_digest.to_string(),
                        "repoDigest": i.repo_digest().map(|d| d.to_string()),
                        "created": i.config.created(),
                        "size": i.size(),
                        "layers": i.layers.len(),
                    })
                })
                .collect();
            println!("{}", serde_json::to_string_pretty(&v).expect("json"));
            return Ok(0);
        }
        Format::Template(t) => t,
        Format::Table => {
            let mut header = vec!["REPOSITORY", "TAG"];
            if a.digests {
                header.push("DIGEST");
            }
            header.extend(["IMAGE ID", "CREATED", "SIZE"]);
            let mut table = vec![header.into_iter().map(String::from).collect::<Vec<_>>()];
            for i in &all {
                for (repo, tag) in rows(i) {
                    let mut row = vec![repo, tag];
                    if a.digests {
                        row.push(repo_digest(i));
                    }
                    row.extend([
                        i.id().hex()[..12].to_string(),
                        ago(i.config.created().as_deref(), now),
                        human_size(i.size()),
                    ]);
                    table.push(row);
                }
            }
            print_table(&table);
            return Ok(0);
        }
    };
    for i in &all {
        for (repo, tag) in rows(i) {
            let line = t.render(|f| match f {
                "ID" => i.id().hex()[..12].to_string(),
                "Repository" => repo.clone(),
                "Tag" => tag.clone(),
                "Digest" => repo_digest(i),
                "CreatedSince" => ago(i.config.created().as_deref(), now),
                "CreatedAt" => i
                    .config
                    .created()
                    .as_deref()
                    .and_then(epoch_of)
                    .map(docker_time)
                    .unwrap_or_default(),
                "Size" => human_size(i.size()),
                _ => unreachable!("fields were checked against IMAGE_FIELDS"),
            });
            println!("{line}");
        }
    }
    Ok(0)
}

/// Columns padded to their widest cell, three spaces apart, as docker's tables.
pub(super) fn print_table(table: &[Vec<String>]) {
    let columns = table.first().map_or(0, Vec::len);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            table
                .iter()
                .map(|r| r[c].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for r in table {
        let line: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(v, w)| format!("{v:<w$}"))
            .collect();
        println!("{}", line.join("   ").trim_end());
    }
}

/// `husk tag SOURCE TARGET`: prints nothing, as docker.
pub fn tag(g: &GlobalOpts, a: TagArgs) -> Result<i32, Error> {
    let store = open(&g.root)?;
    store
        .tag_image(&a.source, &a.target)
        .map_err(|e| Error::Image(e.to_string()))?;
    Ok(0)
}

/// Removes names (or, by ID, the whole image) and collects what no image uses. An image a
/// container still uses is kept unless `-f`; with `-f` it goes, and the containers keep
/// running and starting on their own links to its layer disks (`runtime::lifecycle`).
///
/// The look for users and the removal from the index happen under the containers' lock,
/// which `run` holds while it resolves the image and links its layers: a racing `run` either
/// recorded its container first (and this refuses) or finds no such image.
pub fn rmi(g: &GlobalOpts, a: RmiArgs) -> Result<i32, Error> {
    let store = open(&g.root)?;
    let rt = super::runtime(g)?;
    let mut removed_any = false;
    let code = super::each(&a.images, |what| {
        let containers = rt.store.lock()?;
        let img = store.get(what).map_err(|e| Error::Image(e.to_string()))?;
        let by_name = what
            .parse::<Reference>()
            .ok()
            .filter(|r| img.references.contains(r));
        // Dropping one of several names leaves the image (and its users) whole.
        let deletes = by_name.is_none() || img.references.len() <= 1;
        if deletes && !a.force {
            let id = img.id().to_string();
            let users: Vec<String> = rt
                .store
                .list()?
                .into_iter()
                .filter(|c| c.image_id.as_deref() == Some(id.as_str()))
                .map(|c| format!("{} ({})", &c.id[..12], c.name))
                .collect();
            if !users.is_empty() {
                return Err(Error::Image(format!(
                    "cannot remove image {what}: container {} uses it; remove the container \
                     first (`husk rm`) or use `husk rmi -f`",
                    users.join(", ")
                )));
            }
        }
        let removed = store
            .forget(what)
            .map_err(|e| Error::Image(e.to_string()))?;
        drop(containers);
        removed_any = true;
        let mut out: Vec<String> = match by_name {
            Some(r) if !deletes => vec![format!("Untagged: {}", r.familiar())],
            _ => removed
                .references
                .iter()
                .map(|r| format!("Untagged: {}", r.familiar()))
                .collect(),
        };
        if deletes {
            out.push(format!("Deleted: {}", removed.id()));
        }
        Ok(out.join("\n"))
    })?;
    // Outside the lock: the collection waits for imports in flight.
    if removed_any {
        store.gc().map_err(|e| Error::Image(e.to_string()))?;
    }
    Ok(code)
}

pub fn load(g: &GlobalOpts, a: LoadArgs) -> Result<i32, Error> {
    let store = open(&g.root)?;
    let loaded = store
        .load(&a.input)
        .map_err(|e| Error::Image(e.to_string()))?;
    for i in loaded {
        for r in &i.references {
            println!("Loaded image: {}", r.familiar());
        }
    }
    Ok(0)
}

pub fn pull(g: &GlobalOpts, a: PullArgs) -> Result<i32, Error> {
    let store = open(&g.root)?;
    let mut opts = PullOptions {
        tls_verify: a.tls_verify,
        ..PullOptions::default()
    };
    if let Some(p) = a.platform {
        opts.platform = p;
    }
    if a.quiet {
        opts.progress = Progress::Quiet;
    }
    let img = store
        .pull(&a.reference, &opts)
        .map_err(|e| Error::Image(e.to_string()))?;
    println!("Digest: {}", img.manifest_digest);
    let name = a
        .reference
        .parse::<Reference>()
        .map_or(a.reference.clone(), |r| r.to_string());
    println!("Pulled: {name}");
    Ok(0)
}
