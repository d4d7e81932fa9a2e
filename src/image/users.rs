//! User names in an image config or `-u` (`nobody`, `app:staff`) resolved to numeric ids on
//! the host, from the image's own `/etc/passwd` and `/etc/group` as its layers stack them
//! (the top-most layer that has the file wins; a whiteout or opaque `etc/` above hides the
//! ones below). The agent protocol carries numeric ids only, so this is done before boot.

use std::fs::File;
use std::io::{self, BufReader, Read};

use super::digest::Digest;
use super::layer::compression::Compression;
use super::layer::whiteout::{OPAQUE, PREFIX};
use super::record::Image;
use super::store::Store;

/// Largest passwd or group file read into memory.
const MAX_FILE: u64 = 4 << 20;

#[derive(Debug, thiserror::Error)]
pub enum UserError {
    #[error("user {user:?}: no such user in the image's /etc/passwd")]
    NoUser { user: String },
    #[error("user {user:?}: no such group {group:?} in the image's /etc/group")]
    NoGroup { user: String, group: String },
    #[error("user {user:?}: reading layer {layer}: {source}")]
    Layer {
        user: String,
        layer: Digest,
        source: io::Error,
    },
}

/// Largest number of supplementary groups taken from `/etc/group` (the agent's list limit).
const MAX_GROUPS: usize = 1024;

/// Numeric ids of a `USER[:GROUP]` spec, docker's way: a name is looked up in
/// `/etc/passwd` (its primary group is the gid unless GROUP is given); a numeric uid missing
/// from passwd gets gid 0; GROUP is a name from `/etc/group` or a number. The third value
/// lists the supplementary groups: every `/etc/group` entry that names the user (by its
/// passwd name) as a member, less the gid itself.
pub fn resolve(
    store: &Store,
    image: &Image,
    spec: &str,
) -> Result<(u32, u32, Vec<u32>), UserError> {
    let (user, group) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let read = |path: &str| -> Result<String, UserError> {
        read_file(store, image, path).map_err(|(layer, source)| UserError::Layer {
            user: spec.to_string(),
            layer,
            source,
        })
    };
    let passwd = read("etc/passwd")?;
    let (name, uid, primary) = match user.parse::<u32>() {
        Ok(uid) => match parse_passwd(&passwd).find(|(_, u, _)| *u == uid) {
            Some((n, _, g)) => (Some(n), uid, g),
            None => (None, uid, 0),
        },
        Err(_) => parse_passwd(&passwd)
            .find(|(n, _, _)| *n == user)
            .map(|(n, u, g)| (Some(n), u, g))
            .ok_or_else(|| UserError::NoUser {
                user: spec.to_string(),
            })?,
    };
    let mut groups_text = None;
    let mut group_file = || -> Result<String, UserError> {
        if groups_text.is_none() {
            groups_text = Some(read("etc/group")?);
        }
        Ok(groups_text.clone().unwrap_or_default())
    };
    let gid = match group {
        None | Some("") => primary,
        Some(g) => match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => parse_group(&group_file()?)
                .find(|(n, _)| *n == g)
                .map(|(_, gid)| gid)
                .ok_or_else(|| UserError::NoGroup {
                    user: spec.to_string(),
                    group: g.to_string(),
                })?,
        },
    };
    let groups = match name {
        Some(n) => supplementary(&group_file()?, n, gid),
        None => Vec::new(),
    };
    Ok((uid, gid, groups))
}

/// The gids of the groups that list `user` as a member, without `gid`, sorted, bounded.
fn supplementary(group: &str, user: &str, gid: u32) -> Vec<u32> {
    let mut gids: Vec<u32> = group
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            let g: u32 = f.get(2)?.parse().ok()?;
            f.get(3)?.split(',').any(|m| m.trim() == user).then_some(g)
        })
        .filter(|g| *g != gid)
        .collect();
    gids.sort_unstable();
    gids.dedup();
    gids.truncate(MAX_GROUPS);
    gids
}

/// `(name, uid, gid)` of each well-formed passwd line.
fn parse_passwd(text: &str) -> impl Iterator<Item = (&str, u32, u32)> {
    text.lines().filter_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        Some((
            f.first()?.trim(),
            f.get(2)?.parse().ok()?,
            f.get(3)?.parse().ok()?,
        ))
    })
}

/// `(name, gid)` of each well-formed group line.
fn parse_group(text: &str) -> impl Iterator<Item = (&str, u32)> {
    text.lines().filter_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        Some((f.first()?.trim(), f.get(2)?.parse().ok()?))
    })
}

/// What one layer says about `path` (`etc/passwd`).
enum Found {
    File(Vec<u8>),
    /// Deleted or hidden here: the layers below do not count.
    Hidden,
    Absent,
}

/// The content of `path` in the merged tree of `image`, or "" where no layer has it.
fn read_file(store: &Store, image: &Image, path: &str) -> Result<String, (Digest, io::Error)> {
    for layer in image.layers.iter().rev() {
        let found =
            scan_layer(store, &layer.digest, path).map_err(|e| (layer.digest.clone(), e))?;
        match found {
            Found::File(data) => return Ok(String::from_utf8_lossy(&data).into_owned()),
            Found::Hidden => break,
            Found::Absent => {}
        }
    }
    Ok(String::new())
}

/// `a/./b/` → `a/b`.
fn normalize(raw: &[u8]) -> String {
    String::from_utf8_lossy(raw)
        .split('/')
        .filter(|p| !p.is_empty() && *p != ".")
        .collect::<Vec<_>>()
        .join("/")
}

fn scan_layer(store: &Store, digest: &Digest, path: &str) -> io::Result<Found> {
    let mut reader = BufReader::with_capacity(256 << 10, File::open(store.blob_path(digest))?);
    let compression = Compression::detect(&mut reader)?;
    let mut archive = tar::Archive::new(compression.decoder(reader)?);
    // The file's own whiteout, or any ancestor's, or an opaque ancestor, hides lower layers.
    let (dir, name) = path.rsplit_once('/').unwrap_or(("", path));
    let mut hiding = vec![format!("{dir}/{PREFIX}{name}"), format!("{dir}/{OPAQUE}")];
    let mut prefix = String::new();
    for part in dir.split('/') {
        hiding.push(format!("{prefix}{PREFIX}{part}"));
        prefix.push_str(part);
        prefix.push('/');
    }
    let mut result = Found::Absent;
    for entry in archive.entries()? {
        let mut entry = entry?;
        let p = normalize(&entry.path_bytes());
        if p == path && entry.header().entry_type().is_file() {
            let mut data = Vec::new();
            (&mut entry).take(MAX_FILE).read_to_end(&mut data)?;
            return Ok(Found::File(data));
        }
        if hiding.contains(&p) {
            result = Found::Hidden;
        }
    }
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str =
        "root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1001::/home/user:/bin/sh\nbad line\n";
    const GROUP: &str = "root:x:0:\nstaff:x:50:user\n";

    #[test]
    fn parses_passwd_and_group() {
        let p: Vec<_> = parse_passwd(PASSWD).collect();
        assert_eq!(p, [("root", 0, 0), ("user", 1000, 1001)]);
        let g: Vec<_> = parse_group(GROUP).collect();
        assert_eq!(g, [("root", 0), ("staff", 50)]);
    }

    #[test]
    fn supplementary_groups_are_the_ones_listing_the_user() {
        let group = "root:x:0:\nstaff:x:50:user\nwheel:x:10:root, user\nuser:x:1000:user\nbad\nx:x:y:user\n";
        assert_eq!(supplementary(group, "user", 1000), [10, 50]);
        assert_eq!(supplementary(group, "root", 0), [10]);
        assert!(supplementary(group, "nobody", 0).is_empty());
        assert!(supplementary("", "user", 0).is_empty());
    }

    #[test]
    fn normalizes_entry_paths() {
        assert_eq!(normalize(b"./etc//passwd"), "etc/passwd");
        assert_eq!(normalize(b"etc/"), "etc");
    }
}
