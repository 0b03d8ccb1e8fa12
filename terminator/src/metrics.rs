//! What the terminator measures, and how it reports (names under
//! `switchboard.terminator.`; the catalogue is in docs/operations.md).
//!
//! Every request ends in [`EdgeMetrics::observe`]: one sharded counter
//! add per counter, one lock-free histogram record for all routes and one
//! for the route and status class. Route histograms are created when the
//! route table is built, never on the request path.
//!
//! A leaf: it knows nothing of routes or the request path; they hand it
//! what to count.

use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use telemetry::{Counter, Hist};

const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// One route's latency, by status class.
#[derive(Default)]
pub struct RouteHists {
    by_class: [Hist; 5],
}

#[derive(Default)]
pub struct EdgeMetrics {
    requests: Counter,
    by_class: [Counter; 5],
    status_504: Counter,
    shed: Counter,
    no_instance: Counter,
    no_route: Counter,
    latency: Hist,
    pub connections: AtomicI64,
    routes: Mutex<BTreeMap<String, Arc<RouteHists>>>,
    /// Per service and version (`version.<service>.<version>.*`).
    pub versions: traffic::versions::Versions,
}

impl EdgeMetrics {
    /// The histograms for a route prefix (stored without its trailing `/`),
    /// shared by every table version that has the prefix.
    pub fn route(&self, prefix: &str) -> Arc<RouteHists> {
        self.routes
            .lock()
            .entry(prefix.to_string())
            .or_default()
            .clone()
    }

    /// Causes counted apart from their status.
    pub fn failed(&self, cause: Cause) {
        match cause {
            Cause::Shed => self.shed.inc(),
            Cause::NoRoute => self.no_route.inc(),
            Cause::NoInstance => self.no_instance.inc(),
        }
    }

    /// Every request, once, when its response is ready; `route` is the
    /// matched route's histograms.
    pub fn observe(&self, status: u16, took: Duration, route: Option<&RouteHists>) {
        let class = (status / 100).clamp(1, 5) as usize - 1;
        self.requests.inc();
        self.by_class[class].inc();
        if status == 504 {
            self.status_504.inc();
        }
        let us = took.as_micros().min(u64::MAX as u128) as u64;
        self.latency.record(us);
        if let Some(r) = route {
            r.by_class[class].record(us);
        }
        telemetry::statsd::sample_timer(us);
    }
}

/// Failures counted apart from their status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    Shed,
    NoRoute,
    NoInstance,
}

impl EdgeMetrics {
    /// Reports under `switchboard.terminator.`; `in_flight` is the
    /// process's count.
    pub fn visit(&self, v: &mut dyn telemetry::Visitor, in_flight: usize) {
        let m = self;
        v.counter("requests", m.requests.get());
        for (i, c) in CLASSES.iter().enumerate() {
            v.counter(&format!("status.{c}"), m.by_class[i].get());
        }
        v.counter("status.504", m.status_504.get());
        v.counter("shed", m.shed.get());
        v.counter("no_instance", m.no_instance.get());
        v.counter("no_route", m.no_route.get());
        v.gauge("in_flight", in_flight as i64);
        v.gauge("connections", m.connections.load(Ordering::Relaxed));
        v.histogram("latency", &m.latency);
        m.versions.visit(v);
        for (prefix, r) in m.routes.lock().iter() {
            let route = telemetry::sanitize(prefix);
            for (i, c) in CLASSES.iter().enumerate() {
                v.histogram(&format!("route.{route}.{c}.latency"), &r.by_class[i]);
            }
        }
    }
}

/// Cumulative totals of the edge counters, for readers that diff two
/// readings (the console); read on the admin side, never per request.
#[derive(Debug, Clone, Copy, Default)]
pub struct EdgeTotals {
    pub requests: u64,
    /// 1xx..5xx.
    pub by_class: [u64; 5],
    pub status_504: u64,
    pub shed: u64,
    pub no_instance: u64,
    pub no_route: u64,
    pub connections: i64,
}

impl EdgeMetrics {
    pub fn totals(&self) -> EdgeTotals {
        EdgeTotals {
            requests: self.requests.get(),
            by_class: std::array::from_fn(|i| self.by_class[i].get()),
            status_504: self.status_504.get(),
            shed: self.shed.get(),
            no_instance: self.no_instance.get(),
            no_route: self.no_route.get(),
            connections: self.connections.load(Ordering::Relaxed),
        }
    }

    /// Every route's histograms, by prefix (without its trailing `/`).
    pub fn routes(&self) -> Vec<(String, Arc<RouteHists>)> {
        self.routes
            .lock()
            .iter()
            .map(|(p, h)| (p.clone(), h.clone()))
            .collect()
    }
}

impl RouteHists {
    /// Everything recorded since start, by status class (1xx..5xx).
    pub fn totals(&self) -> [hdrhistogram::Histogram<u64>; 5] {
        std::array::from_fn(|i| self.by_class[i].total())
    }
}
