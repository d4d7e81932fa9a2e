//! A tar archive described in lines, so the fuzzer mutates what an image archive or a layer
//! *says* (names, modes, link targets, JSON) rather than tar checksums and padding.
//!
//! ```text
//! input   := kind member ("\n@@\n" member)*
//! kind    := 'G' (tar.gz) | 'Z' (tar.zst) | 'R' (the rest is the file, byte for byte)
//!            | any other byte (plain tar)
//! member  := type [octal mode] " " name [" -> " link] "\n" content
//! type    := 'f' file | 'd' dir | 'l' symlink | 'h' hard link | 'c' char device
//!            | 'b' block device | 'p' fifo | 'x' pax extended header (content: records)
//!            | 't' file whose content is itself members (separated by "\n@@@\n"), built
//!              into a tar | 'z' the same, gzip-compressed (a layer inside an image archive)
//! ```
//!
//! Only the outer archive's 't' and 'z' members are built: inside them, 't' and 'z' are
//! plain files. (Nested without a bound, a line of "t\n"s became one tar per line, each
//! hashed whole, and inputs of a few KiB cost the harness seconds.)
//!
//! Names and link targets are written into the tar header byte for byte (`..`, absolute
//! paths, NULs and all), with a GNU long-name entry first when they exceed 100 bytes. In
//! names, links and contents, `{sha:N}`, `{hex:N}` and `{size:N}` become the `sha256:` digest,
//! its hex, and the byte size of member N's final content (N after the current member: they
//! resolve back to front; a member's own name may name its own digest), so a mutated manifest
//! can still name real blobs; `{diff:N}` is the digest of member N's uncompressed tar (its
//! `sha` unless it is a 'z' member), as an image config's `diff_ids` want.

use sha2::{Digest, Sha256};

/// The file bytes `input` describes.
pub fn build(input: &[u8]) -> Vec<u8> {
    let Some((&kind, rest)) = input.split_first() else {
        return Vec::new();
    };
    if kind == b'R' {
        return rest.to_vec();
    }
    let tar = tar_of(rest, true);
    match kind {
        b'G' => gzip_stored(&tar),
        b'Z' => zstd::encode_all(&tar[..], 1).expect("zstd into memory"),
        _ => tar,
    }
}

/// `data` as a gzip member whose deflate stream is stored blocks (RFC 1951 §3.2.4) — what
/// `gzip -0` writes. The harness spent about half of each input compressing (instrumented
/// miniz_oxide); the code under test only ever sees the decompressed tar, and huffman-coded
/// streams still reach the decoder through the raw ('R') kind.
fn gzip_stored(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + 18 + 5 * (data.len() / 0xffff + 1));
    // Magic, deflate, no flags, no mtime, no extra flags, OS unknown.
    out.extend_from_slice(&[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff]);
    let mut chunks = data.chunks(0xffff).peekable();
    if chunks.peek().is_none() {
        out.extend_from_slice(&[1, 0, 0, 0xff, 0xff]);
    }
    while let Some(chunk) = chunks.next() {
        let last = chunks.peek().is_none();
        let len = u16::try_from(chunk.len()).expect("chunks of at most 0xffff bytes");
        out.push(u8::from(last));
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&(!len).to_le_bytes());
        out.extend_from_slice(chunk);
    }
    let mut crc = flate2::Crc::new();
    crc.update(data);
    out.extend_from_slice(&crc.sum().to_le_bytes());
    // ISIZE: the length modulo 2^32, so the truncation is the format's.
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out
}

struct Member {
    kind: u8,
    mode: u32,
    name: Vec<u8>,
    link: Option<Vec<u8>>,
    content: Vec<u8>,
}

fn split_on<'a>(mut s: &'a [u8], sep: &[u8]) -> Vec<&'a [u8]> {
    let mut out = Vec::new();
    while let Some(i) = s.windows(sep.len()).position(|w| w == sep) {
        out.push(&s[..i]);
        s = &s[i + sep.len()..];
    }
    out.push(s);
    out
}

fn parse_member(raw: &[u8]) -> Option<Member> {
    let (header, content) = match raw.iter().position(|&b| b == b'\n') {
        Some(i) => (&raw[..i], &raw[i + 1..]),
        None => (raw, &[][..]),
    };
    let (&kind, header) = header.split_first()?;
    let digits = header
        .iter()
        .take_while(|b| (b'0'..=b'7').contains(b))
        .count();
    let mode = std::str::from_utf8(&header[..digits])
        .ok()
        .and_then(|m| u32::from_str_radix(m, 8).ok())
        .unwrap_or(if kind == b'd' { 0o755 } else { 0o644 });
    let spec = header[digits..]
        .strip_prefix(b" ")
        .unwrap_or(&header[digits..]);
    let parts = split_on(spec, b" -> ");
    let link = (parts.len() > 1).then(|| parts[1..].join(&b" -> "[..]));
    Some(Member {
        kind,
        mode,
        name: parts[0].to_vec(),
        link,
        content: content.to_vec(),
    })
}

/// What tokens may say about a member: digest hex, size, uncompressed digest hex.
type Facts = Option<(String, usize, String)>;

fn hex_digest(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Replaces the `{sha:N}`/`{hex:N}`/`{size:N}`/`{diff:N}` tokens in `s` from `facts`.
fn substitute(s: &[u8], facts: &[Facts]) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        if s[i] == b'{' {
            if let Some(end) = s[i..].iter().take(16).position(|&b| b == b'}') {
                let token = &s[i + 1..i + end];
                let mut it = token.splitn(2, |&b| b == b':');
                let (what, n) = (it.next().unwrap_or_default(), it.next().unwrap_or_default());
                let n = std::str::from_utf8(n)
                    .ok()
                    .and_then(|n| n.parse::<usize>().ok());
                if let Some(Some((hex, size, diff))) = n.and_then(|n| facts.get(n)) {
                    let v = match what {
                        b"sha" => Some(format!("sha256:{hex}")),
                        b"hex" => Some(hex.clone()),
                        b"size" => Some(size.to_string()),
                        b"diff" => Some(format!("sha256:{diff}")),
                        _ => None,
                    };
                    if let Some(v) = v {
                        out.extend_from_slice(v.as_bytes());
                        i += end + 1;
                        continue;
                    }
                }
            }
        }
        out.push(s[i]);
        i += 1;
    }
    out
}

/// The tar of the members in `rest`: the outer archive's (separated by "\n@@\n", its 't'/'z'
/// members built) or a nested one's (separated by "\n@@@\n", 't'/'z' plain files).
fn tar_of(rest: &[u8], outer: bool) -> Vec<u8> {
    let separator: &[u8] = if outer { b"\n@@\n" } else { b"\n@@@\n" };
    let mut members: Vec<Member> = split_on(rest, separator)
        .into_iter()
        .filter_map(parse_member)
        .collect();
    let mut facts: Vec<Facts> = vec![None; members.len()];
    for i in (0..members.len()).rev() {
        let m = &mut members[i];
        m.content = substitute(&m.content, &facts);
        let diff = match m.kind {
            b't' | b'z' if outer => {
                let tar = tar_of(&m.content, false);
                let diff = hex_digest(&tar);
                m.content = if m.kind == b'z' {
                    gzip_stored(&tar)
                } else {
                    tar
                };
                Some(diff)
            }
            _ => None,
        };
        let hex = hex_digest(&m.content);
        facts[i] = Some((hex.clone(), m.content.len(), diff.unwrap_or(hex)));
        m.name = substitute(&m.name, &facts);
        m.link = m.link.as_ref().map(|l| substitute(l, &facts));
    }
    let mut b = tar::Builder::new(Vec::new());
    for m in &members {
        append(&mut b, m);
    }
    b.into_inner().expect("tar into memory")
}

fn long_entry(b: &mut tar::Builder<Vec<u8>>, kind: tar::EntryType, value: &[u8]) {
    let mut h = tar::Header::new_gnu();
    h.as_gnu_mut().expect("gnu header").name[..13].copy_from_slice(b"././@LongLink");
    h.set_entry_type(kind);
    h.set_mode(0o644);
    let mut data = value.to_vec();
    data.push(0);
    h.set_size(data.len() as u64);
    h.set_cksum();
    b.append(&h, &data[..]).expect("tar into memory");
}

fn append(b: &mut tar::Builder<Vec<u8>>, m: &Member) {
    use tar::EntryType as T;
    let kind = match m.kind {
        b'd' => T::Directory,
        b'l' => T::Symlink,
        b'h' => T::Link,
        b'c' => T::Char,
        b'b' => T::Block,
        b'p' => T::Fifo,
        b'x' => T::XHeader,
        _ => T::Regular,
    };
    if m.name.len() > 100 {
        long_entry(b, T::GNULongName, &m.name);
    }
    let link = m.link.as_deref().unwrap_or_default();
    if link.len() > 100 {
        long_entry(b, T::GNULongLink, link);
    }
    let mut h = tar::Header::new_gnu();
    {
        let g = h.as_gnu_mut().expect("gnu header");
        let n = m.name.len().min(100);
        g.name[..n].copy_from_slice(&m.name[..n]);
        let n = link.len().min(100);
        g.linkname[..n].copy_from_slice(&link[..n]);
    }
    h.set_entry_type(kind);
    h.set_mode(m.mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_700_000_000);
    let data: &[u8] = if matches!(kind, T::Regular | T::XHeader) {
        &m.content
    } else {
        &[]
    };
    h.set_size(data.len() as u64);
    h.set_cksum();
    b.append(&h, data).expect("tar into memory");
}
