//! The real binary against in-process servers: latency accounting (corrected
//! vs raw), output formats, the rate check, bad input.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::{loadtest, loadtest_json, serial, start, Behavior};

fn ms(v: &serde_json::Value, section: &str, p: &str) -> f64 {
    v[section][p]
        .as_f64()
        .unwrap_or_else(|| panic!("{section}.{p} missing in {v}"))
}

#[test]
fn open_loop_reports_the_servers_delay() {
    let _g = serial();
    let srv = start(Behavior::Delay(Duration::from_millis(10)));
    let (o, v) = loadtest_json(&["-c", "4", "-d", "1s", "--rate", "50", &srv.url("/")]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    let p50 = ms(&v, "latency_ms", "p50");
    assert!((9.9..20.0).contains(&p50), "p50 {p50} ms: {v}");
    let raw = ms(&v, "raw_latency_ms", "p50");
    assert!((9.9..20.0).contains(&raw), "raw p50 {raw} ms: {v}");
    assert_eq!(v["target_rps"], 50.0);
    // Sending stops when the window closes: a request due in its last
    // moments that a loaded machine did not get out in time is `unsent`.
    let (sent, unsent) = (
        v["requests"].as_u64().unwrap(),
        v["unsent"].as_u64().unwrap(),
    );
    assert_eq!(sent + unsent, 50, "{v}");
    assert!(v["rps"].as_f64().unwrap() >= 47.5);
    assert_eq!(v["status"]["200"].as_u64().unwrap(), sent);
}

/// Half the requests are refused at once with 503, half answered 200 after
/// 20 ms: the mixed percentiles hide both; by status class they show.
#[test]
fn latency_by_status_class_separates_fast_refusals_from_slow_successes() {
    let _g = serial();
    let srv = start(Behavior::Delay(Duration::from_millis(20)));
    let url = format!("{}{{i}}", srv.url("/"));
    // Enough connections that a refusal seldom waits behind a success; the
    // median, which a loaded machine's stray stall does not move.
    let (o, v) = loadtest_json(&[
        "-c", "16", "-d", "1s", "--rate", "100", "--keys", "502..504", &url,
    ]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert_eq!(v["status"]["200"], v["status"]["503"], "{v}");
    let ok = ms(&v["latency_by_class_ms"], "2xx", "p50");
    let refused = ms(&v["latency_by_class_ms"], "5xx", "p50");
    assert!(ok >= 19.9, "2xx p50 {ok} ms: {v}");
    assert!(refused < 5.0, "5xx p50 {refused} ms: {v}");
    assert!(v["latency_by_class_ms"].get("4xx").is_none(), "{v}");
}

/// One connection at 100 req/s for 3 s; 200 ms in, one request stalls for
/// 1 s. The ~100 requests due during the stall wait behind it: measured from
/// when they were due (corrected) p99 shows the stall; measured from when
/// they were actually sent (raw) only the stalled request itself does, well
/// under 1% of the 300.
#[test]
fn corrected_latency_shows_a_stall_that_raw_latency_hides() {
    let _g = serial();
    let srv = start(Behavior::StallOnce {
        after: Duration::from_millis(200),
        stall: Duration::from_secs(1),
    });
    let (o, v) = loadtest_json(&["-c", "1", "-d", "3s", "--rate", "100", &srv.url("/")]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    let corrected = ms(&v, "latency_ms", "p99");
    let raw = ms(&v, "raw_latency_ms", "p99");
    assert!(corrected >= 500.0, "corrected p99 {corrected} ms: {v}");
    assert!(raw < 100.0, "raw p99 {raw} ms: {v}");
    assert!(ms(&v, "latency_ms", "max") >= 1000.0);
    assert!(
        ms(&v, "schedule_lag_ms", "max") >= 900.0,
        "the backlog waited: {v}"
    );
    // Every scheduled request is accounted for; the backlog drained well
    // before the end (at most the last one or two may miss a loaded close).
    let (sent, unsent) = (
        v["requests"].as_u64().unwrap(),
        v["unsent"].as_u64().unwrap(),
    );
    assert_eq!(sent + unsent, 300, "{v}");
    assert!(unsent <= 3, "{v}");
}

#[test]
fn json_and_hgrm_count_every_request_the_server_saw() {
    let _g = serial();
    let srv = start(Behavior::Fast);
    let dir = std::env::temp_dir().join(format!("loadtest-hgrm-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let hgrm = dir.join("out.hgrm");
    let (o, v) = loadtest_json(&[
        "-c",
        "4",
        "-t",
        "2",
        "-d",
        "500ms",
        "--hgrm",
        hgrm.to_str().unwrap(),
        &srv.url("/"),
    ]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    let seen = srv.count.load(Ordering::SeqCst);
    assert!(seen > 100, "the server saw {seen}");
    assert_eq!(v["requests"].as_u64().unwrap(), seen, "{v}");
    assert_eq!(v["status"]["200"].as_u64().unwrap(), seen);
    assert_eq!(v["target_rps"], serde_json::Value::Null);
    assert_eq!(v["mode"], "closed");
    assert_eq!(v["errors"], serde_json::json!({}));
    let rps = v["rps"].as_f64().unwrap();
    let dur = v["duration_s"].as_f64().unwrap();
    assert!(
        (rps * dur - seen as f64).abs() < 1.0,
        "rps × duration = requests"
    );
    for section in ["latency_ms", "raw_latency_ms", "schedule_lag_ms"] {
        for p in ["p50", "p90", "p99", "p999", "max"] {
            ms(&v, section, p);
        }
    }

    // The .hgrm table: `Value Percentile TotalCount 1/(1-Percentile)`, then
    // the `#[...]` footer; the last row's total is every request.
    let text = std::fs::read_to_string(&hgrm).unwrap();
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        ["Value", "Percentile", "TotalCount", "1/(1-Percentile)"]
    );
    assert_eq!(lines.next().unwrap(), "");
    let rows: Vec<Vec<f64>> = lines
        .by_ref()
        .take_while(|l| !l.starts_with('#'))
        .map(|l| l.split_whitespace().map(|x| x.parse().unwrap()).collect())
        .collect();
    assert!(rows.len() > 10);
    assert!(rows
        .windows(2)
        .all(|w| w[0][0] <= w[1][0] && w[0][1] <= w[1][1]));
    let last = rows.last().unwrap();
    assert_eq!((last[1], last[2] as u64), (1.0, seen));
    assert!(
        text.contains("#[Mean    =")
            && text.contains("#[Max     =")
            && text.contains("#[Buckets =")
    );
    assert!(
        text.contains(&format!("Total count    = {seen:>12}]")),
        "{text}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_target_the_run_cannot_meet_fails_with_a_message() {
    let _g = serial();
    let srv = start(Behavior::Delay(Duration::from_millis(100)));
    let (o, v) = loadtest_json(&["-c", "1", "-d", "1s", "--rate", "1000", &srv.url("/")]);
    assert_eq!(o.code, 1, "{}", o.stderr);
    assert!(o.stderr.contains("target rate missed"), "{}", o.stderr);
    assert!(o.stderr.contains("could not keep up"), "{}", o.stderr);
    assert_eq!(v["met_target"], false);
    assert!(v["unsent"].as_u64().unwrap() > 900);
}

#[test]
fn keys_round_robin_over_a_range() {
    let _g = serial();
    let srv = start(Behavior::Fast);
    let (o, v) = loadtest_json(&[
        "-c",
        "2",
        "-d",
        "300ms",
        "--rate",
        "300",
        "--keys",
        "5..8",
        &srv.url("/kv/{i}"),
    ]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    let paths = srv.paths.lock().unwrap().clone();
    assert_eq!(
        paths.keys().collect::<Vec<_>>(),
        ["/kv/5", "/kv/6", "/kv/7"]
    );
    let counts: Vec<u64> = paths.values().copied().collect();
    let (sent, unsent) = (
        v["requests"].as_u64().unwrap(),
        v["unsent"].as_u64().unwrap(),
    );
    assert_eq!(sent + unsent, 90, "{v}");
    assert_eq!(counts.iter().sum::<u64>(), sent);
    assert!(
        counts.iter().all(|c| c.abs_diff(30) <= 1 + unsent),
        "round robin: {counts:?}"
    );
}

/// Method, headers and body reach the server on every client: the lean
/// HTTP/1.1 one, hyper's (`--hyper`) and h2c (`--h2`).
#[test]
fn method_headers_and_body_on_every_protocol() {
    let _g = serial();
    let srv = start(Behavior::Fast);
    let common = [
        "-m",
        "POST",
        "--body",
        "hello",
        "-H",
        "x-test: 1",
        "-H",
        "content-type: text/plain",
    ];
    for (flags, path, version) in [
        (&["-c", "2"][..], "/lean", http::Version::HTTP_11),
        (
            &["--hyper", "-c", "2"][..],
            "/hyper",
            http::Version::HTTP_11,
        ),
        (
            &["--h2", "-c", "1", "--streams", "4"][..],
            "/h2",
            http::Version::HTTP_2,
        ),
    ] {
        let mut args = vec!["-d", "300ms"];
        args.extend_from_slice(flags);
        args.extend_from_slice(&common);
        let url = srv.url(path);
        args.push(&url);
        let (o, v) = loadtest_json(&args);
        assert_eq!(o.code, 0, "{flags:?}: {}", o.stderr);
        let served = srv.paths.lock().unwrap()[path];
        assert!(served > 10, "{flags:?}: {served}");
        assert_eq!(v["requests"].as_u64().unwrap(), served, "{flags:?}: {v}");
        let seen = srv.last.lock().unwrap()[path].clone();
        assert_eq!(
            seen,
            common::Seen {
                method: "POST".into(),
                version,
                x_test: Some("1".into()),
                content_type: Some("text/plain".into()),
                body: bytes::Bytes::from_static(b"hello"),
            },
            "{flags:?}"
        );
        let protocol = if version == http::Version::HTTP_2 {
            "h2c"
        } else {
            "http/1.1"
        };
        assert_eq!(v["protocol"], protocol);
    }
}

#[test]
fn human_summary_and_interval_lines() {
    let _g = serial();
    let srv = start(Behavior::Fast);
    let o = loadtest(&["-c", "2", "-d", "1200ms", "--rate", "200", &srv.url("/")]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(
        o.stdout.contains("target 200.0 req/s, achieved"),
        "{}",
        o.stdout
    );
    assert!(o.stdout.contains("corrected") && o.stdout.contains("schedule lag"));
    // `(N responses, M unsent)`: every one of the 240 scheduled requests.
    let counts: Vec<u64> = o
        .stdout
        .split_once("achieved")
        .and_then(|(_, rest)| rest.split_once('('))
        .map(|(_, rest)| {
            rest.split(|c: char| !c.is_ascii_digit())
                .filter(|t| !t.is_empty())
                .take(2)
                .map(|t| t.parse().unwrap())
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(counts.len(), 2, "{}", o.stdout);
    assert_eq!(counts[0] + counts[1], 240, "{}", o.stdout);
    assert!(
        o.stdout.contains(&format!("status    200: {}", counts[0])),
        "{}",
        o.stdout
    );
    assert!(
        o.stderr.contains("[   1s]"),
        "a per-second line: {}",
        o.stderr
    );
    // stderr is a pipe here: plain lines, no progress bar drawing.
    assert!(
        !o.stderr.contains('\r') && !o.stderr.contains('\x1b'),
        "no progress bar off a terminal: {:?}",
        o.stderr
    );
}

#[test]
fn server_stats_beside_client_latency_and_a_warning_when_absent() {
    let _g = serial();
    let srv = start(Behavior::Delay(Duration::from_millis(5)));
    // Traffic before the window, which the before snapshot subtracts.
    let _ = loadtest(&["-q", "-c", "1", "-d", "200ms", &srv.url("/")]);
    let before = srv.count.load(Ordering::SeqCst);
    let (o, v) = loadtest_json(&[
        "-c",
        "2",
        "-d",
        "500ms",
        "--server-stats",
        &srv.url("/stats/histograms"),
        &srv.url("/"),
    ]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    let s = &v["server"][0];
    assert_eq!(s["subtracted"], true, "{v}");
    let in_window = srv.count.load(Ordering::SeqCst) - before;
    assert_eq!(s["requests"].as_u64().unwrap(), in_window, "{v}");
    let p99 = s["latency_ms"]["p99"].as_f64().unwrap();
    assert!((4.5..50.0).contains(&p99), "server p99 {p99}");

    let o = loadtest(&[
        "-c",
        "1",
        "-d",
        "200ms",
        "--server-stats",
        &srv.url("/nope"),
        &srv.url("/"),
    ]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(o.stderr.contains("warning: --server-stats"), "{}", o.stderr);
}

/// The verdicts rest on what cannot vary with the machine's load: an SLO
/// of seconds that a fast server always meets, and one below a server's
/// fixed delay that it never can.
#[test]
fn sweep_writes_csv_svg_and_the_max_rate() {
    let _g = serial();
    let srv = start(Behavior::Fast);
    let dir = std::env::temp_dir().join(format!("loadtest-sweep-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (csv, svg) = (dir.join("s.csv"), dir.join("s.svg"));
    let o = loadtest(&[
        "-c",
        "2",
        "-d",
        "500ms",
        "--warmup",
        "100ms",
        "--sweep",
        "100:200:100",
        "--slo",
        "p99=5s",
        "--csv",
        csv.to_str().unwrap(),
        "--svg",
        svg.to_str().unwrap(),
        &srv.url("/"),
    ]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(
        o.stdout.contains("max rate with p99 <= 5000 ms: 200 req/s"),
        "{}",
        o.stdout
    );
    let csv = std::fs::read_to_string(csv).unwrap();
    assert_eq!(csv.lines().count(), 3, "{csv}");
    assert!(csv.starts_with("target_rps,achieved_rps,"));
    let svg = std::fs::read_to_string(svg).unwrap();
    assert!(
        svg.starts_with("<svg") && svg.contains("SLO p99 5k ms"),
        "{svg}"
    );
    let _ = std::fs::remove_dir_all(dir);

    let slow = start(Behavior::Delay(Duration::from_millis(30)));
    let o = loadtest(&[
        "-c",
        "4",
        "-d",
        "500ms",
        "--sweep",
        "20:40:20",
        "--slo",
        "p50=10ms",
        &slow.url("/"),
    ]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(
        o.stdout
            .contains("no rate tried met p50 <= 10 ms (lowest tried: 20 req/s)"),
        "{}",
        o.stdout
    );
    assert_eq!(o.stdout.matches("fail: p50").count(), 2, "{}", o.stdout);
}

#[test]
fn bad_input_exits_2_with_a_message() {
    for (args, msg) in [
        (&["-d", "5x", "http://127.0.0.1:1/"][..], "bad duration"),
        (&["-d", "0s", "http://127.0.0.1:1/"][..], "--duration"),
        (&["--rate", "fast", "http://127.0.0.1:1/"][..], "bad rate"),
        (&["--rate=-3", "http://127.0.0.1:1/"][..], "bad rate"),
        (&["not a url"][..], "bad URL"),
        (&["https://127.0.0.1:1/"][..], "https is not supported"),
        (&["http://127.0.0.1:1/k{i}"][..], "--keys"),
        (&["-c", "0", "http://127.0.0.1:1/"][..], "0"),
        (&["-H", "nocolon", "http://127.0.0.1:1/"][..], "bad header"),
        (&["-m", "GE T", "http://127.0.0.1:1/"][..], "bad method"),
        (
            &["--keys", "9..5", "http://127.0.0.1:1/{i}"][..],
            "bad --keys",
        ),
        (
            &["--sweep", "1:2", "http://127.0.0.1:1/"][..],
            "bad --sweep",
        ),
        (
            &["--sweep", "100:50:10", "http://127.0.0.1:1/"][..],
            "bad --sweep",
        ),
        (&["--sweep", "a:b:c", "http://127.0.0.1:1/"][..], "bad rate"),
        (
            &["--sweep", "1:1000000:1", "http://127.0.0.1:1/"][..],
            "1000 steps",
        ),
        (&["--find-max", "http://127.0.0.1:1/"][..], "--slo"),
        (
            &["--slo", "p98=3ms", "--find-max", "http://127.0.0.1:1/"][..],
            "bad --slo",
        ),
        (
            &["--body-file", "/nonexistent/x", "http://127.0.0.1:1/"][..],
            "--body-file",
        ),
        (&["http://127.0.0.1:99999/"][..], "bad port"),
        (
            &["--rate", "0.5", "-d", "1s", "http://127.0.0.1:1/"][..],
            "less than one request",
        ),
        (
            &["--hgrm", "/nonexistent/x.hgrm", "http://127.0.0.1:1/"][..],
            "no directory",
        ),
        (&[][..], "URL"),
    ] {
        let o = loadtest(args);
        assert_eq!(o.code, 2, "{args:?}: {}", o.stderr);
        assert!(o.stderr.contains(msg), "{args:?}: {}", o.stderr);
        assert!(!o.stderr.contains("panicked"), "{args:?}: {}", o.stderr);
    }
    // Unreachable is not bad input: exit 1, one clear line.
    let o = loadtest(&["-d", "1s", "http://127.0.0.1:1/"]);
    assert_eq!(o.code, 1, "{}", o.stderr);
    assert!(o.stderr.contains("cannot connect"), "{}", o.stderr);

    // Reachable, but closes every connection unanswered: nothing was
    // measured, and the exit status says so.
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/", l.local_addr().unwrap());
    std::thread::spawn(move || {
        for s in l.incoming() {
            drop(s);
        }
    });
    for proto in [&[][..], &["--h2"][..]] {
        let mut args = vec!["-q", "-c", "2", "-d", "300ms"];
        args.extend_from_slice(proto);
        args.push(&url);
        let o = loadtest(&args);
        assert_eq!(o.code, 1, "{proto:?}: {}", o.stderr);
        assert!(o.stderr.contains("no responses"), "{proto:?}: {}", o.stderr);
    }
}
