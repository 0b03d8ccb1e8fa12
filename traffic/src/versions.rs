//! Calls answered by each version of each service, as a caller saw them:
//! what `sbctl status` and `sbctl ramp` read, and what tells versions
//! apart on a dashboard. Reported as `version.<service>.<version>.requests`,
//! `.errors` and `.latency` by whichever process makes the calls (the
//! terminator for the services it routes to, the aggregator for
//! `backend`), so summing every caller's counts never counts a call twice.

use parking_lot::RwLock;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use telemetry::{Counter, Hist};

/// One version of one service.
#[derive(Default)]
pub struct VersionStats {
    pub requests: Counter,
    /// Answers of 500 and above, failures to answer, and attempts that
    /// failed there and were retried elsewhere.
    pub errors: Counter,
    pub latency: Hist,
}

impl VersionStats {
    pub fn observe(&self, status: u16, took: Duration) {
        self.requests.inc();
        if status >= 500 {
            self.errors.inc();
        }
        self.latency
            .record(took.as_micros().min(u64::MAX as u128) as u64);
    }

    /// An attempt that failed and was retried on another instance: a
    /// version that fails every call it gets must not look healthy
    /// because its calls were rescued.
    pub fn failed_attempt(&self) {
        self.requests.inc();
        self.errors.inc();
    }
}

/// Service → version → counters, created on a version's first call and
/// looked up by `&str` (no allocation per call).
#[derive(Default)]
pub struct Versions {
    map: RwLock<BTreeMap<String, BTreeMap<String, Arc<VersionStats>>>>,
}

impl Versions {
    pub fn get(&self, service: &str, version: &str) -> Arc<VersionStats> {
        if let Some(v) = self.map.read().get(service).and_then(|m| m.get(version)) {
            return v.clone();
        }
        self.map
            .write()
            .entry(service.to_string())
            .or_default()
            .entry(version.to_string())
            .or_default()
            .clone()
    }

    /// One call to `service` as `trace` tells it: the answer (`status`,
    /// after `took`) counts for the version of the instance that gave it,
    /// each failed attempt for its own. Unversioned instances count
    /// nowhere; nothing is spent when no instance has a version.
    pub fn record(&self, service: &str, trace: &bus::CallTrace, status: u16, took: Duration) {
        if let Some(v) = trace.instance.as_ref().and_then(|i| i.version()) {
            self.get(service, &v).observe(status, took);
        }
        for v in trace.failed.iter().filter_map(|i| i.version()) {
            self.get(service, &v).failed_attempt();
        }
    }

    /// `version.<service>.<version>.{requests,errors,latency}`.
    pub fn visit(&self, v: &mut dyn telemetry::Visitor) {
        for (service, vs) in self.map.read().iter() {
            for (version, s) in vs {
                let p = format!(
                    "version.{}.{}",
                    telemetry::sanitize(service),
                    telemetry::sanitize(version)
                );
                v.counter(&format!("{p}.requests"), s.requests.get());
                v.counter(&format!("{p}.errors"), s.errors.get());
                v.histogram(&format!("{p}.latency"), &s.latency);
            }
        }
    }
}
