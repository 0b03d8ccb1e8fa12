//! What a worker counts: three latency histograms (corrected, raw, schedule
//! lag), responses by status, and failures by kind. Workers record into their
//! own copy (no sharing on the hot path) and hand it over once a second; the
//! main thread merges the copies.

use hdrhistogram::Histogram;

use crate::histo;
use crate::schedule::{Outcome, Sample};

/// Status codes 0..600 are counted in place; anything else lands in 0.
const STATUSES: usize = 600;

#[derive(Clone)]
pub struct Stats {
    /// Done - due: what a user arriving on schedule would see.
    pub corrected: Histogram<u64>,
    /// Done - actual send: what a closed-loop tool would report.
    pub raw: Histogram<u64>,
    /// Actual send - due: how far behind schedule the generator was.
    pub lag: Histogram<u64>,
    /// `corrected` by status class (1xx..5xx): how fast successes and
    /// refusals were, apart (an overloaded server answers 503 fast and
    /// 200 slowly; the mix hides both).
    pub by_class: [Histogram<u64>; 5],
    pub status: Box<[u64; STATUSES]>,
    pub connect_errors: u64,
    /// Requests sent whose connection ended before the response was
    /// complete (a cut request; wrk's read errors).
    pub read_errors: u64,
    pub io_errors: u64,
    pub timeouts: u64,
    /// Open loop: due in the window but never sent.
    pub unsent: u64,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            corrected: histo::new(),
            raw: histo::new(),
            lag: histo::new(),
            by_class: std::array::from_fn(|_| histo::new()),
            status: Box::new([0; STATUSES]),
            connect_errors: 0,
            read_errors: 0,
            io_errors: 0,
            timeouts: 0,
            unsent: 0,
        }
    }
}

impl Stats {
    /// Responses (any status): the requests the latency histograms hold.
    pub fn responses(&self) -> u64 {
        self.corrected.len()
    }

    /// Records one exchange. Only responses enter the latency histograms; a
    /// failure has no latency to speak of and is counted by kind.
    #[inline]
    pub fn record(&mut self, s: &Sample) {
        match s.outcome {
            Outcome::Status(code) => {
                histo::record(&mut self.corrected, s.done - s.due);
                histo::record(&mut self.raw, s.done - s.sent);
                histo::record(&mut self.lag, s.sent - s.due);
                let class = (code / 100).clamp(1, 5) as usize - 1;
                histo::record(&mut self.by_class[class], s.done - s.due);
                let i = code as usize;
                self.status[if i < STATUSES { i } else { 0 }] += 1;
            }
            Outcome::Read => self.read_errors += 1,
            Outcome::Io => self.io_errors += 1,
            Outcome::Timeout => self.timeouts += 1,
            Outcome::Closed => {}
        }
    }

    pub fn merge(&mut self, o: &Stats) {
        // Same bounds everywhere: merging cannot fail.
        let _ = histo::merge(&mut self.corrected, &o.corrected);
        let _ = histo::merge(&mut self.raw, &o.raw);
        let _ = histo::merge(&mut self.lag, &o.lag);
        for (a, b) in self.by_class.iter_mut().zip(o.by_class.iter()) {
            let _ = histo::merge(a, b);
        }
        for (a, b) in self.status.iter_mut().zip(o.status.iter()) {
            *a += b;
        }
        self.connect_errors += o.connect_errors;
        self.read_errors += o.read_errors;
        self.io_errors += o.io_errors;
        self.timeouts += o.timeouts;
        self.unsent += o.unsent;
    }

    /// `(status, count)` for every status seen.
    pub fn statuses(&self) -> impl Iterator<Item = (u16, u64)> + '_ {
        self.status
            .iter()
            .enumerate()
            .filter(|(_, n)| **n > 0)
            .map(|(s, n)| (s as u16, *n))
    }

    /// Failures by kind, non-zero only: responses that are not 2xx/3xx by
    /// status class (503 and 504 apart: overload and deadline are the two
    /// the gateway produces on purpose), then transport failures: `connect`
    /// (no request sent), `read` (sent, connection ended before the
    /// response), `io` (sent, failed otherwise), `timeout`.
    pub fn errors(&self) -> Vec<(&'static str, u64)> {
        let (mut s503, mut s504, mut s5xx, mut s4xx, mut other) = (0, 0, 0, 0, 0);
        for (code, n) in self.statuses() {
            match code {
                503 => s503 += n,
                504 => s504 += n,
                500..=599 => s5xx += n,
                400..=499 => s4xx += n,
                200..=399 => {}
                _ => other += n,
            }
        }
        [
            ("503", s503),
            ("504", s504),
            ("5xx", s5xx),
            ("4xx", s4xx),
            ("other_status", other),
            ("connect", self.connect_errors),
            ("read", self.read_errors),
            ("io", self.io_errors),
            ("timeout", self.timeouts),
        ]
        .into_iter()
        .filter(|(_, n)| *n > 0)
        .collect()
    }

    pub fn error_count(&self) -> u64 {
        self.errors().iter().map(|(_, n)| n).sum()
    }

    /// Clears the counts, keeping the allocations.
    pub fn reset(&mut self) {
        self.corrected.reset();
        self.raw.reset();
        self.lag.reset();
        self.by_class.iter_mut().for_each(|h| h.reset());
        self.status.fill(0);
        self.connect_errors = 0;
        self.read_errors = 0;
        self.io_errors = 0;
        self.timeouts = 0;
        self.unsent = 0;
    }
}
