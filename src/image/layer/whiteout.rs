//! OCI whiteouts → overlayfs whiteouts.
//!
//! In an OCI layer, `dir/.wh.NAME` deletes `NAME` from the layers below and
//! `dir/.wh..wh..opq` hides everything below `dir`. overlayfs spells these as a character
//! device 0:0 named `NAME`, and the xattr `trusted.overlay.opaque=y` on `dir`.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;

pub const PREFIX: &str = ".wh.";
pub const OPAQUE: &str = ".wh..wh..opq";
pub const OPAQUE_XATTR: &str = "trusted.overlay.opaque";

/// What a file name means in an OCI layer.
#[derive(Debug, PartialEq, Eq)]
pub enum Kind<'a> {
    /// An ordinary entry.
    Plain,
    /// `.wh.NAME`: delete `NAME` from the lower layers.
    Whiteout(&'a OsStr),
    /// `.wh..wh..opq`: the parent directory is opaque.
    Opaque,
    /// Another `.wh..wh.*` name (aufs bookkeeping such as `.wh..wh.plnk`): skipped.
    Internal,
    /// `.wh.` with no name, or `.wh..`/`.wh...`: invalid.
    Invalid,
}

pub fn classify(name: &OsStr) -> Kind<'_> {
    let b = name.as_bytes();
    if b == OPAQUE.as_bytes() {
        return Kind::Opaque;
    }
    if b.starts_with(b".wh..wh.") {
        return Kind::Internal;
    }
    match b.strip_prefix(PREFIX.as_bytes()) {
        None => Kind::Plain,
        Some(b"") | Some(b".") | Some(b"..") => Kind::Invalid,
        Some(rest) if rest.contains(&b'/') => Kind::Invalid,
        Some(rest) => Kind::Whiteout(OsStr::from_bytes(rest)),
    }
}

/// Xattrs a layer may not set itself: `trusted.overlay.*` would let a layer steer the
/// guest's overlayfs (redirects, metacopy, opacity) behind the whiteout rules above.
pub fn xattr_allowed(name: &str) -> bool {
    !name.starts_with("trusted.overlay.")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_names() {
        assert_eq!(classify(OsStr::new("file")), Kind::Plain);
        assert_eq!(
            classify(OsStr::new(".wh.file")),
            Kind::Whiteout(OsStr::new("file"))
        );
        assert_eq!(classify(OsStr::new(".wh..wh..opq")), Kind::Opaque);
        assert_eq!(classify(OsStr::new(".wh..wh.plnk")), Kind::Internal);
        assert_eq!(classify(OsStr::new(".wh.")), Kind::Invalid);
        assert_eq!(
            classify(OsStr::new(".wh.. ")),
            Kind::Whiteout(OsStr::new(". "))
        );
        assert_eq!(classify(OsStr::new(".wh..")), Kind::Invalid);
        assert!(!xattr_allowed("trusted.overlay.redirect"));
        assert!(xattr_allowed("security.capability"));
    }
}
