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
//! the correlation table at once), and the body says how many keys could not
//! be read. A client never mistakes a failed read for a missing key.
//!
//! Every backend call gets the caller's deadline, so it runs on what is
//! left of the budget the terminator set.

use crate::cache::Cache;
use backend_svc::proto;
use base64::Engine;
use bus::{CallError, Client, Reply, Request};
use bytes::Bytes;
use std::fmt::Write as _;
use std::sync::Arc;
use tokio::task::JoinSet;
use tokio::time::Instant;

pub const DEFAULT_CHUNK: usize = 16;

pub struct Kv {
    pub client: Arc<Client>,
    pub cache: Option<Cache>,
    pub chunk: usize,
}

impl Kv {
    /// `path` is the request path with its query.
    pub async fn handle(&self, req: &Request, path: &str, deadline: Instant) -> Reply {
        let (route, query) = path.split_once('?').unwrap_or((path, ""));
        let method = req.http_method.as_str();
        if route == "/kv" {
            return match method {
                "GET" | "HEAD" => self.multi_get(query, deadline).await,
                _ => method_not_allowed("GET"),
            };
        }
        let key = &route["/kv/".len()..];
        if let Err(e) = proto::check_key(key.as_bytes()) {
            return json_error(400, "bad_key", &e.to_string());
        }
        let key = Bytes::copy_from_slice(key.as_bytes());
        match method {
            "GET" | "HEAD" => self.get(key, deadline).await,
            "PUT" => self.put(key, req.body.clone(), deadline).await,
            "DELETE" => self.delete(key, deadline).await,
            _ => method_not_allowed("GET, PUT, DELETE"),
        }
    }

    async fn get(&self, key: Bytes, deadline: Instant) -> Reply {
        if let Some(v) = self.cache.as_ref().and_then(|c| c.get(&key)) {
            return value_reply(v);
        }
        let ticket = self.cache.as_ref().map(|c| c.ticket(&key));
        let mut r = Request::new(proto::SERVICE, proto::GET);
        r.path = key.clone().try_into_text();
        match self.client.call(r, deadline).await {
            Ok(reply) if reply.status == 200 => {
                if let (Some(c), Some(t)) = (&self.cache, ticket) {
                    c.fill(t, key, reply.body.clone());
                }
                value_reply(reply.body)
            }
            Ok(reply) if reply.status == 404 => json_error(404, "not_found", "no such key"),
            Ok(reply) => reply,
            Err(e) => call_failure(&e),
        }
    }

    async fn put(&self, key: Bytes, value: Bytes, deadline: Instant) -> Reply {
        self.write(proto::PUT, key, value, deadline).await
    }

    async fn delete(&self, key: Bytes, deadline: Instant) -> Reply {
        self.write(proto::DELETE, key, Bytes::new(), deadline).await
    }

    async fn write(
        &self,
        method: &'static str,
        key: Bytes,
        body: Bytes,
        deadline: Instant,
    ) -> Reply {
        let mut r = Request::new(proto::SERVICE, method);
        r.path = key.clone().try_into_text();
        r.body = body;
        let out = self.client.call(r, deadline).await;
        // Whatever the outcome (a timed-out write may still land), this
        // aggregator's copy can no longer be trusted.
        if let Some(c) = &self.cache {
            c.forget(&key);
        }
        match out {
            Ok(reply) => reply,
            Err(e) => call_failure(&e),
        }
    }

    async fn multi_get(&self, query: &str, deadline: Instant) -> Reply {
        let mut keys: Vec<&str> = Vec::new();
        let mut base64_all = false;
        for (k, v) in query.split('&').filter_map(|kv| kv.split_once('=')) {
            match (k, v) {
                ("keys", v) => keys.extend(v.split(',')),
                ("encoding", "base64") => base64_all = true,
                ("encoding", "utf8") => {}
                ("encoding", other) => {
                    return json_error(
                        400,
                        "bad_encoding",
                        &format!("encoding {other:?}: use utf8 or base64"),
                    )
                }
                _ => {}
            }
        }
        if keys.is_empty() {
            return json_error(400, "no_keys", "give keys as ?keys=a,b,c");
        }
        // Duplicates would make duplicate JSON members; the first wins.
        let mut seen = std::collections::HashSet::with_capacity(keys.len());
        keys.retain(|k| seen.insert(*k));
        if keys.len() > proto::MAX_MULTI_KEYS {
            return json_error(
                400,
                "too_many_keys",
                &proto::KeyError::TooMany(keys.len()).to_string(),
            );
        }
        for k in &keys {
            if let Err(e) = proto::check_key(k.as_bytes()) {
                return json_error(400, "bad_key", &format!("{k:?}: {e}"));
            }
        }

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
            let client = self.client.clone();
            calls.spawn(async move {
                let n = idx.len();
                let out = match client.call(r, deadline).await {
                    Ok(reply) if reply.status == 200 => proto::decode_values(&reply.body, n)
                        .map_err(|e| Failure::Protocol(e.to_string())),
                    Ok(reply) => Err(Failure::Status(reply.status)),
                    Err(e) => Err(Failure::Call(e)),
                };
                (idx, tickets, out)
            });
        }
        let mut read = 0usize;
        let mut worst: Option<u16> = None;
        while let Some(joined) = calls.join_next().await {
            let (idx, tickets, out) = match joined {
                Ok(done) => done,
                // Aborted below after another chunk failed.
                Err(e) if e.is_cancelled() => continue,
                Err(_) => {
                    worst = Some(worst.map_or(502, |w| rank(w, 502)));
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
                    let s = f.status();
                    worst = Some(worst.map_or(s, |w| rank(w, s)));
                    // All-or-nothing: stop waiting for the rest.
                    calls.abort_all();
                }
            }
        }
        if let Some(status) = worst {
            let body = serde_json::json!({
                "error": "partial_failure",
                "message": "some keys could not be read; no values are returned",
                "failed_keys": missing.len() - read,
                "keys": keys.len(),
            });
            return json_body(status, body.to_string());
        }
        json_body(200, render(&keys, &values, base64_all))
    }
}

enum Failure {
    Call(CallError),
    Status(u16),
    Protocol(String),
}

impl Failure {
    fn status(&self) -> u16 {
        match self {
            Failure::Call(e) => call_status(e),
            Failure::Status(503) => 503,
            Failure::Status(504) => 504,
            Failure::Status(_) | Failure::Protocol(_) => 502,
        }
    }
}

/// Picks the status a multi-get reports when chunks failed differently:
/// a timeout explains the most (the budget is gone), then unavailability.
fn rank(a: u16, b: u16) -> u16 {
    let order = |s| match s {
        504 => 3,
        503 => 2,
        _ => 1,
    };
    if order(b) > order(a) {
        b
    } else {
        a
    }
}

fn call_status(e: &CallError) -> u16 {
    match e {
        CallError::Timeout => 504,
        CallError::NoInstance(_) | CallError::Overloaded(_) | CallError::Disconnected => 503,
        CallError::Remote { status: 503, .. } => 503,
        CallError::Remote { status: 504, .. } => 504,
        CallError::Remote { .. } | CallError::Protocol(_) => 502,
    }
}

fn call_failure(e: &CallError) -> Reply {
    let status = call_status(e);
    let code = match status {
        504 => "backend_timeout",
        503 => "backend_unavailable",
        _ => "backend_error",
    };
    tracing::debug!(error = %e, "backend call failed");
    json_error(status, code, &e.to_string())
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

pub fn json_error(status: u16, code: &str, message: &str) -> Reply {
    json_body(
        status,
        serde_json::json!({ "error": code, "message": message }).to_string(),
    )
}

fn method_not_allowed(allow: &'static str) -> Reply {
    let mut r = json_error(405, "method_not_allowed", &format!("allowed: {allow}"));
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
        assert_eq!(rank(502, 503), 503);
        assert_eq!(rank(504, 503), 504);
        assert_eq!(rank(503, 502), 503);
    }
}
