//! The host's TSC frequency, told to TCG guests (`tsc_early_khz=`).
//!
//! Under TCG the guest's TSC is the host's own counter (QEMU answers RDTSC with it), but the
//! guest kernel cannot calibrate it: its PIT loop runs on the emulated, much slower CPU, so
//! calibration fails ("Unable to calibrate against PIT"), the TSC is marked unstable and the
//! kernel keeps time with jiffies. Then NO_HZ never stops the tick: an idle guest wakes 250
//! times a second (~4 % of a host CPU each; 54 idle containers filled this 2-core host). Told
//! the frequency, the guest keeps the TSC as its clock and idles tickless (~47 wake-ups/s,
//! 0.6 % of a CPU). The frequency is measured once per host boot against
//! `CLOCK_MONOTONIC_RAW` and kept in [`CACHE`]; only a host whose TSC runs at a constant rate
//! through every power state (`constant_tsc` and `nonstop_tsc`) gets a number at all.

use std::path::Path;
use std::time::Duration;

/// Where the measured frequency is kept: `<boot id> <kHz>`.
pub const CACHE: &str = "/run/husk/tsc-khz";

/// How long each of the three measurements runs.
const SAMPLE: Duration = Duration::from_millis(25);

/// The host's TSC frequency in kHz, when its TSC is constant and non-stop.
pub fn host_tsc_khz() -> Option<u32> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    if !steady_tsc(&cpuinfo) {
        return None;
    }
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
    let boot = boot.trim();
    if let Some(khz) = std::fs::read_to_string(CACHE)
        .ok()
        .and_then(|c| cached(&c, boot))
    {
        return Some(khz);
    }
    let khz = measure()?;
    keep(Path::new(CACHE), &format!("{boot} {khz}\n"));
    Some(khz)
}

/// Whether the first CPU's flags promise a TSC that neither changes rate nor stops.
fn steady_tsc(cpuinfo: &str) -> bool {
    cpuinfo
        .lines()
        .find(|l| l.starts_with("flags"))
        .map(|l| {
            let flags: Vec<&str> = l.split_whitespace().collect();
            flags.contains(&"constant_tsc") && flags.contains(&"nonstop_tsc")
        })
        .unwrap_or(false)
}

/// The kHz in `cache` if it was measured during boot `boot`.
fn cached(cache: &str, boot: &str) -> Option<u32> {
    let (id, khz) = cache.trim().split_once(' ')?;
    let khz = khz.parse().ok()?;
    (id == boot && plausible(khz)).then_some(khz)
}

/// 100 MHz to 10 GHz.
fn plausible(khz: u32) -> bool {
    (100_000..=10_000_000).contains(&khz)
}

/// The median of three TSC-ticks-per-time samples.
fn measure() -> Option<u32> {
    let mut samples: Vec<u64> = (0..3).filter_map(|_| sample()).collect();
    if samples.len() < 3 {
        return None;
    }
    samples.sort_unstable();
    let khz = u32::try_from(samples[1]).ok()?;
    plausible(khz).then_some(khz)
}

fn sample() -> Option<u64> {
    let (t0, c0) = pair()?;
    std::thread::sleep(SAMPLE);
    let (t1, c1) = pair()?;
    let ns = t1.checked_sub(t0).filter(|&ns| ns > 0)?;
    let ticks = c1.checked_sub(c0)?;
    Some((u128::from(ticks) * 1_000_000 / u128::from(ns)) as u64)
}

/// A clock reading and a TSC reading taken together: retried while something (preemption)
/// came between them.
fn pair() -> Option<(u64, u64)> {
    for _ in 0..20 {
        let before = raw_ns()?;
        let tsc = rdtsc();
        let after = raw_ns()?;
        if after.saturating_sub(before) < 20_000 {
            return Some((before + (after - before) / 2, tsc));
        }
    }
    None
}

fn rdtsc() -> u64 {
    // SAFETY: RDTSC reads a counter; every x86_64 CPU has it and it touches no memory.
    unsafe { core::arch::x86_64::_rdtsc() }
}

fn raw_ns() -> Option<u64> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into `ts`, a live local.
    if unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_RAW, &mut ts) } != 0 {
        return None;
    }
    Some(ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64)
}

/// Writes `text` to `path` whole (a temporary file renamed over it), best effort: a host
/// where /run is not writable measures again next time.
fn keep(path: &Path, text: &str) {
    let Some(dir) = path.parent() else { return };
    let _ = std::fs::create_dir_all(dir);
    let tmp = dir.join(format!(".tsc-khz.{}", std::process::id()));
    if std::fs::write(&tmp, text).is_ok() && std::fs::rename(&tmp, path).is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_constant_non_stop_tsc_counts() {
        let both = "processor: 0\nflags\t\t: fpu tsc constant_tsc nonstop_tsc rdtscp\n";
        assert!(steady_tsc(both));
        assert!(!steady_tsc("flags\t\t: fpu tsc constant_tsc\n"));
        assert!(!steady_tsc("flags\t\t: fpu tsc nonstop_tsc\n"));
        assert!(!steady_tsc("processor: 0\n"));
    }

    #[test]
    fn the_cache_holds_only_for_its_boot() {
        assert_eq!(cached("abc 2596096\n", "abc"), Some(2_596_096));
        assert_eq!(cached("abc 2596096\n", "def"), None);
        assert_eq!(cached("abc 12\n", "abc"), None);
        assert_eq!(cached("abc", "abc"), None);
        assert_eq!(cached("abc x", "abc"), None);
    }

    #[test]
    fn two_measurements_agree() {
        let Some(khz) = measure() else {
            eprintln!("NOT RUN: two_measurements_agree: no TSC measurement");
            return;
        };
        assert!(plausible(khz), "{khz} kHz");
        // Two measurements agree within 0.5 %.
        let again = measure().unwrap();
        let diff = (i64::from(khz) - i64::from(again)).unsigned_abs();
        assert!(diff * 200 < u64::from(khz), "{khz} vs {again} kHz");
    }
}
