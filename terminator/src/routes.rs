//! Longest-prefix route table, matched on whole path segments, swapped
//! whole when discovery changes it.
//!
//! The request path reads the table with one `ArcSwap::load` (no lock,
//! no reference count held across the call) and keeps an `Arc<Target>`
//! for the call, so a table replaced mid-request does not disturb it.

use crate::config::Route;
use crate::metrics::{EdgeMetrics, RouteHists};
use crate::upstream::{Upstream, Upstreams};
use arc_swap::ArcSwap;
use bus::Client;
use std::sync::Arc;
use std::time::Duration;

pub struct Target {
    /// Without its trailing `/`; `""` is the root route.
    pub prefix: String,
    pub service: bus::Text,
    pub client: Client,
    pub timeout: Duration,
    pub hists: Arc<RouteHists>,
    /// The service's admission limiter and retry budget (process-wide).
    pub upstream: Arc<Upstream>,
}

/// One version of the table.
pub struct Table {
    /// Longest prefix first, so the first match wins.
    targets: Vec<Arc<Target>>,
}

impl Table {
    pub fn new(mut targets: Vec<Arc<Target>>) -> Table {
        targets.sort_by(|a, b| {
            b.prefix
                .len()
                .cmp(&a.prefix.len())
                .then(a.prefix.cmp(&b.prefix))
        });
        Table { targets }
    }

    pub fn find(&self, path: &str) -> Option<&Arc<Target>> {
        self.targets.iter().find(|t| matches(&t.prefix, path))
    }

    pub fn targets(&self) -> &[Arc<Target>] {
        &self.targets
    }
}

pub struct Routes {
    table: ArcSwap<Table>,
    metrics: Arc<EdgeMetrics>,
    upstreams: Arc<Upstreams>,
    /// The first of a per-core terminator's route tables: its clients
    /// report the instance gauges (see `bus::ClientOptions`).
    primary: bool,
}

impl Routes {
    /// The static table: one bus client per configured route.
    pub fn build(
        routes: &[Route],
        default_timeout: Duration,
        metrics: Arc<EdgeMetrics>,
        upstreams: Arc<Upstreams>,
        primary: bool,
    ) -> Result<Routes, bus::SetupError> {
        let targets = static_targets(routes, default_timeout, &metrics, &upstreams, primary)?;
        Ok(Routes {
            table: ArcSwap::from_pointee(Table::new(targets)),
            metrics,
            upstreams,
            primary,
        })
    }

    /// The process-wide state of `service`'s upstream.
    pub fn upstream(&self, service: &str) -> Arc<Upstream> {
        self.upstreams.get(service)
    }

    pub fn primary(&self) -> bool {
        self.primary
    }

    pub fn metrics(&self) -> &Arc<EdgeMetrics> {
        &self.metrics
    }

    /// The target for `path`, held for the length of one request.
    pub fn find(&self, path: &str) -> Option<Arc<Target>> {
        self.table.load().find(path).cloned()
    }

    /// The table as it stands.
    pub fn current(&self) -> Arc<Table> {
        self.table.load_full()
    }

    pub fn replace(&self, table: Table) {
        self.table.store(Arc::new(table));
    }
}

/// One target per configured route, each with its own client.
pub fn static_targets(
    routes: &[Route],
    default_timeout: Duration,
    metrics: &EdgeMetrics,
    upstreams: &Upstreams,
    primary: bool,
) -> Result<Vec<Arc<Target>>, bus::SetupError> {
    routes
        .iter()
        .map(|r| {
            let upstream = upstreams.get(&r.service);
            let mut o = bus::ClientOptions::new(r.service.clone());
            o.endpoints = r.endpoints.clone();
            o.report_instances = primary;
            o.retry_budget = upstream.retry_budget.clone();
            o.tuning.mechanism = upstream.mechanism.clone();
            let prefix = normalize(&r.prefix);
            Ok(Arc::new(Target {
                upstream,
                hists: metrics.route(&prefix),
                prefix,
                service: r.service.clone().into(),
                client: Client::connect(o)?,
                timeout: r.timeout.unwrap_or(default_timeout),
            }))
        })
        .collect()
}

/// `/api/` and `/api` are the same route; `/` is the root, stored as `""`.
pub fn normalize(prefix: &str) -> String {
    prefix.trim_end_matches('/').to_string()
}

/// `prefix` is stored without a trailing `/`; `""` is the root route.
fn matches(prefix: &str, path: &str) -> bool {
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/') || prefix.is_empty(),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::matches;

    #[test]
    fn segment_prefixes() {
        assert!(matches("", "/anything"));
        assert!(matches("/api", "/api"));
        assert!(matches("/api", "/api/x"));
        assert!(!matches("/api", "/apix"));
        assert!(!matches("/api", "/"));
    }
}
