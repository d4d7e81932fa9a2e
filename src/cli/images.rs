//! The image store (`crate::image::Store`, under `--root`) as the commands show it: the JSON
//! of `inspect`, and the rows, ages and sizes of `images`.

use std::path::Path;

use serde_json::{json, Value};

use crate::image::{self, Image, Store};

use super::Error;

fn image_err(e: impl std::fmt::Display) -> Error {
    Error::Image(e.to_string())
}

/// The image store under `--root`.
pub fn open(root: &Path) -> Result<Store, Error> {
    Store::open(root).map_err(image_err)
}

/// `what` as `husk inspect` shows it, docker's field names where docker has one.
pub fn inspect(store: &Store, what: &str) -> Result<Option<Value>, Error> {
    let img = match store.get(what) {
        Ok(i) => i,
        Err(image::StoreError::NotFound(_)) => return Ok(None),
        Err(e) => return Err(image_err(e)),
    };
    let layers: Vec<Value> = img
        .layers
        .iter()
        .map(|l| {
            json!({
                "Digest": l.digest.to_string(),
                "MediaType": l.media_type,
                "Size": l.size,
                "Disk": store.layer_image_path(&l.digest),
            })
        })
        .collect();
    Ok(Some(json!({
        "Id": img.id().to_string(),
        "RepoTags": img.references.iter().map(|r| r.familiar()).collect::<Vec<_>>(),
        "Digest": img.manifest_digest.to_string(),
        "Created": img.config.created(),
        "Architecture": img.config.architecture().to_string(),
        "Os": img.config.os().to_string(),
        "Size": img.size(),
        "Config": img.config.config(),
        "RootFS": img.config.rootfs(),
        "Layers": layers,
    })))
}

/// `docker.io/library/busybox:latest` → (`busybox`, `latest`); untagged → `<none>`.
pub fn repo_tag(r: &image::Reference) -> (String, String) {
    let familiar = r.familiar();
    let name = familiar.split('@').next().unwrap_or(&familiar);
    match (r.tag(), name.rsplit_once(':')) {
        (Some(t), Some((repo, _))) => (repo.to_string(), t.to_string()),
        _ => (name.to_string(), "<none>".to_string()),
    }
}

/// One row per name (an unnamed image gets one `<none>` row), as `docker images` lists.
pub fn rows(img: &Image) -> Vec<(String, String)> {
    if img.references.is_empty() {
        return vec![("<none>".into(), "<none>".into())];
    }
    img.references.iter().map(repo_tag).collect()
}

/// "3 days ago" from an RFC 3339 time (`2023-11-14T22:13:20Z`); "" when unparsable.
pub fn ago(created: Option<&str>, now: u64) -> String {
    let Some(t) = created.and_then(crate::util::time::epoch_of) else {
        return String::new();
    };
    let s = now.saturating_sub(t);
    let (n, unit) = match s {
        0..=59 => return "Less than a minute ago".into(),
        60..=3599 => (s / 60, "minute"),
        3600..=86_399 => (s / 3600, "hour"),
        86_400..=1_209_599 => (s / 86_400, "day"),
        1_209_600..=5_183_999 => (s / 604_800, "week"),
        5_184_000..=63_071_999 => (s / 2_592_000, "month"),
        _ => (s / 31_536_000, "year"),
    };
    format!("{n} {unit}{} ago", if n == 1 { "" } else { "s" })
}

/// `4.2MB`, as docker prints sizes (powers of 1000).
pub fn human_size(n: u64) -> String {
    let units = ["B", "kB", "MB", "GB", "TB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1000.0 && i < units.len() - 1 {
        v /= 1000.0;
        i += 1;
    }
    if i == 0 {
        format!("{n}B")
    } else {
        format!("{:.3}", v)
            .trim_end_matches('0')
            .trim_end_matches('.')
            .to_string()
            + units[i]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_and_sizes() {
        assert_eq!(
            ago(Some("2023-11-14T22:13:20Z"), 1_700_000_000 + 3 * 86_400),
            "3 days ago"
        );
        assert_eq!(ago(Some("x"), 5), "");
        assert_eq!(human_size(999), "999B");
        assert_eq!(human_size(4_200_000), "4.2MB");
        assert_eq!(human_size(0), "0B");
        assert_eq!(human_size(1000), "1kB");
        assert_eq!(human_size(3_056_128), "3.056MB");
        assert_eq!(human_size(1_500_000_000), "1.5GB");
    }

    #[test]
    fn repo_and_tag() {
        let r: image::Reference = "busybox".parse().unwrap();
        assert_eq!(repo_tag(&r), ("busybox".into(), "latest".into()));
        let r: image::Reference = "127.0.0.1:5000/a/b:t".parse().unwrap();
        assert_eq!(repo_tag(&r), ("127.0.0.1:5000/a/b".into(), "t".into()));
    }
}
