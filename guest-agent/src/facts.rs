//! Facts about the guest, printed as `FACT <name>: <value>` lines the host can parse.

use std::fs;
use std::path::Path;

/// Runs the calling thread only on a CPU nothing else wants (`SCHED_IDLE`), best effort.
pub fn idle_priority() {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: pid 0 is the calling thread; sched_setscheduler reads `param`, which outlives
    // the call, and changes nothing but this thread's policy.
    if unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) } != 0 {
        say!(
            "husk-agent: facts at normal priority: {}",
            std::io::Error::last_os_error()
        );
    }
}

pub fn report() {
    match nix::sys::utsname::uname() {
        Ok(u) => say!(
            "FACT kernel: {} {} {}",
            u.sysname().to_string_lossy(),
            u.release().to_string_lossy(),
            u.machine().to_string_lossy()
        ),
        Err(e) => say!("FACT kernel: unknown ({e})"),
    }
    say!("FACT cpus: {}", online_cpus());
    match fs::read_to_string("/proc/meminfo") {
        Ok(m) => {
            let total = m
                .lines()
                .find(|l| l.starts_with("MemTotal:"))
                .unwrap_or("MemTotal: ?");
            say!(
                "FACT memory: {}",
                total.trim_start_matches("MemTotal:").trim()
            );
        }
        Err(e) => say!("FACT memory: unknown ({e})"),
    }
    say!("FACT cmdline: {}", kernel_cmdline().trim());
    match fs::read_to_string("/proc/filesystems") {
        Ok(text) => say!("FACT filesystems: {}", filesystems(&text).join(" ")),
        Err(e) => say!("FACT filesystems: unknown ({e})"),
    }
    let devices = virtio_devices(Path::new("/sys/bus/virtio/devices"));
    say!("FACT virtio-devices: {}", devices.len());
    for d in devices {
        say!("FACT virtio: {d}");
    }
    say!("{}", husk_protocol::GUEST_FACTS_END_MARKER);
}

/// The kernel command line, or "" when /proc is not there.
pub fn kernel_cmdline() -> String {
    fs::read_to_string("/proc/cmdline").unwrap_or_default()
}

/// Online CPUs, as the kernel's `cpu/online` range list (e.g. `0-1`) and counted.
fn online_cpus() -> String {
    // SAFETY: sysconf with a valid name only returns a number.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    match fs::read_to_string("/sys/devices/system/cpu/online") {
        Ok(list) => format!("{n} (online {})", list.trim()),
        Err(_) => n.to_string(),
    }
}

/// Filesystem names from /proc/filesystems (`nodev\tproc` or `\text4`).
pub fn filesystems(text: &str) -> Vec<&str> {
    text.lines()
        .filter_map(|l| l.split_whitespace().last())
        .collect()
}

/// One description per virtio device: `virtio0 device=0x0002 (block) vendor=0x554d4551
/// driver=virtio_blk`. A device without a bound driver says `driver=none`.
fn virtio_devices(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = match fs::read_dir(dir) {
        Ok(rd) => rd
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => return Vec::new(),
    };
    names.sort();
    names
        .into_iter()
        .map(|name| {
            let dev = dir.join(&name);
            let read = |f: &str| fs::read_to_string(dev.join(f)).map(|s| s.trim().to_string());
            let id = read("device").unwrap_or_else(|_| "?".into());
            let vendor = read("vendor").unwrap_or_else(|_| "?".into());
            let driver = fs::read_link(dev.join("driver"))
                .ok()
                .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
                .unwrap_or_else(|| "none".into());
            format!(
                "{name} device={id} ({}) vendor={vendor} driver={driver}",
                device_kind(&id)
            )
        })
        .collect()
}

/// Virtio device ids (virtio spec 1.2, section 5).
fn device_kind(id: &str) -> &'static str {
    let n = u32::from_str_radix(id.trim_start_matches("0x"), 16).unwrap_or(0);
    match n {
        1 => "net",
        2 => "block",
        3 => "console",
        4 => "entropy",
        5 => "balloon",
        9 => "9p",
        19 => "vsock",
        26 => "fs",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_filesystems() {
        let text = "nodev\tsysfs\nnodev\ttmpfs\n\text4\nnodev\toverlay\n\terofs\n";
        assert_eq!(
            filesystems(text),
            ["sysfs", "tmpfs", "ext4", "overlay", "erofs"]
        );
    }

    #[test]
    fn names_device_ids() {
        assert_eq!(device_kind("0x0002"), "block");
        assert_eq!(device_kind("0x0013"), "vsock");
        assert_eq!(device_kind("garbage"), "other");
    }

    #[test]
    fn lists_virtio_devices_from_sysfs_layout() {
        let tmp = std::env::temp_dir().join(format!("husk-agent-virtio-{}", std::process::id()));
        let dev = tmp.join("virtio0");
        fs::create_dir_all(&dev).unwrap();
        fs::write(dev.join("device"), "0x0004\n").unwrap();
        fs::write(dev.join("vendor"), "0x554d4551\n").unwrap();
        std::os::unix::fs::symlink("../../drivers/virtio_rng", dev.join("driver")).unwrap();
        let got = virtio_devices(&tmp);
        fs::remove_dir_all(&tmp).unwrap();
        assert_eq!(
            got,
            ["virtio0 device=0x0004 (entropy) vendor=0x554d4551 driver=virtio_rng"]
        );
    }
}
