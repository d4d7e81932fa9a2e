//! `husk exec`: another process in a running container, through a control connection of
//! its own to the container's agent.

use husk_protocol::{ProcessSpec, User};

use super::lifecycle::Runtime;
use super::{spec, Error};
use crate::pod::attach::{self, Stdio};
use crate::pod::exec::new_exec_id;
use crate::pod::{self, VM_DIED_EXIT_CODE};

/// `husk exec` flags.
#[derive(Debug, Clone, Default)]
pub struct ExecOptions {
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub workdir: Option<String>,
    pub user: Option<String>,
    /// Supplementary groups of a `user` given by name (from the image's /etc/group).
    pub additional_gids: Vec<u32>,
    pub stdin: bool,
    pub tty: bool,
}

/// Runs `opts.args` in container `query`; returns the process's exit code. The process
/// inherits the container's env, working directory and user unless flags say otherwise.
pub fn exec(rt: &Runtime, query: &str, opts: &ExecOptions) -> Result<i32, Error> {
    let target = attach::forward_signals();
    let state = rt.store.resolve(query)?;
    super::lifecycle::must_be_running(&state)?;
    let agent_err = |source| Error::Agent {
        id: state.id.clone(),
        console: state.console_log.clone(),
        source: Box::new(source),
    };
    let mut env = state.config.env.clone();
    let mut set = |entry: String| {
        let key = entry.split('=').next().unwrap_or("").to_string();
        env.retain(|e| e.split('=').next() != Some(key.as_str()));
        env.push(entry);
    };
    if opts.tty {
        set("TERM=xterm".into());
    }
    for e in &opts.env {
        match e.split_once('=') {
            Some((k, _)) if !k.is_empty() => set(e.clone()),
            Some(_) => return Err(Error::BadEnv(e.clone())),
            None => {
                if let Ok(v) = std::env::var(e) {
                    set(format!("{e}={v}"));
                }
            }
        }
    }
    let (uid, gid, additional_gids) = match &opts.user {
        Some(u) => {
            let (uid, gid) = spec::parse_user(u)?;
            (uid, gid, opts.additional_gids.clone())
        }
        None => (
            state.config.uid,
            state.config.gid,
            state.config.additional_gids.clone(),
        ),
    };
    let cwd = match &opts.workdir {
        Some(w) if !w.starts_with('/') => return Err(Error::RelativeWorkdir(w.clone())),
        Some(w) => w.clone(),
        None => state.config.cwd.clone(),
    };
    let console = if opts.tty {
        attach::terminal_size().or(Some((24, 80)))
    } else {
        None
    };
    let process = ProcessSpec {
        args: opts.args.clone(),
        env,
        cwd,
        user: User {
            uid,
            gid,
            additional_gids,
            umask: None,
        },
        terminal: opts.tty,
        console_size: console.map(|(rows, cols)| husk_protocol::ConsoleSize { rows, cols }),
        rlimits: Vec::new(),
        no_new_privileges: false,
        capabilities: None,
        oom_score_adj: None,
    };
    let exec_id = new_exec_id().map_err(|source| Error::Io {
        path: "/dev/urandom".into(),
        source,
    })?;
    let stdio = Stdio::Host {
        stdin: opts.stdin,
        tty: opts.tty,
    };
    let running = pod::exec::connect(&state.vsock_uds)
        .and_then(|agent| {
            pod::exec::start(
                agent,
                &state.vsock_uds,
                &state.id,
                &exec_id,
                process,
                &stdio,
            )
        })
        .map_err(|source| {
            ended_meanwhile(rt, query, &state.id).unwrap_or_else(|| agent_err(source))
        })?;
    running.follow(&target);
    match running.wait(Some(&target)) {
        Ok(s) => Ok(s.code),
        // The VM went under it (`rm -f`, `kill`, a stop that escalated): no exit status.
        Err(source) => Err(Error::ExecCut {
            id: state.name.clone(),
            cause: super::lost::cause(rt, &state),
            source: Box::new(source),
        }),
    }
}

/// Why an exec could not start when its container was removed or stopped meanwhile (`rm -f`,
/// `stop`, `kill` racing it): that, rather than the agent connection it broke. `None` when
/// the container still runs as it did.
fn ended_meanwhile(rt: &Runtime, query: &str, id: &str) -> Option<Error> {
    match rt.store.load(id) {
        Err(Error::NoSuchContainer(_)) => Some(Error::NoSuchContainer(query.to_string())),
        Ok(s) if s.stop_requested || !s.can_signal() => Some(Error::WrongState {
            id: s.name.clone(),
            status: if s.vm_alive() {
                "stopping"
            } else {
                s.effective_status().as_str()
            },
            what: "it was stopped or removed as the exec started".into(),
        }),
        _ => None,
    }
}

/// How `husk exec` ends when its process's end was never reported ([`Error::ExecCut`]): as a
/// process killed with its VM, which it was, or nearly.
pub const CUT_EXIT_CODE: i32 = VM_DIED_EXIT_CODE;
