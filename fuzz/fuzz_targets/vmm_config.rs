//! husk-vmm's `--config` JSON: the file goes through the real command-line path
//! (`Args::try_parse_from(["husk-vmm", "--config", FILE])` → `into_config`, which parses and
//! validates), then the accessors the VMM uses. A config that validated must serialise and
//! parse back to itself and validate again.
#![no_main]

use clap::Parser;
use husk::vmm::cli::Args;
use husk::vmm::config::VmmConfig;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("vm.json");
    std::fs::write(&path, data).expect("write config");
    let args = Args::try_parse_from(["husk-vmm".as_ref(), "--config".as_ref(), path.as_os_str()])
        .expect("--config FILE parses");
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
