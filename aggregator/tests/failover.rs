//! Instances lost under load: with three aggregators behind the real
//! terminator and open-loop load of idempotent requests (loadtest), one is
//! killed with SIGKILL and another drained with SIGTERM; the terminator
//! sends what they could not answer to the one left, so no request fails.

use std::process::{Command, Stdio};
use std::time::Duration;
use testkit::{bin, curl, free_endpoint, wait_until, Proc};

fn aggregator(backend: &str) -> Proc {
    testkit::aggregator(&["--backend", backend])
}

fn received(a: &Proc) -> u64 {
    let r = curl("GET", &format!("{}/stats", a.addr("admin")), None);
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap_or_default();
    v["service"]["received"].as_u64().unwrap_or(0)
}

#[test]
fn kill_9_and_a_drain_under_open_loop_load_fail_no_request() {
    // /echo needs no backend; nothing listens there.
    let backend = free_endpoint();
    let mut aggs: Vec<Proc> = (0..3).map(|_| aggregator(&backend)).collect();
    let eps: Vec<String> = aggs.iter().map(|a| a.addr("bus")).collect();
    let t = testkit::terminator(&format!("/=aggregator@{}", eps.join(",")), &[]);
    let base = t.addr("http");
    wait_until(Duration::from_secs(20), "the stack serves", || {
        curl("GET", &format!("{base}/echo"), None).status == 200
    });

    let load = Command::new(bin("loadtest"))
        .args([
            "-R",
            "400",
            "-d",
            "6s",
            "-c",
            "32",
            "--json",
            "-q",
            "--tolerance",
            "99",
        ])
        // 50 ms each: about 20 calls are in flight when an instance goes.
        .arg(format!("{base}/echo?sleep_ms=50"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("loadtest");
    wait_until(
        Duration::from_secs(10),
        "load reaches every instance",
        || aggs.iter().all(|a| received(a) > 100),
    );
    aggs[0].kill9();
    let seen = received(&aggs[1]);
    wait_until(
        Duration::from_secs(10),
        "load goes on after the kill",
        || received(&aggs[2]) > seen + 200,
    );
    let status = aggs[1].terminate(Duration::from_secs(20)).expect("drained");
    assert!(status.success(), "{status:?}");

    let out = load.wait_with_output().expect("loadtest ran");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("loadtest --json output");
    let statuses = v["status"].as_object().expect("status counts");
    let ok = v["status"]["200"].as_u64().unwrap_or(0);
    assert!(ok > 1000, "too few requests measured: {v}");
    assert_eq!(statuses.len(), 1, "a request failed: {}", v["status"]);
    let errors = v["errors"].as_object().map_or(0, |e| e.len());
    assert_eq!(errors, 0, "transport errors: {}", v["errors"]);
    let retries = curl("GET", &format!("{}/stats", t.addr("admin")), None);
    let r: serde_json::Value = serde_json::from_slice(&retries.body).unwrap();
    assert!(
        r["counters"]["bus.aggregator.retries"]
            .as_u64()
            .unwrap_or(0)
            > 0,
        "nothing was retried: the test did not test failover"
    );
}
