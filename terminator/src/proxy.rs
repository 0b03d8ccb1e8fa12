//! The request path: HTTP request → bus request → reply → HTTP response.
//!
//! ```text
//! request id ─► route ─► in-flight limit ─► head checks ─► body (limited)
//!   ─► bus::Request ─► Client::call(deadline) ─► reply ─► HTTP response
//!           every failure ─► rescue() (one status per cause)
//! ```
//!
//! Whatever the client sent that the bus cannot carry (a header name over
//! 255 bytes, a value over 65 535, a path over 65 535) is refused here,
//! as the client's fault (431, 414), before anything is encoded.

use crate::metrics::Cause;
use crate::request_id;
use crate::rescue::{rescue, EdgeError, Source};
use crate::routes::{Routes, Target};
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
    /// `--access-log`; None: off, and nothing below is spent on it.
    pub access_log: Option<std::sync::Arc<crate::access_log::AccessLog>>,
    /// `--policy`: weights and pins by version, per service.
    pub policies: std::sync::Arc<traffic::policy::Policies>,
    /// Ghost copies in flight and their verdicts, process-wide.
    pub ghosts: std::sync::Arc<traffic::ghost::Ledger>,
}

/// What the request path learnt for the access log.
#[derive(Default)]
struct Seen {
    bytes_in: u64,
    call: bus::CallTrace,
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

/// `peer`: the client's address, for the access log (None when it is off).
pub async fn handle<B>(
    edge: &Edge,
    req: Request<B>,
    peer: Option<std::net::SocketAddr>,
) -> Result<Response<Full<Bytes>>, Infallible>
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
    let target = edge.routes.find(req.uri().path());
    // Kept for the logs only: cloning shares the buffers, where
    // `path().to_string()` allocated on every request.
    let method = req.method().clone();
    let uri = req.uri().clone();
    let mut seen = Seen::default();
    let mut shed = false;
    let res = match forward(edge, req, &rid, target.as_deref(), started, &mut seen).await {
        Ok(r) => r,
        Err(e) => {
            shed = matches!(e, EdgeError::Shed);
            let rid_s = rid.to_str().unwrap_or("");
            let path = uri.path();
            match e.source() {
                Source::Downstream => {
                    tracing::debug!(request_id = rid_s, %method, %path, error = %e, "rejected")
                }
                _ => tracing::warn!(request_id = rid_s, %method, %path, error = %e, "failed"),
            }
            match e {
                EdgeError::Shed => edge.metrics.failed(Cause::Shed),
                EdgeError::NoRoute => edge.metrics.failed(Cause::NoRoute),
                EdgeError::Call(bus::CallError::NoInstance(_)) => {
                    edge.metrics.failed(Cause::NoInstance)
                }
                _ => {}
            }
            rescue(&e, &rid)
        }
    };
    let took = started.elapsed();
    edge.metrics.observe(
        res.status().as_u16(),
        took,
        target.as_deref().map(|t| &*t.hists),
    );
    if let Some(t) = target.as_deref() {
        edge.metrics
            .versions
            .record(t.service.as_str(), &seen.call, res.status().as_u16(), took);
    }
    if let Some(log) = &edge.access_log {
        log.log(crate::access_log::Record {
            started: started.into_std(),
            request_id: rid,
            client: peer,
            method,
            uri,
            status: res.status().as_u16(),
            bytes_in: seen.bytes_in,
            bytes_out: crate::access_log::body_len(res.body()),
            duration: took,
            service: target.as_ref().map(|t| t.service.clone()),
            instance: seen.call.instance,
            retries: seen.call.retries,
            shed,
        });
    }
    Ok(res)
}

/// Methods a client may send twice with the effect of once (RFC 9110
/// §9.2.2): the bus client may fail them over to another instance even
/// after the first connection dropped with the request on it.
fn idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::PUT | Method::DELETE | Method::OPTIONS
    )
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

/// Longest name and value a bus header carries (`str8`, `str16`).
const MAX_NAME: usize = u8::MAX as usize;
const MAX_VALUE: usize = u16::MAX as usize;

/// The first 40 characters of a header name, for an error message.
fn shown(name: &str) -> String {
    match name.char_indices().nth(40) {
        Some((i, _)) => format!("{}…", &name[..i]),
        None => name.to_string(),
    }
}

/// What in the head the bus cannot carry, or what is over
/// `--max-header-bytes`: the reason, for a 431.
fn check_head(headers: &http::HeaderMap, max_bytes: usize) -> Result<(), EdgeError> {
    let mut total = 0usize;
    for (n, v) in headers {
        let name = n.as_str();
        if name.len() > MAX_NAME {
            return Err(EdgeError::HeadersTooLarge(format!(
                "header name `{}` is {} bytes; the limit is {MAX_NAME}",
                shown(name),
                name.len()
            )));
        }
        if v.len() > MAX_VALUE {
            return Err(EdgeError::HeadersTooLarge(format!(
                "header `{}` has a {}-byte value; the limit is {MAX_VALUE}",
                shown(name),
                v.len()
            )));
        }
        total += name.len() + v.len() + 4;
    }
    if headers.len() > u16::MAX as usize {
        return Err(EdgeError::HeadersTooLarge(format!(
            "{} headers; the limit is {}",
            headers.len(),
            u16::MAX
        )));
    }
    if total > max_bytes {
        return Err(EdgeError::HeadersTooLarge(format!(
            "request head is {total} bytes; the limit is {max_bytes}"
        )));
    }
    Ok(())
}

async fn forward<B>(
    edge: &Edge,
    req: Request<B>,
    rid: &HeaderValue,
    target: Option<&Target>,
    started: Instant,
    seen: &mut Seen,
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

    let target = target.ok_or(EdgeError::NoRoute)?;
    check_head(req.headers(), edge.max_header_bytes)?;
    let path_len = req.uri().path_and_query().map_or(1, |p| p.as_str().len());
    if path_len > u16::MAX as usize {
        return Err(EdgeError::UriTooLong(path_len));
    }
    if req.method().as_str().len() > MAX_NAME {
        return Err(EdgeError::Malformed("method over 255 bytes"));
    }
    if let Some(len) = req.headers().get(header::CONTENT_LENGTH) {
        let len: u64 = len
            .to_str()
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or(EdgeError::Malformed("content-length"))?;
        if len > edge.max_body as u64 {
            return Err(EdgeError::BodyTooLarge(edge.max_body));
        }
    }
    let (parts, body) = req.into_parts();
    // From the request's arrival (read once, in `handle`).
    let deadline = started + target.timeout;
    let body = match Limited::new(body, edge.max_body).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            return Err(EdgeError::BodyTooLarge(edge.max_body))
        }
        Err(_) => return Err(EdgeError::Malformed("body could not be read")),
    };
    seen.bytes_in = body.len() as u64;
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
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
    let permit = target
        .upstream
        .limiter
        .try_acquire()
        .ok_or(EdgeError::Shed)?;
    let policy = edge.policies.get(target.service.as_str());
    let route = match &policy {
        None => bus::Route::default(),
        Some(p) => bus::Route {
            version: p.pinned(&parts.headers),
            weights: p.weights.as_ref(),
        },
    };
    // A ghost copy (sampled, under its cap) leaves now, beside the primary;
    // it learns the primary's outcome below and never touches the reply.
    let ghost = policy
        .as_ref()
        .and_then(|p| p.ghost.as_ref())
        .and_then(|g| {
            edge.ghosts.start(
                g,
                target.service.as_str(),
                route_name(&target.prefix),
                parts.method.as_str(),
            )
        })
        .map(|m| m.launch(&target.client, bus_req.clone(), deadline));
    let reply = target
        .client
        .call_traced(
            bus_req,
            deadline,
            idempotent(&parts.method),
            route,
            &mut seen.call,
        )
        .await;
    // A reply or the deadline measures the service; a failure at once
    // (no instance, a full queue) says nothing of its latency.
    if matches!(
        reply,
        Ok(_) | Err(bus::CallError::Timeout | bus::CallError::Remote { .. })
    ) {
        permit.measured();
    }
    if let Some(g) = ghost {
        g.answered(&reply);
    }
    let mut res = to_response(reply?, rid)?;
    if let Some(v) = seen.call.instance.as_ref().and_then(|i| i.version()) {
        if let Ok(v) = HeaderValue::from_str(&v) {
            res.headers_mut().insert("x-switchboard-version", v);
        }
    }
    Ok(res)
}

/// A route as operators write it: `/kv`, and `/` for the root route.
fn route_name(prefix: &str) -> &str {
    if prefix.is_empty() {
        "/"
    } else {
        prefix
    }
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

/// Reports under `switchboard.terminator.`: the edge's counters and
/// histograms, and the endpoints per service in the table as it stands.
impl telemetry::Source for Edge {
    fn visit(&self, v: &mut dyn telemetry::Visitor) {
        self.metrics
            .visit(v, self.in_flight.load(Ordering::Relaxed));
        self.ghosts.visit(v);
        let table = self.routes.current();
        let mut seen = std::collections::BTreeSet::new();
        for t in table.targets() {
            if seen.insert(t.service.as_str()) {
                v.gauge(
                    &format!("endpoints.{}", telemetry::sanitize(t.service.as_str())),
                    t.client.instances().len() as i64,
                );
            }
        }
    }
}
