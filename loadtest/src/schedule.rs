//! When each request is due, and the loop that sends on time.
//!
//! Open loop: the run has one global schedule, request `n` due at
//! `start + n / rate`. User `u` of `U` owns requests `u, u+U, u+2U, ...`, so
//! the users interleave into an even stream. A user that falls behind (its
//! previous response was slow) sends the overdue requests back to back and
//! their latency still counts from when they were *due*: that is the
//! coordinated-omission correction. The raw latency (from the actual send)
//! and the lag (actual send - due) are kept beside it.
//!
//! Closed loop: each user sends its next request as soon as the previous
//! response is in; due time and send time are the same.
//!
//! Sending stops at the end of the window: a request due after it, or not
//! yet sent when it closes, is never sent (counted as `unsent`, which also
//! lowers the achieved rate, so a run that fell behind fails the rate check).

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

/// Produces the due instant of a user's next request.
#[derive(Debug, Clone)]
pub struct Pacer {
    start: Instant,
    end: Instant,
    /// Open loop: nanoseconds between consecutive requests of the global
    /// schedule; `None` for closed loop.
    period_ns: Option<f64>,
    /// Index of this user's next request in the global schedule.
    next: u64,
    stride: u64,
    /// A due instant handed out but not sent (the connection had to be
    /// re-established); handed out again first.
    held: Option<Instant>,
}

impl Pacer {
    /// Open loop at `rate` req/s for user `user` of `users`.
    pub fn open(start: Instant, window: Duration, rate: f64, user: u64, users: u64) -> Pacer {
        Pacer {
            start,
            end: start + window,
            period_ns: Some(1e9 / rate),
            next: user,
            stride: users.max(1),
            held: None,
        }
    }

    pub fn closed(start: Instant, window: Duration) -> Pacer {
        Pacer {
            start,
            end: start + window,
            period_ns: None,
            next: 0,
            stride: 1,
            held: None,
        }
    }

    pub fn end(&self) -> Instant {
        self.end
    }

    /// Due instant of request `n` of the global schedule.
    pub fn due(&self, n: u64) -> Instant {
        let ns = self.period_ns.unwrap_or(0.0) * n as f64;
        self.start + Duration::from_nanos(ns as u64)
    }

    /// The next due instant, or `None` once the window is over (`now` past
    /// the end, or the next request due after it).
    pub fn next(&mut self, now: Instant) -> Option<Instant> {
        if now >= self.end {
            return None;
        }
        if let Some(h) = self.held.take() {
            return Some(h);
        }
        match self.period_ns {
            None => Some(now),
            Some(_) => {
                let due = self.due(self.next);
                if due >= self.end {
                    return None;
                }
                self.next += self.stride;
                Some(due)
            }
        }
    }

    /// Gives back a due instant that could not be sent yet.
    pub fn hold(&mut self, due: Instant) {
        self.held = Some(due);
    }

    /// Requests of this user that were due in the window but never sent.
    pub fn unsent(&self) -> u64 {
        let Some(p) = self.period_ns else { return 0 };
        let window_ns = (self.end - self.start).as_nanos() as f64;
        // Requests n = next, next+stride, ... with n * p < window.
        let total = (window_ns / p).ceil() as u64;
        let mut left = if self.next < total {
            (total - self.next).div_ceil(self.stride)
        } else {
            0
        };
        if self.held.is_some() {
            left += 1;
        }
        left
    }
}

/// One request/response exchange on whatever connection a user holds.
pub trait Exchange {
    /// Several requests share the connection (h2): a timed-out request
    /// resets only its stream, the connection stays.
    const MULTIPLEXED: bool = false;

    fn exchange(&mut self) -> impl Future<Output = Outcome>;
}

/// What one exchange produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A response with this status (its body fully read).
    Status(u16),
    /// Sent, then the connection ended (EOF or reset) before the response
    /// was complete: the server read the request, or may have, and cut it.
    Read,
    /// Sent, and failed otherwise (the write, or a malformed response).
    Io,
    /// No response within the per-request timeout.
    Timeout,
    /// The connection was already closed: nothing was sent, reconnect and
    /// send the same request.
    Closed,
}

impl Outcome {
    /// The connection cannot carry another request.
    pub fn kills_connection(self) -> bool {
        !matches!(self, Outcome::Status(_))
    }
}

/// One finished request, as the recorder sees it.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    pub due: Instant,
    pub sent: Instant,
    pub done: Instant,
    pub outcome: Outcome,
}

/// Sends on schedule until the window ends or the connection dies. Returns
/// `true` when the window is over, `false` when the caller must reconnect
/// (the pacer keeps the unsent due instant).
pub async fn drive<E: Exchange>(
    pacer: &mut Pacer,
    ex: &mut E,
    record: &mut impl FnMut(Sample),
) -> bool {
    loop {
        let now = Instant::now();
        let Some(due) = pacer.next(now) else {
            return true;
        };
        if due > now {
            // Sub-millisecond where the worker installed the precise timer.
            crate::timer::sleep_until(due).await;
        }
        let sent = Instant::now();
        let outcome = ex.exchange().await;
        if outcome == Outcome::Closed {
            pacer.hold(due);
            return false;
        }
        record(Sample {
            due,
            sent,
            done: Instant::now(),
            outcome,
        });
        if outcome.kills_connection() && !(E::MULTIPLEXED && outcome == Outcome::Timeout) {
            return false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Answers after a fixed (virtual) delay, noting when each send happened.
    struct Fake {
        delay: Duration,
        sends: Vec<Instant>,
    }

    impl Exchange for Fake {
        async fn exchange(&mut self) -> Outcome {
            self.sends.push(Instant::now());
            tokio::time::sleep(self.delay).await;
            Outcome::Status(200)
        }
    }

    #[tokio::test(start_paused = true)]
    async fn open_loop_sends_at_the_due_instants() {
        let start = Instant::now();
        // 100 req/s over 2 users: user 1 owns requests 1, 3, 5, ... due at
        // 10 ms, 30 ms, 50 ms, ...
        let mut pacer = Pacer::open(start, Duration::from_millis(100), 100.0, 1, 2);
        let mut fake = Fake {
            delay: Duration::from_millis(2),
            sends: vec![],
        };
        let mut samples = vec![];
        assert!(drive(&mut pacer, &mut fake, &mut |s| samples.push(s)).await);
        let offsets: Vec<u128> = fake
            .sends
            .iter()
            .map(|t| (*t - start).as_millis())
            .collect();
        assert_eq!(offsets, [10, 30, 50, 70, 90]);
        for s in &samples {
            assert_eq!(s.sent, s.due, "sent on time");
            assert_eq!(s.done - s.due, Duration::from_millis(2));
        }
        assert_eq!(pacer.unsent(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_response_backs_up_the_schedule_and_is_charged_from_due() {
        let start = Instant::now();
        // One user, every 10 ms; each response takes 25 ms: requests queue
        // up, are sent back to back, and latency counts from the due time.
        let mut pacer = Pacer::open(start, Duration::from_millis(100), 100.0, 0, 1);
        let mut fake = Fake {
            delay: Duration::from_millis(25),
            sends: vec![],
        };
        let mut samples = vec![];
        assert!(drive(&mut pacer, &mut fake, &mut |s| samples.push(s)).await);
        let sent: Vec<u128> = fake
            .sends
            .iter()
            .map(|t| (*t - start).as_millis())
            .collect();
        // Back to back every 25 ms until the window closes at 100 ms.
        assert_eq!(sent, [0, 25, 50, 75]);
        let due: Vec<u128> = samples
            .iter()
            .map(|s| (s.due - start).as_millis())
            .collect();
        assert_eq!(due, [0, 10, 20, 30]);
        let corrected: Vec<u128> = samples
            .iter()
            .map(|s| (s.done - s.due).as_millis())
            .collect();
        assert_eq!(corrected, [25, 40, 55, 70]);
        assert!(samples
            .iter()
            .all(|s| s.done - s.sent == Duration::from_millis(25)));
        // Due at 40..90 ms: six never sent.
        assert_eq!(pacer.unsent(), 6);
    }

    #[tokio::test(start_paused = true)]
    async fn closed_loop_sends_back_to_back_until_the_end() {
        let start = Instant::now();
        let mut pacer = Pacer::closed(start, Duration::from_millis(100));
        let mut fake = Fake {
            delay: Duration::from_millis(30),
            sends: vec![],
        };
        let mut n = 0;
        assert!(drive(&mut pacer, &mut fake, &mut |_| n += 1).await);
        assert_eq!(n, 4); // sends at 0, 30, 60, 90
        assert_eq!(pacer.unsent(), 0);
    }

    #[test]
    fn due_instants_spread_over_users() {
        let start = Instant::now();
        let p = Pacer::open(start, Duration::from_secs(1), 1000.0, 0, 1);
        assert_eq!(p.due(250) - start, Duration::from_millis(250));
        let mut p = Pacer::open(start, Duration::from_secs(1), 1000.0, 3, 4);
        assert_eq!(p.next(start).unwrap() - start, Duration::from_millis(3));
        assert_eq!(p.next(start).unwrap() - start, Duration::from_millis(7));
        assert_eq!(p.unsent(), 248); // 250 each for 4 users, 2 handed out
    }
}
