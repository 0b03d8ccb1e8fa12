//! Sub-millisecond sleeps for the open-loop schedule.
//!
//! tokio's timer wheel works in whole milliseconds and rounds deadlines up,
//! so a request due at t is sent 1–2 ms late: on a fast server that lag
//! dwarfs the latency being measured (corrected p50 1.1 ms against a raw
//! 0.1 ms). On Linux each worker thread instead gets a `timerfd` armed for
//! the earliest pending due instant and registered with the thread's own
//! tokio reactor: wakeups land within tens of microseconds, on the same
//! thread, with one `read` and one `timerfd_settime` per expiry.
//!
//! Without [`install`] (other platforms, the scheduler's paused-time tests)
//! [`sleep_until`] is tokio's sleep.

use tokio::time::Instant;

/// Sleeps until `due` with the precise timer when this thread has one.
pub async fn sleep_until(due: Instant) {
    #[cfg(target_os = "linux")]
    if imp::installed() {
        return imp::Sleep { due }.await;
    }
    tokio::time::sleep_until(due).await
}

/// Installs the precise timer for this thread; call from within its
/// current-thread runtime. Returns the driver task (abort it at the end), or
/// `None` where there is no precise timer (tokio's is used then).
pub fn install() -> Option<tokio::task::JoinHandle<()>> {
    #[cfg(target_os = "linux")]
    {
        imp::install().ok()
    }
    #[cfg(not(target_os = "linux"))]
    {
        None
    }
}

/// Removes this thread's precise timer.
pub fn uninstall() {
    #[cfg(target_os = "linux")]
    imp::uninstall();
}

#[cfg(target_os = "linux")]
mod imp {
    use std::cell::RefCell;
    use std::cmp::{Ordering, Reverse};
    use std::collections::BinaryHeap;
    use std::future::Future;
    use std::io;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
    use std::pin::Pin;
    use std::task::{Context, Poll, Waker};

    use tokio::io::unix::AsyncFd;
    use tokio::time::Instant;

    struct Entry {
        due: Instant,
        waker: Waker,
    }

    impl PartialEq for Entry {
        fn eq(&self, o: &Self) -> bool {
            self.due == o.due
        }
    }
    impl Eq for Entry {}
    impl PartialOrd for Entry {
        fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
            Some(self.cmp(o))
        }
    }
    impl Ord for Entry {
        fn cmp(&self, o: &Self) -> Ordering {
            self.due.cmp(&o.due)
        }
    }

    struct Timer {
        fd: RawFd,
        heap: BinaryHeap<Reverse<Entry>>,
        /// The instant the timerfd is armed for, if any.
        armed: Option<Instant>,
    }

    thread_local! {
        static TIMER: RefCell<Option<Timer>> = const { RefCell::new(None) };
    }

    pub fn installed() -> bool {
        TIMER.with(|t| t.borrow().is_some())
    }

    pub fn install() -> io::Result<tokio::task::JoinHandle<()>> {
        // SAFETY: plain syscall; the result is checked before use.
        let raw = unsafe {
            libc::timerfd_create(
                libc::CLOCK_MONOTONIC,
                libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
            )
        };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh descriptor that nothing else owns; the
        // OwnedFd keeps it open, unchanged, for as long as the AsyncFd lives.
        let fd = unsafe {
            let owned = OwnedFd::from_raw_fd(raw);
            AsyncFd::register_with_interest(owned, tokio::io::Interest::READABLE)
        }
        .map_err(|e| e.into_parts().1)?;
        TIMER.with(|t| {
            *t.borrow_mut() = Some(Timer {
                fd: raw,
                heap: BinaryHeap::new(),
                armed: None,
            })
        });
        Ok(tokio::spawn(drive(fd)))
    }

    pub fn uninstall() {
        TIMER.with(|t| t.borrow_mut().take());
    }

    /// Waits for expiries, wakes every due sleeper, re-arms for the next.
    async fn drive(fd: AsyncFd<OwnedFd>) {
        loop {
            let Ok(mut guard) = fd.readable().await else {
                return;
            };
            let mut buf = [0u8; 8];
            // SAFETY: reads at most 8 bytes into an 8-byte buffer.
            unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), 8) };
            // Cleared before re-arming below, so the next expiry is a new event.
            guard.clear_ready();
            TIMER.with(|t| {
                let mut t = t.borrow_mut();
                let Some(t) = t.as_mut() else { return };
                t.armed = None;
                let now = Instant::now();
                while t.heap.peek().is_some_and(|e| e.0.due <= now) {
                    // wake() only queues the task: nothing re-enters here.
                    t.heap.pop().expect("peeked").0.waker.wake();
                }
                if let Some(next) = t.heap.peek().map(|e| e.0.due) {
                    arm(t, next);
                }
            });
        }
    }

    fn arm(t: &mut Timer, due: Instant) {
        let d = due
            .saturating_duration_since(Instant::now())
            .max(std::time::Duration::from_nanos(1));
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: libc::timespec {
                tv_sec: d.as_secs() as libc::time_t,
                tv_nsec: d.subsec_nanos() as libc::c_long,
            },
        };
        // SAFETY: `fd` is the live timerfd of this thread; `spec` is valid.
        unsafe { libc::timerfd_settime(t.fd, 0, &spec, std::ptr::null_mut()) };
        t.armed = Some(due);
    }

    pub struct Sleep {
        pub due: Instant,
    }

    impl Future for Sleep {
        type Output = ();
        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            if Instant::now() >= self.due {
                return Poll::Ready(());
            }
            // (Re-)register on every pending poll: a spurious poll adds a
            // duplicate entry, which costs one extra wakeup at most.
            TIMER.with(|t| {
                let mut t = t.borrow_mut();
                let t = t.as_mut().expect("checked by sleep_until");
                t.heap.push(Reverse(Entry {
                    due: self.due,
                    waker: cx.waker().clone(),
                }));
                match t.armed {
                    Some(a) if a <= self.due => {}
                    _ => arm(t, self.due),
                }
            });
            Poll::Pending
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn precise_sleeps_wake_close_to_due() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let Some(driver) = install() else { return };
            let mut late = Vec::new();
            for i in 0..50u64 {
                let due = Instant::now() + Duration::from_micros(300 + i * 7);
                sleep_until(due).await;
                let now = Instant::now();
                assert!(now >= due);
                late.push(now - due);
            }
            late.sort();
            // tokio's own timer would be ~1 ms late at the median.
            assert!(
                late[25] < Duration::from_micros(500),
                "median lag {:?}",
                late[25]
            );
            uninstall();
            driver.abort();
        });
    }
}
