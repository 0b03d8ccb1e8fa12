//! Ghost mode with real processes: a real etcd, two versions of the
//! aggregator (v1 reads backend A, v2 reads backend B), and the real
//! terminator with a `--policy` file that mirrors every GET to v2.
//!
//! The stores hold the same 1,000 JSON values but for a known subset (100
//! values changed, 20 keys missing), and every value carries a field that
//! differs between the stores (`written`, as a timestamp would):
//!
//! - without `ignore`, every pair mismatches (the noise);
//! - with `"ignore": ["/written"]`, the mismatch count equals the subset
//!   exactly, and every client got v1's answer;
//! - a frozen ghost (SIGSTOP) times out or is skipped at its in-flight cap,
//!   and no client sees it;
//! - a bad policy is refused and the previous one stays.

use std::time::{Duration, Instant};
use testkit::etcd::Etcd;
use testkit::keepalive::Conn;
use testkit::{curl, wait_until, Proc};

const KEYS: usize = 1000;

/// Keys whose value differs in B, and keys B does not have.
fn changed(i: usize) -> bool {
    i % 10 == 3
}
fn missing(i: usize) -> bool {
    i % 50 == 7
}

fn write_policy(path: &std::path::Path, json: &str, t: &Proc) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, json).unwrap();
    std::fs::rename(&tmp, path).unwrap();
    // SAFETY: kill(2) on our own child.
    unsafe {
        libc::kill(t.pid(), libc::SIGHUP);
    }
}

fn ghost_counts(admin: &str) -> serde_json::Value {
    let r = curl("GET", &format!("{admin}/ghost"), None);
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    v["routes"]
        .as_array()
        .and_then(|a| a.iter().find(|e| e["version"] == "v2"))
        .cloned()
        .unwrap_or_else(|| serde_json::json!({}))
}

/// Whether an admin port answers /healthz within 300 ms (a stopped
/// process's kernel still accepts the connection, but nothing replies).
fn answers(admin: &str) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(admin.trim_start_matches("http://")) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(300)));
    let _ = s.write_all(b"GET /healthz HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n");
    let mut b = [0u8; 16];
    matches!(s.read(&mut b), Ok(n) if n > 0)
}

fn n(v: &serde_json::Value, k: &str) -> u64 {
    v[k].as_u64().unwrap_or(0)
}

/// Waits until every copy sent so far has a verdict: the counts add up
/// to `total`, exactly (a copy counted twice, or one not sent, fails).
fn settled(admin: &str, total: u64) -> serde_json::Value {
    let mut last = serde_json::Value::Null;
    let mut sum = 0;
    let ok = testkit::poll(Duration::from_secs(20), || {
        last = ghost_counts(admin);
        sum = traffic::ghost::VERDICTS.iter().map(|k| n(&last, k)).sum();
        sum >= total
    });
    assert!(ok, "ghost verdicts never reached {total}: {last}");
    assert_eq!(sum, total, "more verdicts than copies sent: {last}");
    last
}

#[test]
fn ghost_mismatches_are_exactly_the_differing_subset_and_never_reach_a_client() {
    let etcd = Etcd::start();
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let any = "tcp://127.0.0.1:0";
    let a = testkit::backend_svc(da.path(), any, any, &[]);
    let b = testkit::backend_svc(db.path(), any, any, &[]);
    let _v1 = testkit::etcd::versioned_aggregator(&etcd, "v1", &["--backend", &a.addr("bus")]);
    let mut v2 = testkit::etcd::versioned_aggregator(&etcd, "v2", &["--backend", &b.addr("bus")]);

    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.json");
    let pin_only =
        r#"{"aggregator": {"weights": {"v1": 100}, "pin": {"header": "x-switchboard-version"}}}"#;
    std::fs::write(&policy, pin_only).unwrap();
    let t = testkit::etcd::terminator(
        &etcd,
        &["--policy", policy.to_str().unwrap(), "--timeout", "400ms"],
    );
    let admin = t.addr("admin");
    let mut c = Conn::open(&t.addr("http"));
    wait_until(Duration::from_secs(20), "both versions serve", || {
        ["v1", "v2"].iter().all(|v| {
            let pin = format!("x-switchboard-version: {v}");
            let r = c.send("GET", "/echo", &[&pin], b"");
            r.status == 200 && r.header("x-switchboard-version") == Some(v)
        })
    });

    // The stores, through each version by pin: the same JSON values but
    // the subset, each with its own `written` stamp.
    let value = |i: usize, store: &str| {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let v = if store == "b" && changed(i) {
            format!("val-{i}-changed")
        } else {
            format!("val-{i}")
        };
        format!(r#"{{"v": "{v}", "written": {nanos}}}"#)
    };
    for i in 0..KEYS {
        let path = format!("/kv/k{i}");
        let r = c.send(
            "PUT",
            &path,
            &["x-switchboard-version: v1"],
            value(i, "a").as_bytes(),
        );
        assert_eq!(r.status, 204, "PUT {path} to A");
        if !missing(i) {
            let r = c.send(
                "PUT",
                &path,
                &["x-switchboard-version: v2"],
                value(i, "b").as_bytes(),
            );
            assert_eq!(r.status, 204, "PUT {path} to B");
        }
    }

    // Ghost on, no ignore list: the `written` noise makes every pair differ.
    let ghost = |extra: &str| {
        format!(
            r#"{{"aggregator": {{"weights": {{"v1": 100}}, "pin": {{"header": "x-switchboard-version"}}, "ghost": {{"version": "v2", "fraction": 1.0{extra}}}}}}}"#
        )
    };
    write_policy(&policy, &ghost(""), &t);
    wait_until(Duration::from_secs(10), "the ghost policy in force", || {
        curl("GET", &format!("{admin}/policy"), None)
            .text()
            .contains(r#""version":"v2""#)
    });
    let mut primaries = Vec::new();
    for i in 0..100 {
        let r = c.send("GET", &format!("/kv/k{i}"), &[], b"");
        primaries.push(r);
    }
    let noisy = settled(&admin, 100);
    assert_eq!(
        (n(&noisy, "matched"), n(&noisy, "mismatched")),
        (0, 100),
        "without `ignore` the written stamp differs on every pair: {noisy}"
    );

    // With the noise ignored: exactly the subset.
    write_policy(
        &policy,
        &ghost(r#", "ignore": ["/written"], "samples": 50"#),
        &t,
    );
    wait_until(Duration::from_secs(10), "the ignore list in force", || {
        curl("GET", &format!("{admin}/policy"), None)
            .text()
            .contains("/written")
    });
    for i in 0..KEYS {
        let r = c.send("GET", &format!("/kv/k{i}"), &[], b"");
        primaries.push(r);
    }
    let counts = settled(&admin, 100 + KEYS as u64);
    let subset = (0..KEYS).filter(|&i| changed(i) || missing(i)).count() as u64;
    assert_eq!(subset, 120);
    assert_eq!(
        (n(&counts, "matched"), n(&counts, "mismatched") - 100),
        (KEYS as u64 - subset, subset),
        "{counts}"
    );
    assert_eq!(
        n(&counts, "failed") + n(&counts, "timeouts") + n(&counts, "skipped"),
        0,
        "{counts}"
    );
    // Every client got v1's (A's) value, never the ghost's.
    for (k, r) in primaries.iter().enumerate() {
        let i = if k < 100 { k } else { k - 100 };
        assert_eq!(r.status, 200, "GET k{i}");
        assert_eq!(r.header("x-switchboard-version"), Some("v1"));
        let body = String::from_utf8_lossy(&r.body);
        assert!(body.contains(&format!(r#""v": "val-{i}""#)), "k{i}: {body}");
    }
    // The console shows the ghost and its verdicts.
    let svc = testkit::console_service(&admin, "aggregator");
    assert_eq!(
        (
            &svc["ghost"]["version"],
            svc["ghost"]["mismatched"].as_u64()
        ),
        (&serde_json::json!("v2"), Some(100 + subset)),
        "{svc}"
    );
    // The last mismatches, with what differed.
    let page: serde_json::Value =
        serde_json::from_slice(&curl("GET", &format!("{admin}/ghost"), None).body).unwrap();
    let samples = page["mismatches"].as_array().unwrap();
    assert_eq!(samples.len(), 50, "samples: 50 kept");
    let gone = samples
        .iter()
        .find(|s| s["path"] == "/kv/k957")
        .expect("the last missing key among the samples");
    assert_eq!(
        (
            gone["primary"]["status"].as_u64(),
            gone["ghost"]["status"].as_u64()
        ),
        (Some(200), Some(404))
    );
    assert!(
        gone["differs"]
            .as_array()
            .unwrap()
            .contains(&"status".into()),
        "{gone}"
    );
    assert!(
        !gone["request_id"].as_str().unwrap_or("").is_empty(),
        "{gone}"
    );
    let changed_one = samples
        .iter()
        .find(|s| s["path"] == "/kv/k993")
        .expect("k993 sampled");
    assert_eq!(
        changed_one["differs"],
        serde_json::json!(["body"]),
        "{changed_one}"
    );
    assert_ne!(
        changed_one["primary"]["body_hash"],
        changed_one["ghost"]["body_hash"]
    );
    assert!(changed_one["ghost"]["head"]
        .as_str()
        .unwrap()
        .contains("val-993-changed"));

    // A mirrored PUT carries the ghost mark through the aggregator to
    // backend-svc, which writes nothing: B never gets the key.
    write_policy(
        &policy,
        &ghost(r#", "ignore": ["/written"], "methods": ["GET", "PUT"]"#),
        &t,
    );
    wait_until(Duration::from_secs(10), "PUT mirrored", || {
        curl("GET", &format!("{admin}/policy"), None)
            .text()
            .contains(r#""PUT""#)
    });
    let before = ghost_counts(&admin);
    let r = c.send("PUT", "/kv/ghostly", &[], b"{}");
    assert_eq!(
        (r.status, r.header("x-switchboard-version")),
        (204, Some("v1"))
    );
    let after = settled(&admin, 100 + KEYS as u64 + 1);
    assert_eq!(
        n(&after, "matched"),
        n(&before, "matched") + 1,
        "the ghost's 204 matched: {after}"
    );
    let mut pinned = |v: &str| {
        let pin = format!("x-switchboard-version: {v}");
        c.send("GET", "/kv/ghostly", &[&pin], b"").status
    };
    let (on_a, on_b) = (pinned("v1"), pinned("v2"));
    assert_eq!((on_a, on_b), (200, 404), "the ghost PUT wrote to B");

    // A frozen ghost: its copies time out (400 ms) or wait for a slot
    // that is not there (cap 4); clients never notice.
    write_policy(
        &policy,
        &ghost(r#", "ignore": ["/written"], "max_in_flight": 4"#),
        &t,
    );
    wait_until(Duration::from_secs(10), "the cap in force", || {
        curl("GET", &format!("{admin}/policy"), None)
            .text()
            .contains(r#""max_in_flight":4"#)
    });
    // Everything so far has its verdict: the 1,100 GETs, the PUT, and
    // the two pinned GETs above (mirrored too: GET is in `methods`).
    let so_far = 100 + KEYS as u64 + 1 + 2;
    let before = settled(&admin, so_far);
    // SAFETY: kill(2) on our own child.
    unsafe {
        libc::kill(v2.pid(), libc::SIGSTOP);
    }
    // Stopped for sure: its admin port no longer answers.
    let v2_admin = v2.addr("admin");
    wait_until(Duration::from_secs(5), "v2 frozen", || !answers(&v2_admin));
    let started = Instant::now();
    for i in 0..200 {
        let r = c.send("GET", &format!("/kv/k{i}"), &[], b"");
        assert_eq!(r.status, 200, "a client saw the frozen ghost on k{i}");
    }
    let took = started.elapsed();
    let after = settled(&admin, so_far + 200);
    let d = |k: &str| n(&after, k) - n(&before, k);
    assert_eq!(d("timeouts") + d("failed") + d("skipped"), 200, "{after}");
    assert!(d("skipped") > 0 && d("timeouts") > 0, "{after}");
    assert!(
        took < Duration::from_secs(10),
        "200 requests took {took:?}: the ghost's timeouts held the primary up"
    );
    // The ghost's timeouts are its own: the terminator's bus counters for
    // the service show none.
    let stats: serde_json::Value =
        serde_json::from_slice(&curl("GET", &format!("{admin}/stats"), None).body).unwrap();
    assert_eq!(
        stats["counters"]["bus.aggregator.timeouts"].as_u64(),
        Some(0),
        "{}",
        stats["counters"]
    );
    unsafe {
        libc::kill(v2.pid(), libc::SIGCONT);
    }

    // A bad policy is refused; the ghost in force stays.
    write_policy(
        &policy,
        r#"{"aggregator": {"ghost": {"version": "v2", "fraction": 2}}}"#,
        &t,
    );
    wait_until(Duration::from_secs(10), "the refusal on /policy", || {
        curl("GET", &format!("{admin}/policy"), None)
            .text()
            .contains("ghost fraction")
    });
    let page = curl("GET", &format!("{admin}/policy"), None).text();
    assert!(page.contains(r#""max_in_flight":4"#), "{page}");
    v2.kill9();
    let _ = (a, b);
}
