//! `husk save [-o FILE] [--format docker-archive|oci-archive] IMAGE...`: the images as one
//! archive, to FILE (written whole or not at all) or to stdout when it is not a terminal.

use std::io::IsTerminal;

use crate::cli::images::open;
use crate::cli::{Error, GlobalOpts, SaveArgs};

pub fn run(g: &GlobalOpts, a: SaveArgs) -> Result<i32, Error> {
    // Refused before any work, as docker does: a tar on a terminal helps nobody.
    if a.output.is_none() && std::io::stdout().is_terminal() {
        return Err(Error::Usage(
            "cowardly refusing to save to a terminal; use -o FILE or redirect stdout".into(),
        ));
    }
    let store = open(&g.root)?;
    let items = store
        .resolve_for_save(&a.images)
        .map_err(|e| Error::Image(e.to_string()))?;
    let saved = match &a.output {
        Some(path) => store.save_to_file(&items, a.format, path),
        None => store.save(
            &items,
            a.format,
            std::io::BufWriter::with_capacity(256 << 10, std::io::stdout().lock()),
        ),
    };
    saved.map_err(|e| Error::Image(e.to_string()))?;
    Ok(0)
}
