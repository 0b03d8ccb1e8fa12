//! The fleet: every terminator's route latencies merged exactly.
//!
//! With `--etcd`, each terminator registers its admin URL under
//! `discovery::TERMINATORS` and watches the others'. While its console is
//! watched, a task fetches every peer's `/stats/histograms` once a second
//! (cumulative HDR histograms, the same bearer token as this process's
//! own), keeps 30 s of them, and the console diffs and adds them: the
//! fleet's p99 comes from merged histograms, never averaged percentiles.

use crate::metrics::EdgeMetrics;
use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Empty};
use serde_json::{json, Value};
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Fetches stop this long after the last poll of `/console/data`.
const IDLE: Duration = Duration::from_secs(5);
const FETCH_TIMEOUT: Duration = Duration::from_millis(800);
/// Samples kept per member: one a second, for the longest window.
const KEEP: usize = super::MAX_WINDOW + 1;

struct Sample {
    at: Instant,
    /// Route name as in `/stats/histograms` (sanitized prefix) → every
    /// status class merged.
    routes: BTreeMap<String, Histogram<u64>>,
}

#[derive(Default)]
struct Member {
    samples: VecDeque<Sample>,
    error: Option<String>,
}

pub struct Fleet {
    own: String,
    peers: arc_swap::ArcSwap<Vec<String>>,
    members: parking_lot::Mutex<BTreeMap<String, Member>>,
    last_poll: parking_lot::Mutex<Option<Instant>>,
}

impl Fleet {
    /// `own`: this terminator's advertised admin URL.
    pub fn new(own: String) -> Arc<Fleet> {
        Arc::new(Fleet {
            own,
            peers: Default::default(),
            members: Default::default(),
            last_poll: Default::default(),
        })
    }

    /// The other terminators' admin URLs, from their registrations.
    pub fn registrations(&self, snap: &discovery::Snapshot) {
        let mut peers: Vec<String> = snap
            .values()
            .filter(|r| !r.draining && r.admin != self.own)
            .map(|r| r.admin.clone())
            .collect();
        peers.sort();
        peers.dedup();
        self.peers.store(Arc::new(peers));
    }

    pub(crate) fn polled(&self) {
        *self.last_poll.lock() = Some(Instant::now());
    }

    /// Samples this process and every peer once a second while watched.
    pub async fn run(self: Arc<Fleet>, metrics: Arc<EdgeMetrics>, bearer: Option<String>) {
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http::<Empty<Bytes>>();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if self.last_poll.lock().is_none_or(|t| t.elapsed() > IDLE) {
                continue;
            }
            let peers = self.peers.load_full();
            let mut tasks = tokio::task::JoinSet::new();
            for url in peers.iter().cloned() {
                let (client, bearer) = (client.clone(), bearer.clone());
                tasks.spawn(async move {
                    let got = tokio::time::timeout(FETCH_TIMEOUT, fetch(&client, &url, bearer))
                        .await
                        .unwrap_or_else(|_| Err("no answer within 800 ms".into()));
                    (url, got)
                });
            }
            let own = own_sample(&metrics);
            let mut results = vec![(self.own.clone(), Ok(own))];
            while let Some(r) = tasks.join_next().await {
                if let Ok(r) = r {
                    results.push(r);
                }
            }
            let mut members = self.members.lock();
            members.retain(|url, _| *url == self.own || peers.contains(url));
            for (url, got) in results {
                let m = members.entry(url).or_default();
                match got {
                    Ok(routes) => {
                        m.error = None;
                        m.samples.push_back(Sample {
                            at: Instant::now(),
                            routes,
                        });
                        while m.samples.len() > KEEP {
                            m.samples.pop_front();
                        }
                    }
                    Err(e) => m.error = Some(e),
                }
            }
        }
    }

    /// `fleet` in `/console/data`: members and, per route, the sum of every
    /// member's last second (rate) and last `window` seconds (percentiles).
    pub(crate) fn json(&self, window: usize, target_ms: f64) -> Value {
        let members = self.members.lock();
        let mut last: BTreeMap<&str, (u64, f64)> = BTreeMap::new();
        let mut merged: BTreeMap<&str, Histogram<u64>> = BTreeMap::new();
        let mut listed = Vec::new();
        for (url, m) in members.iter() {
            listed.push(json!({
                "admin": url,
                "self": *url == self.own,
                "ok": m.error.is_none() && !m.samples.is_empty(),
                "error": m.error,
            }));
            let (Some(newest), Some(prev)) = (m.samples.back(), m.samples.iter().rev().nth(1))
            else {
                continue;
            };
            if newest.at.elapsed() > Duration::from_secs(3) {
                continue; // stale: the member stopped answering
            }
            let from = m
                .samples
                .iter()
                .find(|s| newest.at.duration_since(s.at) <= Duration::from_secs(window as u64))
                .filter(|s| s.at < newest.at)
                .unwrap_or(prev);
            let secs = newest.at.duration_since(prev.at).as_secs_f64().max(1e-3);
            for (name, h) in &newest.routes {
                let step = super::reading::since(h, prev.routes.get(name));
                let e = last.entry(name).or_default();
                e.0 += step.len();
                e.1 = e.1.max(secs);
                let w = super::reading::since(h, from.routes.get(name));
                match merged.get_mut(name.as_str()) {
                    Some(x) => {
                        let _ = x.add(&w);
                    }
                    None => {
                        merged.insert(name, w);
                    }
                }
            }
        }
        let routes: Vec<Value> = merged
            .iter()
            .map(|(name, h)| {
                let (n, secs) = last.get(name).copied().unwrap_or((0, 1.0));
                let q = |p: f64| (!h.is_empty()).then(|| h.value_at_quantile(p) as f64 / 1000.0);
                json!({
                    "route": name,
                    "requests_per_s": (n as f64 / secs * 10.0).round() / 10.0,
                    "window_requests": h.len(),
                    "p50_ms": q(0.5),
                    "p99_ms": q(0.99),
                    "over_target": q(0.99).is_some_and(|p| p > target_ms),
                })
            })
            .collect();
        json!({"members": listed, "routes": routes})
    }
}

/// This process's route histograms, named as `/stats/histograms` names
/// them.
fn own_sample(metrics: &EdgeMetrics) -> BTreeMap<String, Histogram<u64>> {
    metrics
        .routes()
        .into_iter()
        .map(|(prefix, h)| {
            let mut all = telemetry::hist::new_histogram();
            for c in h.totals() {
                let _ = all.add(&c);
            }
            (telemetry::sanitize(&prefix), all)
        })
        .collect()
}

type HttpClient = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    Empty<Bytes>,
>;

/// A peer's route histograms from its `/stats/histograms`.
async fn fetch(
    client: &HttpClient,
    admin: &str,
    bearer: Option<String>,
) -> Result<BTreeMap<String, Histogram<u64>>, String> {
    let mut req = http::Request::get(format!("{admin}/stats/histograms"));
    if let Some(b) = bearer {
        req = req.header(http::header::AUTHORIZATION, b);
    }
    let req = req.body(Empty::new()).map_err(|e| e.to_string())?;
    let res = client.request(req).await.map_err(|e| e.to_string())?;
    if !res.status().is_success() {
        return Err(format!("/stats/histograms answered {}", res.status()));
    }
    let body = res
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    let v: Value = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
    let mut out: BTreeMap<String, Histogram<u64>> = BTreeMap::new();
    for (name, b64) in v["histograms"].as_object().into_iter().flatten() {
        // route.<name>.<class>.latency: every class merged.
        let parts: Vec<&str> = name.split('.').collect();
        let ["route", route, _class, "latency"] = parts[..] else {
            continue;
        };
        let Some(h) = b64.as_str().and_then(|b| telemetry::export::decode(b).ok()) else {
            continue;
        };
        match out.get_mut(route) {
            Some(x) => {
                let _ = x.add(&h);
            }
            None => {
                out.insert(route.to_string(), h);
            }
        }
    }
    Ok(out)
}
