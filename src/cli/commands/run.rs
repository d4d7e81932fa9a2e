use crate::cli::exit_handoff;
use crate::cli::images;
use crate::cli::{Error, GlobalOpts, RunArgs};
use crate::network::ports::parse_all as parse_ports;
use crate::network::{NetworkMode, NetworkSettings};
use crate::runtime::spec::{
    parse_cpus, parse_memory, parse_storage_opts, parse_volumes, ProcessFlags,
};
use crate::runtime::{monitor, RunOptions};
use crate::util::timings;

/// `--network` (or `$HUSK_NETWORK`, else bridge) with the `-p` flags.
fn network_settings(mode: Option<&str>, publish: &[String]) -> Result<NetworkSettings, Error> {
    let env = std::env::var(NETWORK_ENV).ok();
    let mode = mode.or(env.as_deref()).unwrap_or("bridge");
    let settings = NetworkMode::parse(mode)
        .and_then(|m| NetworkSettings::new(m, parse_ports(publish)?))
        .map_err(crate::runtime::Error::from)?;
    Ok(settings)
}

/// The default `--network` when the flag is not given.
pub const NETWORK_ENV: &str = "HUSK_NETWORK";

pub fn run(g: &GlobalOpts, a: RunArgs) -> Result<i32, Error> {
    // In the foreground the caller gets the exit status before the VM is powered off (split
    // first, while this process has one thread). Not with `--rm`, whose caller, as docker's
    // and podman's, finds the container gone when the command returns; not with `--timings`,
    // whose table ends with the teardown.
    let handoff = if a.detach || a.rm || a.timings {
        None
    } else {
        exit_handoff::split()
    };
    if a.timings {
        timings::record();
    }
    let show = a.timings;
    let on_exit = move |code| {
        if let Some(h) = handoff {
            h.deliver(code);
        }
    };
    let result = run_recorded(g, a, on_exit);
    if show {
        eprint!("husk: timings:\n{}", timings::table(&timings::take()));
    }
    result
}

fn run_recorded(g: &GlobalOpts, a: RunArgs, on_exit: impl FnOnce(i32)) -> Result<i32, Error> {
    let rt = super::runtime(g)?;
    // Beside the image's resolve and the disks; `-d` leaves the boot to husk-monitor.
    if !a.detach {
        rt.backend.probe_ahead();
    }
    let image_store = images::open(&g.root)?;
    let opts = RunOptions {
        name: a.name,
        process: ProcessFlags {
            entrypoint: a.entrypoint,
            cmd: a.command,
            env: a.env,
            workdir: a.workdir,
            user: a.user,
            tty: a.tty,
        },
        hostname: a.hostname,
        vcpus: parse_cpus(&a.cpus)?,
        memory_mib: parse_memory(&a.memory)?,
        pids_limit: u64::try_from(a.pids_limit).ok().filter(|n| *n > 0),
        scratch_size: parse_storage_opts(&a.storage_opt)?,
        stdin: a.interactive && !a.detach,
        auto_remove: a.rm,
        volumes: parse_volumes(&a.volume)?,
        network: network_settings(a.network.as_deref(), &a.publish)?,
    };
    let state = rt.create(&image_store, &a.image, &opts)?;
    if a.detach {
        let spawned = monitor::spawn(&rt, &state.id);
        timings::mark("monitor start to running");
        if let Err(e) = spawned {
            if a.rm {
                let _ = rt.remove(&state.id, true);
            }
            return Err(e.into());
        }
        println!("{}", state.id);
        return Ok(0);
    }
    match monitor::run_foreground(&rt, &state.id, opts.stdin, on_exit) {
        Ok(code) => Ok(code),
        Err(e) => {
            if a.rm {
                let _ = rt.remove(&state.id, true);
            }
            Err(e.into())
        }
    }
}
