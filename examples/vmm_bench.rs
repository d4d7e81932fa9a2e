//! Start-up benchmark: husk-vmm vs QEMU microvm booting the same tiny guest
//! (tests/guests/marker.S). For each run: time from spawn to the first byte on the guest's
//! serial console (the process's stdout), time to process exit, and peak RSS (wait4).
//! husk-vmm runs twice per round, plain and with --fast-exit (VM teardown left to a
//! helper). Runs alternate between the VMMs so both see the same host load; prints medians and
//! ratios. Driven by scripts/bench-vmm.sh.
//!
//! usage: vmm_bench [--runs N] [--memory MIB] [--husk-vmm PATH] [--qemu PATH|none]

use std::io::Read;
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const GUEST: &str = env!("HUSK_GUEST_MARKER");

struct Sample {
    first_byte: Duration,
    exit: Duration,
    rss_kib: i64,
}

struct Case {
    label: &'static str,
    argv: Vec<String>,
    samples: Vec<Sample>,
}

fn run_once(argv: &[String]) -> Result<Sample, String> {
    let start = Instant::now();
    let mut child = Command::new(&argv[0])
        .args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("spawn {}: {e}", argv[0]))?;
    let mut out = child.stdout.take().ok_or("no stdout")?;
    let mut buf = [0u8; 4096];
    let mut first = None;
    let mut text = Vec::new();
    loop {
        match out.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                first.get_or_insert_with(|| start.elapsed());
                text.extend_from_slice(&buf[..n]);
            }
            Err(e) => return Err(format!("read: {e}")),
        }
    }
    let mut status = 0;
    // SAFETY: a zeroed rusage is a valid out-parameter for wait4.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waits for our own child, which std has not reaped.
    let pid = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut ru) };
    let exit = start.elapsed();
    if pid < 0 {
        return Err(format!("wait4: {}", std::io::Error::last_os_error()));
    }
    let text = String::from_utf8_lossy(&text);
    if !text.contains("HUSK-TINY-OK") {
        return Err(format!(
            "{} printed {text:?} (status {:?})",
            argv[0],
            std::process::ExitStatus::from_raw(status)
        ));
    }
    Ok(Sample {
        first_byte: first.unwrap_or(exit),
        exit,
        rss_kib: ru.ru_maxrss,
    })
}

fn median<T: Copy + PartialOrd>(mut v: Vec<T>) -> T {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    v[v.len() / 2]
}

fn main() {
    let mut runs = 20usize;
    let mut memory = "128".to_string();
    let mut husk = "target/release/husk-vmm".to_string();
    let mut qemu = Some("qemu-system-x86_64".to_string());
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || args.next().unwrap_or_else(|| panic!("{a} needs a value"));
        match a.as_str() {
            "--runs" => runs = val().parse().expect("--runs N"),
            "--memory" => memory = val(),
            "--husk-vmm" => husk = val(),
            "--qemu" => qemu = Some(val()).filter(|q| q != "none"),
            other => panic!("unknown argument {other}"),
        }
    }
    let mut cases = vec![Case {
        label: "husk-vmm",
        argv: [
            husk.as_str(),
            "--kernel",
            GUEST,
            "--memory",
            &memory,
            "--console",
            "stdout",
        ]
        .map(String::from)
        .to_vec(),
        samples: Vec::new(),
    }];
    cases.push(Case {
        label: "husk --fast-exit",
        argv: cases[0]
            .argv
            .iter()
            .cloned()
            .chain(["--fast-exit".to_string()])
            .collect(),
        samples: Vec::new(),
    });
    if let Some(q) = qemu {
        cases.push(Case {
            label: "qemu-microvm",
            argv: [
                q.as_str(),
                "-M",
                "microvm,acpi=off",
                "-accel",
                "kvm",
                "-m",
                &memory,
                "-nodefaults",
                "-no-user-config",
                "-nographic",
                "-serial",
                "stdio",
                "-no-reboot",
                "-kernel",
                GUEST,
            ]
            .map(String::from)
            .to_vec(),
            samples: Vec::new(),
        });
    }
    // One warm-up each (page cache, binary loading), then alternate.
    for c in &cases {
        if let Err(e) = run_once(&c.argv) {
            eprintln!("{}: {e}", c.label);
            std::process::exit(1);
        }
    }
    for _ in 0..runs {
        for c in &mut cases {
            match run_once(&c.argv) {
                Ok(s) => c.samples.push(s),
                Err(e) => {
                    eprintln!("{}: {e}", c.label);
                    std::process::exit(1);
                }
            }
        }
    }
    println!("tiny guest {GUEST}, {runs} runs each, medians:");
    println!(
        "{:<14} {:>14} {:>10} {:>13}",
        "", "first byte ms", "exit ms", "peak RSS MiB"
    );
    let mut rows = Vec::new();
    for c in &cases {
        let ms = |f: fn(&Sample) -> Duration| {
            median(c.samples.iter().map(|s| f(s).as_secs_f64() * 1e3).collect())
        };
        let first = ms(|s| s.first_byte);
        let exit = ms(|s| s.exit);
        let rss = median(
            c.samples
                .iter()
                .map(|s| s.rss_kib as f64 / 1024.0)
                .collect(),
        );
        println!("{:<14} {first:>14.2} {exit:>10.2} {rss:>13.2}", c.label);
        rows.push((first, exit, rss));
    }
    if let (Some(a), Some(b)) = (rows.first().copied(), rows.get(2).copied()) {
        println!(
            "qemu/husk-vmm ratio: first byte {:.1}x, exit {:.1}x, RSS {:.1}x",
            b.0 / a.0,
            b.1 / a.1,
            b.2 / a.2
        );
    }
}
