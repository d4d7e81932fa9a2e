//! Where a container's start-up time goes: named phases, each ending at a [`mark`], recorded
//! in this process only once [`record`] is called (`husk run --timings`, husk-runtime's
//! `--debug`). A phase may carry the guest's own steps within it ([`within`]). Unrecorded, a
//! mark costs one uncontended lock.

use std::borrow::Cow;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A phase, or a step within the phase before it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Phase {
    pub name: Cow<'static, str>,
    pub duration: Duration,
    /// A step within the last phase (the guest's): shown under it, not added to the total.
    pub within: bool,
}

struct Recorder {
    last: Instant,
    phases: Vec<Phase>,
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
        r.phases.push(Phase {
            name: Cow::Borrowed(phase),
            duration: now - r.last,
            within: false,
        });
        r.last = now;
    }
}

/// Runs `f` with its marks left out: work done once on the way (a VM template's own boot)
/// shows as the one phase the caller marks after it, not as the phases it went through.
pub fn unrecorded<T>(f: impl FnOnce() -> T) -> T {
    let saved = recorder().take();
    let out = f();
    *recorder() = saved;
    out
}

/// Adds `steps` (named by the guest) within the phase just marked.
pub fn within(steps: impl IntoIterator<Item = (String, Duration)>) {
    if let Some(r) = recorder().as_mut() {
        r.phases
            .extend(steps.into_iter().map(|(name, duration)| Phase {
                name: Cow::Owned(name),
                duration,
                within: true,
            }));
    }
}

/// The phases marked so far, in order; recording goes on from here.
pub fn take() -> Vec<Phase> {
    recorder()
        .as_mut()
        .map(|r| std::mem::take(&mut r.phases))
        .unwrap_or_default()
}

/// One line per phase (milliseconds, aligned) with the guest's steps within it indented under
/// it, then the total of the phases.
pub fn table(phases: &[Phase]) -> String {
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let mut out = String::new();
    for p in phases {
        match p.within {
            false => out.push_str(&format!("  {:<28} {:>9.1} ms\n", p.name, ms(p.duration))),
            true => out.push_str(&format!("    {:<26} {:>9.1} ms\n", p.name, ms(p.duration))),
        }
    }
    let total: Duration = phases
        .iter()
        .filter(|p| !p.within)
        .map(|p| p.duration)
        .sum();
    out.push_str(&format!("  {:<28} {:>9.1} ms\n", "total", ms(total)));
    out
}

/// The phases on one line: `name 12.3 ms (in the guest: step 1.2 ms, ...), ...` (for a log
/// line).
pub fn line(phases: &[Phase]) -> String {
    let ms = |p: &Phase| format!("{} {:.1} ms", p.name, p.duration.as_secs_f64() * 1e3);
    let mut out = String::new();
    let mut open = false;
    for p in phases {
        match (p.within, open) {
            (false, was_open) => {
                if was_open {
                    out.push(')');
                }
                if !out.is_empty() {
                    out.push_str(", ");
                }
                out.push_str(&ms(p));
                open = false;
            }
            (true, false) => {
                out.push_str(&format!(" (in the guest: {}", ms(p)));
                open = true;
            }
            (true, true) => out.push_str(&format!(", {}", ms(p))),
        }
    }
    if open {
        out.push(')');
    }
    out
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
            p.iter().map(|p| p.name.as_ref()).collect::<Vec<_>>(),
            ["first", "second"]
        );
        assert!(p[0].duration >= Duration::from_millis(5));
        let t = table(&p);
        assert!(
            t.lines().last().unwrap().trim_start().starts_with("total"),
            "{t}"
        );
        assert_eq!(t.lines().count(), 3);
        assert!(line(&p).starts_with("first "), "{}", line(&p));
        assert!(take().is_empty(), "taken once");
    }

    #[test]
    fn steps_within_a_phase_show_under_it_and_stay_out_of_the_total() {
        let phase = |name: &'static str, ms: u64, within: bool| Phase {
            name: Cow::Borrowed(name),
            duration: Duration::from_millis(ms),
            within,
        };
        let p = [
            phase("boot", 500, false),
            phase("create", 200, false),
            phase("mounts", 120, true),
            phase("network", 60, true),
            phase("start", 30, false),
        ];
        let t = table(&p);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 6, "{t}");
        assert!(lines[2].starts_with("    mounts"), "{t}");
        assert_eq!(lines[2].len(), lines[1].len(), "aligned: {t}");
        assert!(
            lines[5].contains("730.0 ms"),
            "the total leaves steps out: {t}"
        );
        assert_eq!(
            line(&p),
            "boot 500.0 ms, create 200.0 ms (in the guest: mounts 120.0 ms, network 60.0 ms), \
             start 30.0 ms"
        );
    }
}
