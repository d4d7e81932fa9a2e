//! Another process in a running container of a pod: a control connection of its own to the
//! agent ([`connect`]), the process started under a fresh exec id with its stdio attached
//! ([`start`]), then the wait. `husk
//! exec` and husk-runtime's `exec` (foreground or its exec holder) both go through here.

use std::path::Path;
use std::sync::{Arc, Mutex};

use husk_protocol::{ExitStatus, ProcessSpec};

use super::attach::{self, Attached, SignalTarget, Stdio};
use super::AGENT_REACH_TIMEOUT;
use crate::agent::{self, AgentClient};

/// An exec id: `exec-` and 16 random hex digits.
pub fn new_exec_id() -> std::io::Result<String> {
    Ok(format!("exec-{}", &super::new_id()?[..16]))
}

/// A process started in a container, its stdio attached.
pub struct RunningExec {
    agent: Arc<AgentClient>,
    container: String,
    exec_id: String,
    tty: bool,
    pid: u32,
    attached: Attached,
}

/// A control connection of its own to the agent behind `vsock_uds`, for one exec.
pub fn connect(vsock_uds: &Path) -> Result<Arc<AgentClient>, agent::Error> {
    Ok(Arc::new(AgentClient::connect(
        vsock_uds,
        AGENT_REACH_TIMEOUT,
    )?))
}

/// Starts `spec` as `exec_id` in `container` through `agent` (from [`connect`]), its stdio
/// attached to `stdio` over `vsock_uds`.
pub fn start(
    agent: Arc<AgentClient>,
    vsock_uds: &Path,
    container: &str,
    exec_id: &str,
    spec: ProcessSpec,
    stdio: &Stdio,
) -> Result<RunningExec, agent::Error> {
    let tty = spec.terminal;
    let pid = agent.exec_process(container, exec_id, spec)?;
    let attached = attach::attach(&agent, vsock_uds, container, Some(exec_id), stdio)?;
    Ok(RunningExec {
        agent,
        container: container.to_string(),
        exec_id: exec_id.to_string(),
        tty,
        pid,
        attached,
    })
}

impl RunningExec {
    pub fn exec_id(&self) -> &str {
        &self.exec_id
    }

    /// Its pid in the guest.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// From now on the signals `target` receives go to this process.
    pub fn follow(&self, target: &Mutex<SignalTarget>) {
        attach::follow(
            target,
            &self.agent,
            &self.container,
            Some(&self.exec_id),
            self.tty,
        );
    }

    /// Waits for the process to end, its output drained; `target` stops following it.
    pub fn wait(self, target: Option<&Mutex<SignalTarget>>) -> Result<ExitStatus, agent::Error> {
        self.attached
            .wait(&self.agent, &self.container, Some(&self.exec_id), target)
    }
}
