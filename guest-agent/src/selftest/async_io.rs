//! Asynchronous I/O and memory: io_uring, Linux AIO and userfaultfd.

use std::os::fd::AsRawFd;

use super::{cvt, fail, fd, Check};

pub(super) fn io_uring() -> Check {
    // struct io_uring_params is 120 bytes; all zero asks for defaults.
    let mut params = [0u32; 30];
    let ring = fd(
        // SAFETY: io_uring_setup writes a struct io_uring_params (120 bytes) into `params`, a live
        // [u32; 30] of exactly that size and alignment; it returns a new fd or -1.
        unsafe { libc::syscall(libc::SYS_io_uring_setup, 4u32, params.as_mut_ptr()) },
        "io_uring_setup",
    )?;
    // sq_entries (word 0) is filled in by the kernel.
    if params[0] < 4 {
        return Err(fail(
            libc::EINVAL,
            format!("io_uring_setup gave {} sq entries", params[0]),
        ));
    }
    drop(ring);
    Ok(())
}

pub(super) fn aio() -> Check {
    let mut ctx: libc::c_ulong = 0;
    cvt(
        // SAFETY: io_setup writes the new context id into `ctx`, a live c_ulong.
        unsafe { libc::syscall(libc::SYS_io_setup, 8, &mut ctx) },
        "io_setup",
    )?;
    // SAFETY: io_destroy takes the context id io_setup returned and touches no memory of ours.
    unsafe { libc::syscall(libc::SYS_io_destroy, ctx) };
    Ok(())
}

pub(super) fn userfaultfd() -> Check {
    let ufd = fd(
        // SAFETY: userfaultfd takes only flags and returns a new fd or -1.
        unsafe { libc::syscall(libc::SYS_userfaultfd, libc::O_CLOEXEC | libc::O_NONBLOCK) },
        "userfaultfd",
    )?;
    // UFFDIO_API = _IOWR(0xAA, 0x3F, struct uffdio_api { u64 api, features, ioctls })
    const UFFDIO_API: u64 = 0xC018_AA3F;
    let mut api = [0xAAu64, 0, 0];
    cvt(
        // SAFETY: UFFDIO_API reads and writes a struct uffdio_api (three u64s, 24 bytes) at the
        // pointer: `api` is a live [u64; 3]; the fd is held open by `ufd`.
        unsafe { libc::ioctl(ufd.as_raw_fd(), UFFDIO_API as _, api.as_mut_ptr()) } as i64,
        "ioctl(UFFDIO_API)",
    )?;
    Ok(())
}
