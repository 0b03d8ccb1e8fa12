//! `/console/data`: per-second steps diffed from cumulative readings, and
//! the JSON the page and scripts read (docs/console.md is the contract).
//!
//! Readings are taken only when someone asks, at most one a second
//! however many pages poll: an unwatched console costs nothing at all.

use super::reading::{since, InstanceReading, Reading};
use hdrhistogram::Histogram;
use serde_json::{json, Value};
use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

/// Steps kept for the charts (one a second while watched).
pub const HISTORY: usize = 60;
/// The longest `window=`: the steps that keep their histograms.
pub const MAX_WINDOW: usize = 30;
pub const DEFAULT_WINDOW: usize = 10;
/// A reading younger than this is reused: pages polling every second
/// share one step instead of making their own.
const MIN_STEP: Duration = Duration::from_millis(900);

/// What happened between two readings.
pub(crate) struct Step {
    pub unix_ms: u64,
    pub secs: f64,
    pub requests: u64,
    pub by_class: [u64; 5],
    pub status_504: u64,
    pub shed: u64,
    pub no_instance: u64,
    pub routes: BTreeMap<String, RouteStep>,
    pub services: BTreeMap<String, ServiceStep>,
}

pub(crate) struct RouteStep {
    pub requests: u64,
    pub by_class: [u64; 5],
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    /// Dropped once the step is older than [`MAX_WINDOW`].
    pub hist: Option<Histogram<u64>>,
}

#[derive(Default)]
pub(crate) struct ServiceStep {
    pub shed: u64,
    pub timeouts: u64,
    pub retries: u64,
    pub refusals: u64,
    /// By endpoint: calls answered in the step (histograms dropped with
    /// the route's).
    pub instances: BTreeMap<String, Option<Histogram<u64>>>,
}

#[derive(Default)]
pub(crate) struct History {
    last: Option<Reading>,
    steps: VecDeque<Step>,
}

fn ms(us: u64) -> f64 {
    (us as f64 / 10.0).round() / 100.0
}

fn quantiles(h: &Histogram<u64>) -> (Option<f64>, Option<f64>) {
    if h.is_empty() {
        return (None, None);
    }
    (
        Some(ms(h.value_at_quantile(0.5))),
        Some(ms(h.value_at_quantile(0.99))),
    )
}

fn step(before: &Reading, now: &Reading) -> Step {
    let d = |a: u64, b: u64| a.saturating_sub(b);
    let routes = now
        .routes
        .iter()
        .map(|(name, r)| {
            let b = before.routes.get(name);
            let by_class: [u64; 5] =
                std::array::from_fn(|i| d(r.counts[i], b.map_or(0, |b| b.counts[i])));
            let hist = since(&r.all, b.map(|b| &b.all));
            let (p50_ms, p99_ms) = quantiles(&hist);
            let rs = RouteStep {
                requests: by_class.iter().sum(),
                by_class,
                p50_ms,
                p99_ms,
                hist: Some(hist),
            };
            (name.clone(), rs)
        })
        .collect();
    let services = now
        .services
        .iter()
        .map(|(name, s)| {
            let b = before.services.get(name);
            let was = |f: fn(&super::reading::ServiceReading) -> u64| b.map_or(0, f);
            let instances = s
                .instances
                .iter()
                .map(|(ep, i): (&String, &InstanceReading)| {
                    let old = b.and_then(|b| b.instances.get(ep)).map(|o| &o.latency);
                    (ep.clone(), Some(since(&i.latency, old)))
                })
                .collect();
            let ss = ServiceStep {
                shed: d(s.shed, was(|b| b.shed)),
                timeouts: d(s.timeouts, was(|b| b.timeouts)),
                retries: d(s.retries, was(|b| b.retries)),
                refusals: d(s.refusals, was(|b| b.refusals)),
                instances,
            };
            (name.clone(), ss)
        })
        .collect();
    let (e, o) = (&now.edge, &before.edge);
    Step {
        unix_ms: now.unix_ms,
        secs: now.at.duration_since(before.at).as_secs_f64().max(1e-3),
        requests: d(e.requests, o.requests),
        by_class: std::array::from_fn(|i| d(e.by_class[i], o.by_class[i])),
        status_504: d(e.status_504, o.status_504),
        shed: d(e.shed, o.shed),
        no_instance: d(e.no_instance, o.no_instance),
        routes,
        services,
    }
}

impl History {
    /// Takes a reading unless the last is fresh, and the step since it.
    pub fn refresh(&mut self, take: impl FnOnce() -> Reading) {
        if self
            .last
            .as_ref()
            .is_some_and(|l| l.at.elapsed() < MIN_STEP)
        {
            return;
        }
        let now = take();
        if let Some(before) = &self.last {
            self.steps.push_back(step(before, &now));
            while self.steps.len() > HISTORY {
                self.steps.pop_front();
            }
            // Only the newest MAX_WINDOW steps keep their histograms
            // (about 20 KiB each): windows never reach further.
            if let Some(old) = self.steps.iter_mut().rev().nth(MAX_WINDOW) {
                for r in old.routes.values_mut() {
                    r.hist = None;
                }
                for s in old.services.values_mut() {
                    s.instances.values_mut().for_each(|h| *h = None);
                }
            }
        }
        self.last = Some(now);
    }

    /// The JSON of docs/console.md: `window` steps for the percentiles,
    /// `points` steps of history per route.
    pub fn json(
        &self,
        window: usize,
        points: usize,
        target_ms: f64,
        max_in_flight: usize,
    ) -> Value {
        let Some(now) = &self.last else {
            return json!({});
        };
        let latest = self.steps.back();
        let recent: Vec<&Step> = self.steps.iter().rev().take(window).collect();
        let rate = |n: u64| latest.map_or(0.0, |s| round(n as f64 / s.secs));
        let per_s = |f: &dyn Fn(&Step) -> u64| latest.map_or(0.0, |s| round(f(s) as f64 / s.secs));
        let routes: Vec<Value> = now
            .routes
            .iter()
            .map(|(name, r)| {
                let mut merged = telemetry::hist::new_histogram();
                for s in &recent {
                    if let Some(h) = s.routes.get(name).and_then(|x| x.hist.as_ref()) {
                        let _ = merged.add(h);
                    }
                }
                let (p50, p99) = quantiles(&merged);
                let cur = latest.and_then(|s| s.routes.get(name));
                let svc = latest.and_then(|s| s.services.get(&r.service));
                let class = |i: usize| cur.map_or(0, |c| c.by_class[i]);
                let history: Vec<Value> = self
                    .steps
                    .iter()
                    .rev()
                    .take(points)
                    .rev()
                    .filter_map(|s| {
                        let x = s.routes.get(name)?;
                        Some(json!({
                            "t_ms": s.unix_ms,
                            "requests_per_s": round(x.requests as f64 / s.secs),
                            "p50_ms": x.p50_ms,
                            "p99_ms": x.p99_ms,
                        }))
                    })
                    .collect();
                json!({
                    "route": name,
                    "service": r.service,
                    "target_ms": target_ms,
                    "requests_per_s": rate(cur.map_or(0, |c| c.requests)),
                    "window_requests": merged.len(),
                    "p50_ms": p50,
                    "p99_ms": p99,
                    "over_target": p99.is_some_and(|p| p > target_ms),
                    "errors_per_s": {
                        "4xx": rate(class(3)),
                        "5xx": rate(class(4)),
                        "503_shed": rate(svc.map_or(0, |s| s.shed)),
                        "504": rate(svc.map_or(0, |s| s.timeouts)),
                    },
                    "history": history,
                })
            })
            .collect();
        let services: Vec<Value> = now
            .services
            .iter()
            .map(|(name, s)| {
                let st = latest.and_then(|x| x.services.get(name));
                let instances: Vec<Value> = s
                    .instances
                    .iter()
                    .map(|(ep, i)| {
                        let mut merged = telemetry::hist::new_histogram();
                        for x in &recent {
                            if let Some(Some(h)) =
                                x.services.get(name).and_then(|v| v.instances.get(ep))
                            {
                                let _ = merged.add(h);
                            }
                        }
                        let (p50, p99) = quantiles(&merged);
                        let last = st
                            .and_then(|v| v.instances.get(ep))
                            .and_then(|h| h.as_ref())
                            .map_or(0, |h| h.len());
                        json!({
                            "endpoint": ep,
                            "version": i.version,
                            "connected": i.connected,
                            "outstanding": i.outstanding,
                            "calls_per_s": rate(last),
                            "p50_ms": p50,
                            "p99_ms": p99,
                        })
                    })
                    .collect();
                json!({
                    "service": name,
                    "admission": {
                        "limit": s.limit,
                        "in_flight": s.in_flight,
                        "shed_per_s": rate(st.map_or(0, |x| x.shed)),
                    },
                    "pending": s.pending,
                    "timeouts_per_s": rate(st.map_or(0, |x| x.timeouts)),
                    "retries_per_s": rate(st.map_or(0, |x| x.retries)),
                    "retry_budget_refusals_per_s": rate(st.map_or(0, |x| x.refusals)),
                    "retries_total": s.retries,
                    "retry_budget_refusals_total": s.refusals,
                    "instances": instances,
                })
            })
            .collect();
        json!({
            "version": 1,
            "time_ms": now.unix_ms,
            "window_s": window,
            "step_s": latest.map_or(0.0, |s| round(s.secs)),
            "process": {
                "requests_per_s": per_s(&|s| s.requests),
                "in_flight": now.in_flight,
                "max_in_flight": max_in_flight,
                "connections": now.edge.connections,
                "errors_per_s": {
                    "4xx": per_s(&|s| s.by_class[3]),
                    "5xx": per_s(&|s| s.by_class[4]),
                    "503_shed": per_s(&|s| s.shed),
                    "503_no_instance": per_s(&|s| s.no_instance),
                    "504": per_s(&|s| s.status_504),
                },
                "requests_total": now.edge.requests,
            },
            "routes": routes,
            "services": services,
        })
    }
}

fn round(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

#[cfg(test)]
mod tests {
    use super::super::reading::{Reading, RouteReading, ServiceReading};
    use super::*;
    use std::time::Instant;

    fn reading(at: Instant, latencies_us: &[u64], shed: u64) -> Reading {
        let mut all = telemetry::hist::new_histogram();
        for &v in latencies_us {
            all.record(v).unwrap();
        }
        let mut routes = BTreeMap::new();
        routes.insert(
            "/".to_string(),
            RouteReading {
                service: "svc".into(),
                counts: [0, all.len(), 0, 0, 0],
                all,
            },
        );
        let mut services = BTreeMap::new();
        services.insert(
            "svc".to_string(),
            ServiceReading {
                shed,
                ..Default::default()
            },
        );
        Reading {
            at,
            unix_ms: 0,
            edge: Default::default(),
            in_flight: 0,
            routes,
            services,
        }
    }

    #[test]
    fn steps_are_diffs_and_windows_merge_them() {
        let t0 = Instant::now();
        let mut h = History::default();
        // Cumulative: 100 fast calls, then 100 more at 50 ms a second later.
        let fast = vec![1_000; 100];
        let mut both = fast.clone();
        both.extend(vec![50_000; 100]);
        h.refresh(|| reading(t0, &fast, 0));
        h.refresh(|| panic!("a fresh reading is reused"));
        h.last.as_mut().unwrap().at = t0 - Duration::from_secs(1);
        h.refresh(|| reading(t0, &both, 7));
        let v = h.json(10, 60, 25.0, 100);
        let r = &v["routes"][0];
        assert_eq!(r["route"], "/");
        assert_eq!(r["requests_per_s"], 100.0, "{v}");
        // Only the second second's calls: all 50 ms, over the target.
        assert!((r["p50_ms"].as_f64().unwrap() - 50.0).abs() < 1.0, "{v}");
        assert_eq!(r["over_target"], true);
        assert_eq!(r["errors_per_s"]["503_shed"], 7.0);
        assert_eq!(r["history"].as_array().unwrap().len(), 1);
        assert_eq!(v["services"][0]["admission"]["shed_per_s"], 7.0);
    }
}
