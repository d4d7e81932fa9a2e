//! `husk system df [-v] [--format json]`: the space images and containers take, in docker's
//! rows (TYPE TOTAL ACTIVE SIZE RECLAIMABLE). Image sizes are the bytes of the store's files
//! each needs (manifest, config, layer blobs and layer disks, shared ones counted once), so
//! RECLAIMABLE is what `husk image prune -a` frees; a container's size is the disk its
//! directory takes (writable layer, logs), what removing it frees. A fifth row, `VM
//! Templates`, is the QEMU backend's saved VMs (derived data `husk system prune` removes).

use serde_json::json;

use super::images::print_table;
use super::ps;
use super::usage::{container_size, images_in_use};
use crate::backend::template;
use crate::cli::images::{ago, human_size, open, rows};
use crate::cli::{DfArgs, Error, Format, GlobalOpts};
use crate::image::Image;
use crate::runtime::{State, Status};
use crate::util::time::now;

/// `4.26MB (70%)`, or `0B` when there is nothing, as docker writes RECLAIMABLE.
fn reclaimable(bytes: u64, total: u64) -> String {
    if total == 0 {
        return human_size(bytes);
    }
    format!("{} ({}%)", human_size(bytes), bytes * 100 / total)
}

struct Row {
    kind: &'static str,
    total: usize,
    active: usize,
    size: u64,
    reclaimable: u64,
}

pub fn run(g: &GlobalOpts, a: DfArgs) -> Result<i32, Error> {
    if let Format::Template(_) = a.format {
        return Err(Error::Usage(
            "husk system df: --format takes table or json".into(),
        ));
    }
    let rt = super::runtime(g)?;
    let store = open(&g.root)?;
    let images = store.list().map_err(|e| Error::Image(e.to_string()))?;
    let containers: Vec<State> = rt.store.list()?;
    let in_use = images_in_use(&rt)?;
    let used: Vec<&Image> = images.iter().filter(|i| in_use.contains(i.id())).collect();
    let images_size = store.disk_usage(&images);
    let running = |s: &State| s.effective_status() == Status::Running;
    let sizes: Vec<u64> = containers.iter().map(|s| container_size(&rt, s)).collect();
    let templates = template::dir_from_env()
        .map(|d| template::cache::usage(&d))
        .unwrap_or_default();
    let rows = [
        Row {
            kind: "Images",
            total: images.len(),
            active: used.len(),
            size: images_size,
            reclaimable: images_size - store.disk_usage(used.iter().copied()),
        },
        Row {
            kind: "Containers",
            total: containers.len(),
            active: containers.iter().filter(|s| running(s)).count(),
            size: sizes.iter().sum(),
            reclaimable: containers
                .iter()
                .zip(&sizes)
                .filter(|(s, _)| !running(s))
                .map(|(_, n)| n)
                .sum(),
        },
        // Derived data, none of it in use once loaded: all of it reclaimable.
        Row {
            kind: "VM Templates",
            total: templates.templates,
            active: 0,
            size: templates.bytes,
            reclaimable: templates.bytes,
        },
        // husk has neither; the rows are there because scripts read docker's four.
        Row {
            kind: "Local Volumes",
            total: 0,
            active: 0,
            size: 0,
            reclaimable: 0,
        },
        Row {
            kind: "Build Cache",
            total: 0,
            active: 0,
            size: 0,
            reclaimable: 0,
        },
    ];
    if a.verbose {
        return verbose(&store, &images, &containers, &sizes, a.format);
    }
    if a.format == Format::Json {
        for r in &rows {
            let line = json!({
                "Type": r.kind,
                "TotalCount": r.total.to_string(),
                "Active": r.active.to_string(),
                "Size": human_size(r.size),
                "Reclaimable": reclaimable(r.reclaimable, r.size),
            });
            println!("{line}");
        }
        return Ok(0);
    }
    let mut table = vec![["TYPE", "TOTAL", "ACTIVE", "SIZE", "RECLAIMABLE"]
        .map(String::from)
        .to_vec()];
    for r in &rows {
        table.push(vec![
            r.kind.to_string(),
            r.total.to_string(),
            r.active.to_string(),
            human_size(r.size),
            reclaimable(r.reclaimable, r.size),
        ]);
    }
    print_table(&table);
    Ok(0)
}

/// `-v`: a row per image (its size, what it shares with other images, what is its alone,
/// and how many containers use it) and per container.
fn verbose(
    store: &crate::image::Store,
    images: &[Image],
    containers: &[State],
    sizes: &[u64],
    format: Format,
) -> Result<i32, Error> {
    let t = now();
    let all = store.disk_usage(images);
    let mut image_rows = Vec::new();
    for i in images {
        let size = store.disk_usage([i]);
        let unique = all - store.disk_usage(images.iter().filter(|o| o.id() != i.id()));
        let users = containers
            .iter()
            .filter(|s| s.image_id.as_deref() == Some(i.id().to_string().as_str()))
            .count();
        for (repo, tag) in rows(i) {
            image_rows.push([
                repo,
                tag,
                i.id().hex()[..12].to_string(),
                ago(i.config.created().as_deref(), t),
                human_size(size),
                human_size(size - unique),
                human_size(unique),
                users.to_string(),
            ]);
        }
    }
    let container_rows: Vec<[String; 6]> = containers
        .iter()
        .zip(sizes)
        .map(|(s, n)| {
            let mut s = s.clone();
            s.status = s.effective_status();
            [
                s.short_id().to_string(),
                s.image.clone(),
                human_size(*n),
                format!("{} ago", ps::ago(t.saturating_sub(s.created))),
                ps::status(&s, t),
                s.name.clone(),
            ]
        })
        .collect();
    const IMAGE_HEAD: [&str; 8] = [
        "REPOSITORY",
        "TAG",
        "IMAGE ID",
        "CREATED",
        "SIZE",
        "SHARED SIZE",
        "UNIQUE SIZE",
        "CONTAINERS",
    ];
    const CONTAINER_HEAD: [&str; 6] = [
        "CONTAINER ID",
        "IMAGE",
        "SIZE",
        "CREATED",
        "STATUS",
        "NAMES",
    ];
    if format == Format::Json {
        let objects = |head: &[&str], rows: Vec<Vec<String>>| -> Vec<serde_json::Value> {
            rows.into_iter()
                .map(|r| {
                    let keys = head.iter().map(|h| h.replace(' ', ""));
                    serde_json::Value::Object(keys.zip(r.into_iter().map(Into::into)).collect())
                })
                .collect()
        };
        let v = json!({
            "Images": objects(&IMAGE_HEAD, image_rows.into_iter().map(Vec::from).collect()),
            "Containers": objects(&CONTAINER_HEAD, container_rows.into_iter().map(Vec::from).collect()),
        });
        println!("{v}");
        return Ok(0);
    }
    println!("Images space usage:\n");
    let mut table = vec![IMAGE_HEAD.map(String::from).to_vec()];
    table.extend(image_rows.into_iter().map(Vec::from));
    print_table(&table);
    println!("\nContainers space usage:\n");
    let mut table = vec![CONTAINER_HEAD.map(String::from).to_vec()];
    table.extend(container_rows.into_iter().map(Vec::from));
    print_table(&table);
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reclaimable_has_a_share_only_of_something() {
        assert_eq!(reclaimable(0, 0), "0B");
        assert_eq!(reclaimable(700, 1000), "700B (70%)");
        assert_eq!(reclaimable(4_260_000, 4_260_000), "4.26MB (100%)");
    }
}
