//! Assembles the tiny test guests (tests/guests/*.S) into 64-bit ELF images at 16 MiB
//! physical, with the system C compiler, and tells the tests where they are through
//! `HUSK_GUEST_<NAME>` (e.g. `env!("HUSK_GUEST_MARKER")`).

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    let dir = Path::new("tests/guests");
    let out =
        PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR")).join("guests");
    std::fs::create_dir_all(&out).expect("create OUT_DIR/guests");
    println!("cargo:rerun-if-changed={}", dir.display());
    let cc = std::env::var("HUSK_GUEST_CC").unwrap_or_else(|_| "cc".into());
    let mut sources: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("tests/guests exists")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "S"))
        .collect();
    sources.sort();
    for src in sources {
        println!("cargo:rerun-if-changed={}", src.display());
        let name = src
            .file_stem()
            .and_then(|s| s.to_str())
            .expect("utf-8 guest name");
        let elf = out.join(format!("{name}.elf"));
        let status = Command::new(&cc)
            .args(["-nostdlib", "-static", "-no-pie", "-Wl,--build-id=none"])
            .args(["-Wl,-z,max-page-size=0x1000", "-Wl,-z,noexecstack"])
            .arg(format!("-Wl,-T,{}", dir.join("guest.ld").display()))
            .arg("-I")
            .arg(dir)
            .arg("-o")
            .arg(&elf)
            .arg(&src)
            .status()
            .unwrap_or_else(|e| panic!("cannot run {cc} for {}: {e}", src.display()));
        assert!(status.success(), "{cc} failed on {}", src.display());
        println!(
            "cargo:rustc-env=HUSK_GUEST_{}={}",
            name.to_uppercase(),
            elf.display()
        );
    }
}
