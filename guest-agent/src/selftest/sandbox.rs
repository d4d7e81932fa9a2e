//! What container runtimes confine with: seccomp, BPF and namespaces.

use std::mem::size_of;
use std::os::fd::AsRawFd;

use nix::errno::Errno;

use super::{cvt, fail, fd, last, Check};

/// Runs `child` in a forked child and returns its exit status: 0 for success, else an errno.
/// The child only makes raw syscalls, so forking a possibly multi-threaded process is safe.
fn in_child(what: &str, child: impl FnOnce() -> i32) -> Check {
    // SAFETY: the self-test runs on the main thread before the agent starts any other (serve()
    // comes later), and the child below only makes raw syscalls and then _exit, so nothing in the
    // child can meet a lock or allocator state a fork left half-taken.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(last("fork"));
    }
    if pid == 0 {
        let code = child();
        // SAFETY: _exit ends the forked child at once, without running the parent's destructors or
        // atexit handlers twice.
        unsafe { libc::_exit(code) };
    }
    let mut status = 0;
    loop {
        // SAFETY: waitpid writes the status into `status`, a live c_int; `pid` is our own child.
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        if r == pid {
            break;
        }
        if r < 0 && Errno::last_raw() != libc::EINTR {
            return Err(last("waitpid"));
        }
    }
    if libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0 {
        Ok(())
    } else if libc::WIFEXITED(status) {
        Err(fail(libc::WEXITSTATUS(status), what))
    } else {
        Err(fail(
            libc::EINTR,
            format!("{what}: child killed by signal {}", libc::WTERMSIG(status)),
        ))
    }
}

/// A forked child installs an allow-all seccomp filter and checks it is in filter mode.
pub(super) fn seccomp() -> Check {
    // SAFETY: in the forked child (see in_child): `prog` points at `allow`, a live one-instruction
    // filter whose length it gives exactly, and the kernel copies it; prctl and the seccomp
    // syscall take only integers besides that pointer. The filter only allows, and it binds the
    // throwaway child alone.
    in_child("prctl(NO_NEW_PRIVS)+seccomp(SET_MODE_FILTER)", || unsafe {
        let allow = [libc::sock_filter {
            code: (libc::BPF_RET | libc::BPF_K) as u16,
            jt: 0,
            jf: 0,
            k: libc::SECCOMP_RET_ALLOW,
        }];
        let prog = libc::sock_fprog {
            len: 1,
            filter: allow.as_ptr() as *mut _,
        };
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
            return Errno::last_raw();
        }
        if libc::syscall(libc::SYS_seccomp, libc::SECCOMP_SET_MODE_FILTER, 0, &prog) != 0 {
            return Errno::last_raw();
        }
        // 2 = SECCOMP_MODE_FILTER
        if libc::prctl(libc::PR_GET_SECCOMP, 0, 0, 0, 0) != 2 {
            return libc::EINVAL;
        }
        0
    })
}

/// Loads the smallest socket filter (`r0 = 0; exit`) and creates a one-entry array map.
pub(super) fn bpf() -> Check {
    const BPF_MAP_CREATE: i64 = 0;
    const BPF_PROG_LOAD: i64 = 5;
    const BPF_PROG_TYPE_SOCKET_FILTER: u32 = 1;
    const BPF_MAP_TYPE_ARRAY: u32 = 2;
    // struct bpf_insn { u8 code; u8 dst:4, src:4; s16 off; s32 imm } as u64 little-endian.
    let insns: [u64; 2] = [
        0xb7, // BPF_ALU64 | BPF_MOV | BPF_K: r0 = 0
        0x95, // BPF_JMP | BPF_EXIT
    ];
    let license = c"GPL";
    // union bpf_attr, prog-load arm: prog_type, insn_cnt, insns, license, log_level, log_size,
    // log_buf, kern_version, ... The rest stays zero.
    #[repr(C)]
    struct ProgLoad {
        prog_type: u32,
        insn_cnt: u32,
        insns: u64,
        license: u64,
        log_level: u32,
        log_size: u32,
        log_buf: u64,
        kern_version: u32,
        prog_flags: u32,
    }
    let attr = ProgLoad {
        prog_type: BPF_PROG_TYPE_SOCKET_FILTER,
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        log_level: 0,
        log_size: 0,
        log_buf: 0,
        kern_version: 0,
        prog_flags: 0,
    };
    let prog = fd(
        // SAFETY: `attr` is a live #[repr(C)] prefix of union bpf_attr's prog-load arm, and its
        // exact size is passed (the kernel zero-extends the rest); `insns` (2 instructions) and
        // `license` (NUL-terminated) are live across the call, which copies them.
        unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_PROG_LOAD,
                &attr,
                size_of::<ProgLoad>() as u32,
            )
        },
        "bpf(BPF_PROG_LOAD)",
    )?;
    // Attach it to a socket: what a workload does with a socket filter.
    let sock = fd(
        // SAFETY: socket() takes only integers and returns a new fd or -1.
        unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) } as i64,
        "socket",
    )?;
    let pfd = prog.as_raw_fd();
    cvt(
        // SAFETY: SO_ATTACH_BPF reads one i32 (4 bytes) from `pfd`, a live local; both fds are
        // held open.
        unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_ATTACH_BPF,
                (&pfd as *const i32).cast(),
                4,
            )
        } as i64,
        "setsockopt(SO_ATTACH_BPF)",
    )?;
    #[repr(C)]
    struct MapCreate {
        map_type: u32,
        key_size: u32,
        value_size: u32,
        max_entries: u32,
        map_flags: u32,
    }
    let map = MapCreate {
        map_type: BPF_MAP_TYPE_ARRAY,
        key_size: 4,
        value_size: 4,
        max_entries: 1,
        map_flags: 0,
    };
    fd(
        // SAFETY: `map` is a live #[repr(C)] prefix of union bpf_attr's map-create arm and its
        // exact size is passed; the kernel only reads it.
        unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_CREATE,
                &map,
                size_of::<MapCreate>() as u32,
            )
        },
        "bpf(BPF_MAP_CREATE)",
    )
    .map(drop)
}

/// A forked child unshares every namespace a container runtime uses.
pub(super) fn namespaces() -> Check {
    // SAFETY: in the forked, single-threaded child (see in_child), as unshare(CLONE_NEWUSER)
    // requires; sethostname reads 13 bytes from a C string literal that long (plus its NUL).
    in_child("unshare(user|mnt|uts|ipc|pid|net|cgroup)", || unsafe {
        let flags = libc::CLONE_NEWUSER
            | libc::CLONE_NEWNS
            | libc::CLONE_NEWUTS
            | libc::CLONE_NEWIPC
            | libc::CLONE_NEWPID
            | libc::CLONE_NEWNET
            | libc::CLONE_NEWCGROUP;
        if libc::unshare(flags) != 0 {
            return Errno::last_raw();
        }
        if libc::sethostname(c"husk-selftest".as_ptr(), 13) != 0 {
            return Errno::last_raw();
        }
        0
    })
}
