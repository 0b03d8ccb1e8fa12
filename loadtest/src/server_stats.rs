//! `--server-stats URL`: the server's own view of the same window.
//!
//! The URL answers JSON somewhere in which are base64 strings of HdrHistogram
//! V2 (optionally deflate-compressed) histograms, in microseconds unless a
//! top-level `"unit"` says `"ns"` or `"ms"`. Every such string is decoded
//! and merged; the snapshot taken before the window is subtracted from the
//! one taken after (or, if the server restarted or the shapes differ, the
//! after snapshot is used alone and the report says so). Anything missing
//! or unparseable is a warning, never a failure of the run.

use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use hdrhistogram::serialization::Deserializer;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;

use crate::histo::Percentiles;
use crate::target::Target;

/// Largest stats body read.
const MAX_BODY: usize = 16 << 20;

pub type Snapshot = Result<Histogram<u64>, String>;

/// One server endpoint compared over the window.
pub struct ServerView {
    pub url: String,
    pub result: Result<Percentiles, String>,
    pub count: u64,
    /// The before snapshot was subtracted (else: everything since start).
    pub subtracted: bool,
}

/// Fetches and decodes every URL (never fails: errors are per URL).
pub fn snapshot(urls: &[String], timeout: Duration) -> Vec<Snapshot> {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            return urls
                .iter()
                .map(|_| Err(format!("no runtime: {e}")))
                .collect()
        }
    };
    urls.iter()
        .map(|u| {
            let body = rt
                .block_on(async { tokio::time::timeout(timeout, fetch(u)).await })
                .map_err(|_| "timed out".to_string())??;
            decode(&body)
        })
        .collect()
}

/// [`fetch`]'s error when the server has no such page.
pub const NOT_FOUND: &str = "answered 404 Not Found";

/// GET `url` (HTTP/1.1, no TLS), the body if the status is 2xx.
pub async fn fetch(url: &str) -> Result<Bytes, String> {
    let t = Target::parse(url)?;
    let addr = t.resolve()?;
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("cannot connect: {e}"))?;
    let (mut send, conn) =
        hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(tcp))
            .await
            .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let uri = url.parse::<http::Uri>().map_err(|e| e.to_string())?;
    let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let req = http::Request::get(path)
        .header(http::header::HOST, t.authority.as_str())
        .body(Empty::new())
        .map_err(|e| e.to_string())?;
    let resp = send.send_request(req).await.map_err(|e| e.to_string())?;
    if resp.status() == http::StatusCode::NOT_FOUND {
        return Err(NOT_FOUND.into());
    }
    if !resp.status().is_success() {
        return Err(format!("answered {}", resp.status()));
    }
    Limited::new(resp.into_body(), MAX_BODY)
        .collect()
        .await
        .map(|b| b.to_bytes())
        .map_err(|e| format!("reading the body: {e}"))
}

/// Merges every histogram found in a JSON body, scaled to microseconds.
pub fn decode(body: &[u8]) -> Snapshot {
    let v: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
    let scale = match v.get("unit").and_then(|u| u.as_str()) {
        Some("ns") => 0.001,
        Some("ms") => 1000.0,
        _ => 1.0,
    };
    let mut merged: Histogram<u64> = Histogram::new(3).expect("3 significant digits is valid");
    let mut found = 0;
    let mut de = Deserializer::new();
    let mut stack = vec![&v];
    while let Some(v) = stack.pop() {
        match v {
            serde_json::Value::String(s) if s.len() >= 16 => {
                let Some(raw) = b64(s) else { continue };
                let Ok(h) = de.deserialize::<u64, _>(&mut raw.as_slice()) else {
                    continue;
                };
                found += 1;
                if scale == 1.0 {
                    merged.add(&h).map_err(|e| format!("cannot merge: {e:?}"))?;
                } else {
                    for x in h.iter_recorded() {
                        let us = (x.value_iterated_to() as f64 * scale) as u64;
                        merged.saturating_record_n(us, x.count_at_value());
                    }
                }
            }
            serde_json::Value::Array(a) => stack.extend(a),
            serde_json::Value::Object(o) => stack.extend(o.values()),
            _ => {}
        }
    }
    if found == 0 {
        return Err("no base64 HdrHistogram found in the JSON".into());
    }
    Ok(merged)
}

fn b64(s: &str) -> Option<Vec<u8>> {
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
    [STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD]
        .iter()
        .find_map(|e| e.decode(s.trim()).ok())
}

/// The window's histogram per URL: after minus before where possible.
pub fn compare(urls: &[String], before: Vec<Snapshot>, after: Vec<Snapshot>) -> Vec<ServerView> {
    urls.iter()
        .zip(before)
        .zip(after)
        .map(|((url, b), a)| {
            let (result, count, subtracted) = match a {
                Err(e) => (Err(e), 0, false),
                Ok(a) => {
                    // Subtract into a copy: a failed subtract leaves its
                    // target half done (and may even panic on odd shapes).
                    let diff = b.as_ref().ok().and_then(|b| {
                        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                            let mut d = a.clone();
                            d.subtract(b).ok().map(|_| d)
                        }))
                        .ok()
                        .flatten()
                    });
                    let subtracted = diff.is_some();
                    let h = diff.unwrap_or(a);
                    (Ok(Percentiles::of(&h)), h.len(), subtracted)
                }
            };
            ServerView {
                url: url.clone(),
                result,
                count,
                subtracted,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use hdrhistogram::serialization::{Serializer as _, V2DeflateSerializer};

    fn encoded(values: &[u64]) -> String {
        let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
        for v in values {
            h.record(*v).unwrap();
        }
        let mut buf = Vec::new();
        V2DeflateSerializer::new().serialize(&h, &mut buf).unwrap();
        base64::engine::general_purpose::STANDARD.encode(buf)
    }

    #[test]
    fn decodes_merges_and_subtracts() {
        let before = format!(
            r#"{{"routes": {{"/a": "{}", "/b": "{}"}}, "x": "not base64"}}"#,
            encoded(&[100]),
            encoded(&[200])
        );
        let after = format!(
            r#"{{"routes": {{"/a": "{}", "/b": "{}"}}}}"#,
            encoded(&[100, 1000, 1000]),
            encoded(&[200, 30_000])
        );
        let b = decode(before.as_bytes());
        let a = decode(after.as_bytes());
        assert_eq!(a.as_ref().unwrap().len(), 5);
        let v = compare(&["u".into()], vec![b], vec![a]);
        assert!(v[0].subtracted);
        assert_eq!(v[0].count, 3);
        let p = v[0].result.as_ref().unwrap();
        assert!(
            (p.max - 30.0).abs() < 0.1 && (p.p50 - 1.0).abs() < 0.01,
            "{p:?}"
        );
    }

    #[test]
    fn bad_bodies_are_errors_not_panics() {
        assert!(decode(b"<html>").is_err());
        assert!(decode(b"{\"a\": 1}").is_err());
        let v = compare(
            &["u".into()],
            vec![Err("x".into())],
            vec![Err("down".into())],
        );
        assert_eq!(v[0].result.as_ref().unwrap_err(), "down");
    }
}
