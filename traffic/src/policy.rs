//! Traffic policy per service: how calls are split between the versions
//! instances register (`--service-version`), and which requests are
//! pinned to one version.
//!
//! `--policy FILE` holds one JSON object, service name → policy:
//!
//! ```json
//! {"aggregator": {"weights": {"v1": 90, "v2": 10},
//!                 "pin": {"header": "x-switchboard-version", "cookie": "sb-version"},
//!                 "ghost": {"version": "v3", "fraction": 0.1}}}
//! ```
//!
//! - `weights`: relative, 0 to 10 000 each. A version not listed, or with
//!   0, gets no new calls, unless no weighted version has a connected
//!   instance: then any instance serves (`bus::Weights`). No `weights`:
//!   every instance alike, as without a policy.
//! - `pin`: a request whose header (or cookie) names a version goes to that
//!   version's instances, before the weights, while one is connected.
//! - `ghost`: a copy of a sampled fraction of idempotent requests goes to
//!   a version under test, and the two replies are compared
//!   ([`crate::ghost`]): `version`, `fraction` (0 to 1), and optionally
//!   `methods` (default GET, HEAD; idempotent ones only),
//!   `compare_headers` (default content-type), `ignore` (JSON pointers),
//!   `max_in_flight` (default 64) and `samples` (default 20).
//!
//! The file is re-read when it changes and on SIGHUP (`svc_host::reload`).
//! A file that does not parse, or breaks a rule above, is refused whole:
//! the reason is logged and shown on the admin port (`/policy`), and the
//! last good policy stays in force. A bad file at start is exit 2.
//!
//! With `--etcd`, one document per service at `/switchboard/policy/<service>`
//! (the same object as one entry of the file) is watched live and wins
//! over the file for that service; a bad document is refused the same way,
//! per service.
//!
//! Every response from a versioned instance says which version served it
//! (`x-switchboard-version`).

use arc_swap::ArcSwap;
use http::{HeaderMap, HeaderName};
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The largest weight: enough resolution for 0.01% steps.
pub const MAX_WEIGHT: u32 = 10_000;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyDoc {
    #[serde(default)]
    weights: BTreeMap<String, u32>,
    #[serde(default)]
    pin: Option<PinDoc>,
    #[serde(default)]
    ghost: Option<crate::ghost::GhostDoc>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PinDoc {
    header: Option<String>,
    cookie: Option<String>,
}

/// One service's policy, checked and ready for the request path.
#[derive(Debug, Default, PartialEq)]
pub struct Policy {
    pub weights: Option<bus::Weights>,
    pin_header: Option<HeaderName>,
    pin_cookie: Option<String>,
    pub ghost: Option<Arc<crate::ghost::Ghost>>,
}

impl Policy {
    /// The version `headers` pin the request to, if any.
    pub fn pinned<'a>(&self, headers: &'a HeaderMap) -> Option<&'a str> {
        if let Some(h) = &self.pin_header {
            if let Some(v) = headers.get(h).and_then(|v| v.to_str().ok()) {
                let v = v.trim();
                if !v.is_empty() {
                    return Some(v);
                }
            }
        }
        let name = self.pin_cookie.as_deref()?;
        let cookies = headers
            .get_all(http::header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok());
        cookie(cookies, name)
    }

    /// [`pinned`](Self::pinned) for a request that came over the bus
    /// (the terminator passes the client's headers on): a caller behind
    /// the edge pins its own calls by the same header or cookie.
    pub fn pinned_bus<'a>(&self, headers: &'a bus::Headers) -> Option<&'a str> {
        if let Some(h) = &self.pin_header {
            if let Some(v) = bus_values(headers, h.as_str())
                .into_iter()
                .map(str::trim)
                .find(|v| !v.is_empty())
            {
                return Some(v);
            }
        }
        cookie(
            bus_values(headers, "cookie").into_iter(),
            self.pin_cookie.as_deref()?,
        )
    }
}

fn bus_values<'a>(headers: &'a bus::Headers, name: &str) -> Vec<&'a str> {
    headers
        .iter()
        .filter(|(n, _)| n.as_str().eq_ignore_ascii_case(name))
        .filter_map(|(_, v)| std::str::from_utf8(v).ok())
        .collect()
}

/// The value of cookie `name` in `Cookie` header values.
fn cookie<'a>(values: impl Iterator<Item = &'a str>, name: &str) -> Option<&'a str> {
    values
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim_matches('"'))
        .filter(|v| !v.is_empty())
}

pub(crate) fn label_ok(v: &str) -> bool {
    !v.is_empty()
        && v.len() <= 64
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-+".contains(&b))
}

/// Parses and checks a policy file's text: every problem, or the policies.
pub fn parse(text: &str) -> Result<HashMap<String, Arc<Policy>>, Vec<String>> {
    let docs: BTreeMap<String, PolicyDoc> =
        serde_json::from_str(text).map_err(|e| vec![e.to_string()])?;
    let mut problems = Vec::new();
    let mut out = HashMap::new();
    for (service, d) in docs {
        match check(&service, d) {
            Ok(p) => {
                out.insert(service, Arc::new(p));
            }
            Err(e) => problems.extend(e),
        }
    }
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(problems)
    }
}

/// One service's policy document (an etcd value).
pub fn parse_one(service: &str, text: &[u8]) -> Result<Policy, Vec<String>> {
    let d: PolicyDoc = serde_json::from_slice(text).map_err(|e| vec![format!("{service}: {e}")])?;
    check(service, d)
}

fn check(service: &str, d: PolicyDoc) -> Result<Policy, Vec<String>> {
    let mut problems = Vec::new();
    let mut p = Policy::default();
    if !d.weights.is_empty() {
        for (v, w) in &d.weights {
            if !label_ok(v) {
                problems.push(format!(
                    "{service}: version {v:?} must be 1-64 letters, digits, `.`, `-`, `_` or `+`"
                ));
            }
            if *w > MAX_WEIGHT {
                problems.push(format!(
                    "{service}: weight {w} for {v} is over {MAX_WEIGHT}"
                ));
            }
        }
        if d.weights.values().all(|w| *w == 0) {
            problems.push(format!(
                "{service}: every weight is 0; give one version a weight (or remove `weights` to spread over all)"
            ));
        }
        p.weights = Some(bus::Weights(d.weights.into_iter().collect()));
    }
    if let Some(pin) = d.pin {
        if pin.header.is_none() && pin.cookie.is_none() {
            problems.push(format!("{service}: pin needs a header, a cookie or both"));
        }
        if let Some(h) = pin.header {
            match HeaderName::from_bytes(h.as_bytes()) {
                Ok(n) => p.pin_header = Some(n),
                Err(_) => {
                    problems.push(format!("{service}: pin header {h:?} is not a header name"))
                }
            }
        }
        if let Some(c) = pin.cookie {
            if c.is_empty()
                || !c
                    .bytes()
                    .all(|b| b.is_ascii_graphic() && !b"=;,\"".contains(&b))
            {
                problems.push(format!("{service}: pin cookie {c:?} is not a cookie name"));
            } else {
                p.pin_cookie = Some(c);
            }
        }
    }
    if let Some(g) = d.ghost {
        p.ghost = crate::ghost::check(service, g, &mut problems).map(Arc::new);
    }
    if problems.is_empty() {
        Ok(p)
    } else {
        Err(problems)
    }
}

/// Reads and checks a policy file.
pub fn read(path: &Path) -> Result<HashMap<String, Arc<Policy>>, Vec<String>> {
    let text =
        std::fs::read_to_string(path).map_err(|e| vec![format!("{}: {e}", path.display())])?;
    parse(&text).map_err(|ps| {
        ps.into_iter()
            .map(|p| format!("{}: {p}", path.display()))
            .collect()
    })
}

/// The policies in force, process-wide: etcd's for the services it has
/// one for, the file's for the rest; empty without either.
#[derive(Default)]
pub struct Policies {
    now: ArcSwap<HashMap<String, Arc<Policy>>>,
    /// From `--policy`, as last loaded well.
    from_file: parking_lot::Mutex<HashMap<String, Arc<Policy>>>,
    /// From etcd, per service, the last good document of each.
    from_etcd: parking_lot::Mutex<HashMap<String, Arc<Policy>>>,
    /// Why the last file reload was refused; None after a good one.
    last_error: parking_lot::Mutex<Option<Vec<String>>>,
    /// etcd documents refused, by service, with why.
    etcd_refused: parking_lot::Mutex<BTreeMap<String, Vec<String>>>,
    file: parking_lot::Mutex<Option<PathBuf>>,
}

impl Policies {
    /// The service's policy, if it has one. One atomic load when no
    /// policy is configured.
    pub fn get(&self, service: &str) -> Option<Arc<Policy>> {
        let m = self.now.load();
        if m.is_empty() {
            return None;
        }
        m.get(service).cloned()
    }

    /// Loads `path` now and follows it; the first load's problems are
    /// returned (the process should not start on a bad policy).
    pub fn follow(self: &Arc<Self>, path: PathBuf) -> Result<(), Vec<String>> {
        *self.from_file.lock() = read(&path)?;
        self.merge();
        *self.file.lock() = Some(path.clone());
        let (me, p2) = (self.clone(), path.clone());
        svc_host::reload::watch(
            "traffic policy",
            move || vec![svc_host::reload::stamp(&p2)],
            move || match read(&path) {
                Ok(m) => {
                    let n = m.len();
                    *me.from_file.lock() = m;
                    me.merge();
                    *me.last_error.lock() = None;
                    Ok(format!("{n} service(s)"))
                }
                Err(e) => {
                    *me.last_error.lock() = Some(e.clone());
                    Err(e)
                }
            },
        )
        .map_err(|e| vec![format!("cannot watch {}: {e}", self.file_name())])
    }

    /// etcd's documents under `/switchboard/policy/` as they stand (key
    /// `/switchboard/policy/<service>`). A document that does not check
    /// out is refused (logged, on `/policy`) and the service keeps its
    /// last good one; a deleted key drops the service's etcd policy.
    pub fn apply_etcd(&self, docs: &BTreeMap<String, Vec<u8>>) {
        let mut from_etcd = self.from_etcd.lock();
        let mut refused = self.etcd_refused.lock();
        let mut seen = std::collections::HashSet::new();
        for (key, value) in docs {
            let service = key.strip_prefix(discovery::POLICY_PREFIX).unwrap_or(key);
            if service.is_empty() || service.contains('/') {
                tracing::warn!(%key, "not a policy key (/switchboard/policy/<service>); ignored");
                continue;
            }
            seen.insert(service.to_string());
            match parse_one(service, value) {
                Ok(p) => {
                    refused.remove(service);
                    let p = Arc::new(p);
                    if from_etcd.get(service) != Some(&p) {
                        tracing::info!(service, "traffic policy from etcd in force");
                    }
                    from_etcd.insert(service.to_string(), p);
                }
                Err(e) => {
                    if refused.get(service) != Some(&e) {
                        tracing::warn!(service, problems = %e.join("; "), "traffic policy in etcd refused; the last good one stays");
                    }
                    refused.insert(service.to_string(), e);
                }
            }
        }
        from_etcd.retain(|s, _| seen.contains(s));
        refused.retain(|s, _| seen.contains(s));
        drop((from_etcd, refused));
        self.merge();
    }

    fn merge(&self) {
        let mut m = self.from_file.lock().clone();
        m.extend(
            self.from_etcd
                .lock()
                .iter()
                .map(|(k, v)| (k.clone(), v.clone())),
        );
        self.now.store(Arc::new(m));
    }

    fn file_name(&self) -> String {
        self.file
            .lock()
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_default()
    }

    /// The admin port's `/policy`: what is in force and why the last
    /// change was refused.
    pub fn page(&self) -> serde_json::Value {
        let now = self.now.load();
        let services: serde_json::Map<String, serde_json::Value> = now
            .iter()
            .map(|(s, p)| {
                let weights: serde_json::Map<String, serde_json::Value> = p
                    .weights
                    .iter()
                    .flat_map(|w| w.0.iter())
                    .map(|(v, w)| (v.clone(), (*w).into()))
                    .collect();
                (
                    s.clone(),
                    serde_json::json!({
                        "weights": weights,
                        "pin": {"header": p.pin_header.as_ref().map(|h| h.as_str()), "cookie": p.pin_cookie},
                        "ghost": p.ghost.as_ref().map(|g| g.to_json()),
                    }),
                )
            })
            .collect();
        let from_etcd: Vec<String> = self.from_etcd.lock().keys().cloned().collect();
        serde_json::json!({
            "file": self.file.lock().as_ref().map(|p| p.display().to_string()),
            "services": services,
            "from_etcd": from_etcd,
            "refused": *self.last_error.lock(),
            "refused_in_etcd": *self.etcd_refused.lock(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_good_policy_and_every_problem_of_a_bad_one() {
        let m = parse(
            r#"{"aggregator": {"weights": {"v1": 90, "v2": 10}, "pin": {"header": "x-v", "cookie": "sbv"}}}"#,
        )
        .unwrap();
        let p = &m["aggregator"];
        assert_eq!(
            p.weights,
            Some(bus::Weights(vec![("v1".into(), 90), ("v2".into(), 10)]))
        );
        let mut h = HeaderMap::new();
        assert_eq!(p.pinned(&h), None);
        h.insert("cookie", "a=b; sbv=v2; c=d".parse().unwrap());
        assert_eq!(p.pinned(&h), Some("v2"));
        h.insert("x-v", "v1".parse().unwrap());
        assert_eq!(p.pinned(&h), Some("v1"), "the header before the cookie");

        let e = parse(
            r#"{"a": {"weights": {"v 1": 1, "v2": 20000}}, "b": {"weights": {"v1": 0}}, "c": {"pin": {}}, "d": {"mirror": {}}}"#,
        )
        .unwrap_err();
        assert_eq!(e.len(), 1, "an unknown field fails the parse: {e:?}");
        assert!(e[0].contains("mirror"), "{e:?}");
        let e = parse(
            r#"{"a": {"weights": {"v 1": 1, "v2": 20000}}, "b": {"weights": {"v1": 0}}, "c": {"pin": {}}}"#,
        )
        .unwrap_err();
        assert_eq!(e.len(), 4, "{e:#?}");
        assert!(parse("[]").is_err());
    }

    #[test]
    fn ghost_settings_defaults_and_refusals() {
        let m = parse(r#"{"aggregator": {"ghost": {"version": "v2", "fraction": 0.1}}}"#).unwrap();
        let g = m["aggregator"].ghost.as_ref().unwrap();
        assert_eq!(g.methods, ["GET", "HEAD"]);
        assert_eq!(g.compare_headers, [http::header::CONTENT_TYPE]);
        assert_eq!((g.max_in_flight, g.samples), (64, 20));
        let e = parse(
            r#"{"a": {"ghost": {"version": "v 2", "fraction": 1.5, "methods": ["POST"],
                "compare_headers": ["bad name"], "ignore": ["x"], "max_in_flight": 0, "samples": 0}}}"#,
        )
        .unwrap_err();
        assert_eq!(e.len(), 7, "{e:#?}");
        assert!(
            e.iter().any(|p| p.contains("POST is not idempotent")),
            "{e:#?}"
        );
        let e = parse(r#"{"a": {"ghost": {"fraction": 0.1}}}"#).unwrap_err();
        assert!(e[0].contains("version"), "{e:?}");
    }

    #[test]
    fn pins_over_the_bus() {
        let m = parse(r#"{"s": {"pin": {"header": "x-v", "cookie": "sbv"}}}"#).unwrap();
        let p = &m["s"];
        let h: bus::Headers = vec![("Cookie".into(), bytes::Bytes::from_static(b"a=1; sbv=v3"))];
        assert_eq!(p.pinned_bus(&h), Some("v3"));
        let h: bus::Headers = vec![
            ("cookie".into(), bytes::Bytes::from_static(b"sbv=v3")),
            ("X-V".into(), bytes::Bytes::from_static(b" v1 ")),
        ];
        assert_eq!(p.pinned_bus(&h), Some("v1"));
        assert_eq!(p.pinned_bus(&Vec::new()), None);
    }
}
