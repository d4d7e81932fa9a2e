//! OCI `linux.seccomp`, carried as data: the agent compiles it to BPF in the guest, because
//! only the guest kernel knows its own syscall numbers.

use serde::{Deserialize, Serialize};

use crate::limits::{MAX_LIST, MAX_SECCOMP_RULES};
use crate::validate::{check_list, check_token, fail, Check};

/// A seccomp profile, field for field the OCI shape.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeccompSpec {
    pub default_action: SeccompAction,
    /// errno for a default action of `SCMP_ACT_ERRNO`/`SCMP_ACT_TRACE`; `None` means EPERM.
    pub default_errno_ret: Option<u32>,
    /// libseccomp names, e.g. `SCMP_ARCH_X86_64`.
    pub architectures: Vec<String>,
    /// e.g. `SECCOMP_FILTER_FLAG_LOG`.
    pub flags: Vec<String>,
    pub syscalls: Vec<SyscallRule>,
}

/// One OCI `syscalls` entry: the same action for every named syscall whose args match.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyscallRule {
    pub names: Vec<String>,
    pub action: SeccompAction,
    pub errno_ret: Option<u32>,
    pub args: Vec<SyscallArg>,
}

/// One argument condition; `value_two` is only used by `SCMP_CMP_MASKED_EQ`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyscallArg {
    pub index: u32,
    pub value: u64,
    pub value_two: u64,
    pub op: SeccompOp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum SeccompAction {
    #[serde(rename = "SCMP_ACT_KILL")]
    Kill,
    #[serde(rename = "SCMP_ACT_KILL_PROCESS")]
    KillProcess,
    #[serde(rename = "SCMP_ACT_KILL_THREAD")]
    KillThread,
    #[serde(rename = "SCMP_ACT_TRAP")]
    Trap,
    #[serde(rename = "SCMP_ACT_ERRNO")]
    Errno,
    #[serde(rename = "SCMP_ACT_TRACE")]
    Trace,
    #[serde(rename = "SCMP_ACT_ALLOW")]
    Allow,
    #[serde(rename = "SCMP_ACT_LOG")]
    Log,
    #[serde(rename = "SCMP_ACT_NOTIFY")]
    Notify,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum SeccompOp {
    #[serde(rename = "SCMP_CMP_NE")]
    Ne,
    #[serde(rename = "SCMP_CMP_LT")]
    Lt,
    #[serde(rename = "SCMP_CMP_LE")]
    Le,
    #[serde(rename = "SCMP_CMP_EQ")]
    Eq,
    #[serde(rename = "SCMP_CMP_GE")]
    Ge,
    #[serde(rename = "SCMP_CMP_GT")]
    Gt,
    #[serde(rename = "SCMP_CMP_MASKED_EQ")]
    MaskedEq,
}

/// Syscalls take at most six arguments.
const MAX_SYSCALL_ARGS: u32 = 6;

impl SeccompSpec {
    pub fn validate(&self) -> Check {
        check_list("architectures", &self.architectures, MAX_LIST, |a| {
            check_token("", a)
        })?;
        check_list("flags", &self.flags, MAX_LIST, |f| check_token("", f))?;
        check_list(
            "syscalls",
            &self.syscalls,
            MAX_SECCOMP_RULES,
            SyscallRule::validate,
        )
    }
}

impl SyscallRule {
    fn validate(&self) -> Check {
        if self.names.is_empty() {
            return fail("names", "a rule must name at least one syscall");
        }
        check_list("names", &self.names, MAX_LIST, |n| check_token("", n))?;
        check_list("args", &self.args, MAX_SYSCALL_ARGS as usize, |a| {
            if a.index >= MAX_SYSCALL_ARGS {
                return fail(
                    "index",
                    format!("{} is not a syscall argument (0..=5)", a.index),
                );
            }
            Ok(())
        })
    }
}
