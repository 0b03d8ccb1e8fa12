//! Discovery with real processes and a real etcd: aggregators on port 0
//! register, the terminator routes from the registrations, and instances
//! come, crash, drain and outlive an etcd outage.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use testkit::{curl, curl_many, wait_until, Etcd, Proc};

const TTL: &str = "3s";
const PREFIX: &str = "/switchboard/services/";

fn aggregator(etcd: &Etcd, extra: &[&str]) -> Proc {
    aggregator_ttl(etcd, TTL, "1s", extra)
}

fn aggregator_ttl(etcd: &Etcd, ttl: &str, keepalive: &str, extra: &[&str]) -> Proc {
    let url = etcd.url();
    let mut args = vec![
        "--etcd",
        &url,
        "--etcd-ttl",
        ttl,
        "--etcd-keepalive",
        keepalive,
    ];
    args.extend_from_slice(extra);
    testkit::aggregator(&args)
}

/// A 10 s default deadline: slow CI machines must not turn a slow reply
/// into a 504 these tests would misread.
fn terminator(etcd: &Etcd, extra: &[&str]) -> Proc {
    let mut args = vec!["--timeout", "10s"];
    args.extend_from_slice(extra);
    testkit::etcd::terminator(etcd, &args)
}

fn json(url: &str) -> serde_json::Value {
    serde_json::from_slice(&curl("GET", url, None).body).unwrap_or(serde_json::Value::Null)
}

/// The aggregator's bus counters.
fn service_stat(agg: &Proc, name: &str) -> u64 {
    json(&format!("{}/stats", agg.addr("admin")))["service"][name]
        .as_u64()
        .unwrap_or(0)
}

/// (instances, connected) behind the terminator's `/` route.
fn root_route(t: &Proc) -> (u64, u64) {
    let j = json(&format!("{}/readyz", t.addr("admin")));
    let r = &j["routes"]["/"];
    (
        r["instances"].as_u64().unwrap_or(0),
        r["connected"].as_u64().unwrap_or(0),
    )
}

fn wait_root(t: &Proc, n: u64) {
    wait_until(
        Duration::from_secs(10),
        &format!("{n} instances routed"),
        || root_route(t) == (n, n),
    );
}

fn urls(t: &Proc, path: &str, n: usize) -> Vec<String> {
    vec![format!("{}{path}", t.addr("http")); n]
}

fn aggregator_keys(etcd: &Etcd) -> Vec<String> {
    etcd.keys(&format!("{PREFIX}aggregator/"))
}

/// The leases the registrations are under, sorted.
fn leases(e: &Etcd) -> Vec<i64> {
    let j: serde_json::Value =
        serde_json::from_str(&e.ctl(&["get", "--prefix", PREFIX, "-w", "json"])).unwrap();
    let mut v: Vec<i64> = j["kvs"]
        .as_array()
        .map(|a| a.iter().filter_map(|kv| kv["lease"].as_i64()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

/// Requests in a loop on `threads` threads until stopped; every status kept.
struct Load {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    statuses: Arc<Mutex<Vec<u16>>>,
}

impl Load {
    fn start(t: &Proc, threads: usize, batch: usize, pause: Duration) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let statuses = Arc::new(Mutex::new(Vec::new()));
        let threads = (0..threads)
            .map(|_| {
                let (stop, statuses) = (stop.clone(), statuses.clone());
                let batch = urls(t, "/echo", batch);
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        let r = curl_many(&batch);
                        statuses.lock().unwrap().extend(r.iter().map(|x| x.0));
                        std::thread::sleep(pause); // pacing, not waiting
                    }
                })
            })
            .collect();
        Load {
            stop,
            threads,
            statuses,
        }
    }

    fn count(&self) -> usize {
        self.statuses.lock().unwrap().len()
    }

    /// Stops and returns every status seen.
    fn finish(self) -> Vec<u16> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join().unwrap();
        }
        Arc::try_unwrap(self.statuses)
            .unwrap()
            .into_inner()
            .unwrap()
    }
}

fn assert_all_ok(statuses: &[u16], what: &str) {
    let bad: Vec<&u16> = statuses.iter().filter(|s| **s != 200).collect();
    assert!(
        bad.is_empty(),
        "{what}: {} of {} requests failed: {:?}",
        bad.len(),
        statuses.len(),
        &bad[..bad.len().min(20)]
    );
}

#[test]
fn three_aggregators_share_traffic_and_a_late_one_joins_within_a_second() {
    let etcd = Etcd::start();
    let aggs: Vec<Proc> = (0..3).map(|_| aggregator(&etcd, &[])).collect();
    // The terminator has no route to these: its convention route points at
    // 127.0.0.1:8100; the table comes from the registrations.
    let t = terminator(&etcd, &[]);
    wait_root(&t, 3);
    let before: Vec<u64> = aggs.iter().map(|a| service_stat(a, "received")).collect();
    let r = curl_many(&urls(&t, "/echo", 3000));
    assert_all_ok(&r.iter().map(|x| x.0).collect::<Vec<_>>(), "spread");
    for (i, a) in aggs.iter().enumerate() {
        let got = service_stat(a, "received") - before[i];
        assert!(got > 600, "aggregator {i} got {got} of 3000 (want > 20%)");
    }

    // A fourth, started under load, takes traffic within 1 s of registering
    // (measured from its start, which is before it registers).
    let load = Load::start(&t, 1, 50, Duration::ZERO);
    let started = Instant::now();
    let late = aggregator(&etcd, &[]);
    wait_until(Duration::from_secs(5), "late instance served", || {
        service_stat(&late, "received") > 0
    });
    let took = started.elapsed();
    assert!(took < Duration::from_secs(1), "took {took:?}");
    assert_eq!(aggregator_keys(&etcd).len(), 4);
    assert_all_ok(&load.finish(), "while an instance joined");
}

#[test]
fn kill_9_key_expires_in_flight_calls_fail_fast_traffic_moves() {
    let etcd = Etcd::start();
    let mut aggs: Vec<Proc> = (0..3).map(|_| aggregator(&etcd, &[])).collect();
    let t = terminator(&etcd, &[]);
    wait_root(&t, 3);
    // Slow calls in flight on every instance: GETs (idempotent) and POSTs.
    let slow = format!("{}/echo?sleep_ms=2000", t.addr("http"));
    let calls: Vec<JoinHandle<(&str, u16, Instant)>> = (0..40)
        .map(|i| {
            let u = slow.clone();
            let method = if i % 2 == 0 { "GET" } else { "POST" };
            std::thread::spawn(move || {
                let body = (method == "POST").then_some(&b"x"[..]);
                (method, curl(method, &u, body).status, Instant::now())
            })
        })
        .collect();
    wait_until(Duration::from_secs(5), "calls in flight everywhere", || {
        aggs.iter().all(|a| service_stat(a, "in_flight") > 0)
    });
    aggs[0].kill9();
    let killed = Instant::now();
    let mut failed = 0;
    for c in calls {
        let (method, status, done) = c.join().unwrap();
        if method == "GET" {
            // Sent again to another instance: the client never knows.
            assert_eq!(status, 200, "a GET in flight on the killed instance failed");
            continue;
        }
        if status != 200 {
            // A POST may have run: not retried, and it fails at once.
            failed += 1;
            assert_eq!(status, 502, "POST on the killed instance");
            let after = done - killed;
            assert!(
                after < Duration::from_millis(1500),
                "a call to the killed instance ended {after:?} after the kill (status {status})"
            );
        }
    }
    assert!(failed > 0, "no POST was on the killed instance");
    // Its key goes when the lease does: within the TTL (3 s) and etcd's
    // expiry check (500 ms).
    wait_until(Duration::from_secs(6), "key expired", || {
        aggregator_keys(&etcd).len() == 2
    });
    assert!(
        killed.elapsed() < Duration::from_millis(4500),
        "{:?}",
        killed.elapsed()
    );
    wait_root(&t, 2);
    let r = curl_many(&urls(&t, "/echo", 300));
    assert_all_ok(&r.iter().map(|x| x.0).collect::<Vec<_>>(), "after the kill");
}

#[test]
fn graceful_stop_deregisters_at_once_and_fails_nothing() {
    let etcd = Etcd::start();
    let mut aggs: Vec<Proc> = (0..3).map(|_| aggregator(&etcd, &[])).collect();
    let t = terminator(&etcd, &[]);
    wait_root(&t, 3);
    let load = Load::start(&t, 2, 20, Duration::ZERO);
    // Slow calls in flight on the instance that stops: they must finish.
    let slow = format!("{}/echo?sleep_ms=1000", t.addr("http"));
    let calls: Vec<JoinHandle<u16>> = (0..12)
        .map(|_| {
            let u = slow.clone();
            std::thread::spawn(move || curl("GET", &u, None).status)
        })
        .collect();
    wait_until(
        Duration::from_secs(5),
        "calls in flight on the victim",
        || service_stat(&aggs[0], "in_flight") > 0,
    );
    let mut victim = aggs.remove(0);
    let pid = victim.pid();
    let stopper = std::thread::spawn(move || victim.terminate(Duration::from_secs(20)));
    let t0 = Instant::now();
    wait_until(Duration::from_secs(3), "key removed", || {
        aggregator_keys(&etcd).len() == 2
    });
    let gone = t0.elapsed();
    assert!(
        gone < Duration::from_secs(1),
        "key removed after {gone:?} (pid {pid})"
    );
    let status = stopper.join().unwrap().expect("exited within its grace");
    assert!(status.success(), "{status:?}");
    for c in calls {
        assert_eq!(
            c.join().unwrap(),
            200,
            "a call in flight at the stop failed"
        );
    }
    let n = load.count();
    wait_until(Duration::from_secs(5), "more load after the stop", || {
        load.count() > n + 100
    });
    assert_all_ok(&load.finish(), "graceful stop");
    assert_eq!(root_route(&t), (2, 2));
}

#[test]
fn etcd_outage_of_30s_fails_nothing_and_registrations_return() {
    let mut etcd = Etcd::start();
    let _aggs: Vec<Proc> = (0..2).map(|_| aggregator(&etcd, &[])).collect();
    let t = terminator(&etcd, &[]);
    wait_root(&t, 2);
    let before = leases(&etcd);
    assert_eq!(before.len(), 2);
    let load = Load::start(&t, 1, 5, Duration::from_millis(100));
    etcd.stop();
    // The outage itself: 30 s of light load with etcd gone.
    std::thread::sleep(Duration::from_secs(30));
    let during = load.count();
    etcd.resume();
    // Registered again: both keys back, each under a new lease.
    wait_until(Duration::from_secs(15), "re-registered", || {
        let now = leases(&etcd);
        now.len() == 2 && now.iter().all(|l| !before.contains(l))
    });
    let statuses = load.finish();
    assert!(during > 100, "only {during} requests during the outage");
    assert_all_ok(&statuses, "etcd outage");
    assert_eq!(root_route(&t), (2, 2));
}

/// etcd frozen (SIGSTOP) for longer than the TTL: when it thaws every lease
/// has run out, and the keys vanish before the registrars put them back.
/// Instances whose bus connections are healthy stay routed through that
/// window (the removal grace), so no request gets 503 `no_instance`; one
/// that really died meanwhile is removed as soon as its key goes.
#[test]
fn etcd_frozen_past_the_ttl_fails_nothing_and_a_dead_instance_still_goes() {
    let etcd = Etcd::start();
    let mut aggs: Vec<Proc> = (0..3)
        .map(|_| aggregator_ttl(&etcd, "2s", "500ms", &[]))
        .collect();
    let t = terminator(&etcd, &[]);
    wait_root(&t, 3);
    // The services' leases only: terminators hold one too, for their
    // consoles (`/switchboard/terminators/`), on the default TTL.
    let old_leases = leases(&etcd);
    assert_eq!(old_leases.len(), 3, "{old_leases:?}");
    etcd.freeze();
    // One instance dies for real while etcd cannot hear of it.
    aggs[2].kill9();
    wait_until(Duration::from_secs(5), "the dead one disconnected", || {
        root_route(&t) == (3, 2)
    });
    let load = Load::start(&t, 2, 10, Duration::from_millis(5));
    // The fault's length, not a wait: 2.5 TTLs, so every lease has run out
    // by the time etcd runs again.
    std::thread::sleep(Duration::from_secs(5));
    etcd.thaw();
    let thawed = Instant::now();
    // Well within the removal grace (30 s): its connection is down.
    wait_until(Duration::from_secs(5), "the dead one removed", || {
        root_route(&t) == (2, 2)
    });
    // The old leases expired; the living registered again under new ones.
    wait_until(Duration::from_secs(15), "re-registered", || {
        let now = leases(&etcd);
        now.len() == 2 && now.iter().all(|l| !old_leases.contains(l))
    });
    assert_eq!(aggregator_keys(&etcd).len(), 2);
    let n = load.count();
    wait_until(Duration::from_secs(5), "more load after", || {
        load.count() > n + 100
    });
    let statuses = load.finish();
    assert!(
        thawed.elapsed() < Duration::from_secs(30),
        "the test outlasted the grace it relies on"
    );
    assert_all_ok(&statuses, "etcd frozen past the TTL");
    assert_eq!(root_route(&t), (2, 2));
    // The window was real: keys vanished under live instances.
    assert!(
        t.stderr().contains("kept until it registers again"),
        "{}",
        t.stderr()
    );
}

#[test]
fn etcd_down_at_start_static_endpoints_serve_then_processes_join() {
    let mut etcd = Etcd::start();
    etcd.stop();
    let agg = aggregator(&etcd, &[]);
    let route = format!("/=aggregator@{}", agg.addr("bus"));
    let t = terminator(&etcd, &["--route", &route]);
    let r = curl("GET", &format!("{}/echo", t.addr("http")), None);
    assert_eq!(r.status, 200, "{}", r.text());
    etcd.resume();
    wait_until(
        Duration::from_secs(15),
        "registered once etcd is up",
        || aggregator_keys(&etcd).len() == 1,
    );
    wait_root(&t, 1);
    assert!(
        agg.stderr().contains("etcd"),
        "no warning about etcd: {}",
        agg.stderr()
    );
    let r = curl_many(&urls(&t, "/echo", 100));
    assert_all_ok(&r.iter().map(|x| x.0).collect::<Vec<_>>(), "after joining");
}

#[test]
fn registrations_in_etcd_are_what_the_docs_show() {
    let etcd = Etcd::start();
    let dir = tempfile::tempdir().unwrap();
    let url = etcd.url();
    let backend = testkit::backend_svc(
        dir.path(),
        "tcp://127.0.0.1:0",
        "tcp://127.0.0.1:0",
        &["--etcd", &url],
    );
    // A static backend endpoint where nothing listens: /kv works only if
    // the aggregator follows the `backend` registrations.
    let agg = aggregator(&etcd, &["--backend", "tcp://127.0.0.1:1"]);
    let t = terminator(&etcd, &[]);
    wait_until(Duration::from_secs(10), "both registered", || {
        etcd.keys(PREFIX).len() == 2
    });
    // `etcdctl get --prefix` prints key, value, key, value.
    let out = etcd.ctl(&["get", "--prefix", PREFIX]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 4, "{out}");
    let mut seen = Vec::new();
    for kv in lines.chunks(2) {
        let (key, value) = (kv[0], kv[1]);
        let v: serde_json::Value = serde_json::from_str(value).unwrap();
        let service = v["service"].as_str().unwrap();
        let instance = v["instance"].as_str().unwrap();
        assert_eq!(key, format!("{PREFIX}{service}/{instance}"));
        assert!(v["version"].is_string() && v["started_at"].as_u64().unwrap() > 1_700_000_000);
        let p = if service == "backend" { &backend } else { &agg };
        assert_eq!(v["bus"], p.addr("bus"));
        assert_eq!(v["admin"], p.addr("admin"));
        match service {
            "backend" => {
                assert_eq!(v["events"], backend.addr("events"));
                assert_eq!(v["routes"], serde_json::json!([]));
            }
            "aggregator" => assert_eq!(v["routes"], serde_json::json!(["/"])),
            other => panic!("unexpected service {other}"),
        }
        seen.push(service.to_string());
    }
    seen.sort();
    assert_eq!(seen, ["aggregator", "backend"]);

    wait_root(&t, 1);
    let kv = format!("{}/kv/from-etcd", t.addr("http"));
    wait_until(
        Duration::from_secs(10),
        "kv through registered backend",
        || curl("PUT", &kv, Some(b"yes")).status == 204,
    );
    assert_eq!(curl("GET", &kv, None).text(), "yes");
}
