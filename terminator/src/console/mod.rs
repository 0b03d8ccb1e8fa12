//! `/console` on the admin port: a live page for operators and the JSON
//! behind it (`/console/data`, docs/console.md).
//!
//! Everything is computed here, on the admin side, from the totals the
//! request path already keeps ([`reading`]): a request records nothing
//! more for the console. The page is embedded in the binary and loads
//! nothing from elsewhere; it draws its charts on a plain canvas.
//!
//! # Layout
//!
//! - [`reading`]: one cumulative reading of routes, services, instances.
//! - [`data`]: per-second steps between readings, and the JSON.
//! - [`fleet`]: with etcd, every terminator's histograms merged.
//! - `assets/`: the page (HTML, CSS, JS).

mod data;
pub mod fleet;
mod reading;

use crate::proxy::Edge;
use crate::routes::Routes;
use bytes::Bytes;
use http::StatusCode;
use std::sync::Arc;
use std::time::Duration;
use svc_host::admin::Reply;

pub use data::{DEFAULT_WINDOW, HISTORY, MAX_WINDOW};

/// The p99 each route is held to unless configured (the design target).
pub const DEFAULT_P99_TARGET: Duration = Duration::from_millis(25);

const HTML: &str = include_str!("assets/console.html");
const JS: &str = include_str!("assets/console.js");
const CSS: &str = include_str!("assets/console.css");

/// The console's state, one per process.
pub struct Console {
    target: Duration,
    history: parking_lot::Mutex<data::History>,
    /// With etcd: the other terminators.
    fleet: std::sync::OnceLock<Arc<fleet::Fleet>>,
}

impl Console {
    pub fn new(target: Duration) -> Console {
        Console {
            target,
            history: Default::default(),
            fleet: Default::default(),
        }
    }

    /// Shows the fleet too (with etcd; once).
    pub fn set_fleet(&self, f: Arc<fleet::Fleet>) {
        let _ = self.fleet.set(f);
    }

    /// The console's pages; `None` for any other path.
    pub fn reply(
        &self,
        edge: &Edge,
        shards: &parking_lot::Mutex<Vec<Arc<Routes>>>,
        path: &str,
        query: Option<&str>,
    ) -> Option<Reply> {
        let asset = |content_type, body: &'static str| Reply {
            status: StatusCode::OK,
            content_type,
            body: Bytes::from_static(body.as_bytes()),
        };
        let r = match path {
            "/console" | "/console/" => asset("text/html; charset=utf-8", HTML),
            "/console/console.js" => asset("text/javascript; charset=utf-8", JS),
            "/console/console.css" => asset("text/css; charset=utf-8", CSS),
            "/console/data" => {
                return Some(match Query::parse(query) {
                    Ok(q) => self.data(edge, shards, q),
                    Err(e) => bad_query(&e),
                })
            }
            p if p.starts_with("/console/") => Reply::json(
                StatusCode::NOT_FOUND,
                json_error(404, "not_found", &format!("no console page {p}")),
            ),
            _ => return None,
        };
        // The page and its files take no query: refuse one rather than
        // let a typo look like a setting.
        Some(match query.filter(|q| !q.is_empty()) {
            Some(q) => bad_query(&format!("{path} takes no query (got `{q}`)")),
            None => r,
        })
    }

    fn data(&self, edge: &Edge, shards: &parking_lot::Mutex<Vec<Arc<Routes>>>, q: Query) -> Reply {
        let mut h = self.history.lock();
        h.refresh(|| reading::Reading::take(edge, &shards.lock()));
        let target_ms = self.target.as_secs_f64() * 1000.0;
        let mut body = h.json(q.window, q.points, target_ms, edge.max_in_flight);
        drop(h);
        // The traffic policy in force per service (`--policy`, etcd):
        // weights by version, so a ramp can be watched here, and the
        // ghost with its verdicts so far.
        if let Some(services) = body["services"].as_array_mut() {
            for s in services {
                let name = s["service"].as_str().unwrap_or_default().to_string();
                let policy = edge.policies.get(&name);
                s["weights"] = match policy.as_ref().and_then(|p| p.weights.clone()) {
                    Some(w) => {
                        w.0.into_iter()
                            .map(|(v, w)| (v, serde_json::Value::from(w)))
                            .collect()
                    }
                    None => serde_json::Value::Null,
                };
                s["ghost"] = match policy.as_ref().and_then(|p| p.ghost.as_ref()) {
                    Some(g) => {
                        let mut o = serde_json::Map::new();
                        o.insert("version".into(), g.version.as_str().into());
                        o.insert("fraction".into(), g.fraction.into());
                        for (k, n) in edge.ghosts.totals(&name, &g.version) {
                            o.insert(k.into(), n.into());
                        }
                        serde_json::Value::Object(o)
                    }
                    None => serde_json::Value::Null,
                };
            }
        }
        body["fleet"] = match self.fleet.get() {
            Some(f) => {
                f.polled();
                f.json(q.window, target_ms)
            }
            None => serde_json::Value::Null,
        };
        Reply::json(StatusCode::OK, body.to_string())
    }
}

/// `/console/data`'s query: `window=` seconds for the percentiles,
/// `history=` points per route.
#[derive(Debug, PartialEq, Eq)]
struct Query {
    window: usize,
    points: usize,
}

impl Query {
    fn parse(q: Option<&str>) -> Result<Query, String> {
        let mut out = Query {
            window: DEFAULT_WINDOW,
            points: HISTORY,
        };
        for kv in q.unwrap_or("").split('&').filter(|s| !s.is_empty()) {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            let int = |max: usize, min: usize| match v.trim_end_matches('s').parse::<usize>() {
                Ok(n) if (min..=max).contains(&n) => Ok(n),
                _ => Err(format!(
                    "`{k}={v}`: expected a whole number from {min} to {max}"
                )),
            };
            match k {
                "window" => out.window = int(MAX_WINDOW, 1)?,
                "history" => out.points = int(HISTORY, 0)?,
                _ => {
                    return Err(format!(
                    "unknown parameter `{k}` (known: window=1..{MAX_WINDOW}, history=0..{HISTORY})"
                ))
                }
            }
        }
        Ok(out)
    }
}

fn json_error(status: u16, error: &str, message: &str) -> String {
    serde_json::json!({"error": error, "status": status, "message": message}).to_string()
}

fn bad_query(message: &str) -> Reply {
    Reply::json(
        StatusCode::BAD_REQUEST,
        json_error(400, "bad_query", message),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_defaults_limits_and_unknowns() {
        assert_eq!(
            Query::parse(None),
            Ok(Query {
                window: DEFAULT_WINDOW,
                points: HISTORY
            })
        );
        assert_eq!(
            Query::parse(Some("window=5s&history=0")),
            Ok(Query {
                window: 5,
                points: 0
            })
        );
        for bad in [
            "window=0",
            "window=31",
            "window=x",
            "history=61",
            "foo=1",
            "window",
        ] {
            let e = Query::parse(Some(bad)).unwrap_err();
            assert!(e.contains('`'), "{bad}: {e}");
        }
    }
}
