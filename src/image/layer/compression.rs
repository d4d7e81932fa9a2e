//! Which compression a layer blob uses, told by its magic bytes rather than by the media
//! type the manifest claims (docker-archive tars carry no media types at all).

use std::io::{self, BufRead, Read};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    /// Looks at the first bytes of `reader` without consuming them.
    pub fn detect(reader: &mut impl BufRead) -> io::Result<Compression> {
        let head = reader.fill_buf()?;
        Ok(if head.starts_with(&[0x1f, 0x8b]) {
            Compression::Gzip
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Compression::Zstd
        } else {
            Compression::None
        })
    }

    /// The OCI media type of a layer with this compression.
    pub fn media_type(self) -> &'static str {
        match self {
            Compression::None => "application/vnd.oci.image.layer.v1.tar",
            Compression::Gzip => "application/vnd.oci.image.layer.v1.tar+gzip",
            Compression::Zstd => "application/vnd.oci.image.layer.v1.tar+zstd",
        }
    }

    /// A reader of the uncompressed tar.
    pub fn decoder<'a, R: BufRead + 'a>(self, reader: R) -> io::Result<Box<dyn Read + 'a>> {
        Ok(match self {
            Compression::None => Box::new(reader),
            // MultiGzDecoder: pigz and some registries write several gzip members.
            Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(reader)),
            Compression::Zstd => Box::new(zstd::stream::read::Decoder::with_buffer(reader)?),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn detects_and_decodes() {
        let plain = b"plain tar bytes".to_vec();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&plain).unwrap();
        let gz = gz.finish().unwrap();
        let zs = zstd::stream::encode_all(&plain[..], 1).unwrap();
        for (data, want) in [
            (plain.clone(), Compression::None),
            (gz, Compression::Gzip),
            (zs, Compression::Zstd),
        ] {
            let mut r = io::BufReader::new(&data[..]);
            let c = Compression::detect(&mut r).unwrap();
            assert_eq!(c, want);
            let mut out = Vec::new();
            c.decoder(r).unwrap().read_to_end(&mut out).unwrap();
            assert_eq!(out, plain);
        }
    }
}
