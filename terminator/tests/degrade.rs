//! Degrading gracefully, through the real terminator binary and real
//! pyzmq services (`support/status_service.py`): the adaptive admission
//! limit refuses at once what it cannot take, and retries stay within
//! their budget when every instance fails.

use std::io::{Read, Write};
use std::net::TcpStream;
mod common;

use common::status_service;
use std::time::{Duration, Instant};
use testkit::{curl, terminator, wait_until, Proc};

fn stats(t: &Proc) -> serde_json::Value {
    let r = curl("GET", &format!("{}/stats", t.addr("admin")), None);
    serde_json::from_slice(&r.body).expect("stats JSON")
}

fn counter(t: &Proc, name: &str) -> u64 {
    stats(t)["counters"][name].as_u64().unwrap_or(0)
}

/// One HTTP/1.1 request on its own connection: (status, when the answer
/// came, the head).
fn raw_get(addr: &str, path: &str) -> (u16, Instant, String) {
    let host = addr.trim_start_matches("http://");
    let mut s = TcpStream::connect(host).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, Instant::now(), text)
}

#[test]
fn over_the_adaptive_limit_requests_are_refused_at_once_not_queued() {
    let svc = status_service();
    let t = terminator(&format!("/svc=status@{};3s", svc.addr("bus")), &[]);
    let base = t.addr("http");
    wait_until(Duration::from_secs(20), "the service is reached", || {
        curl("GET", &format!("{base}/svc/ok"), None).status == 200
    });
    let limit = stats(&t)["gauges"]["admission.status.limit"]
        .as_u64()
        .expect("the limit is on /stats");
    assert_eq!(limit, terminator::admission::DEFAULT_INITIAL_LIMIT as u64);

    // More calls than the limit, each held by the service until its 3 s
    // deadline: the ones over the limit must not wait.
    let n = limit as usize + 44;
    let started = Instant::now();
    let calls: Vec<_> = (0..n)
        .map(|_| {
            let base = base.clone();
            std::thread::spawn(move || raw_get(&base, "/svc/hold"))
        })
        .collect();
    let results: Vec<(u16, Instant, String)> =
        calls.into_iter().map(|c| c.join().unwrap()).collect();
    let refused: Vec<_> = results.iter().filter(|r| r.0 == 503).collect();
    let held = results.iter().filter(|r| r.0 == 504).count();
    assert_eq!(
        (refused.len(), held),
        (44, limit as usize),
        "statuses: {:?}",
        results.iter().map(|r| r.0).collect::<Vec<_>>()
    );
    for (_, at, head) in &refused {
        assert!(
            head.to_ascii_lowercase().contains("retry-after: 1"),
            "{head}"
        );
        assert!(head.contains("\"overloaded\""), "{head}");
        let after = *at - started;
        assert!(
            after < Duration::from_millis(2500),
            "a refusal waited {after:?}"
        );
    }
    assert_eq!(counter(&t, "admission.status.shed"), 44);

    // Turned off, the limit is the hard ceiling.
    let off = terminator(
        &format!("/svc=status@{}", svc.addr("bus")),
        &["--admission", "off", "--max-in-flight", "5000"],
    );
    curl("GET", &format!("{}/svc/ok", off.addr("http")), None);
    assert_eq!(stats(&off)["gauges"]["admission.status.limit"], 5000);
}

#[test]
fn when_every_instance_fails_retries_stay_within_the_budget() {
    let (a, b) = (status_service(), status_service());
    let route = format!("/svc=status@{},{}", a.addr("bus"), b.addr("bus"));
    // No floor: 20% of calls, so the count is exact for sequential calls.
    let t = terminator(&route, &["--retry-budget", "0.2,0,10s"]);
    let base = t.addr("http");
    wait_until(Duration::from_secs(20), "both instances reached", || {
        curl("GET", &format!("{base}/svc/ok"), None).status == 200
            && stats(&t)["gauges"]["bus.status.connected"].as_u64() == Some(2)
    });
    let calls_before = counter(&t, "bus.status.calls");
    let n = 200;
    for _ in 0..n {
        // Both instances answer 503 (at capacity): not started, retryable.
        let r = curl("GET", &format!("{base}/svc/error/503"), None);
        assert_eq!(r.status, 503, "{}", r.text());
    }
    let calls = counter(&t, "bus.status.calls") - calls_before;
    let retries = counter(&t, "bus.status.retries");
    let refused = counter(&t, "bus.status.retry_budget_exhausted");
    assert_eq!(calls, n);
    // Every call asked for one retry (two instances, both refusing):
    // granted or refused, each counted once.
    assert_eq!(retries + refused, n, "retries {retries}, refused {refused}");
    // 20% of the calls in the window (the readiness polls deposit too),
    // to the call.
    let all = counter(&t, "bus.status.calls");
    let allowed = all / 5;
    assert!(
        retries + 1 >= allowed && retries <= allowed,
        "retries {retries}, budget {allowed} (20% of {all} calls)"
    );
}
