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
    /// The version the instance registered, if known (discovery).
    pub(crate) version: ArcSwapOption<String>,
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
            version: ArcSwapOption::empty(),
            latency: telemetry::Hist::new(),
        }
    }

    /// The version the instance registered; None without discovery.
    pub fn version(&self) -> Option<Arc<String>> {
        self.version.load_full()
    }

    pub(crate) fn is_version(&self, v: &str) -> bool {
        self.version.load().as_deref().is_some_and(|s| s == v)
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

/// How a caller's traffic is split between the versions of a service:
/// relative weights (`[("v1", 90), ("v2", 10)]`). A version not listed,
/// or listed with 0, gets no new calls, unless no listed version with a
/// weight has a connected instance: then any connected instance serves
/// (a policy never turns an available service into a 503).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Weights(pub Vec<(String, u32)>);

/// Where one call may go, by version.
#[derive(Debug, Clone, Copy, Default)]
pub struct Route<'a> {
    /// Pinned: only this version's instances, while one is connected
    /// (else the weights apply).
    pub version: Option<&'a str>,
    pub weights: Option<&'a Weights>,
}

/// [`pick`] within what `route` allows.
pub(crate) fn pick_routed(list: &[Arc<Instance>], route: Route<'_>) -> Option<Arc<Instance>> {
    let of = |v: &str| -> Vec<Arc<Instance>> {
        list.iter()
            .filter(|i| i.is_connected() && i.is_version(v))
            .cloned()
            .collect()
    };
    if let Some(v) = route.version {
        let mine = of(v);
        if !mine.is_empty() {
            return pick(&mine);
        }
    }
    if let Some(w) = route.weights {
        let up: Vec<(&str, u32)> = w
            .0
            .iter()
            .filter(|(v, wt)| *wt > 0 && list.iter().any(|i| i.is_connected() && i.is_version(v)))
            .map(|(v, wt)| (v.as_str(), *wt))
            .collect();
        let total: u64 = up.iter().map(|(_, wt)| *wt as u64).sum();
        if total > 0 {
            let mut r = fastrand::u64(..total);
            for (v, wt) in up {
                if r < wt as u64 {
                    return pick(&of(v));
                }
                r -= wt as u64;
            }
        }
    }
    pick(list)
}

/// For a retry: [`pick_routed`] among the instances not in `tried`.
pub(crate) fn pick_untried(
    list: &[Arc<Instance>],
    tried: &[u64],
    route: Route<'_>,
) -> Option<Arc<Instance>> {
    let rest: Vec<Arc<Instance>> = list
        .iter()
        .filter(|i| !tried.contains(&i.id) && i.is_connected())
        .cloned()
        .collect();
    pick_routed(&rest, route)
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

    fn versioned(id: u64, up: bool, v: &str) -> Arc<Instance> {
        let i = inst(id, up, 0);
        i.version.store(Some(Arc::new(v.to_string())));
        i
    }

    fn weighted(w: &Weights) -> Route<'_> {
        Route {
            version: None,
            weights: Some(w),
        }
    }

    fn share(
        list: &[Arc<Instance>],
        route: Route<'_>,
        n: usize,
    ) -> std::collections::BTreeMap<String, usize> {
        let mut by = std::collections::BTreeMap::new();
        for _ in 0..n {
            let p = pick_routed(list, route).expect("an instance");
            *by.entry(p.version().map(|v| v.to_string()).unwrap_or_default())
                .or_default() += 1;
        }
        by
    }

    #[test]
    fn weights_split_calls_between_versions() {
        // Three v1 instances, one v2: the split follows the weights, not
        // the instance count.
        let list = [
            versioned(1, true, "v1"),
            versioned(2, true, "v1"),
            versioned(3, true, "v1"),
            versioned(4, true, "v2"),
        ];
        let w = Weights(vec![("v1".into(), 90), ("v2".into(), 10)]);
        let route = weighted(&w);
        let by = share(&list, route, 10_000);
        let v2 = by.get("v2").copied().unwrap_or(0);
        assert!((800..=1200).contains(&v2), "v2 got {v2} of 10000: {by:?}");

        // Weight 0 and unlisted versions get nothing.
        let w = Weights(vec![("v1".into(), 100), ("v2".into(), 0)]);
        let by = share(&list, weighted(&w), 2_000);
        assert_eq!(by.get("v2"), None, "{by:?}");
        let w = Weights(vec![("v2".into(), 1)]);
        let by = share(&list, weighted(&w), 2_000);
        assert_eq!(by.keys().collect::<Vec<_>>(), ["v2"], "{by:?}");
    }

    #[test]
    fn no_weighted_version_up_falls_back_to_any_and_a_pin_wins() {
        let list = [versioned(1, true, "v1"), versioned(2, false, "v2")];
        let w = Weights(vec![("v2".into(), 100)]);
        let by = share(&list, weighted(&w), 500);
        assert_eq!(by.keys().collect::<Vec<_>>(), ["v1"], "v2 is down: {by:?}");

        let list = [versioned(1, true, "v1"), versioned(2, true, "v2")];
        let w = Weights(vec![("v1".into(), 100)]);
        let pinned = Route {
            version: Some("v2"),
            weights: Some(&w),
        };
        assert_eq!(share(&list, pinned, 500).keys().collect::<Vec<_>>(), ["v2"]);
        // A pin to a version with no instance up: the weights decide.
        let gone = Route {
            version: Some("v9"),
            weights: Some(&w),
        };
        assert_eq!(share(&list, gone, 500).keys().collect::<Vec<_>>(), ["v1"]);
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
