use crate::cli::images;
use crate::cli::{Error, GlobalOpts, InspectArgs};
use crate::runtime;

/// Containers first (id, prefix, name), then images; prints a JSON array as docker does.
pub fn run(g: &GlobalOpts, a: InspectArgs) -> Result<i32, Error> {
    let rt = super::runtime(g)?;
    let store = images::open(&g.root)?;
    let mut found = Vec::new();
    let mut code = 0;
    for t in &a.targets {
        match rt.store.resolve(t) {
            Ok(mut s) => {
                s.status = s.effective_status();
                found.push(serde_json::to_value(&s).expect("state serializes"));
                continue;
            }
            Err(runtime::Error::NoSuchContainer(_)) => {}
            Err(e) => return Err(e.into()),
        }
        match images::inspect(&store, t)? {
            Some(v) => found.push(v),
            None => {
                eprintln!("husk: no such container or image: {t}");
                code = 1;
            }
        }
    }
    println!(
        "{}",
        serde_json::to_string_pretty(&found).expect("json serializes")
    );
    Ok(code)
}
