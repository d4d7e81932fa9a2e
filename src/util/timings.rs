//! Where a container's start-up time goes: named phases, each ending at a [`mark`], recorded
//! in this process only once [`record`] is called (`husk run --timings`, husk-runtime's
//! `--debug`). Unrecorded, a mark costs one uncontended lock.

use std::sync::Mutex;
use std::time::{Duration, Instant};

struct Recorder {
    last: Instant,
    phases: Vec<(&'static str, Duration)>,
}

static RECORDER: Mutex<Option<Recorder>> = Mutex::new(None);

fn recorder() -> std::sync::MutexGuard<'static, Option<Recorder>> {
    RECORDER.lock().unwrap_or_else(|p| p.into_inner())
}

/// Starts recording: the first phase runs from now.
pub fn record() {
    *recorder() = Some(Recorder {
        last: Instant::now(),
        phases: Vec::new(),
    });
}

/// Ends `phase` now (it began at the previous mark, or at [`record`]).
pub fn mark(phase: &'static str) {
    if let Some(r) = recorder().as_mut() {
        let now = Instant::now();
        r.phases.push((phase, now - r.last));
        r.last = now;
    }
}

/// The phases marked so far, in order; recording goes on from here.
pub fn take() -> Vec<(&'static str, Duration)> {
    recorder()
        .as_mut()
        .map(|r| std::mem::take(&mut r.phases))
        .unwrap_or_default()
}

/// One line per phase (milliseconds, aligned), then the total.
pub fn table(phases: &[(&str, Duration)]) -> String {
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let mut out = String::new();
    for (name, d) in phases {
        out.push_str(&format!("  {name:<28} {:>9.1} ms\n", ms(*d)));
    }
    let total: Duration = phases.iter().map(|(_, d)| *d).sum();
    out.push_str(&format!("  {:<28} {:>9.1} ms\n", "total", ms(total)));
    out
}

/// The phases on one line: `name 12.3 ms, ...` (for a log line).
pub fn line(phases: &[(&str, Duration)]) -> String {
    phases
        .iter()
        .map(|(name, d)| format!("{name} {:.1} ms", d.as_secs_f64() * 1e3))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_are_recorded_only_when_asked_and_in_order() {
        mark("before");
        assert!(take().is_empty(), "nothing before record()");
        record();
        std::thread::sleep(Duration::from_millis(5));
        mark("first");
        mark("second");
        let p = take();
        assert_eq!(
            p.iter().map(|(n, _)| *n).collect::<Vec<_>>(),
            ["first", "second"]
        );
        assert!(p[0].1 >= Duration::from_millis(5));
        let t = table(&p);
        assert!(
            t.lines().last().unwrap().trim_start().starts_with("total"),
            "{t}"
        );
        assert_eq!(t.lines().count(), 3);
        assert!(line(&p).starts_with("first "), "{}", line(&p));
        assert!(take().is_empty(), "taken once");
    }
}
