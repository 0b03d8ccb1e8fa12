//! Instances of a service as callers see them, and how a call picks one:
//! power of two choices over the connected instances.

use crate::zmtp::outbox::Outbox;
use arc_swap::ArcSwapOption;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::sync::Notify;

/// One instance of the service, as the callers see it.
pub struct Instance {
    pub(crate) id: u64,
    pub(crate) endpoint: String,
    pub(crate) connected: AtomicBool,
    /// False until the first handshake completes; see
    /// [`FIRST_CONNECT_WAIT`](super::FIRST_CONNECT_WAIT).
    pub(crate) ever_connected: AtomicBool,
    pub(crate) added: std::time::Instant,
    pub(crate) outstanding: AtomicUsize,
    /// The live connection's write side; `None` while down.
    pub(crate) outbox: ArcSwapOption<Outbox>,
    /// Removed from the set: no new calls; the link closes once the calls
    /// already sent are answered.
    pub(crate) retiring: AtomicBool,
    pub(crate) retire: Notify,
    /// Answered calls to this instance, µs: what shows one slow instance
    /// among many (the terminator's console). The call already measures
    /// its time; this is one more lock-free record.
    pub(crate) latency: telemetry::Hist,
}

impl std::fmt::Debug for Instance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Instance")
            .field("id", &self.id)
            .field("endpoint", &self.endpoint)
            .field("connected", &self.connected)
            .field("outstanding", &self.outstanding)
            .field("retiring", &self.retiring)
            .finish_non_exhaustive()
    }
}

impl Instance {
    pub(crate) fn new(id: u64, endpoint: &str) -> Instance {
        Instance {
            id,
            endpoint: endpoint.to_string(),
            connected: AtomicBool::new(false),
            ever_connected: AtomicBool::new(false),
            added: std::time::Instant::now(),
            outstanding: AtomicUsize::new(0),
            outbox: ArcSwapOption::empty(),
            retiring: AtomicBool::new(false),
            retire: Notify::new(),
            latency: telemetry::Hist::new(),
        }
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }
    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }
    pub fn outstanding(&self) -> usize {
        self.outstanding.load(Ordering::Relaxed)
    }
    /// Every answered call to this instance since it was added, µs
    /// (cumulative: diff two readings for a window).
    pub fn latency_total(&self) -> hdrhistogram::Histogram<u64> {
        self.latency.total()
    }
    /// Whether a handshake with this instance ever completed.
    pub fn ever_connected(&self) -> bool {
        self.ever_connected.load(Ordering::Relaxed)
    }
}

/// Power of two choices: two connected instances at random, the one with
/// fewer calls outstanding wins (Mitzenmacher; what Finagle and Linkerd use).
pub(crate) fn pick(list: &[Arc<Instance>]) -> Option<Arc<Instance>> {
    let n = list.len();
    match n {
        0 => None,
        1 => list[0].is_connected().then(|| list[0].clone()),
        _ => {
            let a = fastrand::usize(..n);
            let mut b = fastrand::usize(..n - 1);
            if b >= a {
                b += 1;
            }
            let (ia, ib) = (&list[a], &list[b]);
            match (ia.is_connected(), ib.is_connected()) {
                (true, true) => Some(if ib.outstanding() < ia.outstanding() {
                    ib.clone()
                } else {
                    ia.clone()
                }),
                (true, false) => Some(ia.clone()),
                (false, true) => Some(ib.clone()),
                (false, false) => {
                    let start = fastrand::usize(..n);
                    (0..n)
                        .map(|k| &list[(start + k) % n])
                        .find(|i| i.is_connected())
                        .cloned()
                }
            }
        }
    }
}

/// For a retry: power of two choices among the connected instances not
/// in `tried`.
pub(crate) fn pick_untried(list: &[Arc<Instance>], tried: &[u64]) -> Option<Arc<Instance>> {
    let rest: Vec<Arc<Instance>> = list
        .iter()
        .filter(|i| !tried.contains(&i.id) && i.is_connected())
        .cloned()
        .collect();
    pick(&rest)
}

/// Counts a call against its instance for as long as it is outstanding.
pub(crate) struct Outstanding(Arc<Instance>);

impl Outstanding {
    pub(crate) fn new(i: &Arc<Instance>) -> Outstanding {
        i.outstanding.fetch_add(1, Ordering::Relaxed);
        Outstanding(i.clone())
    }
}

impl Drop for Outstanding {
    fn drop(&mut self) {
        self.0.outstanding.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inst(id: u64, up: bool, out: usize) -> Arc<Instance> {
        let i = Instance::new(id, "tcp://127.0.0.1:1");
        i.connected.store(up, Ordering::Relaxed);
        i.outstanding.store(out, Ordering::Relaxed);
        Arc::new(i)
    }

    #[test]
    fn picks_only_connected_and_prefers_the_less_busy() {
        assert!(pick(&[]).is_none());
        assert!(pick(&[inst(1, false, 0)]).is_none());
        let list = [inst(1, true, 100), inst(2, true, 0), inst(3, false, 0)];
        let mut busy = 0;
        for _ in 0..1000 {
            let p = pick(&list).unwrap();
            assert_ne!(p.id, 3, "picked a disconnected instance");
            if p.id == 1 {
                busy += 1;
            }
        }
        // 1 wins only when drawn against the disconnected 3: about 1 in 3.
        assert!(busy < 450, "busy instance picked {busy} times in 1000");
    }
}
