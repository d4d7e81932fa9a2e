//! [`PodVm`]: a started VM and the connection to its agent, holding one or more containers.
//! Every front-end boots, fills and powers off its VMs through it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use husk_protocol::ContainerSpec;

use super::proc::ProcessRef;
use super::GuestAssets;
use super::{AGENT_CONNECT_TIMEOUT, VM_EXIT_TIMEOUT};
use crate::agent::{self, AgentClient};
use crate::backend::{self, VmHandle, VmSpec, VsockSpec};
use crate::util::timings;

/// A pod VM before its disks, shares and NICs: `assets`' kernel and agent initramfs booted
/// `quiet`, `vcpus` and `memory_mib`, the agent's vsock, the console appended to `console_log`.
pub fn base_spec(
    assets: &GuestAssets,
    console_log: &Path,
    vcpus: u8,
    memory_mib: u32,
    vsock: VsockSpec,
) -> VmSpec {
    let mut spec = VmSpec::new(&assets.kernel, console_log);
    spec.initramfs = Some(assets.initramfs.clone());
    spec.cmdline = vec!["quiet".into()];
    spec.vcpus = vcpus;
    spec.memory_mib = memory_mib;
    spec.vsock = Some(vsock);
    // husk's agent: it takes what a VM restored from a template needs.
    spec.template = true;
    spec
}

/// Why a started VM did not become a [`PodVm`]; the VM has been killed.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// The VM ended, or its guest never said it was up.
    #[error(transparent)]
    Vm(backend::Error),
    /// The guest came up, but its agent could not be reached or refused the container.
    #[error(transparent)]
    Agent(agent::Error),
}

/// How long power-off waits for the agent to answer `Shutdown` before it watches the VM end.
const SHUTDOWN_ANSWER: Duration = Duration::from_secs(2);

/// How [`PodVm::power_off`] ended the VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoweredOff {
    /// It went when asked (or had already gone).
    Cleanly,
    /// It did not go within [`VM_EXIT_TIMEOUT`] and was killed.
    Killed,
}

/// A VM whose agent answers; it holds the containers created in it (the agent keeps them
/// apart by id).
pub struct PodVm {
    pub vm: Arc<dyn VmHandle>,
    pub agent: Arc<AgentClient>,
    vsock_uds: PathBuf,
}

impl PodVm {
    /// Waits until the guest of the just-started `vm` says it is up, then connects to its
    /// agent over `vsock_uds`. On failure the VM is killed.
    pub fn connect(vm: Arc<dyn VmHandle>, vsock_uds: &Path) -> Result<PodVm, BootError> {
        let connected = vm
            .wait_vsock_ready(AGENT_CONNECT_TIMEOUT)
            .map_err(BootError::Vm)
            .and_then(|()| {
                timings::mark("kernel boot to agent ready");
                // A VM that ends now (a helper died under it: its watcher stops the VM) never
                // answers: say why at once rather than after the whole timeout.
                let running = || matches!(vm.try_wait(), Ok(None));
                AgentClient::connect_while(vsock_uds, AGENT_CONNECT_TIMEOUT, running)
                    .map_err(|e| ended_before_answer(&*vm, e))
            });
        timings::mark("agent connect");
        match connected {
            Ok(agent) => Ok(PodVm {
                vm,
                agent: Arc::new(agent),
                vsock_uds: vsock_uds.to_path_buf(),
            }),
            Err(e) => {
                let _ = vm.kill();
                Err(e)
            }
        }
    }

    /// [`connect`](Self::connect), then creates the pod's first container from `first`. On
    /// failure the VM is killed.
    pub fn boot(
        vm: Arc<dyn VmHandle>,
        vsock_uds: &Path,
        first: ContainerSpec,
    ) -> Result<PodVm, BootError> {
        let pod = PodVm::connect(vm, vsock_uds)?;
        match pod.create_container(first) {
            Ok(()) => Ok(pod),
            Err(e) => {
                let _ = pod.vm.kill();
                Err(BootError::Agent(e))
            }
        }
    }

    /// The host socket the agent's connections (control and streams) go through.
    pub fn vsock_uds(&self) -> &Path {
        &self.vsock_uds
    }

    /// Creates a container in the VM; its process waits for `start`. A pod holds any number
    /// of them, each under its own id.
    pub fn create_container(&self, spec: ContainerSpec) -> Result<(), agent::Error> {
        let created = self.agent.create_container(spec);
        timings::mark("container create");
        let steps = created?;
        timings::within(
            steps
                .into_iter()
                .map(|s| (s.name, std::time::Duration::from_micros(s.micros))),
        );
        Ok(())
    }

    /// Powers the VM off: asks the agent, if the VM still runs, to sync and shut down. Its
    /// answer comes once the guest's file systems are synced, so the VM is then killed at
    /// once rather than waited for through the guest's reset (35-45 ms under QEMU's TCG).
    /// Without an answer (the reset won the race and took it along, or the agent is gone)
    /// it waits up to [`VM_EXIT_TIMEOUT`] for the VM to end, then kills it. `Err` when the
    /// VM was ended by a failing helper (a virtiofsd that died under it): the cause to report.
    pub fn power_off(self) -> Result<PoweredOff, backend::Error> {
        let PodVm { vm, agent, .. } = self;
        let synced =
            matches!(vm.try_wait(), Ok(None)) && agent.shutdown_within(SHUTDOWN_ANSWER).is_ok();
        drop(agent);
        if synced {
            return end_now(&*vm);
        }
        wait_or_kill(&*vm, VM_EXIT_TIMEOUT)
    }

    /// Ends the VM at once without asking its guest anything: for a VM that holds nothing
    /// worth a sync (a `--rm` container's with no writable volume, whose scratch disk is
    /// deleted next). `Err` as for [`power_off`](Self::power_off).
    pub fn discard(self) -> Result<PoweredOff, backend::Error> {
        let PodVm { vm, agent, .. } = self;
        drop(agent);
        end_now(&*vm)
    }
}

/// Kills `vm` now; `Err` when a failing helper had ended it first (the cause to report).
fn end_now(vm: &dyn VmHandle) -> Result<PoweredOff, backend::Error> {
    match vm.try_wait() {
        Err(e @ backend::Error::HelperExited { .. }) => Err(e),
        _ => vm.kill().map(|()| PoweredOff::Cleanly),
    }
}

/// Why the agent of `vm` could not be reached: the VM's end (the helper that ended it, or
/// its exit status) when it ended, else the connection's error.
fn ended_before_answer(vm: &dyn VmHandle, e: agent::Error) -> BootError {
    match vm.try_wait() {
        Ok(None) => BootError::Agent(e),
        Ok(Some(status)) => BootError::Vm(backend::Error::ExitedBeforeReady {
            status,
            log: vm.console_log(),
            last_line: None,
        }),
        Err(vm_error) => BootError::Vm(vm_error),
    }
}

/// Waits up to `limit` for `vm` to end, then kills it. Woken by the VMM's exit (a pidfd).
fn wait_or_kill(vm: &dyn VmHandle, limit: Duration) -> Result<PoweredOff, backend::Error> {
    let deadline = Instant::now() + limit;
    let vmm = ProcessRef::of(vm.pid());
    loop {
        match vm.try_wait() {
            Ok(Some(_)) => return Ok(PoweredOff::Cleanly),
            Ok(None) => {}
            Err(e @ backend::Error::HelperExited { .. }) => return Err(e),
            // Its state unknown: make sure it is gone.
            Err(e) => {
                tracing::debug!("waiting for the VM: {e}");
                let _ = vm.kill();
                return Ok(PoweredOff::Killed);
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            let _ = vm.kill();
            return Ok(PoweredOff::Killed);
        }
        match &vmm {
            Some(p) => {
                p.wait_gone(left);
            }
            None => std::thread::sleep(left.min(Duration::from_millis(10))),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::time::Duration;

    use super::*;

    /// A VM that ends after `polls` polls, or never, or fails its wait once.
    struct FakeVm {
        polls: AtomicUsize,
        ends_after: Option<usize>,
        helper_died: bool,
        killed: AtomicBool,
    }

    impl FakeVm {
        fn new(ends_after: Option<usize>, helper_died: bool) -> FakeVm {
            FakeVm {
                polls: AtomicUsize::new(0),
                ends_after,
                helper_died,
                killed: AtomicBool::new(false),
            }
        }
    }

    impl VmHandle for FakeVm {
        fn pid(&self) -> u32 {
            // No such process (above any pid_max): power-off looks at try_wait alone.
            u32::MAX
        }
        fn wait(&self) -> Result<std::process::ExitStatus, backend::Error> {
            unimplemented!("not used by power-off")
        }
        fn try_wait(&self) -> Result<Option<std::process::ExitStatus>, backend::Error> {
            use std::os::unix::process::ExitStatusExt;
            let n = self.polls.fetch_add(1, Ordering::SeqCst);
            if self.helper_died {
                return Err(backend::Error::HelperExited {
                    program: "virtiofsd".into(),
                    pid: 2,
                    status: std::process::ExitStatus::from_raw(9),
                    log: "/log".into(),
                });
            }
            let ended = self.ends_after.is_some_and(|k| n >= k);
            Ok(ended.then(|| std::process::ExitStatus::from_raw(0)))
        }
        fn kill(&self) -> Result<(), backend::Error> {
            self.killed.store(true, Ordering::SeqCst);
            Ok(())
        }
        fn console_log(&self) -> PathBuf {
            "/console.log".into()
        }
        fn vsock_uds(&self) -> Option<PathBuf> {
            None
        }
        fn wait_vsock_ready(&self, _: Duration) -> Result<(), backend::Error> {
            Ok(())
        }
    }

    #[test]
    fn an_unreachable_agent_is_blamed_on_the_vm_once_it_ended() {
        let lost = || agent::Error::Disconnected("refused".into());
        let running = FakeVm::new(None, false);
        assert!(matches!(
            ended_before_answer(&running, lost()),
            BootError::Agent(_)
        ));
        let ended = FakeVm::new(Some(0), false);
        let e = ended_before_answer(&ended, lost()).to_string();
        assert!(e.starts_with("the VM exited (exit status: 0)"), "{e}");
        let helper = FakeVm::new(None, true);
        let e = ended_before_answer(&helper, lost()).to_string();
        assert!(e.contains("virtiofsd (pid 2) exited"), "{e}");
    }

    #[test]
    fn power_off_waits_kills_a_vm_that_stays_and_reports_a_dead_helper() {
        let going = FakeVm::new(Some(3), false);
        assert_eq!(
            wait_or_kill(&going, Duration::from_secs(5)).unwrap(),
            PoweredOff::Cleanly
        );
        assert!(!going.killed.load(Ordering::SeqCst));

        let staying = FakeVm::new(None, false);
        let t = Instant::now();
        assert_eq!(
            wait_or_kill(&staying, Duration::from_millis(50)).unwrap(),
            PoweredOff::Killed
        );
        assert!(staying.killed.load(Ordering::SeqCst));
        assert!(t.elapsed() >= Duration::from_millis(50));

        let broken = FakeVm::new(None, true);
        let e = wait_or_kill(&broken, Duration::from_secs(5)).unwrap_err();
        assert!(e.to_string().contains("virtiofsd"), "{e}");
    }
}
