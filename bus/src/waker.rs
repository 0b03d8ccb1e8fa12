//! Wakes a socket thread blocked in `zmq::poll` when tokio code queues work.
//!
//! An eventfd is part of the poll set. Writing to it costs a syscall, so
//! producers only write while the thread says it is about to sleep: under
//! load the thread never sleeps and queueing is just a channel push.

use std::os::fd::RawFd;
use std::sync::atomic::{fence, AtomicBool, Ordering};

pub(crate) struct Waker {
    fd: RawFd,
    sleeping: AtomicBool,
}

impl Waker {
    pub(crate) fn new() -> std::io::Result<Waker> {
        // SAFETY: plain syscall; the fd is owned by this struct.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Waker {
            fd,
            sleeping: AtomicBool::new(false),
        })
    }

    pub(crate) fn fd(&self) -> RawFd {
        self.fd
    }

    /// Called by producers after they queued something.
    pub(crate) fn wake(&self) {
        // Pairs with the fence in `prepare_sleep`: either the thread sees our
        // item when it re-checks its queues, or we see `sleeping` set.
        fence(Ordering::SeqCst);
        if self.sleeping.load(Ordering::Relaxed) && self.sleeping.swap(false, Ordering::AcqRel) {
            self.force();
        }
    }

    /// Writes to the eventfd unconditionally (control messages, shutdown).
    pub(crate) fn force(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64 to our own eventfd. EAGAIN
        // means the counter is saturated, i.e. a wake-up is already pending.
        unsafe {
            libc::write(self.fd, &one as *const u64 as *const libc::c_void, 8);
        }
    }

    /// The thread announces it will sleep; it must re-check its queues after
    /// this and call `awake` whether or not it slept.
    pub(crate) fn prepare_sleep(&self) {
        self.sleeping.store(true, Ordering::Relaxed);
        fence(Ordering::SeqCst);
    }

    pub(crate) fn awake(&self) {
        self.sleeping.store(false, Ordering::Relaxed);
    }

    /// Resets the eventfd after poll reported it readable.
    pub(crate) fn drain(&self) {
        let mut buf: u64 = 0;
        // SAFETY: reads 8 bytes into a live u64 from our own non-blocking fd.
        unsafe {
            libc::read(self.fd, &mut buf as *mut u64 as *mut libc::c_void, 8);
        }
    }
}

impl Drop for Waker {
    fn drop(&mut self) {
        // SAFETY: we own the fd and close it once.
        unsafe {
            libc::close(self.fd);
        }
    }
}
