//! Content digests (`sha256:<hex>`) and a writer that hashes what passes through it.
//!
//! Only sha256 is accepted: it is what every registry and archive in use writes, and a single
//! algorithm keeps the blob store's layout (`blobs/sha256/<hex>`) and the cache keys simple.

use std::fmt;
use std::io::{self, Read, Write};
use std::str::FromStr;

use sha2::{Digest as _, Sha256};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DigestError {
    /// `{0:?}` is not a digest: expected `sha256:` and 64 lowercase hex digits.
    #[error("{0:?} is not a digest: expected sha256: and 64 lowercase hex digits")]
    Malformed(String),
    #[error("digest {0:?} uses an unsupported algorithm: only sha256 is supported")]
    Unsupported(String),
}

/// A sha256 content digest.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest {
    hex: String,
}

impl Digest {
    /// The digest of `data`.
    pub fn of(data: &[u8]) -> Digest {
        Digest::from_hash(Sha256::digest(data).as_slice())
    }

    /// A digest from its 64 hex digits (no `sha256:` prefix).
    pub fn from_hex(hex: &str) -> Result<Digest, DigestError> {
        if hex.len() == 64
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            Ok(Digest {
                hex: hex.to_string(),
            })
        } else {
            Err(DigestError::Malformed(hex.to_string()))
        }
    }

    fn from_hash(bytes: &[u8]) -> Digest {
        let mut hex = String::with_capacity(64);
        for b in bytes {
            hex.push_str(&format!("{b:02x}"));
        }
        Digest { hex }
    }

    /// The 64 hex digits, safe to use as a file name.
    pub fn hex(&self) -> &str {
        &self.hex
    }

    /// The first 12 hex digits, as `docker images` shows an image ID.
    pub fn short(&self) -> &str {
        &self.hex[..12]
    }
}

impl FromStr for Digest {
    type Err = DigestError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.split_once(':') {
            Some(("sha256", hex)) => {
                Digest::from_hex(hex).map_err(|_| DigestError::Malformed(s.to_string()))
            }
            Some((alg, _)) if !alg.is_empty() => Err(DigestError::Unsupported(s.to_string())),
            _ => Err(DigestError::Malformed(s.to_string())),
        }
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex)
    }
}

impl serde::Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Hashes everything written through it (and counts the bytes) before passing it on.
pub struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    written: u64,
}

impl<W: Write> HashingWriter<W> {
    pub fn new(inner: W) -> Self {
        HashingWriter {
            inner,
            hasher: Sha256::new(),
            written: 0,
        }
    }

    pub fn written(&self) -> u64 {
        self.written
    }

    /// The digest of what was written, and the inner writer.
    pub fn finish(self) -> (Digest, W) {
        (
            Digest::from_hash(self.hasher.finalize().as_slice()),
            self.inner,
        )
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// The digest of everything `reader` yields.
pub fn digest_reader(mut reader: impl Read) -> io::Result<(Digest, u64)> {
    let mut w = HashingWriter::new(io::sink());
    io::copy(&mut reader, &mut w)?;
    let n = w.written();
    Ok((w.finish().0, n))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_sha256() {
        let d = Digest::of(b"");
        assert_eq!(
            d.to_string(),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(d.to_string().parse::<Digest>().unwrap(), d);
        assert_eq!(d.short(), "e3b0c44298fc");
    }

    #[test]
    fn rejects_bad_digests() {
        for bad in [
            "",
            "sha256:",
            "sha256:abc",
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            "sha256:E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855",
            "sha256:../../../../../../../../../../../../../../../../../../../etc/passwd",
        ] {
            assert!(bad.parse::<Digest>().is_err(), "{bad}");
        }
        assert!(matches!(
            "sha512:00".parse::<Digest>(),
            Err(DigestError::Unsupported(_))
        ));
    }

    #[test]
    fn hashing_writer_matches_of() {
        let mut w = HashingWriter::new(Vec::new());
        w.write_all(b"hello").unwrap();
        let (d, v) = w.finish();
        assert_eq!(d, Digest::of(b"hello"));
        assert_eq!(v, b"hello");
    }
}
