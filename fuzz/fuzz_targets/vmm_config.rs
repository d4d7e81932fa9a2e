//! husk-vmm's `--config` JSON: the file goes through the real command-line path (husk-vmm's
//! clap `Command` parses `husk-vmm --config FILE`, then `Args::from_arg_matches` →
//! `into_config`, which reads, parses and validates it), then the accessors the VMM uses. A
//! config that validated must serialise and parse back to itself and validate again.
//!
//! The `Command` is built once (as a process builds it once), not for every input: building
//! it, with clap's debug assertions on, took a fifth of each run and is the same every time.
//! The file is rewritten in place for each input; its temp dir outlives the process
//! (libFuzzer ends with `exit`), inside the TMPDIR that `scripts/fuzz.sh` removes afterwards.
#![no_main]

use std::cell::RefCell;
use std::path::PathBuf;

use clap::{CommandFactory, FromArgMatches};
use husk::vmm::cli::Args;
use husk::vmm::config::VmmConfig;
use libfuzzer_sys::fuzz_target;

struct Harness {
    command: clap::Command,
    /// Holds the config file for the life of the process.
    _dir: tempfile::TempDir,
    path: PathBuf,
}

thread_local! {
    static HARNESS: RefCell<Harness> = RefCell::new({
        let mut command = Args::command();
        command.build();
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("vm.json");
        Harness { command, _dir: dir, path }
    });
}

fuzz_target!(|data: &[u8]| {
    let args = HARNESS.with(|h| {
        let h = &mut *h.borrow_mut();
        std::fs::write(&h.path, data).expect("write config");
        let matches = h
            .command
            .try_get_matches_from_mut([
                "husk-vmm".as_ref(),
                "--config".as_ref(),
                h.path.as_os_str(),
            ])
            .expect("--config FILE parses");
        Args::from_arg_matches(&matches).expect("--config FILE makes Args")
    });
    let Ok(cfg) = args.into_config() else { return };
    let _ = cfg.kernel_cmdline();
    // As the builder does: a validated timeout must make a `Duration` without panicking.
    if let Some(t) = cfg.timeout_secs {
        let _ = std::time::Duration::from_secs_f64(t);
    }
    assert!(
        cfg.memory_bytes() >= 16 << 20,
        "validated config with {} bytes of RAM",
        cfg.memory_bytes()
    );
    let text = serde_json::to_string(&cfg).expect("a parsed config serialises");
    let back: VmmConfig = serde_json::from_str(&text).expect("a serialised config parses");
    back.validate()
        .expect("a config that validated validates again");
    // f64 timeouts round-trip through JSON exactly (serde_json writes shortest repr).
    assert_eq!(back, cfg, "config changed through serialise/parse");
});
