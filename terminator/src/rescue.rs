//! Every way a request can fail at the edge, and the one function that
//! turns each into a response.
//!
//! The status and code of each cause are decided here for the edge's own
//! causes and in `bus::Problem::from_call` for bus failures (the same table
//! the aggregator uses); the body is `bus::Problem::body`, the one shape
//! every client-visible error has. Internal error text is logged, never
//! sent.

use bus::{CallError, Problem};
use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::Full;

/// Why the edge answered instead of a service.
#[derive(Debug, thiserror::Error)]
pub enum EdgeError {
    #[error("no route for the path")]
    NoRoute,
    #[error("request body over the {0}-byte limit")]
    BodyTooLarge(usize),
    /// The head is over `--max-header-bytes`, or a header cannot travel on
    /// the bus (a name over 255 bytes, a value over 65 535): the reason.
    #[error("{0}")]
    HeadersTooLarge(String),
    /// Path and query over the 65 535 bytes the bus can carry.
    #[error("path and query are {0} bytes; the limit is 65535")]
    UriTooLong(usize),
    #[error("malformed request: {0}")]
    Malformed(&'static str),
    #[error("over the in-flight limit")]
    Shed,
    #[error("bus call failed: {0}")]
    Call(#[from] CallError),
    #[error("bad reply from service: {0}")]
    BadReply(&'static str),
}

/// Where the failure came from (for logs and, later, metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Downstream,
    Upstream,
    Internal,
}

impl EdgeError {
    pub fn source(&self) -> Source {
        match self {
            EdgeError::NoRoute
            | EdgeError::BodyTooLarge(_)
            | EdgeError::HeadersTooLarge(_)
            | EdgeError::UriTooLong(_)
            | EdgeError::Malformed(_) => Source::Downstream,
            EdgeError::Shed => Source::Internal,
            EdgeError::Call(_) | EdgeError::BadReply(_) => Source::Upstream,
        }
    }

    /// What the client is told: the README's error table.
    pub fn problem(&self) -> Problem {
        match self {
            EdgeError::NoRoute => Problem::new(404, "no_route", "no route matches the path"),
            // The client's own request: the reason is theirs to see.
            EdgeError::BodyTooLarge(_) => Problem::new(413, "body_too_large", self.to_string()),
            EdgeError::HeadersTooLarge(why) => Problem::new(431, "headers_too_large", why.clone()),
            EdgeError::UriTooLong(_) => Problem::new(414, "uri_too_long", self.to_string()),
            EdgeError::Malformed(_) => Problem::new(400, "malformed_request", self.to_string()),
            EdgeError::Shed => Problem::new(
                503,
                "overloaded",
                "too many requests in flight; retry later",
            )
            .retry_after(1),
            EdgeError::Call(e) => Problem::from_call(e),
            EdgeError::BadReply(_) => Problem::from_call(&CallError::Protocol(String::new())),
        }
    }
}

/// The one place an error becomes a response.
pub fn rescue(err: &EdgeError, request_id: &HeaderValue) -> Response<Full<Bytes>> {
    respond(&err.problem(), request_id)
}

/// `problem` as an HTTP response with the request id.
pub fn respond(problem: &Problem, request_id: &HeaderValue) -> Response<Full<Bytes>> {
    let rid = request_id.to_str().unwrap_or("");
    let mut res = Response::new(Full::new(problem.body(rid)));
    *res.status_mut() =
        StatusCode::from_u16(problem.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert("x-request-id", request_id.clone());
    if let Some(s) = problem.retry_after {
        h.insert(header::RETRY_AFTER, HeaderValue::from(s));
    }
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_edge_cause_has_its_status() {
        let cases: Vec<(EdgeError, u16, &str)> = vec![
            (EdgeError::NoRoute, 404, "no_route"),
            (EdgeError::BodyTooLarge(10), 413, "body_too_large"),
            (
                EdgeError::HeadersTooLarge("x".into()),
                431,
                "headers_too_large",
            ),
            (EdgeError::UriTooLong(70_000), 414, "uri_too_long"),
            (EdgeError::Malformed("x"), 400, "malformed_request"),
            (EdgeError::Shed, 503, "overloaded"),
            (CallError::Timeout.into(), 504, "deadline_exceeded"),
            (CallError::Disconnected.into(), 502, "upstream_disconnected"),
            (EdgeError::BadReply("status"), 502, "bad_reply"),
        ];
        let rid = HeaderValue::from_static("rid-1");
        for (e, status, code) in cases {
            let r = rescue(&e, &rid);
            assert_eq!(r.status().as_u16(), status, "{e}");
            assert_eq!(r.headers()["x-request-id"], "rid-1");
            assert_eq!(r.headers()["content-type"], "application/json");
            assert_eq!(&*e.problem().code, code);
        }
        let r = rescue(&EdgeError::Shed, &rid);
        assert_eq!(r.headers()["retry-after"], "1");
    }
}
