//! Ghost copies in flight and what they found: counts per route and
//! version, the last mismatches, and each service's in-flight cap.
//! Process-wide, and kept across policy reloads.

use super::compare::{compare, Answer, Side, Verdict};
use super::Ghost;
use parking_lot::Mutex;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::sync::oneshot;
use tokio::time::Instant;

/// The verdicts counted per route and version, in the order `/ghost`,
/// the metrics and `sbctl ghost` show them.
pub const VERDICTS: [&str; 6] = [
    "matched",
    "mismatched",
    "failed",
    "timeouts",
    "skipped",
    "unpaired",
];

#[derive(Default)]
pub struct Ledger {
    /// Ghost copies outstanding, per service (the cap's count).
    in_flight: Mutex<HashMap<String, Arc<AtomicUsize>>>,
    /// Per (route, version).
    entries: Mutex<BTreeMap<(String, String), Arc<Entry>>>,
}

#[derive(Default)]
struct Entry {
    service: String,
    matched: AtomicU64,
    mismatched: AtomicU64,
    /// The ghost had no answer other than a timeout.
    failed: AtomicU64,
    timeouts: AtomicU64,
    /// Sampled but not sent: the service's ghost cap was reached.
    skipped: AtomicU64,
    /// The primary had no answer to compare with.
    unpaired: AtomicU64,
    samples: Mutex<VecDeque<Sample>>,
}

/// One mismatching pair, for the admin port.
#[derive(Debug, Clone)]
struct Sample {
    at_unix_ms: u64,
    request_id: String,
    method: String,
    path: String,
    differs: Vec<String>,
    primary: Side,
    ghost: Side,
}

impl Ledger {
    /// The route and version's entry, made on first use. Looked up by
    /// `&str` (a handful of entries: routes × ghost versions), so a
    /// sampled request allocates no key.
    fn entry(&self, service: &str, route: &str, version: &str) -> Arc<Entry> {
        let mut entries = self.entries.lock();
        if let Some(e) = entries
            .iter()
            .find(|((r, v), _)| r == route && v == version)
            .map(|(_, e)| e.clone())
        {
            return e;
        }
        entries
            .entry((route.to_string(), version.to_string()))
            .or_insert_with(|| {
                Arc::new(Entry {
                    service: service.to_string(),
                    ..Entry::default()
                })
            })
            .clone()
    }

    /// The service's count of copies in flight, made on first use.
    fn slot(&self, service: &str) -> Arc<AtomicUsize> {
        let mut m = self.in_flight.lock();
        match m.get(service) {
            Some(s) => s.clone(),
            None => m.entry(service.to_string()).or_default().clone(),
        }
    }

    /// A ghost copy of a request with `method` to `route`'s `service`, if
    /// `g` samples it and the service's cap has room (a sampled request
    /// over the cap is counted as skipped). Costs one random number when
    /// the request is not sampled.
    pub fn start(
        self: &Arc<Self>,
        g: &Arc<Ghost>,
        service: &str,
        route: &str,
        method: &str,
    ) -> Option<Mirror> {
        if !g.sample(method) {
            return None;
        }
        let entry = self.entry(service, route, &g.version);
        let slot = self.slot(service);
        if slot.fetch_add(1, Ordering::Relaxed) >= g.max_in_flight {
            slot.fetch_sub(1, Ordering::Relaxed);
            entry.skipped.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        Some(Mirror {
            ghost: g.clone(),
            entry,
            slot: Slot(slot),
        })
    }

    /// `service`'s verdicts for ghost `version`, summed over its routes:
    /// (name, count) in the order of the `/ghost` page.
    pub fn totals(&self, service: &str, version: &str) -> Vec<(&'static str, u64)> {
        let mut out: Vec<(&'static str, u64)> = Vec::new();
        for ((_, v), e) in self.entries.lock().iter() {
            if v != version || e.service != service {
                continue;
            }
            for (i, (name, n)) in e.counts().into_iter().enumerate() {
                match out.get_mut(i) {
                    Some(o) => o.1 += n,
                    None => out.push((name, n)),
                }
            }
        }
        out
    }

    /// Reports `ghost.<route>.<version>.{matched,mismatched,failed,timeouts,skipped,unpaired}`.
    pub fn visit(&self, v: &mut dyn telemetry::Visitor) {
        for ((route, version), e) in self.entries.lock().iter() {
            let p = format!(
                "ghost.{}.{}",
                telemetry::sanitize(route),
                telemetry::sanitize(version)
            );
            for (name, n) in e.counts() {
                v.counter(&format!("{p}.{name}"), n);
            }
        }
    }

    /// The admin port's `/ghost`: counts per route and version, and the
    /// last mismatches of each, newest first.
    pub fn page(&self) -> serde_json::Value {
        let in_flight = self.in_flight.lock();
        let mut routes = Vec::new();
        let mut mismatches = Vec::new();
        for ((route, version), e) in self.entries.lock().iter() {
            let mut o = serde_json::Map::new();
            o.insert("route".into(), route.as_str().into());
            o.insert("service".into(), e.service.as_str().into());
            o.insert("version".into(), version.as_str().into());
            for (name, n) in e.counts() {
                o.insert(name.into(), n.into());
            }
            let f = in_flight
                .get(&e.service)
                .map_or(0, |s| s.load(Ordering::Relaxed));
            o.insert("service_in_flight".into(), f.into());
            routes.push(serde_json::Value::Object(o));
            for s in e.samples.lock().iter().rev() {
                let side = |s: &Side| serde_json::json!({"status": s.status, "body_hash": s.body_hash, "head": s.head});
                mismatches.push(serde_json::json!({
                    "at_unix_ms": s.at_unix_ms,
                    "route": route,
                    "version": version,
                    "request_id": s.request_id,
                    "method": s.method,
                    "path": s.path,
                    "differs": s.differs,
                    "primary": side(&s.primary),
                    "ghost": side(&s.ghost),
                }));
            }
        }
        mismatches.sort_by_key(|m| std::cmp::Reverse(m["at_unix_ms"].as_u64().unwrap_or(0)));
        serde_json::json!({"routes": routes, "mismatches": mismatches})
    }
}

impl Entry {
    fn counts(&self) -> [(&'static str, u64); 6] {
        let n = [
            &self.matched,
            &self.mismatched,
            &self.failed,
            &self.timeouts,
            &self.skipped,
            &self.unpaired,
        ]
        .map(|a| a.load(Ordering::Relaxed));
        std::array::from_fn(|i| (VERDICTS[i], n[i]))
    }
}

/// Gives the cap's slot back however the ghost task ends.
struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A ghost copy granted a slot, not yet sent.
pub struct Mirror {
    ghost: Arc<Ghost>,
    entry: Arc<Entry>,
    slot: Slot,
}

/// The primary's side of a launched ghost: hand it the primary's outcome.
/// Dropped without [`Primary::answered`] (the client went away), the pair
/// counts as unpaired.
pub struct Primary(oneshot::Sender<Answer>);

impl Primary {
    pub fn answered(self, r: &Result<bus::Reply, bus::CallError>) {
        let _ = self.0.send(Answer::of(r));
    }
}

impl Mirror {
    /// Sends `req` to the ghost version on a task of its own, now, so it
    /// runs beside the primary and never delays it; the task compares
    /// when both have answered and records the verdict.
    pub fn launch(self, client: &bus::Client, req: bus::Request, deadline: Instant) -> Primary {
        let (tx, rx) = oneshot::channel();
        let client = client.clone();
        tokio::spawn(async move {
            let Mirror { ghost, entry, slot } = self;
            // A call that is not a forwarded HTTP request (the
            // aggregator's `kv.get`) is named by its bus method.
            let method = match req.http_method.as_str() {
                "" => req.method.to_string(),
                m => m.to_string(),
            };
            let (rid, path) = (req.request_id.to_string(), req.path.to_string());
            let ghost_answer = Answer::of(&client.call_ghost(req, deadline, &ghost.version).await);
            drop(slot);
            // The primary answers by the same deadline, or is dropped.
            let primary = rx.await.unwrap_or(Answer::Failed("unpaired"));
            let e = &entry;
            match compare(&primary, &ghost_answer, &ghost) {
                Verdict::Match => e.matched.fetch_add(1, Ordering::Relaxed),
                Verdict::Unpaired => e.unpaired.fetch_add(1, Ordering::Relaxed),
                Verdict::GhostFailed("timeout") => e.timeouts.fetch_add(1, Ordering::Relaxed),
                Verdict::GhostFailed(_) => e.failed.fetch_add(1, Ordering::Relaxed),
                Verdict::Mismatch {
                    differs,
                    primary,
                    ghost: g,
                } => {
                    let mut s = e.samples.lock();
                    while s.len() >= ghost.samples {
                        s.pop_front();
                    }
                    s.push_back(Sample {
                        at_unix_ms: std::time::SystemTime::now()
                            .duration_since(std::time::UNIX_EPOCH)
                            .map_or(0, |d| d.as_millis() as u64),
                        request_id: rid,
                        method,
                        path,
                        differs,
                        primary,
                        ghost: g,
                    });
                    e.mismatched.fetch_add(1, Ordering::Relaxed)
                }
            };
        });
        Primary(tx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_skips_and_counts_and_a_finished_copy_frees_its_slot() {
        let ledger = Arc::new(Ledger::default());
        let mut g = Ghost::new("v2", 1.0, &[]);
        g.max_in_flight = 2;
        let g = Arc::new(g);
        let a = ledger.start(&g, "svc", "/", "GET");
        let b = ledger.start(&g, "svc", "/", "GET");
        assert!(a.is_some() && b.is_some());
        assert!(
            ledger.start(&g, "svc", "/", "GET").is_none(),
            "over the cap"
        );
        assert!(
            ledger.start(&g, "svc", "/", "POST").is_none(),
            "not a copied method"
        );
        drop(a);
        assert!(
            ledger.start(&g, "svc", "/", "GET").is_some(),
            "a slot came back"
        );
        let totals = ledger.totals("svc", "v2");
        assert_eq!(totals[4], ("skipped", 1), "{totals:?}");
        // Another service has a cap of its own.
        assert!(ledger.start(&g, "other", "/o", "GET").is_some());
    }
}
