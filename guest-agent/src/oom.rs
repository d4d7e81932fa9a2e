//! What the guest does when its memory is full: the kernel's OOM killer ends the biggest task
//! within about a second, instead of reclaim thrashing the containers' executables.
//!
//! A guest has no swap. Once a container has filled its memory, reclaim can still evict the
//! page cache of the programs running (read from the image's erofs disk), and each page evicted
//! is read back at their next instruction: that counts as progress, so the OOM killer waits. A
//! 128 MiB guest filled by one `tail` under QEMU's TCG was killed after 7 s, or, half the time,
//! after 260-300 s of this (`hostile_guest`'s memory test, which then failed its deadline).
//! The multi-gen LRU's `min_ttl_ms` (CONFIG_LRU_GEN, in husk's kernel) is the kernel's own
//! valve for it: when the pages used in the last [`MIN_TTL_MS`] can no longer all be kept,
//! kswapd calls the OOM killer.

use std::fs;
use std::io;
use std::path::Path;

/// The multi-gen LRU's knobs.
const LRU_GEN: &str = "/sys/kernel/mm/lru_gen";

/// The working set (pages used within this many milliseconds) that is never evicted; the
/// kernel's documentation gives 1000 as what ends intolerable thrashing (larger values risk
/// premature kills).
pub const MIN_TTL_MS: u32 = 1000;

/// Turns the multi-gen LRU on (husk's kernel has it on from boot) and sets its `min_ttl_ms`;
/// a kernel without it is reported once, and the guest runs as before.
pub fn init() {
    if let Err(e) = configure(Path::new(LRU_GEN)) {
        say!(
            "husk-agent: {e} (a container filling the guest's memory may thrash before the OOM \
             killer ends it; husk's kernel has CONFIG_LRU_GEN)"
        );
    }
}

/// Writes `enabled` and `min_ttl_ms` under `dir`.
fn configure(dir: &Path) -> io::Result<()> {
    let write = |file: &str, value: &str| {
        let path = dir.join(file);
        fs::write(&path, value)
            .map_err(|e| io::Error::new(e.kind(), format!("{} = {value}: {e}", path.display())))
    };
    // `y` turns on every part the kernel has (a kernel built with it off is switched on here).
    write("enabled", "y")?;
    write("min_ttl_ms", &MIN_TTL_MS.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_valve_is_opened_at_a_second() {
        let dir = tempfile::tempdir().unwrap();
        for f in ["enabled", "min_ttl_ms"] {
            fs::write(dir.path().join(f), "0").unwrap();
        }
        configure(dir.path()).unwrap();
        let read = |f: &str| fs::read_to_string(dir.path().join(f)).unwrap();
        assert_eq!(read("enabled"), "y");
        assert_eq!(read("min_ttl_ms"), "1000");
    }

    #[test]
    fn a_kernel_without_it_is_one_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let err = configure(&dir.path().join("lru_gen")).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        assert!(err.to_string().contains("lru_gen/enabled = y"), "{err}");
    }
}
