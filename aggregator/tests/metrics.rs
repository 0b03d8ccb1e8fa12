//! Metrics with real processes: statsd packets on a real UDP socket, the
//! admin `/stats` and `/stats/histograms`, readiness while draining.

use std::collections::BTreeMap;
use std::net::UdpSocket;
use std::time::{Duration, Instant};
use testkit::{curl, curl_many, wait_until, Proc};

fn aggregator(extra: &[&str]) -> Proc {
    let mut args = vec!["--bus", "tcp://127.0.0.1:0", "--admin", "127.0.0.1:0"];
    args.extend_from_slice(extra);
    Proc::start("aggregator", &args)
}

fn terminator(agg: &Proc, extra: &[&str]) -> Proc {
    let route = format!("/=aggregator@{}", agg.addr("bus"));
    let t = testkit::terminator(&route, extra);
    let url = format!("{}/readyz", t.addr("admin"));
    wait_until(Duration::from_secs(10), "terminator ready", || {
        curl("GET", &url, None).status == 200
    });
    t
}

fn json(url: &str) -> serde_json::Value {
    serde_json::from_slice(&curl("GET", url, None).body).unwrap()
}

/// Every statsd line received: name → (type, sum of values).
#[derive(Default)]
struct Received {
    lines: BTreeMap<String, (String, f64)>,
}

impl Received {
    fn read(&mut self, sock: &UdpSocket) {
        let mut buf = [0u8; 65536];
        while let Ok(n) = sock.recv(&mut buf) {
            for line in String::from_utf8_lossy(&buf[..n]).lines() {
                // name:value|type[|@rate]
                let Some((name, rest)) = line.split_once(':') else {
                    continue;
                };
                let mut parts = rest.split('|');
                let value: f64 = parts
                    .next()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(f64::NAN);
                let kind = parts.next().unwrap_or("").to_string();
                let e = self
                    .lines
                    .entry(name.to_string())
                    .or_insert((kind.clone(), 0.0));
                if kind == "c" {
                    e.1 += value;
                } else {
                    e.1 = value;
                }
            }
        }
    }

    fn counter(&self, name: &str) -> f64 {
        self.lines.get(name).map_or(0.0, |(_, v)| *v)
    }
}

#[test]
fn statsd_gets_the_documented_names_and_the_exact_request_count() {
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let addr = sock.local_addr().unwrap().to_string();
    let flags = ["--statsd", &addr, "--statsd-flush", "200ms"];
    let agg = aggregator(&flags);
    let t = terminator(&agg, &flags);
    const N: usize = 257;
    let r = curl_many(&vec![format!("{}/echo", t.addr("http")); N]);
    assert!(r.iter().all(|x| x.0 == 200));
    let mut got = Received::default();
    let name = "switchboard.terminator.requests";
    let until = Instant::now() + Duration::from_secs(10);
    while got.counter(name) < N as f64 && Instant::now() < until {
        got.read(&sock);
    }
    // Three more flushes: the total must not move past N.
    let settle = Instant::now() + Duration::from_millis(700);
    while Instant::now() < settle {
        got.read(&sock);
    }
    assert_eq!(got.counter(name), N as f64, "requests counted by statsd");
    assert_eq!(got.counter("switchboard.terminator.status.2xx"), N as f64);
    assert_eq!(
        got.counter("switchboard.aggregator.service.received"),
        N as f64
    );
    for (name, kind) in [
        ("switchboard.terminator.latency.p50", "g"),
        ("switchboard.terminator.latency.p99", "g"),
        ("switchboard.terminator.latency.p999", "g"),
        ("switchboard.terminator.latency.max", "g"),
        ("switchboard.terminator.route.root.2xx.latency.p99", "g"),
        ("switchboard.terminator.in_flight", "g"),
        ("switchboard.terminator.connections", "g"),
        ("switchboard.terminator.bus.aggregator.calls", "c"),
        (
            "switchboard.terminator.bus.aggregator.http.latency.p99",
            "g",
        ),
        ("switchboard.terminator.bus.aggregator.pending", "g"),
        ("switchboard.terminator.bus.aggregator.endpoints", "g"),
        ("switchboard.aggregator.service.http.latency.p99", "g"),
        ("switchboard.aggregator.service.in_flight", "g"),
    ] {
        let e = got.lines.get(name);
        assert!(
            e.is_some_and(|(k, v)| k == kind && v.is_finite()),
            "{name}|{kind} missing or malformed: {e:?}; got {:?}",
            got.lines.keys().collect::<Vec<_>>()
        );
    }
    let p99 = got.counter("switchboard.terminator.latency.p99");
    assert!(p99 > 0.0 && p99 < 1000.0, "p99 {p99} ms");
}

#[test]
fn stats_percentiles_agree_with_the_client() {
    let agg = aggregator(&["--statsd", "off"]);
    let t = terminator(&agg, &["--statsd", "off"]);
    // 30 ms of server-side work per request.
    let r = curl_many(&vec![format!("{}/echo?sleep_ms=30", t.addr("http")); 40]);
    assert!(r.iter().all(|x| x.0 == 200));
    let mut client: Vec<f64> = r.iter().map(|x| x.1.as_secs_f64() * 1000.0).collect();
    client.sort_by(f64::total_cmp);
    let client_p50 = client[client.len() / 2];
    let s = json(&format!("{}/stats", t.addr("admin")));
    let lat = &s["latency_ms"]["latency"];
    assert_eq!(lat["count"], 40, "{s}");
    let server_p50 = lat["p50"].as_f64().unwrap();
    // Same order of magnitude, and the server's view is never longer than
    // the client's (it starts later and ends earlier).
    assert!(server_p50 >= 29.0, "server p50 {server_p50} ms");
    assert!(
        server_p50 <= client_p50 * 1.05 && server_p50 * 10.0 >= client_p50,
        "server p50 {server_p50} ms, client p50 {client_p50} ms"
    );
    let svc = json(&format!("{}/stats", agg.addr("admin")));
    let svc_p50 = svc["latency_ms"]["service.http.latency"]["p50"]
        .as_f64()
        .unwrap();
    assert!(
        (29.0..=server_p50 * 1.05).contains(&svc_p50),
        "service p50 {svc_p50}"
    );
}

#[test]
fn histograms_from_two_terminators_merge_to_the_summed_count() {
    let agg = aggregator(&["--statsd", "off"]);
    let t1 = terminator(&agg, &["--statsd", "off"]);
    let t2 = terminator(&agg, &["--statsd", "off"]);
    let n1 = curl_many(&vec![format!("{}/echo", t1.addr("http")); 100]);
    let n2 = curl_many(&vec![format!("{}/echo?sleep_ms=5", t2.addr("http")); 150]);
    assert!(n1.iter().chain(&n2).all(|x| x.0 == 200));
    let mut merged: Option<hdrhistogram::Histogram<u64>> = None;
    for t in [&t1, &t2] {
        let j = json(&format!("{}/stats/histograms", t.addr("admin")));
        assert_eq!(j["unit"], "us");
        let h = telemetry::export::decode(j["histograms"]["latency"].as_str().unwrap()).unwrap();
        match merged.as_mut() {
            Some(m) => m.add(&h).unwrap(),
            None => merged = Some(h),
        }
    }
    let m = merged.unwrap();
    assert_eq!(m.len(), 250);
    // The merged p90 comes from t2's slower requests: something an
    // average of the two instances' percentiles would not give.
    assert!(
        m.value_at_quantile(0.9) >= 5_000,
        "{}",
        m.value_at_quantile(0.9)
    );
}

#[test]
fn readyz_is_503_while_draining_and_the_request_in_flight_finishes() {
    // A backend, so that the aggregator is ready before it drains.
    let dir = tempfile::tempdir().unwrap();
    let backend = testkit::backend_svc(
        dir.path(),
        "tcp://127.0.0.1:0",
        "tcp://127.0.0.1:0",
        &["--statsd", "off"],
    );
    let be = backend.addr("bus");
    let mut agg = aggregator(&["--statsd", "off", "--backend", &be]);
    let t = terminator(&agg, &["--statsd", "off"]);
    let ready = format!("{}/readyz", agg.addr("admin"));
    wait_until(Duration::from_secs(10), "aggregator ready", || {
        curl("GET", &ready, None).status == 200
    });
    let slow = format!("{}/echo?sleep_ms=1500", t.addr("http"));
    let call = std::thread::spawn(move || curl("GET", &slow, None));
    let stats = format!("{}/stats", agg.addr("admin"));
    wait_until(Duration::from_secs(5), "request in flight", || {
        json(&stats)["gauges"]["service.in_flight"] == 1
    });
    let pid = agg.pid();
    // SAFETY: kill(2) on our own child.
    unsafe {
        libc::kill(pid, libc::SIGTERM);
    }
    wait_until(Duration::from_secs(2), "readyz 503", || {
        let r = curl("GET", &ready, None);
        r.status == 503 && r.text().contains("draining")
    });
    let r = call.join().unwrap();
    assert_eq!(r.status, 200, "the request in flight failed: {}", r.text());
    assert!(agg
        .terminate(Duration::from_secs(10))
        .is_some_and(|s| s.success()));
}
