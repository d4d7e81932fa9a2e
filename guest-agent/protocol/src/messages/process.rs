//! The process to run: the subset of the OCI runtime spec's `process` object that the guest
//! applies. The host translates the OCI spec into this; fields the guest cannot honour
//! (apparmor, selinux label, io priority, scheduler) are dropped on the host, never sent, so an
//! agent never silently ignores something it was asked to do.

use serde::{Deserialize, Serialize};

use super::caps::Capability;
use crate::limits::{MAX_ARGS, MAX_ARG_LEN, MAX_ENV, MAX_LIST};
use crate::validate::{check_abs_path, check_cstr, check_list, fail, Check};

/// OCI `process`, as the guest applies it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessSpec {
    /// `argv`; `args[0]` is looked up in the container's `PATH` when it has no slash.
    pub args: Vec<String>,
    /// `KEY=VALUE` entries, as OCI has them.
    pub env: Vec<String>,
    /// Absolute working directory inside the container.
    pub cwd: String,
    pub user: User,
    /// Run on a pty (one `Pty` stream) instead of three pipes.
    pub terminal: bool,
    /// Initial pty size; only meaningful with `terminal`.
    pub console_size: Option<ConsoleSize>,
    pub rlimits: Vec<Rlimit>,
    pub no_new_privileges: bool,
    /// `None` keeps whatever the agent's default set is; the host sends the spec's sets.
    pub capabilities: Option<Capabilities>,
    pub oom_score_adj: Option<i32>,
}

/// OCI `process.user`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct User {
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
    /// `None` leaves the inherited umask (0022 from the agent).
    pub umask: Option<u32>,
}

/// OCI `process.consoleSize`, in the order `TIOCSWINSZ` takes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsoleSize {
    pub rows: u16,
    pub cols: u16,
}

/// One OCI `process.rlimits` entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rlimit {
    #[serde(rename = "type")]
    pub kind: RlimitKind,
    pub soft: u64,
    pub hard: u64,
}

/// The resources `setrlimit` knows, spelled as OCI spells them; an enum so a typo fails at
/// decode time with the list of valid names instead of at `setrlimit` time in the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RlimitKind {
    RlimitAs,
    RlimitCore,
    RlimitCpu,
    RlimitData,
    RlimitFsize,
    RlimitLocks,
    RlimitMemlock,
    RlimitMsgqueue,
    RlimitNice,
    RlimitNofile,
    RlimitNproc,
    RlimitRss,
    RlimitRtprio,
    RlimitRttime,
    RlimitSigpending,
    RlimitStack,
}

/// OCI `process.capabilities`: the five sets.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Capabilities {
    pub bounding: Vec<Capability>,
    pub effective: Vec<Capability>,
    pub inheritable: Vec<Capability>,
    pub permitted: Vec<Capability>,
    pub ambient: Vec<Capability>,
}

impl ProcessSpec {
    pub fn validate(&self) -> Check {
        if self.args.is_empty() {
            return fail("args", "must name the program to run (args[0])");
        }
        check_list("args", &self.args, MAX_ARGS, |a| {
            check_cstr("", a, MAX_ARG_LEN)
        })?;
        check_list("env", &self.env, MAX_ENV, |e| check_env(e))?;
        check_abs_path("cwd", &self.cwd)?;
        check_list(
            "user.additional_gids",
            &self.user.additional_gids,
            MAX_LIST,
            |_| Ok(()),
        )?;
        if let Some(umask) = self.user.umask {
            if umask > 0o777 {
                return fail("user.umask", format!("{umask:#o} is not a permission mask"));
            }
        }
        if self.console_size.is_some() && !self.terminal {
            return fail("console_size", "set without terminal: true");
        }
        check_list("rlimits", &self.rlimits, MAX_LIST, |r| {
            if r.soft > r.hard {
                return fail(
                    "",
                    format!(
                        "{:?}: soft limit {} above hard limit {}",
                        r.kind, r.soft, r.hard
                    ),
                );
            }
            Ok(())
        })?;
        if let Some(caps) = &self.capabilities {
            caps.validate().map_err(|e| e.within("capabilities"))?;
        }
        if let Some(adj) = self.oom_score_adj {
            if !(-1000..=1000).contains(&adj) {
                return fail("oom_score_adj", format!("{adj} outside -1000..=1000"));
            }
        }
        Ok(())
    }
}

impl Capabilities {
    fn validate(&self) -> Check {
        let max = Capability::ALL.len();
        for (name, set) in [
            ("bounding", &self.bounding),
            ("effective", &self.effective),
            ("inheritable", &self.inheritable),
            ("permitted", &self.permitted),
            ("ambient", &self.ambient),
        ] {
            check_list(name, set, max, |_| Ok(()))?;
        }
        Ok(())
    }
}

/// `KEY=VALUE` with a non-empty key: `execve` would take anything, but a missing `=` is
/// always a host bug worth reporting.
fn check_env(entry: &str) -> Check {
    check_cstr("", entry, MAX_ARG_LEN)?;
    match entry.split_once('=') {
        Some((key, _)) if !key.is_empty() => Ok(()),
        _ => fail("", format!("{:?} is not KEY=VALUE", truncate(entry))),
    }
}

/// Keeps error messages short when echoing hostile input.
pub(crate) fn truncate(s: &str) -> &str {
    let mut end = s.len().min(64);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}
