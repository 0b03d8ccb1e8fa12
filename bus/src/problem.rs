//! The one shape of every error an HTTP client can see, and the one table
//! that says which status each bus failure becomes.
//!
//! ```json
//! {"error": "deadline_exceeded", "status": 504,
//!  "message": "no reply within the deadline", "request_id": "abc"}
//! ```
//!
//! - `error`: a stable code, snake_case, for programs to branch on.
//! - `status`: the HTTP status, repeated so a logged body stands alone.
//! - `message`: one sentence for people. It never holds internal text
//!   (a service's 5xx message, a store error): those go to logs.
//! - `request_id`: the `x-request-id` of the request.
//!
//! The terminator renders its own failures with [`Problem::body`]; services
//! written with this crate answer application errors with
//! [`Problem::into_reply`], so a client sees one shape whichever layer
//! answered. The table (`docs/protocol.md` §7, README "HTTP errors"):
//!
//! | bus outcome | HTTP | `error` |
//! |---|---|---|
//! | [`CallError::Timeout`], error frame 504 | 504 | `deadline_exceeded` |
//! | [`CallError::NoInstance`] | 503 + `Retry-After: 1` | `no_instance` |
//! | [`CallError::Overloaded`], error frame 503 | 503 + `Retry-After: 1` | `overloaded` |
//! | [`CallError::Disconnected`] | 502 | `upstream_disconnected` |
//! | [`CallError::Protocol`] (a reply that does not decode) | 502 | `bad_reply` |
//! | error frame 400–499 | the same status | its reason (`not_found`, `too_many_requests`, …), the service's message |
//! | error frame 500–599 or outside 400–599 | 502 | `upstream_error` |

use crate::{CallError, Reply};
use bytes::Bytes;
use std::borrow::Cow;

/// An error as a client sees it: status, code, message, `Retry-After`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub status: u16,
    pub code: Cow<'static, str>,
    pub message: Cow<'static, str>,
    /// Seconds, sent as `Retry-After`: the request was not started and may
    /// succeed a little later.
    pub retry_after: Option<u32>,
}

impl Problem {
    pub fn new(status: u16, code: &'static str, message: impl Into<Cow<'static, str>>) -> Problem {
        Problem {
            status,
            code: Cow::Borrowed(code),
            message: message.into(),
            retry_after: None,
        }
    }

    pub fn retry_after(mut self, seconds: u32) -> Problem {
        self.retry_after = Some(seconds);
        self
    }

    /// The status and code for a call that produced no reply: the table
    /// in the module docs. Every layer that turns a bus failure into HTTP
    /// (the terminator, the aggregator's backend calls) calls this.
    pub fn from_call(e: &CallError) -> Problem {
        match e {
            CallError::Timeout => {
                Problem::new(504, "deadline_exceeded", "no reply within the deadline")
            }
            CallError::NoInstance(service) => Problem::new(
                503,
                "no_instance",
                format!("no live instance of service `{service}`"),
            )
            .retry_after(1),
            CallError::Overloaded(_) => {
                Problem::new(503, "overloaded", "the service is at capacity; retry later")
                    .retry_after(1)
            }
            CallError::Disconnected => Problem::new(
                502,
                "upstream_disconnected",
                "the service's connection closed before it replied",
            ),
            CallError::Protocol(_) => {
                Problem::new(502, "bad_reply", "the service's reply could not be read")
            }
            CallError::Remote { status, message } => Problem::upstream(*status, message),
        }
    }

    /// An upstream's own failure status (an error frame, or a 5xx reply a
    /// service passes on from the service it called): a 4xx is the
    /// upstream's answer to the client's request and passes with its
    /// message; 503 and 504 keep their meaning; anything else is the
    /// upstream's fault, and its text stays out of the response.
    pub fn upstream(status: u16, message: &str) -> Problem {
        match status {
            400..=499 => Problem {
                status,
                code: Cow::Owned(reason_code(status)),
                message: Cow::Owned(message.to_string()),
                retry_after: None,
            },
            503 => Problem::from_call(&CallError::Overloaded("")),
            504 => Problem::from_call(&CallError::Timeout),
            _ => Problem::new(
                502,
                "upstream_error",
                "the service failed to handle the request",
            ),
        }
    }

    /// The JSON body: the one place the shape is written.
    pub fn body(&self, request_id: &str) -> Bytes {
        let v = serde_json::json!({
            "error": self.code,
            "status": self.status,
            "message": self.message,
            "request_id": request_id,
        });
        Bytes::from(v.to_string())
    }

    /// A bus reply carrying this problem (for services): the status, the
    /// JSON body, `content-type` and `retry-after`.
    pub fn into_reply(self, request_id: &str) -> Reply {
        let mut r = Reply::with_body(self.status, self.body(request_id));
        r.headers.push((
            "content-type".into(),
            Bytes::from_static(b"application/json"),
        ));
        if let Some(s) = self.retry_after {
            r.headers
                .push(("retry-after".into(), Bytes::from(s.to_string())));
        }
        r
    }
}

/// `404` → `not_found`, `429` → `too_many_requests`: the status's reason
/// phrase in snake_case; `client_error` for a 4xx without one.
fn reason_code(status: u16) -> String {
    let reason = http_reason(status);
    if reason.is_empty() {
        return "client_error".into();
    }
    let mut out = String::with_capacity(reason.len());
    for c in reason.chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c.to_ascii_lowercase());
        } else if (c == ' ' || c == '-') && !out.ends_with('_') {
            out.push('_');
        }
    }
    out
}

/// Reason phrases of the registered 4xx statuses (RFC 9110 and friends).
fn http_reason(status: u16) -> &'static str {
    match status {
        400 => "Bad Request",
        401 => "Unauthorized",
        402 => "Payment Required",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        406 => "Not Acceptable",
        407 => "Proxy Authentication Required",
        408 => "Request Timeout",
        409 => "Conflict",
        410 => "Gone",
        411 => "Length Required",
        412 => "Precondition Failed",
        413 => "Content Too Large",
        414 => "URI Too Long",
        415 => "Unsupported Media Type",
        416 => "Range Not Satisfiable",
        417 => "Expectation Failed",
        418 => "I'm a teapot",
        421 => "Misdirected Request",
        422 => "Unprocessable Content",
        423 => "Locked",
        424 => "Failed Dependency",
        425 => "Too Early",
        426 => "Upgrade Required",
        428 => "Precondition Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        451 => "Unavailable For Legal Reasons",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_call_failure_has_its_status_and_code() {
        let cases = [
            (CallError::Timeout, 504, "deadline_exceeded", None),
            (
                CallError::NoInstance("a".into()),
                503,
                "no_instance",
                Some(1),
            ),
            (CallError::Overloaded("q"), 503, "overloaded", Some(1)),
            (CallError::Disconnected, 502, "upstream_disconnected", None),
            (CallError::Protocol("p".into()), 502, "bad_reply", None),
        ];
        for (e, status, code, retry) in cases {
            let p = Problem::from_call(&e);
            assert_eq!(
                (p.status, &*p.code, p.retry_after),
                (status, code, retry),
                "{e}"
            );
        }
    }

    #[test]
    fn service_4xx_passes_5xx_and_nonsense_become_502_without_their_text() {
        let remote = |status| CallError::Remote {
            status,
            message: "db password wrong".into(),
        };
        for (status, want, code) in [
            (404, 404, "not_found"),
            (418, 418, "im_a_teapot"),
            (429, 429, "too_many_requests"),
            (499, 499, "client_error"),
            (500, 502, "upstream_error"),
            (599, 502, "upstream_error"),
            (200, 502, "upstream_error"),
            (0, 502, "upstream_error"),
            (503, 503, "overloaded"),
            (504, 504, "deadline_exceeded"),
        ] {
            let p = Problem::from_call(&remote(status));
            assert_eq!((p.status, &*p.code), (want, code), "{status}");
            let body = String::from_utf8(p.body("r").to_vec()).unwrap();
            assert_eq!(
                body.contains("password"),
                (400..500).contains(&status),
                "{status}: {body}"
            );
        }
    }

    #[test]
    fn one_shape() {
        let p = Problem::new(400, "bad_key", "key holds a \"quote\"");
        let v: serde_json::Value = serde_json::from_slice(&p.body("rid-1")).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"error": "bad_key", "status": 400,
                "message": "key holds a \"quote\"", "request_id": "rid-1"})
        );
        let r = Problem::from_call(&CallError::Overloaded("x")).into_reply("r");
        assert_eq!(r.status, 503);
        assert!(r
            .headers
            .iter()
            .any(|(n, v)| n.as_str() == "retry-after" && &v[..] == b"1"));
    }
}
