//! A read-only composite disk: many layer files seen by the guest as the partitions of one
//! GPT disk (partition *i* = layer *i*), as crosvm's composite disk does.
//!
//! Only the partitioning metadata is synthesised (in memory, once, at open): protective MBR,
//! primary GPT header + 128-entry array at the front, backup array + header at the end.
//! Layer bytes are never copied — a read is split by offset and sent to the layer file,
//! the metadata buffers, or zero padding (between 1 MiB-aligned partitions).

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use super::backend::{id_from_str, read_file_into, DiskBackend, GuestSlice, ID_BYTES, SECTOR_SIZE};

/// GPT partition entries in the standard array (so at most this many layers).
pub const MAX_LAYERS: usize = 128;
/// Partitions start on 1 MiB boundaries (as partitioning tools do).
pub const ALIGN: u64 = 1 << 20;
const ENTRY_SIZE: usize = 128;
const ENTRIES_BYTES: usize = MAX_LAYERS * ENTRY_SIZE; // 16 KiB = 32 sectors
const ENTRIES_SECTORS: u64 = ENTRIES_BYTES as u64 / SECTOR_SIZE;
const HEADER_SIZE: usize = 92;
/// Linux filesystem data partition type 0FC63DAF-8483-4772-8E79-3D69D8477DE4 (GPT byte order).
pub const LINUX_FS_GUID: [u8; 16] = [
    0xaf, 0x3d, 0xc6, 0x0f, 0x83, 0x84, 0x72, 0x47, 0x8e, 0x79, 0x3d, 0x69, 0xd8, 0x47, 0x7d, 0xe4,
];
/// Partition attribute bit 60: read-only.
pub const ATTR_READ_ONLY: u64 = 1 << 60;

/// Why a composite disk could not be built.
#[derive(Debug, thiserror::Error)]
pub enum CompositeError {
    #[error("a composite disk needs 1..={MAX_LAYERS} layers, got {0}")]
    LayerCount(usize),
    #[error("opening layer {path}: {source}")]
    Open { path: PathBuf, source: io::Error },
    #[error("layer {path} is empty")]
    EmptyLayer { path: PathBuf },
}

/// One layer: its image file and the GPT partition name (e.g. the layer digest, ≤ 36 chars).
#[derive(Debug, Clone)]
pub struct Layer {
    pub path: PathBuf,
    pub label: String,
}

enum Source {
    /// Offset into the head metadata buffer.
    Head,
    /// Offset into the tail metadata buffer.
    Tail,
    /// Layer index.
    File(usize),
    Zero,
}

/// A contiguous run of the virtual disk backed by one source.
struct Extent {
    start: u64,
    len: u64,
    source: Source,
}

/// The composite disk backend (always read-only).
pub struct CompositeDisk {
    files: Vec<File>,
    head: Vec<u8>,
    tail: Vec<u8>,
    extents: Vec<Extent>,
    capacity: u64,
    id: [u8; ID_BYTES],
}

fn align_up(v: u64, a: u64) -> u64 {
    v.div_ceil(a) * a
}

impl CompositeDisk {
    /// Opens the layer files (read-only) and builds the disk over them.
    pub fn open(layers: &[Layer]) -> Result<Self, CompositeError> {
        if layers.is_empty() || layers.len() > MAX_LAYERS {
            return Err(CompositeError::LayerCount(layers.len()));
        }
        let mut files = Vec::with_capacity(layers.len());
        for l in layers {
            let f = File::open(&l.path).map_err(|source| CompositeError::Open {
                path: l.path.clone(),
                source,
            })?;
            files.push(f);
        }
        Self::from_files(layers, files)
    }

    /// Builds the disk over layer files already open (`files[i]` holds `layers[i]`, whose
    /// path only names it in errors): how a confined process that cannot reach the image
    /// store serves layers its parent opened for it.
    pub fn from_files(layers: &[Layer], files: Vec<File>) -> Result<Self, CompositeError> {
        Self::from_files_padded(layers, files, 0)
    }

    /// [`from_files`](Self::from_files), the disk padded with zeros before its backup GPT to
    /// `capacity` bytes (rounded down to a sector) when that is more than the layers need: how
    /// disks of different images get one size ([`capacity_class`]), which a guest restored
    /// from a VM template needs (it keeps the capacity its template's kernel probed).
    pub fn from_files_padded(
        layers: &[Layer],
        files: Vec<File>,
        capacity: u64,
    ) -> Result<Self, CompositeError> {
        if layers.is_empty() || layers.len() > MAX_LAYERS || files.len() != layers.len() {
            return Err(CompositeError::LayerCount(files.len()));
        }
        let mut sizes = Vec::with_capacity(layers.len());
        for (l, f) in layers.iter().zip(&files) {
            let size = f
                .metadata()
                .map_err(|source| CompositeError::Open {
                    path: l.path.clone(),
                    source,
                })?
                .len();
            if size == 0 {
                return Err(CompositeError::EmptyLayer {
                    path: l.path.clone(),
                });
            }
            sizes.push(size);
        }

        // Layout: [MBR | GPT header | entries | zeros] [layer 0 | zeros] … [backup entries | backup header]
        let head_len = (2 + ENTRIES_SECTORS) * SECTOR_SIZE;
        let mut extents = vec![Extent {
            start: 0,
            len: head_len,
            source: Source::Head,
        }];
        let mut parts = Vec::with_capacity(layers.len());
        let mut pos = head_len;
        for (i, &size) in sizes.iter().enumerate() {
            let start = align_up(pos, ALIGN);
            if start > pos {
                extents.push(Extent {
                    start: pos,
                    len: start - pos,
                    source: Source::Zero,
                });
            }
            extents.push(Extent {
                start,
                len: size,
                source: Source::File(i),
            });
            let end = align_up(start + size, SECTOR_SIZE);
            parts.push((start / SECTOR_SIZE, end / SECTOR_SIZE - 1));
            pos = start + size;
        }
        let tail_len = (ENTRIES_SECTORS + 1) * SECTOR_SIZE;
        let tail_start = align_up(pos, ALIGN)
            .max((capacity / SECTOR_SIZE * SECTOR_SIZE).saturating_sub(tail_len));
        if tail_start > pos {
            extents.push(Extent {
                start: pos,
                len: tail_start - pos,
                source: Source::Zero,
            });
        }
        extents.push(Extent {
            start: tail_start,
            len: tail_len,
            source: Source::Tail,
        });
        let capacity = tail_start + tail_len;
        let last_lba = capacity / SECTOR_SIZE - 1;

        let disk_guid = guid_from(&format!("husk-composite:{}", labels(layers)));
        let mut entries = vec![0u8; ENTRIES_BYTES];
        for (i, ((first, last), layer)) in parts.iter().zip(layers).enumerate() {
            let e = &mut entries[i * ENTRY_SIZE..(i + 1) * ENTRY_SIZE];
            e[0..16].copy_from_slice(&LINUX_FS_GUID);
            e[16..32].copy_from_slice(&guid_from(&format!("{i}:{}", layer.label)));
            e[32..40].copy_from_slice(&first.to_le_bytes());
            e[40..48].copy_from_slice(&last.to_le_bytes());
            e[48..56].copy_from_slice(&ATTR_READ_ONLY.to_le_bytes());
            for (j, c) in layer.label.encode_utf16().take(36).enumerate() {
                e[56 + 2 * j..58 + 2 * j].copy_from_slice(&c.to_le_bytes());
            }
        }
        let entries_crc = crc32fast::hash(&entries);
        let first_usable = 2 + ENTRIES_SECTORS;
        let last_usable = last_lba - 1 - ENTRIES_SECTORS;
        let primary = gpt_header(
            1,
            last_lba,
            first_usable,
            last_usable,
            2,
            &disk_guid,
            entries_crc,
        );
        let backup = gpt_header(
            last_lba,
            1,
            first_usable,
            last_usable,
            last_lba - ENTRIES_SECTORS,
            &disk_guid,
            entries_crc,
        );

        let mut head = vec![0u8; head_len as usize];
        head[..512].copy_from_slice(&protective_mbr(last_lba));
        head[512..512 + HEADER_SIZE].copy_from_slice(&primary);
        head[1024..1024 + ENTRIES_BYTES].copy_from_slice(&entries);
        let mut tail = vec![0u8; tail_len as usize];
        tail[..ENTRIES_BYTES].copy_from_slice(&entries);
        tail[ENTRIES_BYTES..ENTRIES_BYTES + HEADER_SIZE].copy_from_slice(&backup);

        Ok(Self {
            files,
            head,
            tail,
            extents,
            capacity,
            id: id_from_str(&id_string(&disk_guid)),
        })
    }

    /// Overrides the GET_ID serial (the guest's `/sys/block/vdX/serial`).
    pub fn with_id(mut self, id: &str) -> Self {
        self.id = id_from_str(id);
        self
    }

    /// Disk offsets (first byte, length) of each layer's partition data.
    pub fn partitions(&self) -> Vec<(u64, u64)> {
        self.extents
            .iter()
            .filter(|e| matches!(e.source, Source::File(_)))
            .map(|e| (e.start, e.len))
            .collect()
    }

    fn read_extent(&self, e: &Extent, off: u64, buf: &GuestSlice<'_>) -> io::Result<()> {
        match e.source {
            Source::Head => copy_out(&self.head, off, buf),
            Source::Tail => copy_out(&self.tail, off, buf),
            Source::File(i) => read_file_into(&self.files[i], off, buf),
            Source::Zero => {
                const ZEROS: [u8; 4096] = [0; 4096];
                let mut done = 0;
                while done < buf.len() {
                    let n = (buf.len() - done).min(ZEROS.len());
                    buf.subslice(done, n)
                        .map_err(io::Error::other)?
                        .copy_from(&ZEROS[..n]);
                    done += n;
                }
                Ok(())
            }
        }
    }
}

/// The smallest capacity a composite disk of layers `sizes` (bytes each) pads to, of a few
/// sizes only: 64 MiB, or the power of two that holds the layers (each on its own 1 MiB-aligned
/// start) and the GPT at both ends. Images whose layers fit the same class give disks of one
/// capacity, so one VM template serves them all.
pub fn capacity_class(sizes: &[u64]) -> u64 {
    const SMALLEST: u64 = 64 << 20;
    let need = sizes.iter().fold(2 * ALIGN, |acc, &s| {
        acc.saturating_add(s.div_ceil(ALIGN).saturating_mul(ALIGN))
    });
    need.checked_next_power_of_two()
        .unwrap_or(u64::MAX)
        .max(SMALLEST)
}

fn labels(layers: &[Layer]) -> String {
    layers
        .iter()
        .map(|l| l.label.as_str())
        .collect::<Vec<_>>()
        .join(",")
}

fn copy_out(src: &[u8], off: u64, buf: &GuestSlice<'_>) -> io::Result<()> {
    let start = usize::try_from(off).map_err(io::Error::other)?;
    let bytes = start
        .checked_add(buf.len())
        .and_then(|end| src.get(start..end))
        .ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))?;
    buf.copy_from(bytes);
    Ok(())
}

impl DiskBackend for CompositeDisk {
    fn capacity(&self) -> u64 {
        self.capacity
    }

    fn read_only(&self) -> bool {
        true
    }

    fn id(&self) -> [u8; ID_BYTES] {
        self.id
    }

    fn read_at(&self, offset: u64, buf: &GuestSlice<'_>) -> io::Result<()> {
        let end = offset
            .checked_add(buf.len() as u64)
            .filter(|&e| e <= self.capacity)
            .ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))?;
        // First extent that ends after `offset`.
        let first = self.extents.partition_point(|e| e.start + e.len <= offset);
        let mut pos = offset;
        for e in &self.extents[first..] {
            if pos >= end {
                break;
            }
            let n = (e.start + e.len).min(end) - pos;
            let sub = buf
                .subslice((pos - offset) as usize, n as usize)
                .map_err(io::Error::other)?;
            self.read_extent(e, pos - e.start, &sub)?;
            pos += n;
        }
        Ok(())
    }

    fn write_at(&self, _offset: u64, _buf: &GuestSlice<'_>) -> io::Result<()> {
        Err(io::Error::from_raw_os_error(libc::EROFS))
    }

    fn flush(&self) -> io::Result<()> {
        Ok(())
    }
}

fn protective_mbr(last_lba: u64) -> [u8; 512] {
    let mut m = [0u8; 512];
    let p = &mut m[446..462];
    p[1..4].copy_from_slice(&[0x00, 0x02, 0x00]); // CHS of LBA 1
    p[4] = 0xee; // GPT protective
    p[5..8].copy_from_slice(&[0xff, 0xff, 0xff]);
    p[8..12].copy_from_slice(&1u32.to_le_bytes());
    let size = u32::try_from(last_lba).unwrap_or(u32::MAX);
    p[12..16].copy_from_slice(&size.to_le_bytes());
    m[510] = 0x55;
    m[511] = 0xaa;
    m
}

fn gpt_header(
    my_lba: u64,
    alt_lba: u64,
    first_usable: u64,
    last_usable: u64,
    entries_lba: u64,
    disk_guid: &[u8; 16],
    entries_crc: u32,
) -> [u8; HEADER_SIZE] {
    let mut h = [0u8; HEADER_SIZE];
    h[0..8].copy_from_slice(b"EFI PART");
    h[8..12].copy_from_slice(&0x0001_0000u32.to_le_bytes());
    h[12..16].copy_from_slice(&(HEADER_SIZE as u32).to_le_bytes());
    // 16..20: header CRC, filled below; 20..24 reserved.
    h[24..32].copy_from_slice(&my_lba.to_le_bytes());
    h[32..40].copy_from_slice(&alt_lba.to_le_bytes());
    h[40..48].copy_from_slice(&first_usable.to_le_bytes());
    h[48..56].copy_from_slice(&last_usable.to_le_bytes());
    h[56..72].copy_from_slice(disk_guid);
    h[72..80].copy_from_slice(&entries_lba.to_le_bytes());
    h[80..84].copy_from_slice(&(MAX_LAYERS as u32).to_le_bytes());
    h[84..88].copy_from_slice(&(ENTRY_SIZE as u32).to_le_bytes());
    h[88..92].copy_from_slice(&entries_crc.to_le_bytes());
    let crc = crc32fast::hash(&h);
    h[16..20].copy_from_slice(&crc.to_le_bytes());
    h
}

/// A deterministic version-4-shaped GUID from a string (stable across runs for the same
/// layers, so the guest sees the same disk identity).
fn guid_from(s: &str) -> [u8; 16] {
    let mut g = [0u8; 16];
    for (i, chunk) in g.chunks_mut(4).enumerate() {
        let c = crc32fast::hash(format!("{i}/{s}").as_bytes());
        chunk.copy_from_slice(&c.to_le_bytes());
    }
    g[7] = (g[7] & 0x0f) | 0x40;
    g[8] = (g[8] & 0x3f) | 0x80;
    g
}

fn id_string(guid: &[u8; 16]) -> String {
    let hex: String = guid.iter().map(|b| format!("{b:02x}")).collect();
    format!("huskc{}", &hex[..15])
}

/// The partition name of layer `index` (bottom first) on husk's layer disks; the guest finds
/// layers by partition number, the name is for people reading `lsblk` or `sgdisk -p`.
pub fn layer_label(index: usize) -> String {
    format!("husk-layer-{index}")
}

/// Layers named by [`layer_label`], in the order given.
pub fn indexed_layers(paths: &[PathBuf]) -> Vec<Layer> {
    paths
        .iter()
        .enumerate()
        .map(|(i, p)| layer(p, &layer_label(i)))
        .collect()
}

/// Path helper for callers building layer lists.
pub fn layer(path: impl AsRef<Path>, label: &str) -> Layer {
    Layer {
        path: path.as_ref().to_path_buf(),
        label: label.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::GuestMemory;
    use std::io::Write;
    use vm_memory::{GuestAddress, GuestMemoryBackend};

    /// Reads the whole virtual disk through the backend API.
    fn image(disk: &CompositeDisk) -> Vec<u8> {
        let cap = disk.capacity() as usize;
        let mem = GuestMemory::from_ranges(&[(GuestAddress(0), cap)]).unwrap();
        disk.read_at(0, &mem.get_slice(GuestAddress(0), cap).unwrap())
            .unwrap();
        let mut out = vec![0u8; cap];
        mem.get_slice(GuestAddress(0), cap)
            .unwrap()
            .copy_to(&mut out[..]);
        out
    }

    fn u32_at(b: &[u8], o: usize) -> u32 {
        u32::from_le_bytes(b[o..o + 4].try_into().unwrap())
    }
    fn u64_at(b: &[u8], o: usize) -> u64 {
        u64::from_le_bytes(b[o..o + 8].try_into().unwrap())
    }

    /// Parses a GPT header at `lba`, checks its CRCs; returns (header, entries).
    fn parse_gpt(img: &[u8], lba: u64) -> (Vec<u8>, Vec<u8>) {
        let h = img[lba as usize * 512..lba as usize * 512 + HEADER_SIZE].to_vec();
        assert_eq!(&h[0..8], b"EFI PART");
        assert_eq!(u32_at(&h, 12), 92);
        let mut z = h.clone();
        z[16..20].fill(0);
        assert_eq!(crc32fast::hash(&z), u32_at(&h, 16), "header CRC");
        assert_eq!(u64_at(&h, 24), lba, "MyLBA");
        let entries_lba = u64_at(&h, 72) as usize;
        let n = u32_at(&h, 80) as usize;
        let esz = u32_at(&h, 84) as usize;
        let entries = img[entries_lba * 512..entries_lba * 512 + n * esz].to_vec();
        assert_eq!(crc32fast::hash(&entries), u32_at(&h, 88), "entries CRC");
        (h, entries)
    }

    #[test]
    fn a_padded_disk_has_its_capacity_and_the_same_partitions() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("layer0");
        std::fs::write(&p, vec![7u8; 5000]).unwrap();
        let layers = vec![layer(&p, "l0")];
        let open = || vec![std::fs::File::open(&p).unwrap()];
        let natural = CompositeDisk::from_files(&layers, open()).unwrap();
        let class = capacity_class(&[5000]);
        assert_eq!(class, 64 << 20, "a small image pads to the smallest class");
        let padded = CompositeDisk::from_files_padded(&layers, open(), class).unwrap();
        assert_eq!(padded.capacity(), class);
        assert_eq!(padded.partitions(), natural.partitions());
        let img = image(&padded);
        let last_lba = img.len() as u64 / 512 - 1;
        let (primary, entries) = parse_gpt(&img, 1);
        let (backup, backup_entries) = parse_gpt(&img, last_lba);
        assert_eq!(
            u64_at(&primary, 32),
            last_lba,
            "AlternateLBA: the padded end"
        );
        assert_eq!(u64_at(&backup, 32), 1);
        assert_eq!(entries, backup_entries);
        let (start, len) = padded.partitions()[0];
        assert!(img[start as usize..(start + len) as usize]
            .iter()
            .all(|&b| b == 7));
        // Less than the layers need changes nothing.
        let small = CompositeDisk::from_files_padded(&layers, open(), 4096).unwrap();
        assert_eq!(small.capacity(), natural.capacity());
        // Classes: powers of two over everything the layout needs.
        assert_eq!(capacity_class(&[40 << 20, 20 << 20]), 64 << 20);
        assert_eq!(capacity_class(&[63 << 20]), 128 << 20);
        assert_eq!(capacity_class(&[u64::MAX]), u64::MAX);
    }

    #[test]
    fn gpt_parses_back_and_partitions_hold_the_layers() {
        let dir = tempfile::tempdir().unwrap();
        let contents: Vec<Vec<u8>> = [4096usize, 1_500_000, 513]
            .iter()
            .enumerate()
            .map(|(i, &n)| (0..n).map(|j| (j as u8) ^ (i as u8 * 77)).collect())
            .collect();
        let layers: Vec<Layer> = contents
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let p = dir.path().join(format!("layer{i}"));
                std::fs::File::create(&p).unwrap().write_all(c).unwrap();
                layer(&p, &format!("sha256:{i:064x}"))
            })
            .collect();
        let disk = CompositeDisk::open(&layers).unwrap();
        assert!(disk.read_only());
        let img = image(&disk);
        let last_lba = img.len() as u64 / 512 - 1;

        // Protective MBR.
        assert_eq!(&img[510..512], &[0x55, 0xaa]);
        assert_eq!(img[446 + 4], 0xee);
        assert_eq!(u32_at(&img, 446 + 8), 1);

        let (primary, entries) = parse_gpt(&img, 1);
        assert_eq!(u64_at(&primary, 32), last_lba, "AlternateLBA");
        let (backup, backup_entries) = parse_gpt(&img, last_lba);
        assert_eq!(u64_at(&backup, 32), 1);
        assert_eq!(entries, backup_entries);
        assert_eq!(primary[56..72], backup[56..72], "disk GUID");
        let (first_usable, last_usable) = (u64_at(&primary, 40), u64_at(&primary, 48));

        let mut prev_end = 0;
        for (i, c) in contents.iter().enumerate() {
            let e = &entries[i * 128..(i + 1) * 128];
            assert_eq!(e[0..16], LINUX_FS_GUID);
            let (first, last) = (u64_at(e, 32), u64_at(e, 40));
            assert!(first >= first_usable && last <= last_usable && first > prev_end);
            assert_eq!(first * 512 % ALIGN, 0, "partition {i} not 1 MiB aligned");
            assert_eq!(
                (last - first + 1) * 512,
                (c.len() as u64).div_ceil(512) * 512
            );
            let name: Vec<u16> = e[56..128]
                .chunks(2)
                .map(|b| u16::from_le_bytes([b[0], b[1]]))
                .take_while(|&c| c != 0)
                .collect();
            assert_eq!(
                String::from_utf16(&name).unwrap(),
                layers[i].label.chars().take(36).collect::<String>()
            );
            let start = first as usize * 512;
            assert_eq!(&img[start..start + c.len()], &c[..], "layer {i} bytes");
            assert!(img[start + c.len()..(last as usize + 1) * 512]
                .iter()
                .all(|&b| b == 0));
            prev_end = last;
        }
        // Unused entries are zero.
        assert!(entries[contents.len() * 128..].iter().all(|&b| b == 0));
        // Same layers, same disk identity.
        assert_eq!(CompositeDisk::open(&layers).unwrap().id(), disk.id());
    }

    #[test]
    fn reads_split_across_extents_and_refuse_past_end() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("l");
        std::fs::write(&p, vec![0xabu8; 1000]).unwrap();
        let disk = CompositeDisk::open(&[layer(&p, "x")]).unwrap();
        let (start, _) = disk.partitions()[0];
        let mem = GuestMemory::from_ranges(&[(GuestAddress(0), 4096)]).unwrap();
        // From the zero padding before the partition into its data.
        let s = mem.get_slice(GuestAddress(0), 2048).unwrap();
        disk.read_at(start - 1024, &s).unwrap();
        let mut b = vec![0u8; 2048];
        s.copy_to(&mut b[..]);
        assert!(b[..1024].iter().all(|&x| x == 0));
        assert!(b[1024..2024].iter().all(|&x| x == 0xab));
        assert!(b[2024..].iter().all(|&x| x == 0));
        assert!(disk.read_at(disk.capacity() - 512, &s).is_err());
        assert!(disk.write_at(0, &s).is_err());
    }

    #[test]
    fn layer_count_is_bounded() {
        assert!(matches!(
            CompositeDisk::open(&[]),
            Err(CompositeError::LayerCount(0))
        ));
        let many = vec![layer("/nonexistent", "x"); MAX_LAYERS + 1];
        assert!(matches!(
            CompositeDisk::open(&many),
            Err(CompositeError::LayerCount(_))
        ));
    }
}

#[cfg(test)]
mod partx_tests {
    use super::*;
    use crate::devices::virtio::GuestMemory;
    use vm_memory::{GuestAddress, GuestMemoryBackend};

    /// util-linux's own GPT parser agrees with ours (skipped where partx is missing).
    #[test]
    fn partx_reads_the_partition_table() {
        let Ok(out) = std::process::Command::new("partx")
            .arg("--version")
            .output()
        else {
            eprintln!("NOT RUN: partx not installed");
            return;
        };
        assert!(out.status.success());
        let dir = tempfile::tempdir().unwrap();
        let mut layers = Vec::new();
        for i in 0..3 {
            let p = dir.path().join(format!("l{i}"));
            std::fs::write(&p, vec![i as u8; 4096 * (i + 1)]).unwrap();
            layers.push(layer(&p, &format!("layer-{i}")));
        }
        let disk = CompositeDisk::open(&layers).unwrap();
        let cap = disk.capacity() as usize;
        let mem = GuestMemory::from_ranges(&[(GuestAddress(0), cap)]).unwrap();
        let s = mem.get_slice(GuestAddress(0), cap).unwrap();
        disk.read_at(0, &s).unwrap();
        let mut img = vec![0u8; cap];
        s.copy_to(&mut img[..]);
        let path = dir.path().join("composite.img");
        std::fs::write(&path, &img).unwrap();
        let out = std::process::Command::new("partx")
            .args(["--raw", "--noheadings", "--output", "NR,START,SECTORS,NAME"])
            .arg(&path)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "partx failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let rows: Vec<&str> = text.lines().collect();
        assert_eq!(rows.len(), 3, "{text}");
        for (i, (row, (start, len))) in rows.iter().zip(disk.partitions()).enumerate() {
            let want = format!("{} {} {} layer-{i}", i + 1, start / 512, len.div_ceil(512));
            assert_eq!(*row, want);
        }
    }
}
