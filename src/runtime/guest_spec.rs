//! What a container's VM and agent are told: the [`VmSpec`] its backend boots (layer disks,
//! scratch disk, vsock, shared directories, NIC) and the [`ContainerSpec`] the agent builds the
//! container from, both derived from the container's recorded [`State`].

use husk_protocol::{
    ContainerSpec, DiskRef, FsType, LayerDisk, MountSpec, NamespaceKind, ProcessSpec, RootfsSpec,
    User,
};

use super::state::State;
use crate::backend::{DiskSpec, LayerDiskSpec, SharedDirSpec, VmSpec, VsockSpec};
use crate::pod::{self, GuestAssets};

/// The virtio-fs tag of volume `i`.
pub fn volume_tag(i: usize) -> String {
    format!("husk-vol-{i}")
}

/// Serial of the layer disk (all image layers, partition N = layer N-1) and of the scratch
/// disk.
pub const LAYERS_SERIAL: &str = "husk-layers";
pub const SCRATCH_SERIAL: &str = "husk-scratch";

/// How the agent finds layer `i` (bottom first): partition i+1 of the layer disk.
pub fn layer_ref(i: usize) -> DiskRef {
    DiskRef::Partition {
        serial: LAYERS_SERIAL.into(),
        number: i as u32 + 1,
    }
}

/// The VM of a container: the layer disk (read-only, one device for all layers), the scratch
/// disk, vsock.
pub fn vm_spec(state: &State, assets: &GuestAssets) -> VmSpec {
    let c = &state.config;
    let vsock = VsockSpec {
        cid: state.vsock_cid,
        uds_path: state.vsock_uds.clone(),
    };
    let mut spec = pod::base_spec(assets, &state.console_log, c.vcpus, c.memory_mib, vsock);
    spec.layer_disk = (!c.layers.is_empty()).then(|| LayerDiskSpec {
        layers: c.layers.clone(),
        serial: LAYERS_SERIAL.into(),
    });
    spec.disks.push(DiskSpec {
        path: state.scratch_disk.clone(),
        read_only: false,
        serial: Some(SCRATCH_SERIAL.into()),
    });
    spec.shared_dirs = c
        .volumes
        .iter()
        .enumerate()
        .map(|(i, v)| SharedDirSpec::volume(&v.host, volume_tag(i), v.read_only))
        .collect();
    spec
}

/// The volumes' virtio-fs mounts, parents before children (`-v a:/d -v b:/d/sub` works in
/// either order on the command line).
fn volume_mounts(c: &super::state::ContainerConfig) -> Vec<MountSpec> {
    let mut v: Vec<(usize, &super::state::Volume)> = c.volumes.iter().enumerate().collect();
    v.sort_by_key(|(_, v)| v.guest.matches('/').count());
    v.into_iter()
        .map(|(i, v)| {
            let mode = if v.read_only { "ro" } else { "rw" };
            mount(&v.guest, "virtiofs", &volume_tag(i), &[mode, "rprivate"])
        })
        .collect()
}

fn mount(dest: &str, fs: &str, source: &str, options: &[&str]) -> MountSpec {
    MountSpec {
        destination: dest.into(),
        source: source.into(),
        fs_type: fs.into(),
        options: options.iter().map(|o| o.to_string()).collect(),
    }
}

/// The guest-side container: overlay of the layer disks under the scratch disk, the
/// process from the merged config, docker's usual kernel filesystems.
pub fn container_spec(state: &State, console: Option<(u16, u16)>) -> ContainerSpec {
    let c = &state.config;
    let fs_type = if c.layer_fs == "ext4" {
        FsType::Ext4
    } else {
        FsType::Erofs
    };
    ContainerSpec {
        container_id: state.id.clone(),
        rootfs: RootfsSpec::Overlay {
            layers: (0..c.layers.len())
                .map(|i| LayerDisk {
                    disk: layer_ref(i),
                    fs_type,
                })
                .collect(),
            scratch: Some(LayerDisk {
                disk: DiskRef::Serial(SCRATCH_SERIAL.into()),
                fs_type: FsType::Ext4,
            }),
        },
        process: ProcessSpec {
            args: c.args.clone(),
            env: c.env.clone(),
            cwd: c.cwd.clone(),
            user: User {
                uid: c.uid,
                gid: c.gid,
                additional_gids: c.additional_gids.clone(),
                umask: None,
            },
            terminal: c.tty,
            console_size: console
                .filter(|_| c.tty)
                .map(|(rows, cols)| husk_protocol::ConsoleSize { rows, cols }),
            rlimits: Vec::new(),
            no_new_privileges: false,
            capabilities: None,
            oom_score_adj: None,
        },
        hostname: Some(c.hostname.clone()),
        // The agent gives /dev a tmpfs with the usual nodes, /dev/pts and /dev/shm itself.
        mounts: [
            mount("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"]),
            mount(
                "/sys",
                "sysfs",
                "sysfs",
                &["nosuid", "noexec", "nodev", "ro"],
            ),
        ]
        .into_iter()
        .chain(volume_mounts(c))
        .collect(),
        readonly_root: false,
        sysctl: Default::default(),
        masked_paths: Vec::new(),
        readonly_paths: Vec::new(),
        namespaces: vec![
            NamespaceKind::Pid,
            NamespaceKind::Mount,
            NamespaceKind::Uts,
            NamespaceKind::Ipc,
        ],
        seccomp: None,
        network: None,
        resources: husk_protocol::Resources {
            pids_max: c.pids_limit,
            ..Default::default()
        },
    }
}
