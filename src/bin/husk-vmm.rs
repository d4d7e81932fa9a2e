//! husk-vmm: one KVM microVM from flags or a JSON config. See `husk::vmm`.

use clap::Parser;
use husk::vmm::cli::Args;
use husk::vmm::probe::HostProbe;

fn main() {
    let args = Args::parse();
    if args.probe {
        let probe = HostProbe::run();
        if args.json {
            println!("{}", serde_json::to_string_pretty(&probe).unwrap_or_default());
        } else {
            print!("{}", probe.report());
        }
        std::process::exit(if probe.can_run_linux_guests { 0 } else { 2 });
    }
    match args.into_config() {
        Ok(_cfg) => {
            eprintln!("husk-vmm: booting is not built yet");
            std::process::exit(1);
        }
        Err(e) => {
            eprintln!("husk-vmm: {e}");
            std::process::exit(1);
        }
    }
}
