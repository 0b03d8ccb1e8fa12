//! The request path: HTTP request → bus request → reply → HTTP response.
//!
//! ```text
//! request id ─► in-flight limit ─► header size ─► route ─► body (limited)
//!   ─► bus::Request ─► Client::call(deadline) ─► reply ─► HTTP response
//!           every failure ─► rescue() (one status per cause)
//! ```

use crate::request_id;
use crate::rescue::{rescue, EdgeError, Source};
use crate::routes::Routes;
use bytes::Bytes;
use http::{header, HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::time::Instant;

pub struct Edge {
    pub routes: std::sync::Arc<Routes>,
    pub metrics: std::sync::Arc<crate::metrics::EdgeMetrics>,
    pub max_body: usize,
    pub max_header_bytes: usize,
    pub max_in_flight: usize,
    /// Shared by every shard of the process.
    pub in_flight: std::sync::Arc<AtomicUsize>,
}

/// Hop-by-hop headers (RFC 9110 §7.6.1) never cross the bus.
fn hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "proxy-connection"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
    )
}

struct InFlight<'a>(&'a AtomicUsize);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

pub async fn handle<B>(edge: &Edge, req: Request<B>) -> Result<Response<Full<Bytes>>, Infallible>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let rid = req
        .headers()
        .get("x-request-id")
        .filter(|v| request_id::accept(v))
        .cloned()
        .unwrap_or_else(request_id::generate);
    let started = Instant::now();
    let mut matched = None;
    // Kept for the error log only: cloning shares the buffers, where
    // `path().to_string()` allocated on every request.
    let method = req.method().clone();
    let uri = req.uri().clone();
    let res = match forward(edge, req, &rid, &mut matched).await {
        Ok(r) => r,
        Err(e) => {
            let rid_s = rid.to_str().unwrap_or("");
            let path = uri.path();
            match e.source() {
                Source::Downstream => {
                    tracing::debug!(request_id = rid_s, %method, %path, error = %e, "rejected")
                }
                _ => tracing::warn!(request_id = rid_s, %method, %path, error = %e, "failed"),
            }
            edge.metrics.failed(&e);
            rescue(&e, &rid)
        }
    };
    edge.metrics
        .observe(res.status().as_u16(), started.elapsed(), matched.as_deref());
    Ok(res)
}

/// A header name as bus text; the common ones without an allocation.
fn header_text(n: &HeaderName) -> bus::Text {
    const COMMON: [&str; 12] = [
        "host",
        "user-agent",
        "accept",
        "accept-encoding",
        "accept-language",
        "content-type",
        "content-length",
        "cookie",
        "authorization",
        "cache-control",
        "origin",
        "referer",
    ];
    match COMMON.iter().find(|c| **c == n.as_str()) {
        Some(c) => bus::Text::from_static(c),
        None => bus::Text::from(n.as_str().to_string()),
    }
}

fn method_text(m: &Method) -> bus::Text {
    match *m {
        Method::GET => "GET".into(),
        Method::POST => "POST".into(),
        Method::PUT => "PUT".into(),
        Method::DELETE => "DELETE".into(),
        Method::HEAD => "HEAD".into(),
        Method::PATCH => "PATCH".into(),
        Method::OPTIONS => "OPTIONS".into(),
        _ => bus::Text::from(m.as_str().to_string()),
    }
}

async fn forward<B>(
    edge: &Edge,
    req: Request<B>,
    rid: &HeaderValue,
    matched: &mut Option<std::sync::Arc<crate::routes::Target>>,
) -> Result<Response<Full<Bytes>>, EdgeError>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    if edge.in_flight.fetch_add(1, Ordering::Relaxed) >= edge.max_in_flight {
        edge.in_flight.fetch_sub(1, Ordering::Relaxed);
        return Err(EdgeError::Shed);
    }
    let _in_flight = InFlight(&edge.in_flight);

    let head_bytes: usize = req
        .headers()
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len() + 4)
        .sum();
    if head_bytes > edge.max_header_bytes {
        return Err(EdgeError::HeadersTooLarge);
    }
    let target = edge
        .routes
        .find(req.uri().path())
        .ok_or(EdgeError::NoRoute)?;
    *matched = Some(target.clone());
    if let Some(len) = req.headers().get(header::CONTENT_LENGTH) {
        let len: u64 = len
            .to_str()
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or(EdgeError::Malformed("content-length"))?;
        if len > edge.max_body as u64 {
            return Err(EdgeError::BodyTooLarge);
        }
    }
    let (parts, body) = req.into_parts();
    let deadline = Instant::now() + target.timeout;
    let body = match Limited::new(body, edge.max_body).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            return Err(EdgeError::BodyTooLarge)
        }
        Err(_) => return Err(EdgeError::Malformed("body could not be read")),
    };
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    if path.len() > u16::MAX as usize {
        return Err(EdgeError::HeadersTooLarge);
    }
    let mut headers = Vec::with_capacity(parts.headers.len());
    for (n, v) in &parts.headers {
        if hop_by_hop(n) || n == "x-request-id" {
            continue;
        }
        headers.push((header_text(n), Bytes::copy_from_slice(v.as_bytes())));
    }
    let bus_req = bus::Request {
        service: target.service.clone(),
        method: "http".into(),
        http_method: method_text(&parts.method),
        path: bus::Text::from(path.to_string()),
        request_id: bus::Text::from(rid.to_str().unwrap_or("").to_string()),
        headers,
        body,
        ..bus::Request::default()
    };
    let reply = target.client.call(bus_req, deadline).await?;
    to_response(reply, rid)
}

fn to_response(reply: bus::Reply, rid: &HeaderValue) -> Result<Response<Full<Bytes>>, EdgeError> {
    let status = StatusCode::from_u16(reply.status)
        .ok()
        .filter(|s| !s.is_informational())
        .ok_or(EdgeError::BadReply("status"))?;
    let mut res = Response::new(Full::new(reply.body));
    *res.status_mut() = status;
    let h = res.headers_mut();
    h.reserve(reply.headers.len() + 1);
    for (n, v) in reply.headers {
        let name =
            HeaderName::from_bytes(n.as_bytes()).map_err(|_| EdgeError::BadReply("header name"))?;
        if hop_by_hop(&name) || name == header::CONTENT_LENGTH {
            continue;
        }
        let value =
            HeaderValue::from_maybe_shared(v).map_err(|_| EdgeError::BadReply("header value"))?;
        h.append(name, value);
    }
    h.insert("x-request-id", rid.clone());
    Ok(res)
}
