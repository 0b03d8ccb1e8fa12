//! What an accept loop does when `accept` fails: back off, and say so once.
//!
//! Out of file descriptors (EMFILE, ENFILE) an accept fails at once, every
//! time, until something closes; a loop that retries on a fixed short
//! sleep logs a warning hundreds of times a second and spins. [`Backoff`]
//! doubles the wait on each failure in a row (5 ms up to 1 s), resets it
//! on the next accept that works, and logs a *burst* of failures twice:
//! once when it starts and once when it has been over for a second (with
//! the count), plus a reminder every 10 s while it lasts.

use std::io;
use std::time::{Duration, Instant};

const FIRST: Duration = Duration::from_millis(5);
const CAP: Duration = Duration::from_secs(1);
/// A burst is over when accepts have worked for this long.
const QUIET: Duration = Duration::from_secs(1);
/// While a burst lasts, one reminder this often.
const REMIND: Duration = Duration::from_secs(10);

/// The failed accepts of one listener. `what` names it in the log.
pub struct Backoff {
    what: &'static str,
    delay: Duration,
    burst: Option<Burst>,
}

struct Burst {
    started: Instant,
    last_failure: Instant,
    last_report: Instant,
    failures: u64,
    /// Failures since the last line about them.
    unreported: u64,
}

/// The process is out of file descriptors (its own limit or the system's).
pub fn out_of_descriptors(e: &io::Error) -> bool {
    // EMFILE (24) and ENFILE (23) on Linux and the BSDs.
    matches!(e.raw_os_error(), Some(23 | 24))
}

impl Backoff {
    pub fn new(what: &'static str) -> Backoff {
        Backoff {
            what,
            delay: FIRST,
            burst: None,
        }
    }

    /// After an accept that worked: the wait starts small again, and a
    /// burst that has been quiet for a second is reported over.
    #[inline]
    pub fn ok(&mut self) {
        if self.burst.is_some() {
            self.recovered();
        }
    }

    #[cold]
    fn recovered(&mut self) {
        self.delay = FIRST;
        let Some(b) = &self.burst else { return };
        if b.last_failure.elapsed() >= QUIET {
            tracing::warn!(
                listener = self.what,
                failures = b.failures,
                lasted_ms = b.last_failure.duration_since(b.started).as_millis() as u64,
                "accepting connections again"
            );
            self.burst = None;
        }
    }

    /// After a failed accept: how long to wait before the next one.
    pub fn failed(&mut self, e: &io::Error) -> Duration {
        let now = Instant::now();
        match &mut self.burst {
            None => {
                tracing::warn!(
                    listener = self.what,
                    error = %e,
                    "accept failed; backing off (up to 1s between tries) until it works again"
                );
                self.burst = Some(Burst {
                    started: now,
                    last_failure: now,
                    last_report: now,
                    failures: 1,
                    unreported: 0,
                });
            }
            Some(b) => {
                b.failures += 1;
                b.unreported += 1;
                b.last_failure = now;
                if now.duration_since(b.last_report) >= REMIND {
                    tracing::warn!(
                        listener = self.what,
                        error = %e,
                        failures = b.unreported,
                        "accept still failing"
                    );
                    b.last_report = now;
                    b.unreported = 0;
                }
            }
        }
        let d = self.delay;
        self.delay = (self.delay * 2).min(CAP);
        d
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_double_up_to_the_cap_and_reset_on_success() {
        let mut b = Backoff::new("t");
        let e = io::Error::from_raw_os_error(24);
        assert!(out_of_descriptors(&e));
        let waits: Vec<_> = (0..10).map(|_| b.failed(&e)).collect();
        assert_eq!(waits[0], FIRST);
        assert_eq!(waits[1], FIRST * 2);
        assert_eq!(*waits.last().unwrap(), CAP);
        b.ok();
        assert_eq!(b.failed(&e), FIRST);
        // Still one burst: a success within QUIET does not end it.
        assert_eq!(b.burst.as_ref().unwrap().failures, 11);
    }
}
