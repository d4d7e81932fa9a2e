//! Where the container's root filesystem comes from, and what else is mounted into it.
//!
//! The host never sends guest device names it guessed: disks are named by the virtio-blk
//! serial the host gave them (stable whatever order the guest probes them in), with a device
//! path as an escape hatch for tests and hand-made VMs.

use serde::{Deserialize, Serialize};

use crate::limits::{MAX_LAYERS, MAX_LIST, MAX_TOKEN_LEN};
use crate::validate::{check_abs_path, check_cstr, check_list, check_token, fail, Check};

/// Longest virtio-blk serial: the device's ID field is 20 bytes.
pub const MAX_DISK_SERIAL_LEN: usize = 20;

/// How to build the container's `/`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum RootfsSpec {
    /// overlayfs over read-only image layers. `layers` is in image order, **base layer
    /// first** (as in an OCI manifest); the agent reverses it for `lowerdir=`, which lists
    /// the top layer first.
    Overlay {
        layers: Vec<LayerDisk>,
        /// Read-write disk holding `upper/` and `work/`. Without one the root is read-only.
        scratch: Option<LayerDisk>,
    },
    /// One disk mounted as-is.
    Disk { disk: LayerDisk, readonly: bool },
    /// A host directory shared over virtio-fs, by mount tag.
    VirtioFs { tag: String },
    /// One directory, `entry`, of the directory shared as `tag`: a pod's share holds the root
    /// of every container the pod gets while it runs (virtio-fs devices cannot be added to a
    /// running VM).
    VirtioFsEntry { tag: String, entry: String },
}

/// A disk and the filesystem on it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LayerDisk {
    pub disk: DiskRef,
    pub fs_type: FsType,
}

/// How the agent finds a block device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum DiskRef {
    /// Matched against `/sys/block/*/serial`.
    Serial(String),
    /// A `/dev/...` path, used verbatim.
    Device(String),
    /// Partition `number` (1-based, at most [`MAX_LAYERS`]) of the disk whose
    /// `/sys/block/*/serial` is `serial`: an image layer on husk's composite layer disk.
    Partition { serial: String, number: u32 },
}

/// Filesystems husk's guest kernel is built with for disks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FsType {
    Erofs,
    Ext4,
}

impl FsType {
    /// The name `mount(2)` takes.
    pub fn as_str(self) -> &'static str {
        match self {
            FsType::Erofs => "erofs",
            FsType::Ext4 => "ext4",
        }
    }
}

/// One OCI `mounts` entry: the agent mounts `source` of type `fs_type` at `destination`
/// inside the container root. `options` are OCI's (`nosuid`, `mode=755`, `bind`, `ro`, ...);
/// the agent splits flags from data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MountSpec {
    pub destination: String,
    pub source: String,
    #[serde(rename = "type")]
    pub fs_type: String,
    pub options: Vec<String>,
}

impl RootfsSpec {
    pub fn validate(&self) -> Check {
        match self {
            RootfsSpec::Overlay { layers, scratch } => {
                if layers.is_empty() {
                    return fail("layers", "an overlay needs at least one layer");
                }
                check_list("layers", layers, MAX_LAYERS, LayerDisk::validate)?;
                if let Some(s) = scratch {
                    s.validate().map_err(|e| e.within("scratch"))?;
                }
                Ok(())
            }
            RootfsSpec::Disk { disk, .. } => disk.validate().map_err(|e| e.within("disk")),
            RootfsSpec::VirtioFs { tag } => check_tag(tag),
            RootfsSpec::VirtioFsEntry { tag, entry } => {
                check_tag(tag)?;
                check_token("entry", entry)?;
                // One name in the share: nothing that leads out of it.
                if entry == "." || entry == ".." || entry.contains('/') {
                    return fail("entry", format!("{entry:?} is not one name in the share"));
                }
                Ok(())
            }
        }
    }
}

fn check_tag(tag: &str) -> Check {
    // The kernel's virtio-fs tag field is 36 bytes.
    check_token("tag", tag)?;
    if tag.len() > 36 {
        return fail(
            "tag",
            format!("{} bytes long, virtio-fs tags hold 36", tag.len()),
        );
    }
    Ok(())
}

fn check_serial(s: &str) -> Check {
    check_token("disk.serial", s)?;
    if s.len() > MAX_DISK_SERIAL_LEN {
        return fail(
            "disk.serial",
            format!(
                "{} bytes long, virtio-blk serials hold {MAX_DISK_SERIAL_LEN}",
                s.len()
            ),
        );
    }
    Ok(())
}

impl LayerDisk {
    fn validate(&self) -> Check {
        match &self.disk {
            DiskRef::Serial(s) => check_serial(s),
            DiskRef::Partition { serial, number } => {
                check_serial(serial)?;
                if *number == 0 || *number as usize > MAX_LAYERS {
                    return fail(
                        "disk.number",
                        format!("partition {number}, want 1..={MAX_LAYERS}"),
                    );
                }
                Ok(())
            }
            DiskRef::Device(p) => {
                check_abs_path("disk.device", p)?;
                if !p.starts_with("/dev/") {
                    return fail("disk.device", format!("{p:?} is not under /dev"));
                }
                Ok(())
            }
        }
    }
}

impl MountSpec {
    pub fn validate(&self) -> Check {
        check_abs_path("destination", &self.destination)?;
        // Sources are often not paths at all ("proc", "tmpfs"), so only C-string rules apply.
        check_cstr("source", &self.source, crate::limits::MAX_PATH_LEN)?;
        check_token("type", &self.fs_type)?;
        check_list("options", &self.options, MAX_LIST, |o| {
            check_cstr("", o, MAX_TOKEN_LEN)?;
            // The agent joins data options with ',': one containing a comma would smuggle in
            // options the host never sent.
            if o.contains(',') {
                return fail("", format!("{o:?} contains ','"));
            }
            Ok(())
        })
    }
}
