//! The terminator in front of a service written in another language from
//! docs/protocol.md alone: `docs/examples/echo_service.py`, a libzmq 4.3
//! ROUTER through pyzmq. Real processes, real curl.

use std::time::{Duration, Instant};
use testkit::{curl, python_echo_service, terminator};

#[test]
fn a_libzmq_service_started_with_the_terminator_is_used_as_soon_as_it_is_up() {
    let ep = testkit::free_endpoint();
    // Start order must not matter: the terminator first, the service at
    // the same moment.
    let t = terminator(&format!("/=echo@{ep}"), &[]);
    let py = python_echo_service(&ep);
    let up = Instant::now();
    let url = format!("{}/hello", t.addr("http"));
    let mut first_ok = None;
    let mut refused = 0;
    while up.elapsed() < Duration::from_secs(5) {
        let r = curl("POST", &url, Some(b"hi from curl"));
        if r.status == 200 {
            assert_eq!(r.text(), "hi from curl");
            first_ok = Some(up.elapsed());
            break;
        }
        assert_eq!(r.status, 503, "{}", r.text());
        refused += 1;
        std::thread::sleep(Duration::from_millis(20));
    }
    let first_ok = first_ok.unwrap_or_else(|| panic!("never answered; {refused} refusals"));
    // At most one reconnect back-off after the service is up: 1 s, plus
    // its jitter (25%), plus slack for a loaded machine.
    assert!(first_ok < Duration::from_millis(2500), "{first_ok:?}");
    for i in 0..100 {
        let body = format!("body {i}");
        let r = curl("POST", &url, Some(body.as_bytes()));
        assert_eq!((r.status, r.text()), (200, body));
    }
    drop(py);
    // Gone: 503 (or 502 for a call caught mid-flight), quickly, not a hang.
    let t0 = Instant::now();
    let r = curl("GET", &url, None);
    assert!(matches!(r.status, 502 | 503), "{}", r.status);
    assert!(t0.elapsed() < Duration::from_secs(2));
}

#[test]
fn both_runtime_layouts_serve_and_count_each_request_and_instance_once() {
    let py = python_echo_service("tcp://127.0.0.1:*");
    let route = format!("/=echo@{}", py.addr("bus"));
    for flags in [
        &["--runtime", "per-core", "--threads", "2", "--statsd", "off"][..],
        &["--runtime", "shared", "--threads", "2", "--statsd", "off"][..],
    ] {
        let t = terminator(&route, flags);
        let url = format!("{}/x", t.addr("http"));
        // Separate curl processes: separate connections, so both shards of
        // the per-core layout take some.
        for i in 0..40 {
            let body = format!("n{i}");
            let r = curl("POST", &url, Some(body.as_bytes()));
            assert_eq!((r.status, r.text()), (200, body), "{flags:?}");
        }
        let s: serde_json::Value =
            serde_json::from_slice(&curl("GET", &format!("{}/stats", t.addr("admin")), None).body)
                .unwrap();
        assert_eq!(s["counters"]["requests"], 40, "{flags:?}: {s}");
        assert_eq!(s["latency_ms"]["latency"]["count"], 40, "{flags:?}: {s}");
        // One instance, reported once however many shards hold a client.
        assert_eq!(s["gauges"]["bus.echo.endpoints"], 1, "{flags:?}: {s}");
        assert_eq!(s["gauges"]["bus.echo.connected"], 1, "{flags:?}: {s}");
    }
}
