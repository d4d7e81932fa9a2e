//! Starting filtered threads. Each thread installs its kind's seccomp filter first thing.
//! Once [`start_spawner`] ran (husk-vmm does, before the guest runs), device workers are
//! started by the spawner thread on behalf of whoever asks (a vCPU activating a device), so
//! the threads that handle guest input never need `clone`.

use std::io;
use std::sync::mpsc::{self, Receiver, Sender, SyncSender};
use std::sync::{Mutex, OnceLock};
use std::thread::JoinHandle;

use super::seccomp::{self, ThreadKind};

type Job = Box<dyn FnOnce() + Send + 'static>;

struct Request {
    name: String,
    kind: ThreadKind,
    stack_size: Option<usize>,
    job: Job,
    reply: SyncSender<io::Result<JoinHandle<()>>>,
}

const SPAWNER_NAME: &str = "husk-spawner";

static SPAWNER: OnceLock<Mutex<Sender<Request>>> = OnceLock::new();

/// Starts thread `name` of `kind`: it installs `kind`'s filter, then runs `f`.
pub fn spawn(
    name: &str,
    kind: ThreadKind,
    stack_size: Option<usize>,
    f: impl FnOnce() + Send + 'static,
) -> io::Result<JoinHandle<()>> {
    let job: Job = Box::new(f);
    let Some(spawner) = SPAWNER.get() else {
        return spawn_here(name.to_string(), kind, stack_size, job);
    };
    // The spawner itself may ask (it never does); waiting on itself would hang.
    if std::thread::current().name() == Some(SPAWNER_NAME) {
        return spawn_here(name.to_string(), kind, stack_size, job);
    }
    let (reply, answer) = mpsc::sync_channel(1);
    let request = Request {
        name: name.to_string(),
        kind,
        stack_size,
        job,
        reply,
    };
    spawner
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .send(request)
        .map_err(|_| io::Error::other("the thread spawner has stopped"))?;
    answer
        .recv()
        .map_err(|_| io::Error::other("the thread spawner has stopped"))?
}

/// Starts thread `name` of `kind` from the calling thread itself, not through the spawner:
/// for the vCPUs, which the still unfiltered main thread starts.
pub fn spawn_now(
    name: &str,
    kind: ThreadKind,
    stack_size: Option<usize>,
    f: impl FnOnce() + Send + 'static,
) -> io::Result<JoinHandle<()>> {
    spawn_here(name.to_string(), kind, stack_size, Box::new(f))
}

fn spawn_here(
    name: String,
    kind: ThreadKind,
    stack_size: Option<usize>,
    job: Job,
) -> io::Result<JoinHandle<()>> {
    let mut b = std::thread::Builder::new().name(name);
    if let Some(s) = stack_size {
        b = b.stack_size(s);
    }
    b.spawn(move || {
        seccomp::install_or_exit(kind);
        job()
    })
}

/// Starts the spawner thread (once per process); later [`spawn`]s go through it.
pub fn start_spawner() -> io::Result<()> {
    if SPAWNER.get().is_some() {
        return Ok(());
    }
    let (tx, rx) = mpsc::channel::<Request>();
    std::thread::Builder::new()
        .name(SPAWNER_NAME.into())
        .stack_size(256 << 10)
        .spawn(move || serve(rx))?;
    let _ = SPAWNER.set(Mutex::new(tx));
    Ok(())
}

fn serve(rx: Receiver<Request>) {
    seccomp::install_or_exit(ThreadKind::Spawner);
    for r in rx {
        let _ = r
            .reply
            .send(spawn_here(r.name, r.kind, r.stack_size, r.job));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spawns_without_filters_in_a_process_that_prepared_none() {
        let h = spawn("t-direct", ThreadKind::Block, None, || {
            assert_eq!(std::thread::current().name(), Some("t-direct"));
        })
        .unwrap();
        h.join().unwrap();
    }
}
