//! System V IPC and POSIX message queues.

use std::ffi::CString;

use super::{cvt, fail, last, Check};

pub(super) fn sysv_ipc() -> Check {
    let shm = cvt(
        // SAFETY: shmget takes only integers and returns an id or -1; no memory is attached.
        unsafe { libc::shmget(libc::IPC_PRIVATE, 4096, libc::IPC_CREAT | 0o600) } as i64,
        "shmget",
    )?;
    // SAFETY: IPC_RMID with a null buffer is allowed; `shm` is the segment just created, never
    // attached.
    unsafe { libc::shmctl(shm as i32, libc::IPC_RMID, std::ptr::null_mut()) };
    let sem = cvt(
        // SAFETY: semget takes only integers and returns an id or -1.
        unsafe { libc::semget(libc::IPC_PRIVATE, 1, libc::IPC_CREAT | 0o600) } as i64,
        "semget",
    )?;
    // SAFETY: IPC_RMID on the semaphore set just created takes no further argument.
    unsafe { libc::semctl(sem as i32, 0, libc::IPC_RMID) };
    let msg = cvt(
        // SAFETY: msgget takes only integers and returns an id or -1.
        unsafe { libc::msgget(libc::IPC_PRIVATE, libc::IPC_CREAT | 0o600) } as i64,
        "msgget",
    )?;
    // SAFETY: IPC_RMID with a null buffer is allowed; `msg` is the queue just created.
    unsafe { libc::msgctl(msg as i32, libc::IPC_RMID, std::ptr::null_mut()) };
    Ok(())
}

pub(super) fn mqueue() -> Check {
    let name = CString::new(format!("/husk-selftest-{}", std::process::id()))
        .map_err(|_| fail(libc::EINVAL, "name"))?;
    // SAFETY: `name` is a live NUL-terminated name, only read; with O_CREAT the variadic mode and
    // attr arguments are passed, and a null attr asks for the defaults.
    let mq = unsafe {
        libc::mq_open(
            name.as_ptr(),
            libc::O_CREAT | libc::O_RDWR | libc::O_CLOEXEC,
            0o600 as libc::mode_t,
            std::ptr::null_mut::<libc::mq_attr>(),
        )
    };
    if mq < 0 {
        return Err(last("mq_open"));
    }
    // SAFETY: `mq` is the queue just opened (checked above); mq_send reads 4 bytes from a static C
    // string that long.
    let sent = unsafe { libc::mq_send(mq, c"ping".as_ptr(), 4, 0) };
    let res = if sent < 0 {
        Err(last("mq_send"))
    } else {
        Ok(())
    };
    // SAFETY: `mq` is open and closed exactly once here; `name` is a live NUL-terminated name,
    // only read.
    unsafe {
        libc::mq_close(mq);
        libc::mq_unlink(name.as_ptr());
    }
    res
}
