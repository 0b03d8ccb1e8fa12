//! Metrics for every Switchboard process: latency histograms (HDR),
//! counters and gauges, recorded without a lock or an allocation on the
//! request path, read by the admin endpoints and pushed to statsd.
//!
//! ```text
//!  request path                 registry (process-wide)           readers
//!  ────────────                 ───────────────────────           ───────
//!  Hist::record(µs)  ─┐         Sources: each component           /stats (JSON)
//!  Counter::add(1)   ─┼─ own ─► (terminator edge, bus clients,  ─► /stats/histograms
//!  AtomicU64 += 1    ─┘         bus services) visits its            statsd flush thread
//!                               metrics by name on demand           (cadence, UDP)
//! ```
//!
//! Names are formatted only when a reader visits (every flush, every
//! `/stats`), never per request. Several sources may report the same name
//! (two bus clients for one service): counters and gauges add up,
//! histograms merge.
//!
//! # Layout
//!
//! - [`hist`]: [`Hist`], the lock-free recording histogram.
//! - [`counter`]: [`Counter`], a counter sharded per thread.
//! - [`registry`]: [`Source`], [`Visitor`], the process-wide registry and
//!   the snapshot that `/stats` and the flush read.
//! - [`statsd`]: the flush thread: counts and percentiles to statsd.
//! - [`export`]: `/stats` JSON and `/stats/histograms` (HDR V2, base64).

pub mod counter;
pub mod export;
pub mod hist;
pub mod registry;
pub mod statsd;

pub use counter::Counter;
pub use hist::Hist;
pub use registry::{register, Snapshot, Source, Visitor};

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

static ENABLED: AtomicBool = AtomicBool::new(true);

/// Turns recording on or off for the whole process (`--metrics off`, for
/// measuring what metrics cost). Off: records and counts are skipped.
pub fn set_enabled(on: bool) {
    ENABLED.store(on, Ordering::Relaxed);
}

#[inline]
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// This thread's slot in per-thread sharded metrics.
#[inline]
pub(crate) fn slot_index() -> usize {
    thread_local! {
        static SLOT: usize = {
            static NEXT: AtomicUsize = AtomicUsize::new(0);
            NEXT.fetch_add(1, Ordering::Relaxed) % hist::SLOTS
        };
    }
    SLOT.with(|s| *s)
}

/// A name part safe in a statsd/Graphite path: `[A-Za-z0-9_-]`, everything
/// else `_` (dots would make new path levels); empty or `/` is `root`.
pub fn sanitize(part: &str) -> String {
    let t = part.trim_matches('/');
    if t.is_empty() {
        return "root".into();
    }
    t.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn sanitize_makes_one_path_level() {
        assert_eq!(super::sanitize("/"), "root");
        assert_eq!(super::sanitize("/api/v1"), "api_v1");
        assert_eq!(super::sanitize("kv.get"), "kv_get");
    }
}
