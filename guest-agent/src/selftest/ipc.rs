//! System V IPC and POSIX message queues.

use std::ffi::CString;

use super::{cvt, fail, last, Check};

pub(super) fn sysv_ipc() -> Check {
    let shm = cvt(
        unsafe { libc::shmget(libc::IPC_PRIVATE, 4096, libc::IPC_CREAT | 0o600) } as i64,
        "shmget",
    )?;
    unsafe { libc::shmctl(shm as i32, libc::IPC_RMID, std::ptr::null_mut()) };
    let sem = cvt(
        unsafe { libc::semget(libc::IPC_PRIVATE, 1, libc::IPC_CREAT | 0o600) } as i64,
        "semget",
    )?;
    unsafe { libc::semctl(sem as i32, 0, libc::IPC_RMID) };
    let msg = cvt(
        unsafe { libc::msgget(libc::IPC_PRIVATE, libc::IPC_CREAT | 0o600) } as i64,
        "msgget",
    )?;
    unsafe { libc::msgctl(msg as i32, libc::IPC_RMID, std::ptr::null_mut()) };
    Ok(())
}

pub(super) fn mqueue() -> Check {
    let name = CString::new(format!("/husk-selftest-{}", std::process::id()))
        .map_err(|_| fail(libc::EINVAL, "name"))?;
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
    let sent = unsafe { libc::mq_send(mq, c"ping".as_ptr(), 4, 0) };
    let res = if sent < 0 {
        Err(last("mq_send"))
    } else {
        Ok(())
    };
    unsafe {
        libc::mq_close(mq);
        libc::mq_unlink(name.as_ptr());
    }
    res
}
