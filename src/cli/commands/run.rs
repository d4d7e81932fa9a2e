use crate::cli::images::Images;
use crate::cli::{Error, GlobalOpts, RunArgs};
use crate::runtime::spec::{parse_cpus, parse_memory, parse_volumes, ProcessFlags};
use crate::runtime::{monitor, RunOptions};

pub fn run(g: &GlobalOpts, a: RunArgs) -> Result<i32, Error> {
    if a.detach && a.interactive && a.tty {
        // docker allows -dit (attach later); husk has no attach yet.
    }
    let rt = super::runtime(g)?;
    let images = Images::open(&g.root)?;
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
        stdin: a.interactive && !a.detach,
        auto_remove: a.rm,
        volumes: parse_volumes(&a.volume)?,
    };
    let state = rt.create(&images, &a.image, &opts)?;
    if a.detach {
        if let Err(e) = monitor::spawn(&rt, &state.id) {
            if a.rm {
                let _ = rt.remove(&state.id, true);
            }
            return Err(e.into());
        }
        println!("{}", state.id);
        return Ok(0);
    }
    match monitor::run_foreground(&rt, &state.id, opts.stdin) {
        Ok(code) => Ok(code),
        Err(e) => {
            if a.rm {
                let _ = rt.remove(&state.id, true);
            }
            Err(e.into())
        }
    }
}
