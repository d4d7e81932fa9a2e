//! A container's processes as containerd sees them: the container's own (its init) and each
//! exec, with their stdio, status and exit.

use std::path::PathBuf;
use std::time::SystemTime;

use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim::protos::protobuf::MessageField;
use containerd_shim::protos::types::task::Status as TaskStatus;
use husk_protocol::ProcessSpec;

use crate::pod::attach::{Attached, Stdio};

/// Where a process's streams go: containerd's FIFOs (an empty path: none).
#[derive(Debug, Clone, Default)]
pub struct StdioPaths {
    pub stdin: String,
    pub stdout: String,
    pub stderr: String,
    pub terminal: bool,
}

impl StdioPaths {
    pub fn to_stdio(&self) -> Stdio {
        let path = |p: &str| (!p.is_empty()).then(|| PathBuf::from(p));
        Stdio::Fifos {
            stdin: path(&self.stdin),
            stdout: path(&self.stdout),
            stderr: path(&self.stderr),
            tty: self.terminal,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Created,
    Running,
    /// Running, its processes frozen (`Pause`).
    Paused,
    Stopped,
}

/// How a process ended.
#[derive(Debug, Clone, Copy)]
pub struct Exit {
    pub code: u32,
    pub at: SystemTime,
}

impl Exit {
    pub fn now(code: i32) -> Exit {
        Exit {
            code: u32::try_from(code).unwrap_or(255),
            at: SystemTime::now(),
        }
    }

    pub fn timestamp(&self) -> MessageField<Timestamp> {
        MessageField::some(timestamp(self.at))
    }
}

pub fn timestamp(t: SystemTime) -> Timestamp {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let mut ts = Timestamp::new();
    ts.seconds = i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
    ts.nanos = d.subsec_nanos() as i32;
    ts
}

/// One process of a container.
pub struct Process {
    pub stdio: StdioPaths,
    /// Its pid in the guest, once it runs.
    pub guest_pid: u32,
    pub status: Status,
    pub exit: Option<Exit>,
    /// The container's own process: its streams, attached when it was created.
    pub attached: Option<Attached>,
    /// An exec: what to run when it is started.
    pub spec: Option<ProcessSpec>,
}

impl Process {
    pub fn new(stdio: StdioPaths) -> Process {
        Process {
            stdio,
            guest_pid: 0,
            status: Status::Created,
            exit: None,
            attached: None,
            spec: None,
        }
    }

    /// Records its end (the first one counts).
    pub fn exited(&mut self, code: i32) -> Exit {
        self.status = Status::Stopped;
        *self.exit.get_or_insert(Exit::now(code))
    }

    pub fn task_status(&self) -> TaskStatus {
        match self.status {
            Status::Created => TaskStatus::CREATED,
            Status::Running => TaskStatus::RUNNING,
            Status::Paused => TaskStatus::PAUSED,
            Status::Stopped => TaskStatus::STOPPED,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_exit_counts_and_codes_fit() {
        let mut p = Process::new(StdioPaths::default());
        assert_eq!(p.task_status(), TaskStatus::CREATED);
        let first = p.exited(3);
        let second = p.exited(137);
        assert_eq!((first.code, second.code), (3, 3));
        assert_eq!(p.task_status(), TaskStatus::STOPPED);
        assert_eq!(Exit::now(-1).code, 255);
        let ts = timestamp(SystemTime::UNIX_EPOCH + std::time::Duration::new(5, 7));
        assert_eq!((ts.seconds, ts.nanos), (5, 7));
    }

    #[test]
    fn empty_fifo_paths_are_no_stream() {
        let s = StdioPaths {
            stdout: "/run/x/out".into(),
            ..Default::default()
        };
        match s.to_stdio() {
            Stdio::Fifos {
                stdin,
                stdout,
                stderr,
                tty,
            } => {
                assert!(stdin.is_none() && stderr.is_none() && !tty);
                assert_eq!(stdout.unwrap(), PathBuf::from("/run/x/out"));
            }
            other => panic!("{other:?}"),
        }
    }
}
