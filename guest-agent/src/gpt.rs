//! Whether the kernel's partition list of a disk is already what the disk's GPT says.
//!
//! A VM restored from a template still lists the partitions its template's kernel found at
//! boot. `BLKRRPART` makes the kernel read the table again, but on a disk with partitions it
//! also deletes and re-adds every partition device: under QEMU/TCG a clone's re-read of a
//! busybox layer disk took ~60 ms of code run for the first time, ~20 more than reading the
//! table itself (2026-12-06). When the clone's
//! disk has the same table as its template's — the same image again, the common case — there
//! is nothing to re-read. This reads the disk's primary GPT (header and entries, both CRCs
//! checked, as the kernel does) and compares its partitions with `/sys/block/<disk>/`.
//! Anything it does not understand (no GPT, another sector size, a bad CRC, a table the
//! kernel would not take) answers "not the same", and the caller re-reads as before.

use std::fs::{self, File};
use std::os::unix::fs::FileExt;
use std::path::Path;

/// GPT's logical block: husk's disks have 512-byte sectors (anything else is re-read).
const SECTOR: u64 = 512;
/// Bytes of entries this reads at most (the kernel's own limit is the header's count times
/// its size; husk's tables hold 128 entries of 128 bytes).
const MAX_ENTRIES_BYTES: u64 = 64 * 1024;
/// Partitions compared at most (a layer disk holds up to 127); more is re-read.
const MAX_PARTITIONS: usize = 256;

/// One partition: its number (GPT entry index + 1, as Linux numbers them), first sector and
/// length in 512-byte sectors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Partition {
    pub number: u32,
    pub start: u64,
    pub sectors: u64,
}

/// Whether the kernel lists exactly the partitions `dev`'s primary GPT holds; `false` on
/// any doubt (including a read error: the re-read that follows says what is wrong).
pub fn kernel_matches(dev: &File, sys_disk: &Path) -> bool {
    if read_u64(&sys_disk.join("queue/logical_block_size")) != Some(SECTOR) {
        return false;
    }
    let (Some(on_disk), Some(listed)) = (read_gpt(dev), listed(sys_disk)) else {
        return false;
    };
    on_disk == listed
}

/// The partitions of `dev`'s primary GPT, by number; `None` if it has none the kernel
/// would take (no protective MBR, no header, a bad CRC, an absurd size).
pub fn read_gpt(dev: &File) -> Option<Vec<Partition>> {
    let mut mbr = [0u8; 512];
    dev.read_exact_at(&mut mbr, 0).ok()?;
    // The kernel's GPT parser wants a protective (0xee) MBR entry and the boot signature.
    let protective = (0..4).any(|i| mbr[446 + 16 * i + 4] == 0xee);
    if mbr[510..512] != [0x55, 0xaa] || !protective {
        return None;
    }
    let mut header = [0u8; 512];
    dev.read_exact_at(&mut header, SECTOR).ok()?;
    parse(&header, |offset, buf| dev.read_exact_at(buf, offset).ok())
}

/// [`read_gpt`]'s work on a header sector, with `read(offset, buf)` reading the entries.
fn parse(
    header: &[u8; 512],
    read: impl FnOnce(u64, &mut [u8]) -> Option<()>,
) -> Option<Vec<Partition>> {
    if &header[0..8] != b"EFI PART" {
        return None;
    }
    let header_size = u32_at(header, 12) as usize;
    if !(92..=512).contains(&header_size) || u64_at(header, 24) != 1 {
        return None;
    }
    let mut zeroed = header[..header_size].to_vec();
    zeroed[16..20].fill(0);
    if crc32fast::hash(&zeroed) != u32_at(header, 16) {
        return None;
    }
    let first_usable = u64_at(header, 40);
    let last_usable = u64_at(header, 48);
    let entries_lba = u64_at(header, 72);
    let count = u64::from(u32_at(header, 80));
    let entry_size = u64::from(u32_at(header, 84));
    let bytes = count.checked_mul(entry_size)?;
    if entry_size < 128 || entry_size % 8 != 0 || bytes > MAX_ENTRIES_BYTES {
        return None;
    }
    let mut entries = vec![0u8; usize::try_from(bytes).ok()?];
    read(entries_lba.checked_mul(SECTOR)?, &mut entries)?;
    if crc32fast::hash(&entries) != u32_at(header, 88) {
        return None;
    }
    let mut parts = Vec::new();
    for (i, e) in entries.chunks_exact(entry_size as usize).enumerate() {
        if e[0..16].iter().all(|&b| b == 0) {
            continue;
        }
        let (first, last) = (u64_at(e, 32), u64_at(e, 40));
        // The kernel skips entries outside the usable range; saying "different" instead
        // leaves that judgement to its re-read.
        if first > last || first < first_usable || last > last_usable {
            return None;
        }
        if parts.len() == MAX_PARTITIONS {
            return None;
        }
        parts.push(Partition {
            number: u32::try_from(i + 1).ok()?,
            start: first,
            sectors: last - first + 1,
        });
    }
    Some(parts)
}

/// The partitions the kernel lists for the disk at `sys_disk` (`/sys/block/vda`), by
/// number; `None` if one cannot be read.
pub fn listed(sys_disk: &Path) -> Option<Vec<Partition>> {
    let name = sys_disk.file_name()?.to_str()?;
    let mut parts = Vec::new();
    for e in fs::read_dir(sys_disk).ok()?.flatten() {
        let file_name = e.file_name();
        let Some(child) = file_name.to_str() else {
            continue;
        };
        // vda1, vda2, … (a disk whose name ends in a digit has nvme0n1p1-style names, which
        // husk's virtio disks never are).
        if !child.starts_with(name) || !e.path().join("partition").exists() {
            continue;
        }
        let p = e.path();
        if parts.len() == MAX_PARTITIONS {
            return None;
        }
        parts.push(Partition {
            number: u32::try_from(read_u64(&p.join("partition"))?).ok()?,
            start: read_u64(&p.join("start"))?,
            sectors: read_u64(&p.join("size"))?,
        });
    }
    parts.sort();
    Some(parts)
}

fn read_u64(path: &Path) -> Option<u64> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    const ENTRIES: usize = 128;

    /// A disk image with a protective MBR and a primary GPT of `parts` (first, last LBA).
    fn disk(parts: &[(u64, u64)]) -> Vec<u8> {
        let mut d = vec![0u8; 34 * 512];
        d[446 + 4] = 0xee;
        d[510] = 0x55;
        d[511] = 0xaa;
        let mut entries = vec![0u8; ENTRIES * 128];
        for (i, (first, last)) in parts.iter().enumerate() {
            let e = &mut entries[i * 128..(i + 1) * 128];
            e[0] = 0xaf; // any non-zero type GUID
            e[32..40].copy_from_slice(&first.to_le_bytes());
            e[40..48].copy_from_slice(&last.to_le_bytes());
        }
        let h = &mut d[512..1024];
        h[0..8].copy_from_slice(b"EFI PART");
        h[12..16].copy_from_slice(&92u32.to_le_bytes());
        h[24..32].copy_from_slice(&1u64.to_le_bytes());
        h[40..48].copy_from_slice(&34u64.to_le_bytes());
        h[48..56].copy_from_slice(&1_000_000u64.to_le_bytes());
        h[72..80].copy_from_slice(&2u64.to_le_bytes());
        h[80..84].copy_from_slice(&(ENTRIES as u32).to_le_bytes());
        h[84..88].copy_from_slice(&128u32.to_le_bytes());
        h[88..92].copy_from_slice(&crc32fast::hash(&entries).to_le_bytes());
        let crc = crc32fast::hash(&h[..92]);
        h[16..20].copy_from_slice(&crc.to_le_bytes());
        d[1024..1024 + entries.len()].copy_from_slice(&entries);
        d
    }

    fn file(bytes: &[u8]) -> File {
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(bytes).unwrap();
        f
    }

    fn part(number: u32, start: u64, sectors: u64) -> Partition {
        Partition {
            number,
            start,
            sectors,
        }
    }

    #[test]
    fn reads_the_partitions_of_a_valid_table() {
        let f = file(&disk(&[(2048, 4095), (4096, 4096)]));
        assert_eq!(
            read_gpt(&f),
            Some(vec![part(1, 2048, 2048), part(2, 4096, 1)])
        );
        assert_eq!(read_gpt(&file(&disk(&[]))), Some(vec![]));
    }

    #[test]
    fn anything_doubtful_is_no_table() {
        let good = disk(&[(2048, 4095)]);
        type Breaker = fn(&mut Vec<u8>);
        let cases: Vec<(&str, Breaker)> = vec![
            ("no boot signature", |d| d[510] = 0),
            ("no protective entry", |d| d[446 + 4] = 0x83),
            ("no signature", |d| d[512] = b'X'),
            ("header CRC", |d| d[512 + 48] ^= 1),
            ("entries CRC", |d| d[1024 + 40] ^= 1),
            ("short disk", |d| d.truncate(1024 + 100)),
            ("an ext4 disk", |d| d.fill(0)),
        ];
        for (what, break_it) in cases {
            let mut d = good.clone();
            break_it(&mut d);
            assert_eq!(read_gpt(&file(&d)), None, "{what}");
        }
    }

    #[test]
    fn entries_outside_the_usable_range_or_reversed_are_no_table() {
        assert_eq!(read_gpt(&file(&disk(&[(10, 20)]))), None);
        assert_eq!(read_gpt(&file(&disk(&[(5000, 4000)]))), None);
        assert_eq!(read_gpt(&file(&disk(&[(2048, 2_000_000)]))), None);
    }

    #[test]
    fn an_absurd_entry_array_is_not_read() {
        let mut h = [0u8; 512];
        h[0..8].copy_from_slice(b"EFI PART");
        h[12..16].copy_from_slice(&92u32.to_le_bytes());
        h[24..32].copy_from_slice(&1u64.to_le_bytes());
        h[80..84].copy_from_slice(&u32::MAX.to_le_bytes());
        h[84..88].copy_from_slice(&u32::MAX.to_le_bytes());
        let crc = crc32fast::hash(&h[..92]);
        h[16..20].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(parse(&h, |_, _| panic!("read entries")), None);
    }

    /// A fake `/sys/block/vda` with `parts` (number, start, size).
    fn sys_disk(parts: &[(u32, u64, u64)]) -> tempfile::TempDir {
        let root = tempfile::tempdir().unwrap();
        let d = root.path().join("vda");
        fs::create_dir_all(d.join("queue")).unwrap();
        fs::write(d.join("queue/logical_block_size"), "512\n").unwrap();
        fs::create_dir_all(d.join("holders")).unwrap();
        fs::write(d.join("size"), "999999\n").unwrap();
        for (n, start, size) in parts {
            let p = d.join(format!("vda{n}"));
            fs::create_dir_all(&p).unwrap();
            fs::write(p.join("partition"), format!("{n}\n")).unwrap();
            fs::write(p.join("start"), format!("{start}\n")).unwrap();
            fs::write(p.join("size"), format!("{size}\n")).unwrap();
        }
        root
    }

    #[test]
    fn the_kernel_matches_only_the_same_partitions() {
        let f = file(&disk(&[(2048, 4095), (4096, 8191)]));
        let same = sys_disk(&[(2, 4096, 4096), (1, 2048, 2048)]);
        assert!(kernel_matches(&f, &same.path().join("vda")));
        for other in [
            vec![(1, 2048, 2048)],
            vec![(1, 2048, 2048), (2, 4096, 4095)],
            vec![(1, 2048, 2048), (3, 4096, 4096)],
            vec![(1, 2048, 2048), (2, 4096, 4096), (3, 8192, 1)],
        ] {
            let sys = sys_disk(&other);
            assert!(!kernel_matches(&f, &sys.path().join("vda")), "{other:?}");
        }
        // No table on the disk: re-read (cheap where there are no partitions), not assumed.
        let blank = file(&vec![0u8; 34 * 512]);
        assert!(!kernel_matches(&blank, &sys_disk(&[]).path().join("vda")));
    }

    #[test]
    fn another_sector_size_is_not_compared() {
        let f = file(&disk(&[(2048, 4095)]));
        let sys = sys_disk(&[(1, 2048, 2048)]);
        let d = sys.path().join("vda");
        fs::write(d.join("queue/logical_block_size"), "4096\n").unwrap();
        assert!(!kernel_matches(&f, &d));
    }
}
