//! Every way a request can fail, and the one function that maps each to an
//! HTTP status. Error bodies are small JSON with the request id; internal
//! error text is logged, never sent.

use bus::CallError;
use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::Full;

/// Why the edge answered instead of a service.
#[derive(Debug, thiserror::Error)]
pub enum EdgeError {
    #[error("no route for the path")]
    NoRoute,
    #[error("request body over the limit")]
    BodyTooLarge,
    #[error("request headers over the limit")]
    HeadersTooLarge,
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
            | EdgeError::BodyTooLarge
            | EdgeError::HeadersTooLarge
            | EdgeError::Malformed(_) => Source::Downstream,
            EdgeError::Shed => Source::Internal,
            EdgeError::Call(_) | EdgeError::BadReply(_) => Source::Upstream,
        }
    }

    /// (status, stable error code for clients, Retry-After seconds)
    pub fn classify(&self) -> (StatusCode, &'static str, Option<u32>) {
        use StatusCode as S;
        match self {
            EdgeError::NoRoute => (S::NOT_FOUND, "no_route", None),
            EdgeError::BodyTooLarge => (S::PAYLOAD_TOO_LARGE, "body_too_large", None),
            EdgeError::HeadersTooLarge => (
                S::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "headers_too_large",
                None,
            ),
            EdgeError::Malformed(_) => (S::BAD_REQUEST, "malformed_request", None),
            EdgeError::Shed => (S::SERVICE_UNAVAILABLE, "overloaded", Some(1)),
            EdgeError::Call(e) => match e {
                CallError::Timeout => (S::GATEWAY_TIMEOUT, "deadline_exceeded", None),
                CallError::NoInstance(_) => (S::SERVICE_UNAVAILABLE, "no_instance", Some(1)),
                CallError::Overloaded(_) => (S::SERVICE_UNAVAILABLE, "overloaded", Some(1)),
                CallError::Disconnected => (S::BAD_GATEWAY, "upstream_disconnected", None),
                CallError::Protocol(_) => (S::BAD_GATEWAY, "bad_reply", None),
                CallError::Remote { .. } => (S::BAD_GATEWAY, "upstream_error", None),
            },
            EdgeError::BadReply(_) => (S::BAD_GATEWAY, "bad_reply", None),
        }
    }
}

/// The one place an error becomes a response.
pub fn rescue(err: &EdgeError, request_id: &HeaderValue) -> Response<Full<Bytes>> {
    let (status, code, retry) = err.classify();
    let rid = request_id.to_str().unwrap_or("");
    let body = serde_json::json!({
        "error": code,
        "status": status.as_u16(),
        "request_id": rid,
    });
    let mut res = Response::new(Full::new(Bytes::from(body.to_string())));
    *res.status_mut() = status;
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert("x-request-id", request_id.clone());
    if let Some(s) = retry {
        h.insert(header::RETRY_AFTER, HeaderValue::from(s));
    }
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_cause_has_its_status() {
        let cases: Vec<(EdgeError, u16)> = vec![
            (EdgeError::NoRoute, 404),
            (EdgeError::BodyTooLarge, 413),
            (EdgeError::HeadersTooLarge, 431),
            (EdgeError::Malformed("x"), 400),
            (EdgeError::Shed, 503),
            (CallError::Timeout.into(), 504),
            (CallError::NoInstance("a".into()).into(), 503),
            (CallError::Overloaded("q").into(), 503),
            (CallError::Disconnected.into(), 502),
            (CallError::Protocol("p".into()).into(), 502),
            (
                CallError::Remote {
                    status: 500,
                    message: "secret".into(),
                }
                .into(),
                502,
            ),
            (EdgeError::BadReply("status"), 502),
        ];
        let rid = HeaderValue::from_static("rid-1");
        for (e, status) in cases {
            let r = rescue(&e, &rid);
            assert_eq!(r.status().as_u16(), status, "{e}");
            assert_eq!(r.headers()["x-request-id"], "rid-1");
        }
    }

    #[test]
    fn shed_has_retry_after_and_no_internal_text() {
        let r = rescue(
            &CallError::Remote {
                status: 500,
                message: "db password wrong".into(),
            }
            .into(),
            &HeaderValue::from_static("r"),
        );
        let body = format!("{:?}", r.body());
        assert!(!body.contains("password"));
        let r = rescue(&EdgeError::Shed, &HeaderValue::from_static("r"));
        assert_eq!(r.headers()["retry-after"], "1");
    }
}
