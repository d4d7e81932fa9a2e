//! `husk image prune [-a] [-f]` and `husk system prune [-a] [-f]`: what docker's prunes
//! remove, asked for first unless `-f`, reported in docker's words. Images go through the
//! store's own removal and garbage collection ([`Store::prune`]), containers through
//! `Runtime::remove`, as `rmi` and `rm` do.

use std::io::{BufRead, IsTerminal, Write};

use super::usage::{container_size, images_in_use};
use crate::backend::template;
use crate::cli::images::{human_size, open};
use crate::cli::{Error, GlobalOpts, PruneArgs};
use crate::image::{PruneScope, Pruned, Store};
use crate::runtime::{Runtime, Status};

/// `husk image prune`.
pub fn image(g: &GlobalOpts, a: PruneArgs) -> Result<i32, Error> {
    let warning = if a.all {
        "WARNING! This will remove all images without at least one container associated to them."
    } else {
        "WARNING! This will remove all dangling images."
    };
    if !confirmed(a.force, warning)? {
        return Ok(0);
    }
    let rt = super::runtime(g)?;
    let store = open(&g.root)?;
    let pruned = prune_images(&rt, &store, a.all)?;
    if !pruned.images.is_empty() {
        println!("Deleted Images:");
        print_images(&pruned);
        println!();
    }
    println!(
        "Total reclaimed space: {}",
        human_size(pruned.stats.bytes_freed)
    );
    Ok(0)
}

/// `husk system prune`: stopped containers first, so the images only they used go too.
pub fn system(g: &GlobalOpts, a: PruneArgs) -> Result<i32, Error> {
    let images = if a.all {
        "  - all images without at least one container associated to them"
    } else {
        "  - all dangling images"
    };
    let warning = format!(
        "WARNING! This will remove:\n  - all stopped containers\n{images}\n  - all VM templates \
         (the next container of each kind builds its own again)\n"
    );
    if !confirmed(a.force, &warning)? {
        return Ok(0);
    }
    let rt = super::runtime(g)?;
    let store = open(&g.root)?;
    let mut reclaimed = 0;
    let mut removed = Vec::new();
    for s in rt.store.list()? {
        if s.effective_status() == Status::Running {
            continue;
        }
        let size = container_size(&rt, &s);
        // One that started or went in the meantime is left to the next prune.
        match rt.remove(&s.id, false) {
            Ok(id) => {
                reclaimed += size;
                removed.push(id);
            }
            Err(e) => tracing::warn!("prune: keeping container {}: {e}", s.id),
        }
    }
    if !removed.is_empty() {
        println!("Deleted Containers:");
        for id in &removed {
            println!("{id}");
        }
        println!();
    }
    let pruned = prune_images(&rt, &store, a.all)?;
    if !pruned.images.is_empty() {
        println!("Deleted Images:");
        print_images(&pruned);
        println!();
    }
    reclaimed += pruned.stats.bytes_freed;
    if let Some(dir) = template::dir_from_env() {
        match template::cache::remove_all(&dir) {
            Ok(t) => {
                if t.templates > 0 {
                    println!("Deleted VM Templates: {}\n", t.templates);
                }
                reclaimed += t.bytes;
            }
            Err(e) => tracing::warn!("prune: VM templates in {}: {e}", dir.display()),
        }
    }
    println!("Total reclaimed space: {}", human_size(reclaimed));
    Ok(0)
}

fn prune_images(rt: &Runtime, store: &Store, all: bool) -> Result<Pruned, Error> {
    let scope = if all {
        PruneScope::Unused
    } else {
        PruneScope::Dangling
    };
    // As `rmi`: no `run` records a container of an image between the look and the removal.
    let images = {
        let _containers = rt.store.lock()?;
        store.forget_unused(scope, &images_in_use(rt)?)
    };
    let images = images.map_err(|e| Error::Image(e.to_string()))?;
    if images.is_empty() {
        return Ok(Pruned::default());
    }
    let stats = store.gc().map_err(|e| Error::Image(e.to_string()))?;
    Ok(Pruned { images, stats })
}

fn print_images(pruned: &Pruned) {
    for i in &pruned.images {
        for r in &i.references {
            println!("untagged: {}", r.familiar());
        }
        println!("deleted: {}", i.id());
    }
}

/// Asks on the terminal unless `force`; refuses, with one line, to guess when stdin is not
/// a terminal.
fn confirmed(force: bool, warning: &str) -> Result<bool, Error> {
    if force {
        return Ok(true);
    }
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        return Err(Error::Usage(
            "stdin is not a terminal to confirm on; add -f to prune without asking".into(),
        ));
    }
    print!("{warning}\nAre you sure you want to continue? [y/N] ");
    std::io::stdout().flush()?;
    let mut answer = String::new();
    stdin.lock().read_line(&mut answer)?;
    Ok(matches!(answer.trim(), "y" | "Y" | "yes" | "Yes"))
}
