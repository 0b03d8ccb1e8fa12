//! `/echo`: the one-hop path, end to end.
//!
//! - `GET /echo`: a small fixed body.
//! - `POST`/`PUT /echo`: the request body back, with its content type.
//! - `?inspect` anywhere in the query: the request as JSON (method, path,
//!   query, headers), to see exactly what crossed the bus.
//! - `?sleep_ms=N` (at most 10 000): wait first; for deadline and drain tests.

use bus::{Reply, Request};
use bytes::Bytes;
use std::time::Duration;
use tokio::time::Instant;

pub const GET_BODY: &[u8] = b"echo\n";
const MAX_SLEEP_MS: u64 = 10_000;

fn query_params(path: &str) -> impl Iterator<Item = (&str, &str)> {
    path.split_once('?')
        .map(|(_, q)| q)
        .unwrap_or("")
        .split('&')
        .filter(|s| !s.is_empty())
        .map(|kv| kv.split_once('=').unwrap_or((kv, "")))
}

pub async fn echo(req: Request, deadline: Instant) -> Reply {
    let mut inspect = false;
    let mut sleep_ms = 0u64;
    for (k, v) in query_params(&req.path) {
        match k {
            "inspect" => inspect = true,
            "sleep_ms" => sleep_ms = v.parse().unwrap_or(0).min(MAX_SLEEP_MS),
            _ => {}
        }
    }
    if sleep_ms > 0 {
        // Never sleep past the caller's deadline: nobody would read the reply.
        tokio::time::sleep_until(deadline.min(Instant::now() + Duration::from_millis(sleep_ms)))
            .await;
    }
    if inspect {
        let (path, query) = match req.path.split_once('?') {
            Some((p, q)) => (p, q),
            None => (req.path.as_str(), ""),
        };
        let headers: Vec<serde_json::Value> = req
            .headers
            .iter()
            .map(|(n, v)| serde_json::json!([n.as_str(), String::from_utf8_lossy(v)]))
            .collect();
        let body = serde_json::json!({
            "method": req.http_method.as_str(),
            "path": path,
            "query": query,
            "request_id": req.request_id.as_str(),
            "headers": headers,
            "body_len": req.body.len(),
        });
        let mut r = Reply::with_body(200, Bytes::from(body.to_string()));
        r.headers.push((
            "content-type".into(),
            Bytes::from_static(b"application/json"),
        ));
        return r;
    }
    match req.http_method.as_str() {
        "GET" | "HEAD" => {
            let mut r = Reply::with_body(200, Bytes::from_static(GET_BODY));
            r.headers
                .push(("content-type".into(), Bytes::from_static(b"text/plain")));
            r
        }
        "POST" | "PUT" => {
            let mut r = Reply::with_body(200, req.body.clone());
            let ct = req
                .header("content-type")
                .cloned()
                .unwrap_or_else(|| Bytes::from_static(b"application/octet-stream"));
            r.headers.push(("content-type".into(), ct));
            r
        }
        _ => {
            let mut r =
                bus::Problem::new(405, "method_not_allowed", "allowed: GET, HEAD, POST, PUT")
                    .into_reply(req.request_id.as_str());
            r.headers
                .push(("allow".into(), Bytes::from_static(b"GET, HEAD, POST, PUT")));
            r
        }
    }
}
