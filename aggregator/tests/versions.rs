//! Two versions of the aggregator side by side, registered in a real etcd
//! (`--service-version v1` and `v2`), behind the real terminator with a
//! `--policy` file: the split follows the weights (±2 points over 10,000
//! requests), a new policy takes effect at once on SIGHUP with no failed
//! request while a version is drained to 0, a pinned header always reaches
//! its version, and a bad policy is refused while the last good one stays;
//! a policy put in etcd (`/switchboard/policy/<service>`) wins over the
//! file within a second, and deleting it returns to the file's.
//! The aggregator follows the `backend` policy for its own calls the same way,
//! ghost mode included.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};
use testkit::etcd::Etcd;
use testkit::{curl, wait_until, Proc};

fn aggregator(etcd: &Etcd, version: &str) -> Proc {
    testkit::etcd::versioned_aggregator(etcd, version, &[])
}

/// One keep-alive HTTP/1.1 connection: GET /echo, optionally pinned.
struct Conn {
    s: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    fn open(http: &str) -> Conn {
        let s = TcpStream::connect(http.trim_start_matches("http://")).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.set_nodelay(true).unwrap();
        Conn { s, buf: Vec::new() }
    }

    /// (status, the `x-switchboard-version` that served it).
    fn get(&mut self, pin: Option<&str>) -> (u16, String) {
        let pin = pin
            .map(|v| format!("x-switchboard-version: {v}\r\n"))
            .unwrap_or_default();
        let req = format!("GET /echo HTTP/1.1\r\nhost: t\r\n{pin}\r\n");
        self.s.write_all(req.as_bytes()).unwrap();
        self.buf.clear();
        let mut chunk = [0u8; 4096];
        loop {
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.buf[..end]).to_ascii_lowercase();
                let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
                let field = |name: &str| {
                    head.lines()
                        .find_map(|l| l.strip_prefix(name))
                        .map(|v| v.trim().to_string())
                        .unwrap_or_default()
                };
                let len: usize = field("content-length:").parse().unwrap_or(0);
                if self.buf.len() >= end + 4 + len {
                    return (status, field("x-switchboard-version:"));
                }
            }
            let n = self.s.read(&mut chunk).expect("response");
            assert!(n > 0, "connection closed mid-response");
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Counts by version over `n` requests; every one must succeed.
    fn split(&mut self, n: usize) -> std::collections::BTreeMap<String, usize> {
        let mut by = std::collections::BTreeMap::new();
        for _ in 0..n {
            let (st, v) = self.get(None);
            assert_eq!(st, 200, "a request failed");
            *by.entry(v).or_insert(0) += 1;
        }
        by
    }
}

fn write_policy(path: &std::path::Path, json: &str) {
    // Written beside and renamed over: the watcher never reads half a file.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, json).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[test]
fn weights_pins_and_live_policy_changes_across_two_versions() {
    let etcd = Etcd::start();
    let _v1 = aggregator(&etcd, "v1");
    let _v2 = aggregator(&etcd, "v2");
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.json");
    write_policy(
        &policy,
        r#"{"aggregator": {"weights": {"v1": 90, "v2": 10}, "pin": {"header": "x-switchboard-version"}}}"#,
    );
    let mut t = testkit::etcd::terminator(&etcd, &["--policy", policy.to_str().unwrap()]);
    let mut c = Conn::open(&t.addr("http"));
    // Both versions registered, connected and pinnable.
    wait_until(Duration::from_secs(20), "both versions serve", || {
        c.get(Some("v1")) == (200, "v1".into()) && c.get(Some("v2")) == (200, "v2".into())
    });

    let by = c.split(10_000);
    let v2 = by.get("v2").copied().unwrap_or(0);
    assert!(
        (800..=1200).contains(&v2),
        "v2 served {v2} of 10000 at weight 10%: {by:?}"
    );
    assert_eq!(by.values().sum::<usize>(), 10_000, "{by:?}");

    // The console shows the weights in force.
    let svc = testkit::console_service(&t.addr("admin"), "aggregator");
    assert_eq!(
        svc["weights"],
        serde_json::json!({"v1": 90, "v2": 10}),
        "{svc}"
    );

    // And each instance's registered version.
    let mut shown: Vec<&str> = svc["instances"]
        .as_array()
        .map(|a| a.iter().filter_map(|i| i["version"].as_str()).collect())
        .unwrap_or_default();
    shown.sort();
    assert_eq!(shown, ["v1", "v2"], "{svc}");

    // A pin beats the weights.
    for _ in 0..200 {
        assert_eq!(c.get(Some("v2")), (200, "v2".into()));
    }

    // Drain v1 to 0: at once on SIGHUP, with no failed request.
    write_policy(
        &policy,
        r#"{"aggregator": {"weights": {"v1": 0, "v2": 100}}}"#,
    );
    let sent = Instant::now();
    // SAFETY: kill(2) on our own child.
    unsafe {
        libc::kill(t.pid(), libc::SIGHUP);
    }
    let mut in_a_row = 0;
    while in_a_row < 200 {
        let (st, v) = c.get(None);
        assert_eq!(st, 200, "a request failed while v1 drained");
        in_a_row = if v == "v2" { in_a_row + 1 } else { 0 };
        assert!(
            sent.elapsed() < Duration::from_secs(1) || in_a_row > 0,
            "still reaching v1 a second after the new policy"
        );
    }
    let by = c.split(1_000);
    assert_eq!(by.keys().collect::<Vec<_>>(), ["v2"], "{by:?}");

    // A bad policy is refused, said on the admin port, and the last good
    // one stays.
    write_policy(&policy, r#"{"aggregator": {"weights": {"v1": 0}}}"#);
    unsafe {
        libc::kill(t.pid(), libc::SIGHUP);
    }
    let admin = t.addr("admin");
    wait_until(Duration::from_secs(10), "the refusal on /policy", || {
        let r = curl("GET", &format!("{admin}/policy"), None);
        r.text().contains("every weight is 0")
    });
    let by = c.split(500);
    assert_eq!(by.keys().collect::<Vec<_>>(), ["v2"], "{by:?}");

    // A policy in etcd wins over the file for its service, live.
    let key = "/switchboard/policy/aggregator";
    etcd.ctl(&["put", key, r#"{"weights": {"v1": 100}}"#]);
    let put = Instant::now();
    wait_until(Duration::from_secs(5), "etcd's policy in force", || {
        c.split(50).keys().collect::<Vec<_>>() == ["v1"]
    });
    assert!(
        put.elapsed() < Duration::from_secs(2),
        "took {:?}",
        put.elapsed()
    );
    // A bad document is refused; the service keeps etcd's last good one.
    etcd.ctl(&["put", key, r#"{"weights": {"v1": "lots"}}"#]);
    wait_until(
        Duration::from_secs(10),
        "the etcd refusal on /policy",
        || {
            let r = curl("GET", &format!("{admin}/policy"), None);
            let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap_or_default();
            v["refused_in_etcd"]["aggregator"].is_array()
        },
    );
    assert_eq!(c.split(200).keys().collect::<Vec<_>>(), ["v1"]);
    // Deleted: back to the file's (last good: v2 only).
    etcd.ctl(&["del", key]);
    wait_until(Duration::from_secs(5), "the file's policy again", || {
        c.split(50).keys().collect::<Vec<_>>() == ["v2"]
    });
    t.terminate(Duration::from_secs(20));
}

/// The aggregator is a caller too: its `backend` calls follow the
/// `backend` policy from etcd (weights live, a pin by the client's header,
/// which the terminator passes on), and from `--policy` without etcd.
#[test]
fn the_aggregator_routes_backend_calls_by_the_backend_policy() {
    let etcd = Etcd::start();
    let _backends = two_backends(&etcd);
    let key = "/switchboard/policy/backend";
    etcd.ctl(&[
        "put",
        key,
        r#"{"weights": {"v1": 100}, "pin": {"header": "x-backend-version"}}"#,
    ]);
    let agg = aggregator(&etcd, "v1");
    let t = testkit::terminator(&format!("/=aggregator@{}", agg.addr("bus")), &[]);
    let http = t.addr("http");
    let mut c = testkit::keepalive::Conn::open(&http);
    // Each store gets its own value, by pin.
    wait_until(
        Duration::from_secs(20),
        "both backends written by pin",
        || {
            ["v1", "v2"].iter().all(|v| {
                let pin = format!("x-backend-version: {v}");
                c.send("PUT", "/kv/who", &[&pin], v.as_bytes()).status == 204
                    && c.send("GET", "/kv/who", &[&pin], b"").body == v.as_bytes()
            })
        },
    );
    let served = |c: &mut testkit::keepalive::Conn, n: usize| {
        let mut by = std::collections::BTreeMap::new();
        for _ in 0..n {
            let r = c.send("GET", "/kv/who", &[], b"");
            assert_eq!(r.status, 200);
            *by.entry(String::from_utf8_lossy(&r.body).into_owned())
                .or_insert(0) += 1;
        }
        by.into_keys().collect::<Vec<_>>()
    };
    assert_eq!(served(&mut c, 200), ["v1"], "weights v1=100");
    etcd.ctl(&["put", key, r#"{"weights": {"v2": 100}}"#]);
    let put = Instant::now();
    wait_until(Duration::from_secs(5), "the new weights in force", || {
        served(&mut c, 20) == ["v2"]
    });
    assert!(
        put.elapsed() < Duration::from_secs(2),
        "took {:?}",
        put.elapsed()
    );
    assert_eq!(served(&mut c, 200), ["v2"]);
    // The aggregator counts its backend calls by version, for sbctl.
    let stats = curl("GET", &format!("{}/stats", agg.addr("admin")), None);
    let v: serde_json::Value = serde_json::from_slice(&stats.body).unwrap();
    let count = |k: &str| v["counters"][k].as_u64().unwrap_or(0);
    assert!(
        count("version.backend.v1.requests") >= 200 && count("version.backend.v2.requests") >= 220,
        "{}",
        v["counters"]
    );
    assert_eq!(count("version.backend.v2.errors"), 0);
    // A bad document is refused; the last good one stays.
    etcd.ctl(&["put", key, r#"{"weights": {"v1": 0}}"#]);
    let admin = agg.addr("admin");
    wait_until(
        Duration::from_secs(10),
        "the refusal on the aggregator's /policy",
        || {
            curl("GET", &format!("{admin}/policy"), None)
                .text()
                .contains("every weight is 0")
        },
    );
    assert_eq!(served(&mut c, 100), ["v2"]);
}

/// backend-svc v1 and v2 in etcd, each on a store of its own.
fn two_backends(etcd: &Etcd) -> [(tempfile::TempDir, Proc); 2] {
    ["v1", "v2"].map(|v| {
        let dir = tempfile::tempdir().unwrap();
        let any = "tcp://127.0.0.1:0";
        let args = ["--etcd", &etcd.url(), "--service-version", v];
        let p = testkit::backend_svc(dir.path(), any, any, &args);
        (dir, p)
    })
}

/// The `backend` policy's ghost, at the aggregator: a copy of every GET's
/// backend call goes to v2, and the verdicts per bus method count exactly
/// the keys whose values differ between the stores; clients only ever
/// get v1's values, a PUT is not copied, the copies stay out of
/// `version.backend.*`, and `sbctl ghost backend` reports the same sums.
#[test]
fn the_aggregator_ghosts_backend_calls_by_the_backend_policy() {
    let etcd = Etcd::start();
    let _backends = two_backends(&etcd);
    let key = "/switchboard/policy/backend";
    let pin = r#""pin": {"header": "x-backend-version"}"#;
    etcd.ctl(&[
        "put",
        key,
        &format!(r#"{{"weights": {{"v1": 100}}, {pin}}}"#),
    ]);
    let agg = aggregator(&etcd, "v1");
    let admin = agg.addr("admin");
    let t = testkit::terminator(&format!("/=aggregator@{}", agg.addr("bus")), &[]);
    let mut c = testkit::keepalive::Conn::open(&t.addr("http"));
    // Ten keys alike in both stores, and `who` naming its store.
    wait_until(Duration::from_secs(20), "both stores written", || {
        ["v1", "v2"].iter().all(|v| {
            let h = format!("x-backend-version: {v}");
            (0..10).all(|i| c.send("PUT", &format!("/kv/same{i}"), &[&h], b"x").status == 204)
                && c.send("PUT", "/kv/who", &[&h], v.as_bytes()).status == 204
        })
    });
    let counters = || {
        let stats = curl("GET", &format!("{admin}/stats"), None);
        let v: serde_json::Value = serde_json::from_slice(&stats.body).unwrap();
        v["counters"].clone()
    };
    let v2_before = counters()["version.backend.v2.requests"].as_u64();
    let ghost = r#""ghost": {"version": "v2", "fraction": 1}"#;
    let doc = format!(r#"{{"weights": {{"v1": 100}}, {pin}, {ghost}}}"#);
    etcd.ctl(&["put", key, &doc]);
    wait_until(Duration::from_secs(10), "the ghost in force", || {
        let page = curl("GET", &format!("{admin}/policy"), None);
        let v: serde_json::Value = serde_json::from_slice(&page.body).unwrap();
        v["services"]["backend"]["ghost"]["version"] == "v2"
    });
    for i in 0..30 {
        let r = c.send("GET", &format!("/kv/same{}", i % 10), &[], b"");
        assert_eq!((r.status, r.body.as_slice()), (200, &b"x"[..]));
    }
    for _ in 0..20 {
        let r = c.send("GET", "/kv/who", &[], b"");
        assert_eq!((r.status, r.body.as_slice()), (200, &b"v1"[..]));
    }
    for _ in 0..5 {
        let r = c.send("GET", "/kv?keys=same0,same1", &[], b"");
        assert_eq!(r.status, 200);
    }
    assert_eq!(c.send("PUT", "/kv/new", &[], b"n").status, 204);
    // The PUT reached v1 only (this pinned read is copied too: 404 twice).
    let h = "x-backend-version: v2";
    assert_eq!(c.send("GET", "/kv/new", &[h], b"").status, 404);
    // The verdicts land when both sides have answered; wait for the sum.
    let verdicts = |route: &str| {
        let page = curl("GET", &format!("{admin}/ghost"), None);
        let v: serde_json::Value = serde_json::from_slice(&page.body).unwrap();
        let r = v["routes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["route"] == route && r["service"] == "backend")
            .cloned()
            .unwrap_or_default();
        let n = |k: &str| r[k].as_u64().unwrap_or(0);
        let total: u64 = traffic::ghost::VERDICTS.iter().map(|k| n(k)).sum();
        (n("matched"), n("mismatched"), total, v)
    };
    wait_until(Duration::from_secs(10), "every copy compared", || {
        verdicts("kv.get").2 == 51 && verdicts("kv.multi_get").2 == 5
    });
    let (matched, mismatched, _, page) = verdicts("kv.get");
    assert_eq!((matched, mismatched), (31, 20), "{page}");
    assert_eq!(verdicts("kv.multi_get").0, 5, "{page}");
    let routes: Vec<&str> = page["routes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["route"].as_str())
        .collect();
    assert_eq!(routes, ["kv.get", "kv.multi_get"], "the PUT was not copied");
    let m = &page["mismatches"][0];
    assert_eq!(
        (m["method"].as_str(), m["path"].as_str()),
        (Some("kv.get"), Some("who"))
    );
    assert_eq!(m["ghost"]["head"], "v2", "{m}");
    // The copies are no v2 traffic of the ramp's: only the pinned read is.
    let m = counters();
    let v2 = m["version.backend.v2.requests"].as_u64();
    assert_eq!(v2, v2_before.map(|n| n + 1), "{m}");
    assert_eq!(m["ghost.kv_get.v2.mismatched"], 20, "{m}");
    // sbctl sums the callers' pages: the aggregator's for `backend`; for
    // `aggregator`, the terminator's, and backend-svc's have no /ghost.
    let sbctl = |service: &str| {
        let out = std::process::Command::new(testkit::bin("sbctl"))
            .args([
                "--etcd",
                &etcd.url(),
                "--terminator-admin",
                &t.addr("admin"),
            ])
            .args(["ghost", service])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        text
    };
    let report = sbctl("backend");
    let row = |route: &str| {
        let line = report.lines().find(|l| l.starts_with(route));
        line.map(|l| l.split_whitespace().skip(1).take(3).collect::<Vec<_>>())
    };
    assert_eq!(row("kv.get "), Some(vec!["v2", "31", "20"]), "{report}");
    assert!(report.contains("v2 kv.get who (request "), "{report}");
    assert_eq!(
        sbctl("aggregator").trim(),
        "aggregator: no ghost copies seen"
    );
}
