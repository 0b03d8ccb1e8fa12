//! A latency histogram that request threads record into without a lock.
//!
//! ```text
//!  recording thread k (slot k % SLOTS)         collector (flush, /stats)
//!  ───────────────────────────────────         ─────────────────────────
//!  busy[k] := true                              phase ^= 1
//!  p := phase                                   for each slot: wait until !busy
//!  slot[k].h[p].record(µs)                      merge slot.h[old] into interval
//!  busy[k] := false                             and total; reset slot.h[old]
//! ```
//!
//! Each recording thread owns a slot (threads beyond `SLOTS` share one, and
//! only then may a writer spin for another's few nanoseconds). The phase
//! flip is the only coordination with the collector: with sequentially
//! consistent `busy`/`phase` accesses, a writer that read the old phase
//! still shows `busy` when the collector looks, so the collector never
//! reads a histogram being written. A record costs one atomic swap, one
//! load and one store on a cache line no other request thread touches.
//!
//! Slot histograms are allocated on a slot's first record (2 significant
//! digits, 1 µs to 100 s: about 16 KiB), never per request.

use crate::slot_index;
use crossbeam_utils::CachePadded;
use hdrhistogram::Histogram;
use parking_lot::Mutex;
use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

pub(crate) const SLOTS: usize = 32;
/// Highest value tracked, µs (100 s); larger values count as this.
pub const MAX_US: u64 = 100_000_000;
/// Significant digits: 1% resolution, plenty to read a p99 against 25 ms.
pub const SIGFIG: u8 = 2;

pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_US, SIGFIG).expect("valid histogram bounds")
}

struct Slot {
    busy: AtomicBool,
    h: [UnsafeCell<Option<Histogram<u64>>>; 2],
}

// SAFETY: a slot's histograms are only touched by the thread holding its
// `busy` flag (writers) or, for the inactive phase, by the collector after
// it saw `busy` clear following the flip (module docs).
unsafe impl Sync for Slot {}

/// Merged views, touched only by collectors.
struct Collected {
    interval: Histogram<u64>,
    total: Histogram<u64>,
}

pub struct Hist {
    phase: AtomicUsize,
    slots: Box<[CachePadded<Slot>]>,
    collected: Mutex<Collected>,
}

impl Default for Hist {
    fn default() -> Self {
        Hist::new()
    }
}

impl Hist {
    pub fn new() -> Hist {
        let slots = (0..SLOTS)
            .map(|_| {
                CachePadded::new(Slot {
                    busy: AtomicBool::new(false),
                    h: [UnsafeCell::new(None), UnsafeCell::new(None)],
                })
            })
            .collect();
        Hist {
            phase: AtomicUsize::new(0),
            slots,
            collected: Mutex::new(Collected {
                interval: new_histogram(),
                total: new_histogram(),
            }),
        }
    }

    /// Records one value in microseconds.
    #[inline]
    pub fn record(&self, us: u64) {
        if !crate::enabled() {
            return;
        }
        let slot = &self.slots[slot_index()];
        while slot.busy.swap(true, Ordering::SeqCst) {
            std::hint::spin_loop();
        }
        let p = self.phase.load(Ordering::SeqCst) & 1;
        // SAFETY: `busy` is ours; the collector leaves phase `p` alone
        // until it has seen `busy` clear after moving off `p`.
        let h = unsafe { &mut *slot.h[p].get() };
        h.get_or_insert_with(new_histogram)
            .saturating_record(us.max(1));
        slot.busy.store(false, Ordering::SeqCst);
    }

    pub fn record_duration(&self, d: std::time::Duration) {
        self.record(d.as_micros().min(u64::MAX as u128) as u64);
    }

    /// Moves everything recorded so far into the merged views.
    fn collect(&self, c: &mut Collected) {
        let old = self.phase.fetch_add(1, Ordering::SeqCst) & 1;
        for slot in self.slots.iter() {
            while slot.busy.load(Ordering::SeqCst) {
                std::hint::spin_loop();
            }
            // SAFETY: writers now use the other phase (see the module docs).
            if let Some(h) = unsafe { &mut *slot.h[old].get() } {
                if !h.is_empty() {
                    let _ = c.interval.add(&*h);
                    let _ = c.total.add(&*h);
                    h.reset();
                }
            }
        }
    }

    /// Everything since the process started.
    pub fn total(&self) -> Histogram<u64> {
        let mut c = self.collected.lock();
        self.collect(&mut c);
        c.total.clone()
    }

    /// Everything since the previous call (the statsd flush window).
    pub fn take_interval(&self) -> Histogram<u64> {
        let mut c = self.collected.lock();
        self.collect(&mut c);
        let h = c.interval.clone();
        c.interval.reset();
        h
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn concurrent_records_are_all_counted_across_collections() {
        let h = Arc::new(Hist::new());
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let h = h.clone();
                std::thread::spawn(move || {
                    for i in 0..50_000u64 {
                        h.record(1 + (i % 1000) + t);
                    }
                })
            })
            .collect();
        // Collect while they record: nothing may be lost or counted twice.
        let mut seen = 0;
        while threads.iter().any(|t| !t.is_finished()) {
            seen += h.take_interval().len();
        }
        for t in threads {
            t.join().unwrap();
        }
        seen += h.take_interval().len();
        assert_eq!(seen, 400_000);
        assert_eq!(h.total().len(), 400_000);
    }

    /// What one record costs on a warm slot (the console's per-instance
    /// histogram adds one per bus call):
    /// `cargo test -p telemetry --release --lib record_cost -- --ignored --nocapture`
    #[test]
    #[ignore = "a timing, not a check"]
    fn record_cost() {
        let h = Hist::new();
        let n = 20_000_000u64;
        h.record(1);
        let t = std::time::Instant::now();
        for i in 0..n {
            h.record(std::hint::black_box(100 + (i & 1023)));
        }
        let ns = t.elapsed().as_nanos() as f64 / n as f64;
        assert_eq!(h.total().len(), n + 1);
        println!("Hist::record: {ns:.1} ns");
    }

    #[test]
    fn percentiles_and_clamping() {
        let h = Hist::new();
        for v in 1..=100u64 {
            h.record(v * 1000);
        }
        h.record(u64::MAX);
        let t = h.total();
        assert_eq!(t.len(), 101);
        let p50 = t.value_at_quantile(0.5);
        assert!((50_000..=52_000).contains(&p50), "{p50}");
        assert!(t.max() >= MAX_US / 2);
    }
}
