//! A client's counters: read by [`Client::stats`](super::Client::stats) and
//! reported to the process's telemetry as `bus.<service>.*`.

use super::Shared;
use std::sync::atomic::{AtomicU64, Ordering};

/// Counters, readable at any time with [`Client::stats`].
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) calls: AtomicU64,
    pub(crate) replies: AtomicU64,
    pub(crate) timeouts: AtomicU64,
    pub(crate) no_instance: AtomicU64,
    pub(crate) overloaded: AtomicU64,
    pub(crate) disconnected: AtomicU64,
    pub(crate) protocol: AtomicU64,
    pub(crate) malformed_frames: AtomicU64,
    /// Also counted in `overloaded`: an instance's connection queue was full.
    pub(crate) send_queue_full: AtomicU64,
    pub(crate) retries: AtomicU64,
    pub(crate) retry_budget_exhausted: AtomicU64,
}

/// A snapshot of a client's counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientStats {
    pub calls: u64,
    pub replies: u64,
    pub timeouts: u64,
    pub no_instance: u64,
    pub overloaded: u64,
    pub disconnected: u64,
    pub protocol: u64,
    /// Replies whose call had already ended; dropped.
    pub late: u64,
    /// Replies with an id this client never issued; dropped.
    pub unknown: u64,
    /// Frames from a service that were not a (header, body) pair.
    pub malformed_frames: u64,
    /// Also counted in `overloaded`: an instance's connection queue was
    /// full.
    pub send_queue_full: u64,
    /// Attempts sent again to another instance (each attempt's failure is
    /// also counted under its cause).
    pub retries: u64,
    /// Retries the budget refused.
    pub retry_budget_exhausted: u64,
    pub pending: usize,
}

impl ClientStats {
    /// Every counter with its name: the one place the names are written,
    /// for telemetry (`bus.<service>.<name>`) and admin pages alike.
    pub fn counters(&self) -> [(&'static str, u64); 13] {
        [
            ("calls", self.calls),
            ("replies", self.replies),
            ("timeouts", self.timeouts),
            ("no_instance", self.no_instance),
            ("overloaded", self.overloaded),
            ("send_queue_full", self.send_queue_full),
            ("disconnected", self.disconnected),
            ("protocol_errors", self.protocol),
            ("late", self.late),
            ("unknown_replies", self.unknown),
            ("malformed_frames", self.malformed_frames),
            ("retries", self.retries),
            ("retry_budget_exhausted", self.retry_budget_exhausted),
        ]
    }

    /// The counters and `pending`, as a JSON object.
    pub fn to_json(&self) -> serde_json::Value {
        crate::metrics::counters_json(&self.counters(), ("pending", self.pending))
    }
}

/// Reports as `bus.<service>.*` (docs/operations.md has the catalogue).
impl telemetry::Source for Shared {
    fn visit(&self, v: &mut dyn telemetry::Visitor) {
        let p = format!("bus.{}", telemetry::sanitize(&self.service));
        let s = self.stats();
        for (name, n) in s.counters() {
            v.counter(&format!("{p}.{name}"), n);
        }
        v.gauge(&format!("{p}.pending"), s.pending as i64);
        if self.report_instances {
            let insts = self.instances.read().clone();
            v.gauge(&format!("{p}.endpoints"), insts.len() as i64);
            v.gauge(
                &format!("{p}.connected"),
                insts.iter().filter(|i| i.is_connected()).count() as i64,
            );
        }
        self.methods.visit(&p, v);
    }
}

impl Shared {
    pub(crate) fn stats(&self) -> ClientStats {
        let c = &self.counters;
        let t = &self.table.stats;
        ClientStats {
            calls: c.calls.load(Ordering::Relaxed),
            replies: c.replies.load(Ordering::Relaxed),
            timeouts: c.timeouts.load(Ordering::Relaxed),
            no_instance: c.no_instance.load(Ordering::Relaxed),
            overloaded: c.overloaded.load(Ordering::Relaxed),
            disconnected: c.disconnected.load(Ordering::Relaxed),
            protocol: c.protocol.load(Ordering::Relaxed),
            late: t.late.load(Ordering::Relaxed),
            unknown: t.unknown.load(Ordering::Relaxed),
            malformed_frames: c.malformed_frames.load(Ordering::Relaxed),
            send_queue_full: c.send_queue_full.load(Ordering::Relaxed),
            retries: c.retries.load(Ordering::Relaxed),
            retry_budget_exhausted: c.retry_budget_exhausted.load(Ordering::Relaxed),
            pending: self.table.len(),
        }
    }
}
