//! Routes from etcd registrations, merged with the static routes.
//!
//! Each service instance registers the HTTP prefixes it serves (see the
//! `discovery` crate). On every change the table is planned again:
//!
//! ```text
//!  registered prefixes ──┐
//!                        ├─► plan() ─► one Target per prefix ─► Routes::replace
//!  static routes ────────┘              (one shared client per registered
//!                                        service, endpoints set live)
//! ```
//!
//! Rules (documented in docs/operations.md):
//! - A prefix registered by one service routes to all its instances.
//! - Two services registering the same prefix: the service whose name sorts
//!   first wins, with a warning naming both. (Deterministic on every
//!   terminator, whatever order the registrations arrived in.)
//! - A route given explicitly (`--route`, config file) beats a registration
//!   of the same prefix by another service, with a warning; the built-in
//!   convention route (`/` → aggregator) yields to registrations.
//! - A static route whose service has registered instances uses those
//!   instances instead of its static endpoints; with no instance registered
//!   it falls back to its static endpoints.

use crate::config::Route;
use crate::routes::{normalize, Routes, Table, Target};
use bus::Client;
use discovery::{Registration, Snapshot};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

/// What one entry of the planned table routes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Planned {
    pub prefix: String,
    pub service: String,
    /// Index of the static route it came from, if any.
    pub static_route: Option<usize>,
}

/// The table for `statics` plus the registrations in `snap`, and the
/// warnings the merge produced.
pub fn plan(statics: &[Route], explicit: bool, snap: &Snapshot) -> (Vec<Planned>, Vec<String>) {
    let mut warnings = Vec::new();
    // prefix → services claiming it
    let mut claims: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for r in snap.values() {
        for p in &r.routes {
            if !p.starts_with('/') {
                warnings.push(format!(
                    "{}/{}: route {p:?} does not start with `/`; ignored",
                    r.service, r.instance
                ));
                continue;
            }
            claims
                .entry(normalize(p))
                .or_default()
                .insert(r.service.clone());
        }
    }
    let mut out: Vec<Planned> = Vec::new();
    for (i, s) in statics.iter().enumerate() {
        let prefix = normalize(&s.prefix);
        let rivals = claims
            .get(&prefix)
            .map(|c| c.iter().any(|svc| *svc != s.service));
        if rivals == Some(true) && !explicit {
            continue; // the convention yields to registrations
        }
        if rivals == Some(true) {
            warnings.push(format!(
                "prefix {:?}: the configured route to {} wins over registrations by {:?}",
                or_root(&prefix),
                s.service,
                claims[&prefix]
            ));
        }
        claims.remove(&prefix);
        out.push(Planned {
            prefix,
            service: s.service.clone(),
            static_route: Some(i),
        });
    }
    for (prefix, services) in claims {
        let winner = services.first().cloned().unwrap_or_default();
        if services.len() > 1 {
            warnings.push(format!(
                "prefix {:?} is registered by {services:?}; {winner} wins (first by name)",
                or_root(&prefix)
            ));
        }
        out.push(Planned {
            prefix,
            service: winner,
            static_route: None,
        });
    }
    (out, warnings)
}

fn or_root(p: &str) -> &str {
    if p.is_empty() {
        "/"
    } else {
        p
    }
}

/// Keeps the route table in step with etcd.
pub struct Follower {
    statics: Vec<Route>,
    explicit: bool,
    static_targets: Vec<Arc<Target>>,
    /// One client per registered service, shared by all its prefixes.
    clients: HashMap<String, Client>,
    default_timeout: Duration,
    routes: Arc<Routes>,
    last_warnings: Vec<String>,
}

impl Follower {
    pub fn new(
        statics: Vec<Route>,
        explicit: bool,
        default_timeout: Duration,
        routes: Arc<Routes>,
    ) -> Follower {
        // The static targets are those the table started with: reuse their
        // clients, so requests in flight at the first change keep theirs.
        let static_targets = {
            let t = routes.current();
            statics
                .iter()
                .map(|s| {
                    let p = normalize(&s.prefix);
                    t.targets()
                        .iter()
                        .find(|x| x.prefix == p)
                        .cloned()
                        .expect("the table was built from these routes")
                })
                .collect()
        };
        Follower {
            statics,
            explicit,
            static_targets,
            clients: HashMap::new(),
            default_timeout,
            routes,
            last_warnings: Vec::new(),
        }
    }

    /// Whether `r`'s instance is connected on this follower's client for
    /// its service: the watcher keeps a registration whose key vanished for
    /// as long as this holds (the removal grace).
    pub fn is_live(&self, r: &Registration) -> bool {
        self.clients.get(&r.service).is_some_and(|c| {
            c.instances()
                .iter()
                .any(|i| i.endpoint() == r.bus && i.is_connected())
        })
    }

    /// Applies one snapshot of every registration.
    pub fn apply(&mut self, snap: &Snapshot) {
        let mut by_service: BTreeMap<&str, Vec<&Registration>> = BTreeMap::new();
        for r in snap.values() {
            by_service.entry(&r.service).or_default().push(r);
        }
        // Instances first, so a new table never points at a client that
        // has not been told its endpoints.
        for (service, regs) in &by_service {
            let eps: Vec<(&str, Option<bus::curve::PublicKey>)> = regs
                .iter()
                .map(|r| {
                    let key = svc_host::security::registered_key(&r.bus, r.curve_key.as_deref());
                    (r.bus.as_str(), key)
                })
                .filter(|(ep, _)| match bus::check_endpoint(ep) {
                    Ok(()) => true,
                    Err(e) => {
                        tracing::warn!(service, endpoint = ep, error = %e, "registered endpoint unusable; ignored");
                        false
                    }
                })
                .collect();
            let versions: Vec<(&str, Option<&str>)> = regs
                .iter()
                .map(|r| {
                    (
                        r.bus.as_str(),
                        Some(r.version.as_str()).filter(|v| !v.is_empty()),
                    )
                })
                .collect();
            match self.clients.get(*service) {
                Some(c) => {
                    let _ = c.set_endpoints_with_keys(&eps);
                    c.set_versions(&versions);
                }
                None => {
                    let upstream = self.routes.upstream(service);
                    let mut o = bus::ClientOptions::new(service.to_string());
                    o.report_instances = self.routes.primary();
                    o.retry_budget = upstream.retry_budget.clone();
                    o.tuning.mechanism = upstream.mechanism.clone();
                    match Client::connect(o) {
                        Ok(c) => {
                            let _ = c.set_endpoints_with_keys(&eps);
                            c.set_versions(&versions);
                            self.clients.insert(service.to_string(), c);
                        }
                        Err(e) => {
                            tracing::error!(service, error = %e, "cannot create a bus client")
                        }
                    }
                }
            }
        }
        let (planned, warnings) = plan(&self.statics, self.explicit, snap);
        if warnings != self.last_warnings {
            for w in &warnings {
                tracing::warn!("route conflict: {w}");
            }
            self.last_warnings = warnings;
        }
        let mut targets = Vec::with_capacity(planned.len());
        for p in planned {
            let st = p.static_route.map(|i| &self.static_targets[i]);
            let timeout = st.map_or(self.default_timeout, |t| t.timeout);
            match (self.clients.get(&p.service), st) {
                (Some(c), _) => targets.push(Arc::new(Target {
                    upstream: self.routes.upstream(&p.service),
                    hists: self.routes.metrics().route(&p.prefix),
                    prefix: p.prefix,
                    service: p.service.into(),
                    client: c.clone(),
                    timeout,
                })),
                (None, Some(t)) => targets.push(t.clone()),
                (None, None) => {}
            }
        }
        let summary: Vec<String> = targets
            .iter()
            .map(|t| {
                format!(
                    "{}→{}({})",
                    or_root(&t.prefix),
                    t.service.as_str(),
                    t.client.instances().len()
                )
            })
            .collect();
        tracing::info!(routes = ?summary, "route table updated from etcd");
        self.routes.replace(Table::new(targets));
        // Services gone from etcd: their instances take no new calls; calls
        // in flight keep the client alive until they finish.
        self.clients.retain(|svc, c| {
            let keep = by_service.contains_key(svc.as_str());
            if !keep {
                let _ = c.set_endpoints::<&str>(&[]);
            }
            keep
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reg(service: &str, instance: &str, routes: &[&str]) -> (String, Registration) {
        let r = Registration {
            service: service.into(),
            instance: instance.into(),
            bus: "tcp://127.0.0.1:1".into(),
            events: None,
            admin: String::new(),
            routes: routes.iter().map(|s| s.to_string()).collect(),
            version: String::new(),
            started_at: 0,
            draining: false,
            curve_key: None,
        };
        (r.key(), r)
    }

    fn route(prefix: &str, service: &str) -> Route {
        Route {
            prefix: prefix.into(),
            service: service.into(),
            endpoints: vec!["tcp://127.0.0.1:9".into()],
            timeout: None,
        }
    }

    fn table(p: &[Planned]) -> Vec<(String, String)> {
        p.iter()
            .map(|p| (p.prefix.clone(), p.service.clone()))
            .collect()
    }

    #[test]
    fn registrations_add_routes_beside_the_convention() {
        let snap: Snapshot = [
            reg("aggregator", "a", &["/"]),
            reg("users", "u", &["/users/"]),
        ]
        .into();
        let (p, w) = plan(&[route("/", "aggregator")], false, &snap);
        assert!(w.is_empty(), "{w:?}");
        assert_eq!(
            table(&p),
            [
                ("".into(), "aggregator".into()),
                ("/users".into(), "users".into())
            ]
        );
        assert_eq!(p[0].static_route, Some(0));
    }

    #[test]
    fn same_prefix_first_service_by_name_wins_with_a_warning() {
        let snap: Snapshot = [reg("zeta", "z", &["/api"]), reg("alpha", "a", &["/api/"])].into();
        let (p, w) = plan(&[], false, &snap);
        assert_eq!(table(&p), [("/api".into(), "alpha".into())]);
        assert_eq!(w.len(), 1);
        assert!(w[0].contains("alpha") && w[0].contains("zeta"), "{w:?}");
    }

    #[test]
    fn convention_yields_explicit_route_wins() {
        let snap: Snapshot = [reg("web2", "w", &["/"])].into();
        let (p, w) = plan(&[route("/", "aggregator")], false, &snap);
        assert_eq!(table(&p), [("".into(), "web2".into())]);
        assert!(w.is_empty());
        let (p, w) = plan(&[route("/", "aggregator")], true, &snap);
        assert_eq!(table(&p), [("".into(), "aggregator".into())]);
        assert_eq!(w.len(), 1, "{w:?}");
    }

    #[test]
    fn bad_registered_routes_are_skipped() {
        let snap: Snapshot = [reg("s", "1", &["nope", "/ok"])].into();
        let (p, w) = plan(&[], false, &snap);
        assert_eq!(table(&p), [("/ok".into(), "s".into())]);
        assert_eq!(w.len(), 1);
    }
}
