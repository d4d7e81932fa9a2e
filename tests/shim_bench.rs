//! Benchmark (ignored; run it with `scripts/bench-pods.sh [RUNS]`): containerd-shim-husk-v2
//! against containerd's own runc shim, in the same run, on one containerd with its CRI plugin
//! (tests/common/cri.rs), driven as kubelet drives it:
//!
//! - pod start: RunPodSandbox + PullImage (already pulled) + CreateContainer + StartContainer
//!   of a busybox container printing a marker, until the marker is in its CRI log file;
//!   `BENCH_PODS_RUNS` runs (default 5) per handler, interleaved;
//! - `BENCH_PODS_AT_ONCE` pods (default 10) started at once, one thread each: the time to the
//!   last one ready, and each one's start time;
//! - an idle pod's host footprint: PSS (`/proc/PID/smaps_rollup`) summed over the pod's host
//!   processes, beside their USS (private pages: what one more pod costs at least) and RSS
//!   (all their pages: a pod alone on the host), and their CPU time (utime + stime) over 10 s
//!   of idling, as millicores. PSS splits a shared page between its users, so it drops when
//!   other processes of the same programs run on the host.
//!
//! It prints medians and husk/runc ratios as a markdown table; times are never pass/fail. A
//! pod that fails to start (under load too) is listed under the table and fails the run.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use common::cri::{husk_shim, Cri, Handler};
use common::cri_leaks::{all_processes, husk_run_dirs, Footprint, Proc};
use common::engine::LIMIT;

/// What the container prints once it runs; then it idles.
const MARKER: &str = "husk-bench-ready";
const CONTAINER: &str = "c";
/// How long a started pod settles before its idle footprint is read.
const SETTLE: Duration = Duration::from_secs(5);
/// How long the idle pod's CPU time is counted over.
const CPU_WINDOW: Duration = Duration::from_secs(10);

fn env_or(name: &str, default: usize) -> usize {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a count")),
        Err(_) => default,
    }
}

/// A pod as far as its start got: its ids once the CRI gave them.
#[derive(Default)]
struct Pod {
    id: Option<String>,
    container: Option<String>,
}

/// Starts pod `name` on `handler` and waits for the container's marker in its log; the time
/// from before RunPodSandbox to the marker seen. Records the ids in `pod` as they come, so a
/// start that fails half-way can still be torn down.
fn start_pod(cri: &Cri, handler: Handler, name: &str, pod: &mut Pod) -> Duration {
    let config = cri.pod_config(name);
    let log = Path::new(&config.log_directory).join(format!("{CONTAINER}.log"));
    let command = format!("echo {MARKER}; exec sleep 1000000");
    let t0 = Instant::now();
    let id = cri.run_pod(&config, handler);
    pod.id = Some(id.clone());
    cri.pull(&cri.busybox);
    let c = cri.create_container(
        &id,
        &config,
        CONTAINER,
        &cri.busybox,
        &["sh", "-c", &command],
    );
    pod.container = Some(c.clone());
    cri.start_container(&c);
    let line_end = format!(" stdout F {MARKER}");
    loop {
        let seen = std::fs::read_to_string(&log)
            .map(|t| t.lines().any(|l| l.ends_with(&line_end)))
            .unwrap_or(false);
        if seen {
            return t0.elapsed();
        }
        if t0.elapsed() > LIMIT {
            panic!(
                "{name}: no {MARKER:?} in {} within {LIMIT:?}; log: {:?}; container: {:?}",
                log.display(),
                std::fs::read_to_string(&log),
                cri.container_status(&c)
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The message of a caught panic.
fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "(a panic without a message)".to_string())
}

/// StopPodSandbox + RemovePodSandbox of `pods`, then waits until none left anything (the
/// harness's leak checks, plus the husk shim's working directories).
fn tear_down(cri: &Cri, pods: &[Pod]) {
    let mut prints = Vec::new();
    for p in pods {
        let Some(id) = &p.id else { continue };
        let containers: Vec<&str> = p.container.iter().map(String::as_str).collect();
        let fp = cri.footprint(id, &containers);
        let run_dirs = husk_run_dirs(&fp.processes);
        prints.push((fp, run_dirs));
    }
    for (fp, _) in &prints {
        cri.stop_pod(&fp.pod);
        cri.remove_pod(&fp.pod);
    }
    for (fp, run_dirs) in &prints {
        let run_dirs = run_dirs.clone();
        cri.assert_pod_gone(fp, &move |_: &Cri, _: &Footprint| {
            run_dirs
                .iter()
                .filter(|d| d.exists())
                .map(|d| format!("shim working dir {}", d.display()))
                .collect()
        });
    }
}

/// `/proc/PID/stat` past the command name: (ppid, utime + stime in clock ticks).
fn stat(pid: u32) -> Option<(u32, u64)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // Fields 4 (ppid), 14 (utime) and 15 (stime) of proc(5); `rest` starts at field 3.
    let ppid = f.get(1)?.parse().ok()?;
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some((ppid, utime + stime))
}

/// The host processes of pod `id`: its shim (an instance process whose command line names
/// the pod), everything descending from it, and for husk every process whose command line
/// names the pod's `/run/husk-shim/<hash>` directory (the VMM, virtiofsd,
/// husk-agent-mux).
fn pod_processes(cri: &Cri, handler: Handler, id: &str) -> Vec<Proc> {
    let all = all_processes(cri.dir());
    let program = |p: &Proc| {
        let first = p.cmdline.split(' ').next().unwrap_or_default();
        first.rsplit('/').next().unwrap_or(first).to_string()
    };
    let mut pids: BTreeSet<u32> = all
        .iter()
        .filter(|p| p.marked && program(p).starts_with("containerd-shim") && p.cmdline.contains(id))
        .map(|p| p.pid)
        .collect();
    assert!(
        !pids.is_empty(),
        "no shim of pod {id} among the instance's processes: {:#?}",
        cri.processes()
    );
    loop {
        let more: Vec<u32> = all
            .iter()
            .filter(|p| !pids.contains(&p.pid))
            .filter(|p| stat(p.pid).is_some_and(|(ppid, _)| pids.contains(&ppid)))
            .map(|p| p.pid)
            .collect();
        if more.is_empty() {
            break;
        }
        pids.extend(more);
    }
    if handler == Handler::Husk {
        let cmdlines: Vec<String> = all
            .iter()
            .filter(|p| pids.contains(&p.pid))
            .map(|p| p.cmdline.clone())
            .collect();
        let dirs = husk_run_dirs(&cmdlines);
        assert!(
            !dirs.is_empty(),
            "the husk pod {id}'s processes name no /run/husk-shim dir: {cmdlines:#?}"
        );
        for p in &all {
            let names_dir = dirs.iter().any(|d| {
                let d = d.display().to_string();
                p.cmdline.contains(&format!("{d}/")) || p.cmdline.ends_with(&d)
            });
            if names_dir {
                pids.insert(p.pid);
            }
        }
    }
    let procs: Vec<Proc> = all.into_iter().filter(|p| pids.contains(&p.pid)).collect();
    if handler == Handler::Husk {
        assert!(
            procs.iter().any(|p| {
                let n = program(p);
                n.starts_with("qemu-system") || n.starts_with("husk-vmm")
            }),
            "no VMM among the husk pod {id}'s processes: {:#?}",
            procs.iter().map(|p| &p.cmdline).collect::<Vec<_>>()
        );
    }
    procs
}

/// A process's memory from `/proc/PID/smaps_rollup`, in KiB.
#[derive(Clone, Copy, Default)]
struct Memory {
    pss: u64,
    /// `Private_Clean` + `Private_Dirty`.
    uss: u64,
    rss: u64,
}

fn memory_kib(pid: u32) -> Option<Memory> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    let field = |name: &str| -> Option<u64> {
        s.lines()
            .find_map(|l| l.strip_prefix(name))?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()
    };
    Some(Memory {
        pss: field("Pss:")?,
        uss: field("Private_Clean:")? + field("Private_Dirty:")?,
        rss: field("Rss:")?,
    })
}

/// The idle pod `id`'s host memory (KiB) and CPU (millicores over [`CPU_WINDOW`]), with its
/// processes printed on stderr.
fn idle_footprint(cri: &Cri, handler: Handler, id: &str) -> (Memory, f64) {
    std::thread::sleep(SETTLE);
    let procs = pod_processes(cri, handler, id);
    let mut sum = Memory::default();
    eprintln!("  PSS/USS/RSS KiB");
    for p in &procs {
        let m = memory_kib(p.pid)
            .unwrap_or_else(|| panic!("cannot read the memory of pid {}: {}", p.pid, p.cmdline));
        eprintln!(
            "  {:>7} {:>7} {:>7}  pid {}: {:.90}",
            m.pss, m.uss, m.rss, p.pid, p.cmdline
        );
        sum.pss += m.pss;
        sum.uss += m.uss;
        sum.rss += m.rss;
    }
    let ticks = || -> u64 { procs.iter().filter_map(|p| stat(p.pid)).map(|s| s.1).sum() };
    let (t0, c0) = (Instant::now(), ticks());
    std::thread::sleep(CPU_WINDOW);
    let (secs, c1) = (t0.elapsed().as_secs_f64(), ticks());
    // SAFETY: sysconf only reads a configuration value.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    assert!(hz > 0, "sysconf(_SC_CLK_TCK) = {hz}");
    let millicores = c1.saturating_sub(c0) as f64 / hz as f64 / secs * 1000.0;
    (sum, millicores)
}

/// A handler's numbers.
#[derive(Default)]
struct Results {
    start: Vec<f64>,
    pss_mib: Vec<f64>,
    uss_mib: Vec<f64>,
    rss_mib: Vec<f64>,
    cpu_m: Vec<f64>,
    burst_last: Option<f64>,
    burst_each: Vec<f64>,
    burst_failed: Vec<String>,
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn min_max(v: &[f64]) -> (f64, f64) {
    let min = v.iter().copied().fold(f64::INFINITY, f64::min);
    let max = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    (min, max)
}

/// `median (min–max)` with `unit` and `prec` decimals.
fn spread(v: &[f64], unit: &str, prec: usize) -> String {
    if v.is_empty() {
        return "—".to_string();
    }
    let (lo, hi) = min_max(v);
    format!(
        "{:.prec$} {unit} ({lo:.prec$}–{hi:.prec$})",
        median(v),
        prec = prec
    )
}

fn ratio(husk: f64, runc: f64) -> String {
    if runc > 0.0 && husk.is_finite() && runc.is_finite() {
        format!("{:.1}×", husk / runc)
    } else {
        "—".to_string()
    }
}

/// `n` pods of `handler` started at once, one thread each; torn down after.
fn burst(cri: &Cri, handler: Handler, n: usize, r: &mut Results) {
    let gate = std::sync::Barrier::new(n);
    let outcomes: Vec<(Pod, Instant, Result<Instant, String>)> = std::thread::scope(|s| {
        let threads: Vec<_> = (0..n)
            .map(|i| {
                let gate = &gate;
                s.spawn(move || {
                    let mut pod = Pod::default();
                    gate.wait();
                    let t0 = Instant::now();
                    let name = format!("burst-{}-{i}", handler.name());
                    let got = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        start_pod(cri, handler, &name, &mut pod)
                    }));
                    let end = got.map(|d| t0 + d).map_err(|p| panic_text(&*p));
                    (pod, t0, end)
                })
            })
            .collect();
        threads
            .into_iter()
            .map(|t| t.join().expect("a burst thread"))
            .collect()
    });
    let first = outcomes
        .iter()
        .map(|o| o.1)
        .min()
        .expect("at least one pod");
    let mut last = None::<Instant>;
    for (i, (_, t0, end)) in outcomes.iter().enumerate() {
        match end {
            Ok(end) => {
                r.burst_each.push((*end - *t0).as_secs_f64());
                last = Some(last.map_or(*end, |l| l.max(*end)));
            }
            Err(e) => r
                .burst_failed
                .push(format!("{} pod {i} of {n}: {e}", handler.name())),
        }
    }
    r.burst_last = last.map(|l| (l - first).as_secs_f64());
    eprintln!(
        "{}: {n} at once: {}/{n} ready, the last after {:?} s; failures: {:?}",
        handler.name(),
        r.burst_each.len(),
        r.burst_last,
        r.burst_failed
    );
    let pods: Vec<Pod> = outcomes.into_iter().map(|o| o.0).collect();
    tear_down(cri, &pods);
}

#[test]
#[ignore = "benchmark: scripts/bench-pods.sh"]
fn bench_pods() {
    let test = "bench_pods";
    let runs = env_or("BENCH_PODS_RUNS", 5);
    let at_once = env_or("BENCH_PODS_AT_ONCE", 10);
    assert!(runs > 0 && at_once > 0, "BENCH_PODS_RUNS and _AT_ONCE > 0");
    let Some(shim) = husk_shim(test) else {
        return;
    };
    let Some(cri) = Cri::start(test, Some(&shim)) else {
        return;
    };
    eprintln!("{test}: husk shim {}", shim.display());
    cri.pull(&cri.busybox);
    let handlers = [Handler::Husk, Handler::Runc];
    let mut results = [Results::default(), Results::default()];

    for run in 0..runs {
        // Interleaved, the first handler alternating from run to run.
        for k in 0..2 {
            let h = (run + k) % 2;
            let handler = handlers[h];
            let mut pod = Pod::default();
            let took = start_pod(
                &cri,
                handler,
                &format!("one-{}-{run}", handler.name()),
                &mut pod,
            );
            let id = pod.id.clone().expect("a started pod has an id");
            eprintln!(
                "{}: run {}/{runs}: pod start {:.2} s; idle pod:",
                handler.name(),
                run + 1,
                took.as_secs_f64()
            );
            let (mem, cpu) = idle_footprint(&cri, handler, &id);
            let mib = |kib: u64| kib as f64 / 1024.0;
            eprintln!(
                "  = {:.1} MiB PSS, {:.1} MiB USS, {:.1} MiB RSS, {cpu:.0} millicores over {CPU_WINDOW:?}",
                mib(mem.pss),
                mib(mem.uss),
                mib(mem.rss)
            );
            let r = &mut results[h];
            r.start.push(took.as_secs_f64());
            r.pss_mib.push(mib(mem.pss));
            r.uss_mib.push(mib(mem.uss));
            r.rss_mib.push(mib(mem.rss));
            r.cpu_m.push(cpu);
            tear_down(&cri, &[pod]);
        }
    }
    for (h, handler) in handlers.iter().enumerate() {
        burst(&cri, *handler, at_once, &mut results[h]);
    }

    let [husk, runc] = &results;
    let burst_cell = |r: &Results| match r.burst_last {
        Some(l) if r.burst_failed.is_empty() => format!("{l:.2} s"),
        Some(l) => format!("{l:.2} s, {} of {at_once} FAILED", r.burst_failed.len()),
        None => format!("all {at_once} FAILED"),
    };
    let each_cell = |r: &Results| {
        if r.burst_each.is_empty() {
            "—".to_string()
        } else {
            format!(
                "{:.2} s (max {:.2})",
                median(&r.burst_each),
                min_max(&r.burst_each).1
            )
        }
    };
    let rows = [
        (
            format!("pod start → first output, one at a time ({runs} runs)"),
            spread(&husk.start, "s", 2),
            spread(&runc.start, "s", 2),
            ratio(median(&husk.start), median(&runc.start)),
        ),
        (
            format!("{at_once} pods at once: the last one ready"),
            burst_cell(husk),
            burst_cell(runc),
            ratio(
                husk.burst_last.unwrap_or(f64::NAN),
                runc.burst_last.unwrap_or(f64::NAN),
            ),
        ),
        (
            format!("{at_once} pods at once: per-pod start, median (max)"),
            each_cell(husk),
            each_cell(runc),
            ratio(median(&husk.burst_each), median(&runc.burst_each)),
        ),
        (
            "idle pod: host memory, PSS".to_string(),
            spread(&husk.pss_mib, "MiB", 1),
            spread(&runc.pss_mib, "MiB", 1),
            ratio(median(&husk.pss_mib), median(&runc.pss_mib)),
        ),
        (
            "idle pod: host memory, USS (private)".to_string(),
            spread(&husk.uss_mib, "MiB", 1),
            spread(&runc.uss_mib, "MiB", 1),
            ratio(median(&husk.uss_mib), median(&runc.uss_mib)),
        ),
        (
            "idle pod: host memory, RSS".to_string(),
            spread(&husk.rss_mib, "MiB", 1),
            spread(&runc.rss_mib, "MiB", 1),
            ratio(median(&husk.rss_mib), median(&runc.rss_mib)),
        ),
        (
            format!("idle pod: host CPU over {} s", CPU_WINDOW.as_secs()),
            spread(&husk.cpu_m, "m", 0),
            spread(&runc.cpu_m, "m", 0),
            ratio(median(&husk.cpu_m), median(&runc.cpu_m)),
        ),
    ];
    println!("\n| metric | husk | runc | husk/runc |\n| --- | --- | --- | --- |");
    for (m, a, b, q) in rows {
        println!("| {m} | {a} | {b} | {q} |");
    }
    println!(
        "\nmedian (min–max); pod start = RunPodSandbox + PullImage (already pulled) + \
         CreateContainer + StartContainer until the container's first line is in its CRI log; \
         memory = PSS, USS and RSS summed over the pod's shim and its processes (husk: + the \
         VMM, virtiofsd, husk-agent-mux), CPU = their utime + stime over {} s of idling, {} s after the start.",
        CPU_WINDOW.as_secs(),
        SETTLE.as_secs()
    );
    let failed: Vec<&String> = husk.burst_failed.iter().chain(&runc.burst_failed).collect();
    for f in &failed {
        println!("FAILED: {f}");
    }
    assert!(
        failed.is_empty(),
        "{} pod(s) of the at-once runs failed to start (listed above)",
        failed.len()
    );
}
