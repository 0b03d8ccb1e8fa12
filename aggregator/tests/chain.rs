//! The full chain with real processes: curl → terminator → aggregator →
//! backend-svc → fjall, everything on port 0.

use std::time::{Duration, Instant};
use testkit::{curl, wait_until, Proc};

struct Backend {
    proc: Proc,
    dir: tempfile::TempDir,
}

impl Backend {
    fn start() -> Backend {
        let dir = tempfile::tempdir().unwrap();
        let proc = start_backend(dir.path(), "tcp://127.0.0.1:0", "tcp://127.0.0.1:0");
        Backend { proc, dir }
    }

    /// Same data, same endpoints: what a supervisor's restart looks like.
    fn restart(&mut self) {
        let (bus, events) = (self.proc.addr("bus"), self.proc.addr("events"));
        self.proc.kill9();
        self.proc = start_backend(self.dir.path(), &bus, &events);
    }

    fn stats(&self) -> serde_json::Value {
        let r = curl("GET", &format!("{}/stats", self.proc.addr("admin")), None);
        serde_json::from_slice(&r.body).unwrap()
    }
}

fn start_backend(dir: &std::path::Path, bus: &str, events: &str) -> Proc {
    testkit::backend_svc(dir, bus, events, &[])
}

fn start_aggregator(b: &Backend, extra: &[&str]) -> Proc {
    let (bus, events) = (b.proc.addr("bus"), b.proc.addr("events"));
    let mut args = vec![
        "--bus",
        "tcp://127.0.0.1:0",
        "--admin",
        "127.0.0.1:0",
        "--backend",
        &bus,
        "--backend-events",
        &events,
    ];
    args.extend_from_slice(extra);
    let a = Proc::start("aggregator", &args);
    wait_ready(&a);
    a
}

fn start_terminator(agg: &Proc) -> Proc {
    let route = format!("/=aggregator@{};2s", agg.addr("bus"));
    let t = testkit::terminator(&route, &[]);
    wait_ready(&t);
    t
}

/// Polls `/readyz` on a process's admin port until 200.
fn wait_ready(p: &Proc) {
    let url = format!("{}/readyz", p.addr("admin"));
    wait_until(Duration::from_secs(10), "ready", || {
        curl("GET", &url, None).status == 200
    });
}

struct Stack {
    backend: Backend,
    _agg: Proc,
    term: Proc,
}

impl Stack {
    fn start() -> Stack {
        let backend = Backend::start();
        let agg = start_aggregator(&backend, &[]);
        let term = start_terminator(&agg);
        let s = Stack {
            backend,
            _agg: agg,
            term,
        };
        let url = s.url("/kv/ready-probe");
        wait_until(Duration::from_secs(10), "chain answers", || {
            curl("GET", &url, None).status == 404
        });
        s
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.term.addr("http"))
    }
}

#[test]
fn put_get_delete_multi_get_and_bad_keys() {
    let s = Stack::start();
    let v: Vec<u8> = (0..=255u8).cycle().take(70_000).collect();
    assert_eq!(curl("PUT", &s.url("/kv/bin:1"), Some(&v)).status, 204);
    let r = curl("GET", &s.url("/kv/bin:1"), None);
    assert_eq!((r.status, r.body.len()), (200, v.len()));
    assert!(r.body == v, "value differs");

    // Overwrite, then delete; a missing key is 404 with a JSON body.
    assert_eq!(curl("PUT", &s.url("/kv/bin:1"), Some(b"two")).status, 204);
    assert_eq!(curl("GET", &s.url("/kv/bin:1"), None).text(), "two");
    assert_eq!(curl("DELETE", &s.url("/kv/bin:1"), None).status, 204);
    let r = curl("GET", &s.url("/kv/bin:1"), None);
    assert_eq!(r.status, 404);
    assert!(r.text().contains("not_found"), "{}", r.text());
    assert_eq!(curl("DELETE", &s.url("/kv/never"), None).status, 204);

    // 50 keys: 40 present, 10 missing (null), in one request.
    for i in 0..40 {
        let st = curl(
            "PUT",
            &s.url(&format!("/kv/m{i}")),
            Some(format!("value {i}").as_bytes()),
        )
        .status;
        assert_eq!(st, 204);
    }
    let keys: Vec<String> = (0..50).map(|i| format!("m{i}")).collect();
    let r = curl("GET", &s.url(&format!("/kv?keys={}", keys.join(","))), None);
    assert_eq!(r.status, 200, "{}", r.text());
    let j: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    let obj = j.as_object().unwrap();
    assert_eq!(obj.len(), 50);
    for i in 0..40 {
        assert_eq!(obj[&format!("m{i}")], format!("value {i}"));
    }
    for i in 40..50 {
        assert!(obj[&format!("m{i}")].is_null());
    }

    // Invalid keys: 400 before any backend work, with the reason, in the
    // one error shape. Keys are percent-decoded: the space is named, not
    // the `%` that carried it.
    for bad in ["/kv/a%20b", "/kv/a\"b", &format!("/kv/{}", "k".repeat(251))] {
        let r = curl("GET", &s.url(bad), None);
        assert_eq!(r.status, 400, "{bad}: {}", r.text());
        let j: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(
            (j["error"].as_str(), j["status"].as_u64()),
            (Some("bad_key"), Some(400))
        );
        assert!(
            j["request_id"].as_str().is_some_and(|s| !s.is_empty()),
            "{j}"
        );
    }
    let r = curl("GET", &s.url("/kv/bad%20key"), None);
    let j: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    let msg = j["message"].as_str().unwrap();
    assert!(
        msg.starts_with("key \"bad key\"") && msg.contains("a space (byte 0x20)"),
        "{msg}"
    );
    // `%6B` is `k`: the same key either way.
    assert_eq!(
        curl("PUT", &s.url("/kv/%6Bey"), Some(b"decoded")).status,
        204
    );
    assert_eq!(curl("GET", &s.url("/kv/key"), None).text(), "decoded");
    let r = curl("GET", &s.url("/kv?keys=key,%6Bey"), None);
    assert_eq!(r.text(), r#"{"key":"decoded"}"#);
    assert_eq!(curl("PUT", &s.url("/kv/a,b"), Some(b"x")).status, 400);
    assert_eq!(curl("GET", &s.url("/kv?keys=ok,b%2Fad"), None).status, 400);
    assert_eq!(curl("GET", &s.url("/kv"), None).status, 400);
    assert_eq!(curl("POST", &s.url("/kv/x"), Some(b"x")).status, 405);
}

#[test]
fn acknowledged_writes_survive_kill_9() {
    let mut s = Stack::start();
    for i in 0..100 {
        let st = curl(
            "PUT",
            &s.url(&format!("/kv/durable{i}")),
            Some(format!("v{i}").as_bytes()),
        )
        .status;
        assert_eq!(st, 204);
    }
    // Killed right after the last acknowledgement: no clean shutdown.
    s.backend.restart();
    let url = s.url("/kv/durable99");
    wait_until(Duration::from_secs(10), "backend back", || {
        curl("GET", &url, None).status == 200
    });
    for i in 0..100 {
        let r = curl("GET", &s.url(&format!("/kv/durable{i}")), None);
        assert_eq!((r.status, r.text()), (200, format!("v{i}")));
    }
}

#[test]
fn backend_down_is_503_at_once_and_recovers_without_restarts() {
    let mut s = Stack::start();
    assert_eq!(curl("PUT", &s.url("/kv/k"), Some(b"v")).status, 204);
    let (bus, events) = (s.backend.proc.addr("bus"), s.backend.proc.addr("events"));
    s.backend.proc.kill9();
    let url = s.url("/kv/k");
    // The DEALER notices the dead peer within a few heartbeats at most.
    wait_until(Duration::from_secs(10), "503 while down", || {
        curl("GET", &url, None).status == 503
    });
    let t = Instant::now();
    let r = curl("GET", &url, None);
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(
        t.elapsed() < Duration::from_millis(500),
        "503 took {:?}",
        t.elapsed()
    );

    s.backend.proc = start_backend(s.backend.dir.path(), &bus, &events);
    wait_until(Duration::from_secs(10), "traffic recovers", || {
        curl("GET", &url, None).status == 200
    });
    assert_eq!(curl("GET", &url, None).text(), "v");
}

#[test]
fn an_expired_request_does_no_work_and_gets_no_reply() {
    let b = Backend::start();
    let before = b.stats();
    // A raw DEALER, so the 1 µs budget reaches the backend as sent (the bus
    // client would refuse to send a request that is already late).
    let mut dealer = testkit::zmtp::RawPeer::connect(&b.proc.addr("bus"), "DEALER");
    let mut req = bus::Request::new("backend", "kv.put");
    req.path = "expired".into();
    req.correlation_id = 7;
    req.budget_us = 1;
    let header = bus::wire::encode_request(&req).unwrap();
    dealer.send(&[&header, b"must not be written"]);
    let count = |v: &serde_json::Value| {
        v["service"]["expired_on_arrival"].as_u64().unwrap()
            + v["service"]["expired_in_handler"].as_u64().unwrap()
            + v["store"]["expired_writes"].as_u64().unwrap()
    };
    wait_until(Duration::from_secs(5), "expired request counted", || {
        count(&b.stats()) > count(&before)
    });
    // No reply: the caller has given up already, and it sees its own 504.
    assert!(
        dealer.recv(Duration::from_millis(300)).is_none(),
        "a reply was sent"
    );
    let s = b.stats();
    assert_eq!(
        s["store"]["writes"], 0,
        "the expired write was applied: {s}"
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let client =
            bus::Client::connect(bus::ClientOptions::new("backend").endpoint(b.proc.addr("bus")))
                .unwrap();
        assert!(client.wait_connected(Duration::from_secs(10)).await);
        let mut get = bus::Request::new("backend", "kv.get");
        get.path = "expired".into();
        let r = client
            .call(get, tokio::time::Instant::now() + Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(r.status, 404, "the expired write is visible");
    });
}

#[test]
fn the_timeout_maps_to_504_through_the_edge() {
    // The terminator's route budget (1 ms) runs out on the way: the client
    // sees 504, never a hang or a 200 for a write it cannot confirm.
    let b = Backend::start();
    let agg = start_aggregator(&b, &[]);
    let route = format!("/=aggregator@{};1ms", agg.addr("bus"));
    let term = testkit::terminator(&route, &[]);
    wait_ready(&term);
    let url = format!("{}/kv/slow?x", term.addr("http"));
    let mut saw_504 = false;
    for _ in 0..20 {
        let r = curl("PUT", &url, Some(&vec![b'x'; 512 * 1024]));
        assert!(
            r.status == 504 || r.status == 204,
            "{}: {}",
            r.status,
            r.text()
        );
        saw_504 |= r.status == 504;
    }
    assert!(saw_504);
}

#[test]
fn concurrent_writers_to_one_key_leave_one_whole_value() {
    let s = Stack::start();
    let url = s.url("/kv/contended");
    let writers: Vec<_> = (0..8u8)
        .map(|w| {
            let url = url.clone();
            std::thread::spawn(move || {
                for n in 0..10u8 {
                    // Each value is one byte repeated: a mix would show.
                    let v = vec![b'a' + w * 10 % 26 + n % 10; 32 * 1024 + w as usize];
                    assert_eq!(curl("PUT", &url, Some(&v)).status, 204);
                }
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
    let r = curl("GET", &url, None);
    assert_eq!(r.status, 200);
    let first = r.body[0];
    assert!(r.body.iter().all(|&b| b == first), "mixed value");
    let w = r.body.len() - 32 * 1024;
    assert!(w < 8, "length {} was never written", r.body.len());
}

#[test]
fn a_partial_multi_get_failure_fails_the_whole_request() {
    // One good backend and one whose kv.multi_get always fails: chunks land
    // on both, and the policy says no partial answer.
    let b = Backend::start();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let broken = rt.block_on(async {
        bus::Service::bind(
            bus::ServiceOptions::new("backend", "tcp://127.0.0.1:0"),
            |_req, _d| async {
                bus::Reply::with_body(500, bytes::Bytes::from_static(b"{\"error\":\"broken\"}"))
            },
        )
        .unwrap()
    });
    let both = format!("{},{}", b.proc.addr("bus"), broken.endpoint());
    let agg = start_aggregator(&b, &["--backend", &both, "--multi-chunk", "2"]);
    let term = start_terminator(&agg);
    let keys: Vec<String> = (0..40).map(|i| format!("p{i}")).collect();
    let url = format!("{}/kv?keys={}", term.addr("http"), keys.join(","));
    let r = curl("GET", &url, None);
    assert_eq!(r.status, 502, "{}", r.text());
    let j: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    // The one error shape; the broken backend's 500 and its text stay
    // behind the 502, and the message says how much failed.
    assert_eq!(j["error"], "upstream_error");
    assert_eq!(j["status"], 502);
    assert!(
        j["request_id"].as_str().is_some_and(|s| !s.is_empty()),
        "{j}"
    );
    let msg = j["message"].as_str().unwrap();
    let failed: u64 = msg.split(' ').next().unwrap().parse().unwrap();
    assert!(
        failed >= 2 && msg.contains(" of 40 keys could not be read"),
        "{msg}"
    );
    assert!(!msg.contains("broken"), "{msg}");
    drop(broken);
}

#[test]
fn the_cache_is_invalidated_across_aggregators_by_events() {
    let b = Backend::start();
    let agg_a = start_aggregator(&b, &["--cache"]);
    let agg_b = start_aggregator(&b, &["--cache"]);
    let (term_a, term_b) = (start_terminator(&agg_a), start_terminator(&agg_b));
    for agg in [&agg_a, &agg_b] {
        let url = format!("{}/readyz", agg.addr("admin"));
        wait_until(Duration::from_secs(10), "event stream live", || {
            curl("GET", &url, None)
                .text()
                .contains("\"cache_events_live\":true")
        });
    }
    let stats_b = format!("{}/stats", agg_b.addr("admin"));
    let hits = || -> u64 {
        let j: serde_json::Value =
            serde_json::from_slice(&curl("GET", &stats_b, None).body).unwrap();
        j["cache"]["hits"].as_u64().unwrap()
    };
    for round in 0..10 {
        let key = format!("{}/kv/cached{}", term_a.addr("http"), round % 3);
        let key_b = key.replace(&term_a.addr("http"), &term_b.addr("http"));
        let old = format!("old {round}");
        let new = format!("new {round}");
        assert_eq!(curl("PUT", &key, Some(old.as_bytes())).status, 204);
        // Read twice through B: the second read is served from B's cache.
        let wait_b = Instant::now() + Duration::from_secs(5);
        loop {
            // B may still hold the previous round's value until the event
            // lands; that is the asynchronous window, bounded here.
            if curl("GET", &key_b, None).text() == old {
                break;
            }
            assert!(Instant::now() < wait_b, "B never saw {old}");
        }
        let h = hits();
        assert_eq!(curl("GET", &key_b, None).text(), old);
        assert_eq!(hits(), h + 1, "second read was not a cache hit");
        // Write through A; B must not serve the cached old value.
        assert_eq!(curl("PUT", &key, Some(new.as_bytes())).status, 204);
        assert_eq!(
            curl("GET", &key_b, None).text(),
            new,
            "round {round}: stale read through B"
        );
    }
}
