//! The README's error table, row by row, through the real terminator
//! binary and a real bus service (pyzmq, `support/status_service.py`),
//! with curl: each cause gets its status and the one JSON shape
//! `{"error", "status", "message", "request_id"}`, with `x-request-id`
//! and, where the request may simply be tried again, `Retry-After`.

mod common;

use common::status_service;
use std::time::Duration;
use testkit::{curl_with, free_endpoint, terminator, wait_until};

struct Row {
    what: &'static str,
    method: &'static str,
    path: String,
    body: Option<Vec<u8>>,
    headers: Vec<String>,
    status: u16,
    code: &'static str,
    retry_after: bool,
    /// Text the message must hold (`Some`), or must not leak (`None` with
    /// `hidden`).
    says: Option<&'static str>,
    hidden: Option<&'static str>,
}

fn row(what: &'static str, path: impl Into<String>, status: u16, code: &'static str) -> Row {
    Row {
        what,
        method: "GET",
        path: path.into(),
        body: None,
        headers: Vec::new(),
        status,
        code,
        retry_after: false,
        says: None,
        hidden: None,
    }
}

impl Row {
    fn retry(mut self) -> Row {
        self.retry_after = true;
        self
    }
    fn says(mut self, s: &'static str) -> Row {
        self.says = Some(s);
        self
    }
    fn hides(mut self, s: &'static str) -> Row {
        self.hidden = Some(s);
        self
    }
}

fn check(base: &str, i: usize, r: &Row) {
    let rid = format!("row-{i}");
    let mut headers = vec![format!("x-request-id: {rid}")];
    headers.extend(r.headers.iter().cloned());
    let headers: Vec<&str> = headers.iter().map(String::as_str).collect();
    let got = curl_with(
        r.method,
        &format!("{base}{}", r.path),
        r.body.as_deref(),
        &headers,
    );
    let ctx = format!(
        "{} ({} {}): {}",
        r.what,
        r.method,
        &r.path[..r.path.len().min(60)],
        got.text()
    );
    assert_eq!(got.status, r.status, "{ctx}");
    assert_eq!(
        got.header("content-type"),
        Some("application/json"),
        "{ctx}"
    );
    assert_eq!(got.header("x-request-id"), Some(rid.as_str()), "{ctx}");
    assert_eq!(got.header("retry-after").is_some(), r.retry_after, "{ctx}");
    let j: serde_json::Value = serde_json::from_slice(&got.body).expect(&ctx);
    let o = j.as_object().expect(&ctx);
    let mut keys: Vec<&str> = o.keys().map(String::as_str).collect();
    keys.sort();
    assert_eq!(keys, ["error", "message", "request_id", "status"], "{ctx}");
    assert_eq!(j["error"], r.code, "{ctx}");
    assert_eq!(j["status"], r.status, "{ctx}");
    assert_eq!(j["request_id"], rid.as_str(), "{ctx}");
    let msg = j["message"].as_str().expect(&ctx);
    assert!(!msg.is_empty(), "{ctx}");
    if let Some(s) = r.says {
        assert!(msg.contains(s), "message should say {s:?}: {ctx}");
    }
    if let Some(s) = r.hidden {
        assert!(!msg.contains(s), "message leaks {s:?}: {ctx}");
    }
}

#[test]
fn every_error_in_the_readme_table_has_its_status_and_the_one_shape() {
    let svc = status_service();
    let crash = status_service();
    let down = free_endpoint();
    let (ep, crash_ep) = (svc.addr("bus"), crash.addr("bus"));
    let routes = [
        format!("/slow=status@{ep};300ms"),
        format!("/crash=status@{crash_ep}"),
        format!("/down=nobody@{down}"),
    ];
    let mut extra = vec!["--max-body", "1000", "--max-header-bytes", "40000"];
    for r in &routes {
        extra.extend(["--route", r]);
    }
    let term = terminator(&format!("/svc=status@{ep}"), &extra);
    let base = term.addr("http");
    wait_until(Duration::from_secs(20), "the service is reached", || {
        curl_with("GET", &format!("{base}/svc/ok"), None, &[]).status == 200
    });

    let long_name = format!("x-{}: 1", "a".repeat(300));
    let big_head: Vec<String> = (0..10)
        .map(|i| format!("x-big-{i}: {}", "v".repeat(5000)))
        .collect();
    let rows = vec![
        // The edge's own causes: the client's request.
        row("no route", "/nowhere", 404, "no_route"),
        Row {
            method: "POST",
            body: Some(vec![b'x'; 2000]),
            ..row("body over --max-body", "/svc/x", 413, "body_too_large").says("1000")
        },
        Row {
            headers: big_head,
            ..row(
                "head over --max-header-bytes",
                "/svc/x",
                431,
                "headers_too_large",
            )
            .says("limit is 40000")
        },
        Row {
            headers: vec![long_name],
            ..row(
                "header name the bus cannot carry",
                "/svc/x",
                431,
                "headers_too_large",
            )
            .says("is 302 bytes; the limit is 255")
        },
        Row {
            method: Box::leak("M".repeat(300).into_boxed_str()),
            ..row(
                "method the bus cannot carry",
                "/svc/x",
                400,
                "malformed_request",
            )
        },
        // Bus failures.
        row("no live instance", "/down/x", 503, "no_instance").retry(),
        row("deadline", "/slow/hold", 504, "deadline_exceeded"),
        row("reply status not HTTP", "/svc/reply/99", 502, "bad_reply"),
        row(
            "informational reply status",
            "/svc/reply/101",
            502,
            "bad_reply",
        ),
        // A service's error frames: its 4xx is its answer to the client;
        // its 5xx and nonsense are its own fault, and its text stays out.
        row("service 404", "/svc/error/404", 404, "not_found").says("service says 404"),
        row("service 418", "/svc/error/418", 418, "im_a_teapot").says("service says 418"),
        row("service 429", "/svc/error/429", 429, "too_many_requests"),
        row("service 500", "/svc/error/500", 502, "upstream_error").hides("service says"),
        row(
            "service 200 as error",
            "/svc/error/200",
            502,
            "upstream_error",
        ),
        row("service 0", "/svc/error/0", 502, "upstream_error"),
        row("service at capacity", "/svc/error/503", 503, "overloaded").retry(),
        row(
            "service expired",
            "/svc/error/504",
            504,
            "deadline_exceeded",
        ),
        // Last: this instance exits without answering.
        row(
            "connection lost",
            "/crash/exit",
            502,
            "upstream_disconnected",
        ),
    ];
    for (i, r) in rows.iter().enumerate() {
        check(&base, i, r);
    }

    // A URI longer than the bus carries is refused by hyper itself over
    // HTTP/1.1 (its limit is 65 534 bytes), before a request exists: 414,
    // without the JSON body (README: responses hyper writes itself).
    let r = curl_with(
        "GET",
        &format!("{base}/svc/{}", "p".repeat(66_000)),
        None,
        &[],
    );
    assert_eq!(r.status, 414);

    // A reply (not an error frame) is the service's answer whatever its
    // status: it passes as it is.
    let r = curl_with("GET", &format!("{base}/svc/reply/500"), None, &[]);
    assert_eq!((r.status, r.text().as_str()), (500, "as you wish"));
}

#[test]
fn over_the_in_flight_limit_is_503_overloaded_with_retry_after() {
    let svc = status_service();
    let route = format!("/svc=status@{};3s", svc.addr("bus"));
    let term = terminator(&route, &["--max-in-flight", "1"]);
    let base = term.addr("http");
    wait_until(Duration::from_secs(20), "the service is reached", || {
        curl_with("GET", &format!("{base}/svc/ok"), None, &[]).status == 200
    });
    // One request held by the service fills the limit. Watched on the
    // admin port, not by polling /svc/ok: a poll would itself hold the one
    // slot and have the held request shed instead.
    let held = {
        let url = format!("{base}/svc/hold");
        std::thread::spawn(move || curl_with("GET", &url, None, &[]).status)
    };
    let stats = format!("{}/stats", term.addr("admin"));
    wait_until(
        Duration::from_secs(10),
        "the held request is in flight",
        || {
            let r = curl_with("GET", &stats, None, &[]);
            let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap_or_default();
            v["gauges"]["in_flight"].as_u64() == Some(1)
        },
    );
    let shed = curl_with("GET", &format!("{base}/svc/ok"), None, &[]);
    assert_eq!(shed.status, 503, "{}", shed.text());
    assert_eq!(shed.header("retry-after"), Some("1"));
    let j: serde_json::Value = serde_json::from_slice(&shed.body).unwrap();
    assert_eq!(
        (j["error"].as_str(), j["status"].as_u64()),
        (Some("overloaded"), Some(503))
    );
    assert_eq!(held.join().unwrap(), 504);
}
