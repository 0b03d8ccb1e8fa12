//! `/kv`: the full chain, terminator → aggregator → backend-svc → store.
//!
//! - `GET /kv/{key}`: the value (`application/octet-stream`), or 404.
//! - `PUT /kv/{key}`: stores the body; 204 once durable.
//! - `DELETE /kv/{key}`: 204, whether or not the key existed.
//! - `GET /kv?keys=a,b,c[&encoding=base64]`: one JSON object, key → value,
//!   `null` for a missing key. Values are JSON strings when they are UTF-8
//!   and `{"base64": "…"}` otherwise; with `encoding=base64` every value is
//!   a base64 string.
//!
//! The multi-get fans out as parallel `kv.multi_get` calls of at most
//! `chunk` keys each and fans in when all have answered.
//!
//! **Partial failure is all-or-nothing**: if any chunk fails, the request
//! fails (504 if a chunk timed out, else 503 if the backend was unavailable,
//! else 502), the other chunks are cancelled (their pending entries leave
//! the correlation table at once), and the message says how many keys could
//! not be read. A client never mistakes a failed read for a missing key.
//!
//! Keys arrive percent-decoded (`a%3Ab` is the key `a:b`), so an error
//! names the key the user meant: `bad%20key` is refused for its space.
//!
//! Errors are `bus::Problem`s: a backend call that fails maps through
//! `Problem::from_call`, the table the terminator uses, so a lost backend
//! reads the same as a lost aggregator; a backend 4xx passes as it is, a
//! backend 5xx becomes 502 `upstream_error`.
//!
//! Every backend call gets the caller's deadline, so it runs on what is
//! left of the budget the terminator set, the caller's request id, and
//! its ghost mark (a ghost's backend calls are ghosts too: backend-svc
//! then writes nothing). The `backend` traffic policy (`--policy`, etcd)
//! splits the calls by version and pins them by the client's header or
//! cookie, which the terminator passed on; its `ghost` copies a sampled
//! fraction of the backend calls made for the client's methods it names
//! (GET and HEAD by default) to the ghost version, compares the replies
//! and keeps the verdicts per bus method (`kv.get`, `kv.multi_get`) on
//! `/ghost`. A request that is itself a ghost makes no further copies.

use crate::cache::Cache;
use base64::Engine;
use bus::{CallError, Client, Problem, Reply, Request};
use bytes::Bytes;
use kv_proto as proto;
use std::fmt::Write as _;
use std::sync::Arc;
use tokio::task::JoinSet;
use tokio::time::Instant;

pub const DEFAULT_CHUNK: usize = 16;

pub struct Kv {
    pub backend: Backend,
    pub cache: Option<Cache>,
    pub chunk: usize,
    /// Traffic policies; the `backend` one applies here.
    pub policies: Arc<traffic::Policies>,
}

/// The backend as each call sees it: the client and where the calls
/// are counted. Cheap to clone into a multi-get's chunk tasks.
#[derive(Clone)]
pub struct Backend {
    pub client: Arc<Client>,
    /// The backend's calls by version (`version.backend.<version>.*`).
    pub versions: Arc<traffic::versions::Versions>,
    /// Ghost copies of backend calls and their verdicts (`/ghost`).
    pub ghosts: Arc<traffic::ghost::Ledger>,
}

/// What a backend call inherits from the request it serves.
#[derive(Clone)]
struct Origin {
    request_id: bus::Text,
    /// The client's HTTP method: the backend policy's ghost samples by it.
    method: bus::Text,
    ghost: bool,
    /// The `backend` policy as it stood when the request arrived: one
    /// lookup serves every backend call the request makes.
    policy: Option<Arc<traffic::Policy>>,
    /// The backend version the client's header or cookie pins, if any.
    pin: Option<String>,
}

impl Backend {
    /// A backend call on behalf of `o`, routed by the backend's policy,
    /// counted by the version that answered, and copied to the policy's
    /// ghost when it samples the call.
    async fn call(
        &self,
        mut r: Request,
        o: &Origin,
        deadline: Instant,
        idempotent: bool,
    ) -> Result<Reply, CallError> {
        r.request_id = o.request_id.clone();
        r.ghost = o.ghost;
        let route = bus::Route {
            version: o.pin.as_deref(),
            weights: o.policy.as_ref().and_then(|p| p.weights.as_ref()),
        };
        // A ghost's own calls are never copied again: one copy per request.
        let ghost = o
            .policy
            .as_ref()
            .and_then(|p| p.ghost.as_ref())
            .filter(|_| !o.ghost)
            .and_then(|g| {
                self.ghosts
                    .start(g, proto::SERVICE, r.method.as_str(), o.method.as_str())
            })
            .map(|m| m.launch(&self.client, r.clone(), deadline));
        let mut trace = bus::CallTrace::default();
        let started = Instant::now();
        let out = self
            .client
            .call_traced(r, deadline, idempotent, route, &mut trace)
            .await;
        if let Some(g) = ghost {
            g.answered(&out);
        }
        let status = match &out {
            Ok(r) => r.status,
            Err(CallError::Remote { status, .. }) => *status,
            Err(CallError::Timeout) => 504,
            Err(_) => 503,
        };
        // A ghost's calls are the ghost's business: a ramp judged on the
        // backend's versions must see real traffic only.
        if !o.ghost {
            self.versions
                .record(proto::SERVICE, &trace, status, started.elapsed());
        }
        out
    }
}

impl Kv {
    /// `path` is the request path with its query.
    pub async fn handle(&self, req: &Request, path: &str, deadline: Instant) -> Reply {
        let rid = req.request_id.as_str();
        let out = self.route(req, path, deadline).await;
        out.unwrap_or_else(|p| p.into_reply(rid))
    }

    async fn route(&self, req: &Request, path: &str, deadline: Instant) -> Result<Reply, Problem> {
        let (route, query) = path.split_once('?').unwrap_or((path, ""));
        let method = req.http_method.as_str();
        let rid = &req.request_id;
        let policy = self.policies.get(proto::SERVICE);
        let o = Origin {
            request_id: rid.clone(),
            method: req.http_method.clone(),
            ghost: req.ghost,
            pin: policy
                .as_ref()
                .and_then(|p| p.pinned_bus(&req.headers).map(str::to_string)),
            policy,
        };
        let o = &o;
        if route == "/kv" {
            return match method {
                "GET" | "HEAD" => self.multi_get(query, o, deadline).await,
                _ => Ok(method_not_allowed("GET", rid)),
            };
        }
        let key = decode_key(&route["/kv/".len()..])?;
        match method {
            "GET" | "HEAD" => self.get(key, o, deadline).await,
            "PUT" => {
                self.write(proto::PUT, key, req.body.clone(), o, deadline)
                    .await
            }
            "DELETE" => {
                self.write(proto::DELETE, key, Bytes::new(), o, deadline)
                    .await
            }
            _ => Ok(method_not_allowed("GET, PUT, DELETE", rid)),
        }
    }

    async fn get(&self, key: Bytes, o: &Origin, deadline: Instant) -> Result<Reply, Problem> {
        if let Some(v) = self.cache.as_ref().and_then(|c| c.get(&key)) {
            return Ok(value_reply(v));
        }
        let ticket = self.cache.as_ref().map(|c| c.ticket(&key));
        let mut r = Request::new(proto::SERVICE, proto::GET);
        r.path = key.clone().try_into_text();
        let reply = self.backend.call(r, o, deadline, true).await;
        match reply.map_err(|e| Problem::from_call(&e))? {
            reply if reply.status == 200 => {
                if let (Some(c), Some(t)) = (&self.cache, ticket) {
                    c.fill(t, key, reply.body.clone());
                }
                Ok(value_reply(reply.body))
            }
            reply if reply.status == 404 => Err(Problem::new(404, "not_found", "no such key")),
            reply => passed_on(reply),
        }
    }

    async fn write(
        &self,
        method: &'static str,
        key: Bytes,
        body: Bytes,
        o: &Origin,
        deadline: Instant,
    ) -> Result<Reply, Problem> {
        let mut r = Request::new(proto::SERVICE, method);
        r.path = key.clone().try_into_text();
        r.body = body;
        let out = self.backend.call(r, o, deadline, false).await;
        // Whatever the outcome (a timed-out write may still land), this
        // aggregator's copy can no longer be trusted.
        if let Some(c) = &self.cache {
            c.forget(&key);
        }
        passed_on(out.map_err(|e| Problem::from_call(&e))?)
    }

    async fn multi_get(
        &self,
        query: &str,
        o: &Origin,
        deadline: Instant,
    ) -> Result<Reply, Problem> {
        let mut raw: Vec<&str> = Vec::new();
        let mut base64_all = false;
        for (k, v) in query.split('&').filter_map(|kv| kv.split_once('=')) {
            match (k, v) {
                ("keys", v) => raw.extend(v.split(',')),
                ("encoding", "base64") => base64_all = true,
                ("encoding", "utf8") => {}
                ("encoding", other) => {
                    return Err(Problem::new(
                        400,
                        "bad_encoding",
                        format!("encoding {other:?}: use utf8 or base64"),
                    ))
                }
                _ => {}
            }
        }
        if raw.is_empty() {
            return Err(Problem::new(400, "no_keys", "give keys as ?keys=a,b,c"));
        }
        // Duplicates would make duplicate JSON members; the first wins.
        let mut seen = std::collections::HashSet::with_capacity(raw.len());
        raw.retain(|k| seen.insert(*k));
        if raw.len() > proto::MAX_MULTI_KEYS {
            return Err(Problem::new(
                400,
                "too_many_keys",
                proto::KeyError::TooMany(raw.len()).to_string(),
            ));
        }
        let decoded = raw
            .iter()
            .map(|k| decode_key(k))
            .collect::<Result<Vec<Bytes>, Problem>>()?;
        // Checked: ASCII from the key alphabet, so `str` without a copy.
        let mut keys: Vec<&str> = decoded
            .iter()
            .map(|k| std::str::from_utf8(k).unwrap_or_default())
            .collect();
        // `a` and `%61` are one key once decoded.
        let mut seen = std::collections::HashSet::with_capacity(keys.len());
        keys.retain(|k| seen.insert(*k));

        let mut values: Vec<Option<Bytes>> = vec![None; keys.len()];
        let mut missing: Vec<usize> = Vec::with_capacity(keys.len());
        for (i, k) in keys.iter().enumerate() {
            match self.cache.as_ref().and_then(|c| c.get(k.as_bytes())) {
                Some(v) => values[i] = Some(v),
                None => missing.push(i),
            }
        }

        let mut calls = JoinSet::new();
        for idx in missing.chunks(self.chunk.max(1)) {
            let idx = idx.to_vec();
            let chunk_keys: Vec<&str> = idx.iter().map(|&i| keys[i]).collect();
            let tickets: Vec<_> = match &self.cache {
                Some(c) => chunk_keys
                    .iter()
                    .map(|k| Some(c.ticket(k.as_bytes())))
                    .collect(),
                None => vec![None; idx.len()],
            };
            let mut r = Request::new(proto::SERVICE, proto::MULTI_GET);
            r.body = proto::encode_keys(&chunk_keys);
            let (backend, o) = (self.backend.clone(), o.clone());
            calls.spawn(async move {
                let n = idx.len();
                let out = match backend.call(r, &o, deadline, true).await {
                    Ok(reply) if reply.status == 200 => proto::decode_values(&reply.body, n)
                        .map_err(|e| Failure::Protocol(e.to_string())),
                    Ok(reply) => Err(Failure::Status(reply.status)),
                    Err(e) => Err(Failure::Call(e)),
                };
                (idx, tickets, out)
            });
        }
        let mut read = 0usize;
        let mut worst: Option<Problem> = None;
        while let Some(joined) = calls.join_next().await {
            let (idx, tickets, out) = match joined {
                Ok(done) => done,
                // Aborted below after another chunk failed.
                Err(e) if e.is_cancelled() => continue,
                Err(_) => {
                    let p = Failure::Status(500).problem();
                    worst = Some(worst.map_or(p.clone(), |w| rank(w, p)));
                    calls.abort_all();
                    continue;
                }
            };
            match out {
                Ok(vals) => {
                    read += idx.len();
                    for ((i, t), v) in idx.into_iter().zip(tickets).zip(vals) {
                        if let (Some(c), Some(t), Some(v)) = (&self.cache, t, &v) {
                            c.fill(t, Bytes::copy_from_slice(keys[i].as_bytes()), v.clone());
                        }
                        values[i] = v;
                    }
                }
                Err(f) => {
                    if let Failure::Protocol(m) = &f {
                        tracing::warn!(error = %m, "backend kv.multi_get reply malformed");
                    }
                    let p = f.problem();
                    worst = Some(match worst {
                        None => p,
                        Some(w) => rank(w, p),
                    });
                    // All-or-nothing: stop waiting for the rest.
                    calls.abort_all();
                }
            }
        }
        if let Some(mut p) = worst {
            p.message = format!(
                "{} of {} keys could not be read ({}); no values are returned",
                missing.len() - read,
                keys.len(),
                p.message
            )
            .into();
            return Err(p);
        }
        Ok(json_body(200, render(&keys, &values, base64_all)))
    }
}

/// A key from the path or the key list, percent-decoded, then checked.
fn decode_key(raw: &str) -> Result<Bytes, Problem> {
    let key: Vec<u8> = percent_encoding::percent_decode_str(raw).collect();
    match proto::check_key(&key) {
        Ok(()) => Ok(Bytes::from(key)),
        Err(e) => Err(Problem::new(
            400,
            "bad_key",
            format!("key {:?}: {e}", String::from_utf8_lossy(&key)),
        )),
    }
}

/// A backend reply on its way to the client: success and 4xx as they
/// are (a 4xx is already a `Problem` body from backend-svc), a failure
/// status through the one table.
fn passed_on(reply: Reply) -> Result<Reply, Problem> {
    if reply.status >= 500 {
        return Err(Problem::upstream(reply.status, ""));
    }
    Ok(reply)
}

enum Failure {
    Call(CallError),
    Status(u16),
    Protocol(String),
}

impl Failure {
    fn problem(&self) -> Problem {
        match self {
            Failure::Call(e) => Problem::from_call(e),
            // The keys were checked here first: a 4xx is a backend fault.
            Failure::Status(s @ (503 | 504)) => Problem::upstream(*s, ""),
            Failure::Status(_) => Problem::upstream(500, ""),
            Failure::Protocol(_) => Problem::from_call(&CallError::Protocol(String::new())),
        }
    }
}

/// Picks the status a multi-get reports when chunks failed differently:
/// a timeout explains the most (the budget is gone), then unavailability.
fn rank(a: Problem, b: Problem) -> Problem {
    let order = |s| match s {
        504 => 3,
        503 => 2,
        _ => 1,
    };
    if order(b.status) > order(a.status) {
        b
    } else {
        a
    }
}

fn render(keys: &[&str], values: &[Option<Bytes>], base64_all: bool) -> String {
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut out = String::with_capacity(
        2 + values
            .iter()
            .map(|v| v.as_ref().map_or(4, |v| v.len() + 8))
            .sum::<usize>(),
    );
    out.push('{');
    for (i, (k, v)) in keys.iter().zip(values).enumerate() {
        if i > 0 {
            out.push(',');
        }
        // Keys are validated to a charset that needs no JSON escaping.
        let _ = write!(out, "\"{k}\":");
        match v {
            None => out.push_str("null"),
            Some(v) if base64_all => {
                let _ = write!(out, "\"{}\"", b64.encode(v));
            }
            Some(v) => match std::str::from_utf8(v) {
                Ok(s) => out.push_str(&serde_json::Value::from(s).to_string()),
                Err(_) => {
                    let _ = write!(out, "{{\"base64\":\"{}\"}}", b64.encode(v));
                }
            },
        }
    }
    out.push('}');
    out
}

fn value_reply(v: Bytes) -> Reply {
    let mut r = Reply::with_body(200, v);
    r.headers.push((
        "content-type".into(),
        Bytes::from_static(b"application/octet-stream"),
    ));
    r
}

fn json_body(status: u16, body: String) -> Reply {
    let mut r = Reply::with_body(status, Bytes::from(body));
    r.headers.push((
        "content-type".into(),
        Bytes::from_static(b"application/json"),
    ));
    r
}

fn method_not_allowed(allow: &'static str, rid: &bus::Text) -> Reply {
    let mut r = Problem::new(405, "method_not_allowed", format!("allowed: {allow}"))
        .into_reply(rid.as_str());
    r.headers
        .push(("allow".into(), Bytes::from_static(allow.as_bytes())));
    r
}

trait IntoText {
    fn try_into_text(self) -> bus::Text;
}

impl IntoText for Bytes {
    /// Keys are validated ASCII before they get here.
    fn try_into_text(self) -> bus::Text {
        bus::Text::try_from_bytes(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_json() {
        let keys = ["a", "b", "c", "d"];
        let vals = [
            Some(Bytes::from_static(b"x\"y")),
            None,
            Some(Bytes::from_static(b"\xff\x00")),
            Some(Bytes::new()),
        ];
        let s = render(&keys, &vals, false);
        let v: serde_json::Value = serde_json::from_str(&s).unwrap();
        assert_eq!(v["a"], "x\"y");
        assert!(v["b"].is_null());
        assert_eq!(v["c"]["base64"], "/wA=");
        assert_eq!(v["d"], "");
        let v: serde_json::Value = serde_json::from_str(&render(&keys, &vals, true)).unwrap();
        assert_eq!(v["a"], "eCJ5");
    }

    #[test]
    fn worst_status_wins() {
        let p = |s| Problem::upstream(s, "");
        assert_eq!(rank(p(502), p(503)).status, 503);
        assert_eq!(rank(p(504), p(503)).status, 504);
        assert_eq!(rank(p(503), p(502)).status, 503);
        assert_eq!(rank(p(502), p(500)).code, "upstream_error");
    }
}
