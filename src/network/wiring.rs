//! [`Wiring`]: the part of a NIC's set-up that may finish while the VM boots.
//!
//! The VMM needs only the TAP's fd and the guest's MAC to start; the guest needs its
//! addresses and routes only when the container is created in it, after the agent answers.
//! Everything between (the TAP joining the bridge or mirrored to the engine's veth, NAT and
//! published ports, the engine's routes read) runs on a thread of its own beside the VMM's
//! start (its helper daemons, its spawn) instead of before it: 10 ms of `ip`/`nft` runs on
//! the bridge, ~35 ms of `nsenter`/`ip`/`tc` runs in an engine's namespace on this project's
//! machine (2026-12-05), and far more where process start-up is dear. The front-ends wait
//! for it as soon as the VM runs, before they record it running: the guest boots on in its
//! own process meanwhile, and a failure leaves the container as it was, its VM killed.

use std::thread::JoinHandle;

use husk_protocol::{DnsConfig, NetworkConfig};

use super::Error;

type Work = Box<dyn FnOnce() -> Result<NetworkConfig, Error> + Send>;

/// Set-up still running (or done); [`wait`](Wiring::wait) for the guest's network.
/// Dropped unwaited, it still waits for the thread (whose failure has undone its own part),
/// so that nothing it holds, the network lock included, outlives it.
pub struct Wiring {
    thread: Option<JoinHandle<Result<NetworkConfig, Error>>>,
    /// Nameservers that replace whatever the work found.
    dns: Option<DnsConfig>,
}

impl Wiring {
    /// Runs `work` on a thread of its own; on failure it must undo what it did.
    pub fn spawn(
        work: impl FnOnce() -> Result<NetworkConfig, Error> + Send + 'static,
    ) -> Result<Wiring, Error> {
        let work: Work = Box::new(work);
        let thread = std::thread::Builder::new()
            .name("husk-net".into())
            .spawn(work)
            .map_err(Error::Thread)?;
        Ok(Wiring {
            thread: Some(thread),
            dns: None,
        })
    }

    /// The guest gets `dns` instead of what the work read.
    pub fn with_dns(mut self, dns: DnsConfig) -> Wiring {
        self.dns = Some(dns);
        self
    }

    /// The guest's network, once the work is done.
    pub fn wait(mut self) -> Result<NetworkConfig, Error> {
        let thread = self.thread.take().ok_or(Error::WiringLost)?;
        let mut guest = thread.join().map_err(|_| Error::WiringLost)??;
        if let Some(dns) = self.dns.take() {
            guest.dns = dns;
        }
        Ok(guest)
    }
}

impl Drop for Wiring {
    fn drop(&mut self) {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    #[test]
    fn the_work_runs_beside_the_caller_and_its_answer_is_waited_for() {
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let w = Wiring::spawn(move || {
            // Blocks until the caller, still running, lets it go on.
            rx.recv().unwrap();
            Ok(NetworkConfig::default())
        })
        .unwrap();
        tx.send(()).unwrap();
        assert_eq!(w.wait().unwrap(), NetworkConfig::default());
    }

    #[test]
    fn a_failure_and_a_panic_come_back_as_errors_and_dns_is_replaced() {
        let e = Wiring::spawn(|| Err(Error::BadBridge("x".into())))
            .unwrap()
            .wait()
            .unwrap_err();
        assert!(matches!(e, Error::BadBridge(_)), "{e}");
        let e = Wiring::spawn(|| panic!("boom"))
            .unwrap()
            .wait()
            .unwrap_err();
        assert!(matches!(e, Error::WiringLost), "{e}");
        let dns = DnsConfig {
            servers: vec!["192.0.2.53".parse().unwrap()],
            ..DnsConfig::default()
        };
        let got = Wiring::spawn(|| Ok(NetworkConfig::default()))
            .unwrap()
            .with_dns(dns.clone())
            .wait()
            .unwrap();
        assert_eq!(got.dns, dns);
    }

    #[test]
    fn dropping_it_waits_for_the_work() {
        let done = Arc::new(AtomicBool::new(false));
        let d = done.clone();
        let w = Wiring::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            d.store(true, Ordering::SeqCst);
            Ok(NetworkConfig::default())
        })
        .unwrap();
        drop(w);
        assert!(done.load(Ordering::SeqCst));
    }
}
