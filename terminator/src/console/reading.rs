//! One cumulative reading of everything the console shows, taken on the
//! admin side. Every number is a total since start (counters, histograms
//! as `/stats` reads them), so two readings a second apart give that
//! second and the request path records exactly what it always has.

use crate::metrics::EdgeTotals;
use crate::proxy::Edge;
use crate::routes::Routes;
use hdrhistogram::Histogram;
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

pub(crate) struct Reading {
    pub at: Instant,
    pub unix_ms: u64,
    pub edge: EdgeTotals,
    pub in_flight: usize,
    /// By route prefix as shown (`/`, `/api/`).
    pub routes: BTreeMap<String, RouteReading>,
    pub services: BTreeMap<String, ServiceReading>,
}

pub(crate) struct RouteReading {
    pub service: String,
    /// Responses by status class, 1xx..5xx.
    pub counts: [u64; 5],
    /// Every class merged: the route's latency.
    pub all: Histogram<u64>,
}

#[derive(Default)]
pub(crate) struct ServiceReading {
    pub limit: usize,
    pub in_flight: usize,
    pub shed: u64,
    pub timeouts: u64,
    pub retries: u64,
    pub refusals: u64,
    pub pending: usize,
    /// By bus endpoint.
    pub instances: BTreeMap<String, InstanceReading>,
}

pub(crate) struct InstanceReading {
    /// Connected in every shard's client that knows it.
    pub connected: bool,
    pub outstanding: usize,
    pub latency: Histogram<u64>,
    /// Its registered version (etcd); None without discovery.
    pub version: Option<String>,
}

/// `""` (the root) is `/`; every other prefix gets its trailing `/`, as
/// `/readyz` shows routes.
pub(crate) fn shown(prefix: &str) -> String {
    format!("{prefix}/")
}

impl Reading {
    /// The primary shard's table names the routes; every shard's clients
    /// add their calls, instances and counters.
    pub fn take(edge: &Edge, shards: &[Arc<Routes>]) -> Reading {
        let table = edge.routes.current();
        let hists: BTreeMap<String, _> = edge.metrics.routes().into_iter().collect();
        let mut routes = BTreeMap::new();
        let mut services: BTreeMap<String, ServiceReading> = BTreeMap::new();
        for t in table.targets() {
            let mut all = telemetry::hist::new_histogram();
            let mut counts = [0; 5];
            if let Some(h) = hists.get(&t.prefix) {
                for (i, c) in h.totals().iter().enumerate() {
                    counts[i] = c.len();
                    let _ = all.add(c);
                }
            }
            let service = t.service.as_str().to_string();
            routes.insert(
                shown(&t.prefix),
                RouteReading {
                    service: service.clone(),
                    counts,
                    all,
                },
            );
            let s = services.entry(service).or_default();
            s.limit = t.upstream.limiter.limit();
            s.in_flight = t.upstream.limiter.in_flight();
            s.shed = t.upstream.limiter.shed.get();
        }
        // Each route of each shard has its own client: their calls add up,
        // their instances merge by endpoint.
        for shard in shards {
            for t in shard.current().targets() {
                let Some(s) = services.get_mut(t.service.as_str()) else {
                    continue;
                };
                let st = t.client.stats();
                s.timeouts += st.timeouts;
                s.retries += st.retries;
                s.refusals += st.retry_budget_exhausted;
                s.pending += st.pending;
                for inst in t.client.instances().iter() {
                    let lat = inst.latency_total();
                    match s.instances.get_mut(inst.endpoint()) {
                        Some(r) => {
                            r.connected &= inst.is_connected();
                            r.outstanding += inst.outstanding();
                            let _ = r.latency.add(&lat);
                        }
                        None => {
                            s.instances.insert(
                                inst.endpoint().to_string(),
                                InstanceReading {
                                    connected: inst.is_connected(),
                                    outstanding: inst.outstanding(),
                                    latency: lat,
                                    version: inst.version().map(|v| v.to_string()),
                                },
                            );
                        }
                    }
                }
            }
        }
        Reading {
            at: Instant::now(),
            unix_ms: unix_ms(),
            edge: edge.metrics.totals(),
            in_flight: edge.in_flight.load(Ordering::Relaxed),
            routes,
            services,
        }
    }
}

pub(crate) fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// `now - before`; the whole of `now` when `before` is absent or larger
/// somewhere (a histogram that restarted: an instance re-added).
pub(crate) fn since(now: &Histogram<u64>, before: Option<&Histogram<u64>>) -> Histogram<u64> {
    let mut d = now.clone();
    if let Some(b) = before {
        if d.subtract(b).is_err() {
            return now.clone();
        }
    }
    d
}
