//! Ghost mode: a sampled fraction of idempotent requests is copied to a
//! version under test; its reply is compared with the real one, counted,
//! and dropped. The client only ever sees the primary's reply.
//!
//! ```text
//! request ─► primary call ─────────────────────► reply to the client
//!    │ sampled, under the cap                │ status, headers, body (refcounts)
//!    └─► ghost task: call_ghost(version) ──► compare ─► Ledger (counts, samples)
//! ```
//!
//! The copy is marked on the bus ([`bus::wire::FLAG_GHOST`]) so services
//! skip side effects; it gets the primary's deadline, one attempt and no
//! retry ([`bus::Client::call_ghost`]), and its own in-flight cap per
//! service: when the cap is reached the copy is skipped and counted, never
//! queued. The primary path spends nothing on an unsampled request but
//! one random number; on a sampled one, a clone of the request (shared
//! buffers) and of the reply's head.
//!
//! # Noise
//!
//! A field that differs on every call (a timestamp, a generated id) would
//! make every pair mismatch. Twitter's Diffy learns noise by sending each
//! request to a second instance of the old code too and discounting what
//! differs between those two, at the price of a third copy of the traffic;
//! GitHub's Scientist has the experiment `clean` values before comparing
//! and advises running the control against itself first to calibrate.
//! Switchboard takes Scientist's way: `ignore` lists JSON pointers (RFC
//! 6901, with `*` for every member or element) removed from both JSON
//! bodies before they are compared, `compare_headers` names the only
//! headers compared, and a ghost pointed at the primary's own version
//! measures the noise. See [`compare`] and docs/operations.md.

pub mod compare;
pub mod ledger;

use http::HeaderName;
use serde::Deserialize;

pub use compare::{Answer, Verdict};
pub use ledger::{Ledger, Mirror, VERDICTS};

pub const DEFAULT_METHODS: [&str; 2] = ["GET", "HEAD"];
pub const DEFAULT_COMPARE_HEADERS: [&str; 1] = ["content-type"];
pub const DEFAULT_MAX_IN_FLIGHT: usize = 64;
pub const DEFAULT_SAMPLES: usize = 20;
/// Methods a ghost may copy: the idempotent ones (RFC 9110 §9.2.2).
pub const IDEMPOTENT: [&str; 5] = ["GET", "HEAD", "OPTIONS", "PUT", "DELETE"];

/// The `ghost` object of a policy document.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct GhostDoc {
    version: String,
    fraction: f64,
    methods: Option<Vec<String>>,
    compare_headers: Option<Vec<String>>,
    #[serde(default)]
    ignore: Vec<String>,
    max_in_flight: Option<usize>,
    samples: Option<usize>,
}

/// One service's ghost settings, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct Ghost {
    pub version: String,
    /// 0 to 1; 0 keeps the settings but copies nothing.
    pub fraction: f64,
    pub methods: Vec<String>,
    pub compare_headers: Vec<HeaderName>,
    /// JSON pointers, split into unescaped segments.
    pub ignore: Vec<Vec<String>>,
    pub max_in_flight: usize,
    /// Mismatches kept per route and version for the admin port.
    pub samples: usize,
}

impl Ghost {
    /// Copies `fraction` of requests to `version` with every other
    /// setting at its default, and `ignore`'s pointers that parse
    /// (settings from a document go through the policy's checks instead).
    pub fn new(version: impl Into<String>, fraction: f64, ignore: &[&str]) -> Ghost {
        Ghost {
            version: version.into(),
            fraction,
            methods: DEFAULT_METHODS.map(String::from).to_vec(),
            compare_headers: vec![http::header::CONTENT_TYPE],
            ignore: ignore
                .iter()
                .filter_map(|p| compare::parse_pointer(p))
                .collect(),
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            samples: DEFAULT_SAMPLES,
        }
    }

    /// Whether this request is copied: its method is one of `methods`
    /// and it falls in the sampled fraction.
    pub fn sample(&self, method: &str) -> bool {
        self.fraction > 0.0
            && self.methods.iter().any(|m| m == method)
            && (self.fraction >= 1.0 || fastrand::f64() < self.fraction)
    }

    /// The settings as a policy document's `ghost` object.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "version": self.version,
            "fraction": self.fraction,
            "methods": self.methods,
            "compare_headers": self.compare_headers.iter().map(|h| h.as_str()).collect::<Vec<_>>(),
            "ignore": self.ignore.iter().map(|p| compare::pointer_text(p)).collect::<Vec<_>>(),
            "max_in_flight": self.max_in_flight,
            "samples": self.samples,
        })
    }
}

pub(crate) fn check(service: &str, d: GhostDoc, problems: &mut Vec<String>) -> Option<Ghost> {
    let before = problems.len();
    if !crate::policy::label_ok(&d.version) {
        problems.push(format!(
            "{service}: ghost version {:?} must be 1-64 letters, digits, `.`, `-`, `_` or `+`",
            d.version
        ));
    }
    if !(0.0..=1.0).contains(&d.fraction) {
        problems.push(format!(
            "{service}: ghost fraction {} must be from 0 to 1",
            d.fraction
        ));
    }
    let methods: Vec<String> = d
        .methods
        .unwrap_or_else(|| DEFAULT_METHODS.map(String::from).to_vec())
        .into_iter()
        .map(|m| m.to_ascii_uppercase())
        .collect();
    if methods.is_empty() {
        problems.push(format!("{service}: ghost methods is empty"));
    }
    for m in &methods {
        if !IDEMPOTENT.contains(&m.as_str()) {
            problems.push(format!(
                "{service}: ghost method {m} is not idempotent; a copy must be safe to send twice ({})",
                IDEMPOTENT.join(", ")
            ));
        }
    }
    let mut compare_headers = Vec::new();
    for h in d
        .compare_headers
        .unwrap_or_else(|| DEFAULT_COMPARE_HEADERS.map(String::from).to_vec())
    {
        match HeaderName::from_bytes(h.as_bytes()) {
            Ok(n) => compare_headers.push(n),
            Err(_) => problems.push(format!(
                "{service}: ghost compare_headers {h:?} is not a header name"
            )),
        }
    }
    let mut ignore = Vec::new();
    for p in &d.ignore {
        match compare::parse_pointer(p) {
            Some(segs) => ignore.push(segs),
            None => problems.push(format!(
                "{service}: ghost ignore {p:?} is not a JSON pointer (RFC 6901: \"/field/0/name\", `*` for any)"
            )),
        }
    }
    let max_in_flight = d.max_in_flight.unwrap_or(DEFAULT_MAX_IN_FLIGHT);
    if !(1..=100_000).contains(&max_in_flight) {
        problems.push(format!(
            "{service}: ghost max_in_flight {max_in_flight} must be from 1 to 100000"
        ));
    }
    let samples = d.samples.unwrap_or(DEFAULT_SAMPLES);
    if !(1..=1000).contains(&samples) {
        problems.push(format!(
            "{service}: ghost samples {samples} must be from 1 to 1000"
        ));
    }
    (problems.len() == before).then_some(Ghost {
        version: d.version,
        fraction: d.fraction,
        methods,
        compare_headers,
        ignore,
        max_in_flight,
        samples,
    })
}
