//! Retries under a budget, in the style of Finagle's `RetryBudget` and
//! Linkerd's retry budgets: every call deposits, every retry withdraws,
//! and a retry is allowed only while
//!
//! ```text
//! min_per_sec × window + ratio × calls in the window − retries in the window ≥ 1
//! ```
//!
//! so retries add at most `ratio` (20%) to the load plus a trickle
//! (`min_per_sec`, 10/s) for quiet clients: when every instance fails,
//! retries cannot multiply the load on a service that is already down.
//!
//! The window is ten one-second slots of atomic counters: a deposit is one
//! relaxed add, with no lock on the call path. Two retries racing for the
//! last unit of budget may both take it; the overshoot is at most the
//! number of calls retrying at that instant.
//!
//! Which failures are retried is decided in `client/mod.rs`: only those
//! that guarantee the instance did no work, and for idempotent calls also
//! a connection lost after sending; never a timeout.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

pub const DEFAULT_RETRY_RATIO: f64 = 0.2;
pub const DEFAULT_MIN_RETRIES_PER_SEC: u32 = 10;
pub const DEFAULT_RETRY_WINDOW: Duration = Duration::from_secs(10);

const SLOTS: usize = 10;

struct Slot {
    /// The window tick this slot counts for.
    tick: AtomicU64,
    calls: AtomicU64,
    retries: AtomicU64,
}

/// How many retries a client (or every client of one service in a
/// process, sharing one) may make.
pub struct RetryBudget {
    ratio: f64,
    min_per_sec: u32,
    window: Duration,
    tick_len: Duration,
    start: Instant,
    slots: [Slot; SLOTS],
}

impl std::fmt::Debug for RetryBudget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RetryBudget")
            .field("ratio", &self.ratio)
            .field("min_per_sec", &self.min_per_sec)
            .field("window", &self.window)
            .finish()
    }
}

impl Default for RetryBudget {
    fn default() -> Self {
        RetryBudget::new(
            DEFAULT_RETRY_RATIO,
            DEFAULT_MIN_RETRIES_PER_SEC,
            DEFAULT_RETRY_WINDOW,
        )
    }
}

impl RetryBudget {
    /// `ratio` of the calls in the last `window`, plus `min_per_sec`.
    pub fn new(ratio: f64, min_per_sec: u32, window: Duration) -> RetryBudget {
        let window = window.max(Duration::from_millis(SLOTS as u64));
        RetryBudget {
            ratio: ratio.max(0.0),
            min_per_sec,
            window,
            tick_len: window / SLOTS as u32,
            start: Instant::now(),
            slots: std::array::from_fn(|_| Slot {
                tick: AtomicU64::new(0),
                calls: AtomicU64::new(0),
                retries: AtomicU64::new(0),
            }),
        }
    }

    fn tick(&self) -> u64 {
        // Tick 0 is never current, so a slot's initial tick reads as old.
        1 + (self.start.elapsed().as_nanos() / self.tick_len.as_nanos().max(1)) as u64
    }

    /// The slot for `tick`, emptied first if it still holds an old tick.
    fn slot(&self, tick: u64) -> &Slot {
        let s = &self.slots[(tick % SLOTS as u64) as usize];
        let old = s.tick.load(Ordering::Acquire);
        if old != tick
            && s.tick
                .compare_exchange(old, tick, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            s.calls.store(0, Ordering::Relaxed);
            s.retries.store(0, Ordering::Relaxed);
        }
        s
    }

    /// Every call (not every attempt) deposits.
    pub fn deposit(&self) {
        self.slot(self.tick()).calls.fetch_add(1, Ordering::Relaxed);
    }

    /// Takes one retry from the budget, if there is one.
    pub fn try_withdraw(&self) -> bool {
        let now = self.tick();
        let current = self.slot(now);
        let (mut calls, mut retries) = (0u64, 0u64);
        for s in &self.slots {
            let t = s.tick.load(Ordering::Acquire);
            if t + (SLOTS as u64) > now && t <= now {
                calls += s.calls.load(Ordering::Relaxed);
                retries += s.retries.load(Ordering::Relaxed);
            }
        }
        let reserve = self.min_per_sec as f64 * self.window.as_secs_f64();
        let balance = reserve + self.ratio * calls as f64 - retries as f64;
        if balance >= 1.0 {
            current.retries.fetch_add(1, Ordering::Relaxed);
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratio_plus_reserve_then_refusal() {
        // No reserve: 20% of 100 calls is 20 retries, not one more.
        let b = RetryBudget::new(0.2, 0, Duration::from_secs(10));
        for _ in 0..100 {
            b.deposit();
        }
        let granted = (0..50).filter(|_| b.try_withdraw()).count();
        assert_eq!(granted, 20);
        // A reserve of 1/s over 10 s: 10 retries with no calls at all.
        let b = RetryBudget::new(0.2, 1, Duration::from_secs(10));
        assert_eq!((0..50).filter(|_| b.try_withdraw()).count(), 10);
    }

    #[test]
    fn old_calls_leave_the_window() {
        let b = RetryBudget::new(1.0, 0, Duration::from_millis(100));
        for _ in 0..5 {
            b.deposit();
        }
        assert!(b.try_withdraw());
        std::thread::sleep(Duration::from_millis(150));
        assert!(
            !b.try_withdraw(),
            "calls older than the window still counted"
        );
    }
}
