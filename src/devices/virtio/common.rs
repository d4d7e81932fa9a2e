//! What every device's [`VirtioDevice`](super::VirtioDevice) impl shares, written once: the
//! config-space read, the checks `activate` starts with, and stopping the worker on `reset`.

use super::worker::Worker;
use super::{ActivateContext, ActivateError};

/// Copies config space from `offset` into `data`: `config` is the device's whole config
/// structure as bytes. Bytes past its end are left as they are (the transport pre-fills
/// them with zeros), as [`read_config`](super::VirtioDevice::read_config) requires.
pub fn read_config(config: &[u8], offset: u64, data: &mut [u8]) {
    let Some(src) = usize::try_from(offset).ok().and_then(|s| config.get(s..)) else {
        return;
    };
    let n = src.len().min(data.len());
    data[..n].copy_from_slice(&src[..n]);
}

/// The checks every `activate` starts with: the device is not active already (`worker`
/// is its running worker, if any) and the transport handed over `expected` queues, each
/// with its notification eventfd.
pub fn check_activate(
    worker: &Option<Worker>,
    ctx: &ActivateContext,
    expected: usize,
) -> Result<(), ActivateError> {
    if worker.is_some() {
        return Err(ActivateError::AlreadyActive);
    }
    if ctx.queues.len() != expected || ctx.queue_evts.len() != expected {
        return Err(ActivateError::QueueCount {
            expected,
            got: ctx.queues.len().min(ctx.queue_evts.len()),
        });
    }
    Ok(())
}

/// Stops the device's worker, if one runs (the first step of every `reset`). False, after
/// logging `who: stopping worker: ERROR`, when it could not be stopped.
pub fn stop_worker(worker: &mut Option<Worker>, who: &str) -> bool {
    if let Some(mut w) = worker.take() {
        if let Err(e) = w.stop() {
            tracing::error!("{who}: stopping worker: {e}");
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_reads_copy_what_overlaps_and_leave_the_rest() {
        let cfg = [1u8, 2, 3, 4];
        let mut d = [0xffu8; 3];
        read_config(&cfg, 2, &mut d);
        assert_eq!(d, [3, 4, 0xff]);
        let mut d = [0xffu8; 2];
        read_config(&cfg, 4, &mut d);
        assert_eq!(d, [0xff, 0xff]);
        read_config(&cfg, u64::MAX, &mut d);
        assert_eq!(d, [0xff, 0xff]);
        let mut d = [0u8; 4];
        read_config(&cfg, 0, &mut d);
        assert_eq!(d, cfg);
    }

    #[test]
    fn stopping_no_worker_succeeds() {
        assert!(stop_worker(&mut None, "test"));
    }
}
