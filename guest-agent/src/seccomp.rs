//! OCI seccomp profiles compiled to a classic BPF filter for x86_64, and installed.
//!
//! Layout: check the architecture (anything but x86_64 is killed), then one block per
//! (rule, syscall): reload the syscall number, compare, test each argument condition
//! (all must hold), return the rule's action; a failed test falls through to the next block.
//! Rules apply in profile order, first match wins; the default action ends the program.
//! Syscall names this table does not know are skipped, as runc does with names the kernel
//! lacks. `SCMP_ACT_NOTIFY` needs a supervisor husk does not have: refused, never ignored.

use husk_protocol::{SeccompAction, SeccompOp, SeccompSpec, SyscallArg};
use serde::{Deserialize, Serialize};

use crate::syscalls;

/// One `struct sock_filter`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[repr(C)]
pub struct Insn {
    pub code: u16,
    pub jt: u8,
    pub jf: u8,
    pub k: u32,
}

/// A compiled filter plus the `seccomp(2)` flags it is installed with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Filter {
    pub insns: Vec<Insn>,
    pub flags: u32,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SeccompError {
    #[error(
        "seccomp action {0:?} is not supported by husk-agent (no supervisor for notifications)"
    )]
    UnsupportedAction(SeccompAction),
    #[error("seccomp flag {0:?} is not supported by husk-agent")]
    UnsupportedFlag(String),
    #[error("seccomp profile does not cover SCMP_ARCH_X86_64 (architectures: {0:?})")]
    NoX86_64(Vec<String>),
    #[error("seccomp profile compiles to {0} BPF instructions, over the kernel's 4096")]
    TooLong(usize),
}

const LD_W_ABS: u16 = 0x20;
const JEQ_K: u16 = 0x15;
const JGT_K: u16 = 0x25;
const JGE_K: u16 = 0x35;
const AND_K: u16 = 0x54;
const RET_K: u16 = 0x06;

const AUDIT_ARCH_X86_64: u32 = 0xC000_003E;
const OFF_NR: u32 = 0;
const OFF_ARCH: u32 = 4;
const OFF_ARGS: u32 = 16;

pub const RET_KILL_PROCESS: u32 = 0x8000_0000;
pub const RET_KILL_THREAD: u32 = 0;
pub const RET_TRAP: u32 = 0x0003_0000;
pub const RET_ERRNO: u32 = 0x0005_0000;
pub const RET_TRACE: u32 = 0x7ff0_0000;
pub const RET_LOG: u32 = 0x7ffc_0000;
pub const RET_ALLOW: u32 = 0x7fff_0000;

const MAX_INSNS: usize = 4096;

/// A jump target inside one block: skip `n` instructions, or leave the block (no match).
#[derive(Clone, Copy)]
enum T {
    Rel(u8),
    End,
}

struct Op(u16, T, T, u32);

fn action(a: SeccompAction, errno: Option<u32>) -> Result<u32, SeccompError> {
    let data = errno.unwrap_or(libc::EPERM as u32) & 0xffff;
    Ok(match a {
        SeccompAction::Kill | SeccompAction::KillThread => RET_KILL_THREAD,
        SeccompAction::KillProcess => RET_KILL_PROCESS,
        SeccompAction::Trap => RET_TRAP,
        SeccompAction::Errno => RET_ERRNO | data,
        SeccompAction::Trace => RET_TRACE | data,
        SeccompAction::Allow => RET_ALLOW,
        SeccompAction::Log => RET_LOG,
        SeccompAction::Notify => return Err(SeccompError::UnsupportedAction(a)),
    })
}

fn arg_check(a: &SyscallArg, ops: &mut Vec<Op>) {
    let lo = OFF_ARGS + 8 * a.index;
    let hi = lo + 4;
    let (v_lo, v_hi) = (a.value as u32, (a.value >> 32) as u32);
    let ld = |off| Op(LD_W_ABS, T::Rel(0), T::Rel(0), off);
    use T::{End, Rel};
    match a.op {
        SeccompOp::Eq => ops.extend([
            ld(lo),
            Op(JEQ_K, Rel(0), End, v_lo),
            ld(hi),
            Op(JEQ_K, Rel(0), End, v_hi),
        ]),
        SeccompOp::Ne => ops.extend([
            ld(lo),
            Op(JEQ_K, Rel(0), Rel(2), v_lo),
            ld(hi),
            Op(JEQ_K, End, Rel(0), v_hi),
        ]),
        SeccompOp::MaskedEq => {
            let (d_lo, d_hi) = (a.value_two as u32, (a.value_two >> 32) as u32);
            ops.extend([
                ld(lo),
                Op(AND_K, Rel(0), Rel(0), v_lo),
                Op(JEQ_K, Rel(0), End, d_lo),
                ld(hi),
                Op(AND_K, Rel(0), Rel(0), v_hi),
                Op(JEQ_K, Rel(0), End, d_hi),
            ])
        }
        SeccompOp::Gt | SeccompOp::Ge => ops.extend([
            ld(hi),
            Op(JGT_K, Rel(3), Rel(0), v_hi),
            Op(JEQ_K, Rel(0), End, v_hi),
            ld(lo),
            Op(
                if a.op == SeccompOp::Gt { JGT_K } else { JGE_K },
                Rel(0),
                End,
                v_lo,
            ),
        ]),
        SeccompOp::Lt | SeccompOp::Le => ops.extend([
            ld(hi),
            Op(JGT_K, End, Rel(0), v_hi),
            Op(JEQ_K, Rel(0), Rel(2), v_hi),
            ld(lo),
            Op(
                if a.op == SeccompOp::Lt { JGE_K } else { JGT_K },
                End,
                Rel(0),
                v_lo,
            ),
        ]),
    }
}

/// Compiles `spec` for x86_64.
pub fn compile(spec: &SeccompSpec) -> Result<Filter, SeccompError> {
    if !spec.architectures.is_empty() && !spec.architectures.iter().any(|a| a == "SCMP_ARCH_X86_64")
    {
        return Err(SeccompError::NoX86_64(spec.architectures.clone()));
    }
    let mut flags = 0;
    for f in &spec.flags {
        flags |= match f.as_str() {
            "SECCOMP_FILTER_FLAG_LOG" => 2,
            "SECCOMP_FILTER_FLAG_SPEC_ALLOW" => 4,
            "SECCOMP_FILTER_FLAG_TSYNC" => 1,
            _ => return Err(SeccompError::UnsupportedFlag(f.clone())),
        };
    }
    let default = action(spec.default_action, spec.default_errno_ret)?;
    let mut insns = vec![
        Insn {
            code: LD_W_ABS,
            jt: 0,
            jf: 0,
            k: OFF_ARCH,
        },
        Insn {
            code: JEQ_K,
            jt: 1,
            jf: 0,
            k: AUDIT_ARCH_X86_64,
        },
        Insn {
            code: RET_K,
            jt: 0,
            jf: 0,
            k: RET_KILL_PROCESS,
        },
    ];
    for rule in &spec.syscalls {
        let ret = action(rule.action, rule.errno_ret)?;
        for name in &rule.names {
            let Some(nr) = syscalls::number(name) else {
                continue;
            };
            let mut ops = vec![
                Op(LD_W_ABS, T::Rel(0), T::Rel(0), OFF_NR),
                Op(JEQ_K, T::Rel(0), T::End, nr),
            ];
            for a in &rule.args {
                arg_check(a, &mut ops);
            }
            ops.push(Op(RET_K, T::Rel(0), T::Rel(0), ret));
            let len = ops.len();
            for (i, Op(code, jt, jf, k)) in ops.into_iter().enumerate() {
                // Blocks are at most ~40 instructions, so every offset fits in a u8.
                let resolve = |t: T| match t {
                    T::Rel(n) => n,
                    T::End => (len - i - 1) as u8,
                };
                insns.push(Insn {
                    code,
                    jt: resolve(jt),
                    jf: resolve(jf),
                    k,
                });
            }
        }
    }
    insns.push(Insn {
        code: RET_K,
        jt: 0,
        jf: 0,
        k: default,
    });
    if insns.len() > MAX_INSNS {
        return Err(SeccompError::TooLong(insns.len()));
    }
    Ok(Filter { insns, flags })
}

/// Installs `filter` on the calling thread (and, being pre-exec, the whole process).
pub fn install(filter: &Filter) -> std::io::Result<()> {
    #[repr(C)]
    struct Prog {
        len: u16,
        filter: *const Insn,
    }
    let prog = Prog {
        len: filter.insns.len() as u16,
        filter: filter.insns.as_ptr(),
    };
    const SECCOMP_SET_MODE_FILTER: libc::c_long = 1;
    // SAFETY: `prog` points at `filter.insns`, which outlives the call, and its `len` is at most
    // the Vec's length (the u16 cast can only shorten it); the kernel copies the program and keeps
    // no pointer into it.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            SECCOMP_SET_MODE_FILTER,
            filter.flags as libc::c_long,
            &prog as *const Prog,
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use husk_protocol::SyscallRule;

    /// A classic-BPF interpreter for the instructions `compile` emits.
    fn run(f: &Filter, arch: u32, nr: u32, args: [u64; 6]) -> u32 {
        let mut data = [0u8; 64];
        data[0..4].copy_from_slice(&nr.to_le_bytes());
        data[4..8].copy_from_slice(&arch.to_le_bytes());
        for (i, a) in args.iter().enumerate() {
            data[16 + 8 * i..24 + 8 * i].copy_from_slice(&a.to_le_bytes());
        }
        let (mut pc, mut acc) = (0usize, 0u32);
        loop {
            let i = f.insns[pc];
            pc += 1;
            let jump = |c: bool| if c { i.jt as usize } else { i.jf as usize };
            match i.code {
                LD_W_ABS => {
                    acc =
                        u32::from_le_bytes(data[i.k as usize..i.k as usize + 4].try_into().unwrap())
                }
                AND_K => acc &= i.k,
                JEQ_K => pc += jump(acc == i.k),
                JGT_K => pc += jump(acc > i.k),
                JGE_K => pc += jump(acc >= i.k),
                RET_K => return i.k,
                c => panic!("unexpected opcode {c:#x}"),
            }
        }
    }

    fn spec(rules: Vec<SyscallRule>) -> SeccompSpec {
        SeccompSpec {
            default_action: SeccompAction::Allow,
            default_errno_ret: None,
            architectures: vec!["SCMP_ARCH_X86_64".into()],
            flags: vec![],
            syscalls: rules,
        }
    }

    fn rule(names: &[&str], action: SeccompAction, args: Vec<SyscallArg>) -> SyscallRule {
        SyscallRule {
            names: names.iter().map(|s| s.to_string()).collect(),
            action,
            errno_ret: Some(13),
            args,
        }
    }

    const X86: u32 = AUDIT_ARCH_X86_64;

    #[test]
    fn names_default_and_arch() {
        let f = compile(&spec(vec![rule(
            &["mkdir", "no_such_call"],
            SeccompAction::Errno,
            vec![],
        )]))
        .unwrap();
        assert_eq!(
            run(&f, X86, 83, [0; 6]),
            RET_ERRNO | 13,
            "mkdir is 83 on x86_64"
        );
        assert_eq!(run(&f, X86, 84, [0; 6]), RET_ALLOW);
        assert_eq!(
            run(&f, 0x4000_0003, 83, [0; 6]),
            RET_KILL_PROCESS,
            "i386 is killed"
        );
    }

    #[test]
    fn argument_conditions_compare_64_bits() {
        let arg = |op, value, value_two| SyscallArg {
            index: 1,
            value,
            value_two,
            op,
        };
        let big = 0x1_0000_0005u64;
        for (op, value, two, yes, no) in [
            (SeccompOp::Eq, big, 0, big, 5),
            (SeccompOp::Ne, big, 0, 5, big),
            (SeccompOp::Gt, big, 0, big + 1, big),
            (SeccompOp::Ge, big, 0, big, 0xffff_ffff),
            (SeccompOp::Lt, big, 0, 0xffff_ffff, big),
            (SeccompOp::Le, big, 0, big, big + 1),
            (SeccompOp::MaskedEq, 0xff00, 0x1200, 0x12ab, 0x13ab),
        ] {
            let f = compile(&spec(vec![rule(
                &["write"],
                SeccompAction::Errno,
                vec![arg(op, value, two)],
            )]))
            .unwrap();
            assert_eq!(
                run(&f, X86, 1, [0, yes, 0, 0, 0, 0]),
                RET_ERRNO | 13,
                "{op:?} {yes:#x}"
            );
            assert_eq!(
                run(&f, X86, 1, [0, no, 0, 0, 0, 0]),
                RET_ALLOW,
                "{op:?} {no:#x}"
            );
        }
    }

    #[test]
    fn first_matching_rule_wins_and_notify_is_refused() {
        let two = vec![
            rule(
                &["read"],
                SeccompAction::Allow,
                vec![SyscallArg {
                    index: 0,
                    value: 0,
                    value_two: 0,
                    op: SeccompOp::Eq,
                }],
            ),
            rule(&["read"], SeccompAction::KillProcess, vec![]),
        ];
        let f = compile(&spec(two)).unwrap();
        assert_eq!(run(&f, X86, 0, [0; 6]), RET_ALLOW);
        assert_eq!(run(&f, X86, 0, [3, 0, 0, 0, 0, 0]), RET_KILL_PROCESS);
        let e = compile(&spec(vec![rule(&["read"], SeccompAction::Notify, vec![])])).unwrap_err();
        assert_eq!(e, SeccompError::UnsupportedAction(SeccompAction::Notify));
    }
}
