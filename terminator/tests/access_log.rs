//! `--access-log FILE` on the real terminator: one JSON line per request
//! with what an operator's tools need (client, status, bytes, duration,
//! service, instance, request id, shed); the file is reopened on SIGHUP
//! after logrotate moved it; the last requests before a SIGTERM are in the
//! file when the process has exited.

mod common;

use std::time::Duration;
use testkit::{curl_with, poll, wait_until};

fn lines(p: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(p)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

#[test]
fn every_request_is_one_json_line_and_sighup_reopens_the_file() {
    let agg = common::aggregator();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let mut t = common::terminator(
        &agg,
        &[
            "--access-log",
            log.to_str().unwrap(),
            // Nothing listens there: 503, no instance.
            "--route",
            "/down=nobody@tcp://127.0.0.1:1",
        ],
        &[],
        None,
    );
    let base = t.addr("http");
    wait_until(Duration::from_secs(20), "the terminator serves", || {
        curl_with("GET", &format!("{base}/echo"), None, &[]).status == 200
    });

    let r = curl_with(
        "POST",
        &format!("{base}/echo?who=me"),
        Some(b"hello"),
        &["x-request-id: access-log-test-1"],
    );
    assert_eq!(r.status, 200);
    let down = curl_with("GET", &format!("{base}/down/x"), None, &[]);
    assert_eq!(down.status, 503);

    // Lines are found by what they are about: the writer batches every
    // 10 ms, so how many warm-up lines are already written is not known.
    let mut all = Vec::new();
    let found = poll(Duration::from_secs(10), || {
        all = lines(&log);
        all.iter().any(|l| l["path"] == "/down/x")
            && all.iter().any(|l| l["request_id"] == "access-log-test-1")
    });
    assert!(found, "{all:#?}");
    let ok = all
        .iter()
        .find(|l| l["request_id"] == "access-log-test-1")
        .unwrap();
    assert_eq!(ok["request_id"], "access-log-test-1");
    assert_eq!(ok["method"], "POST");
    assert_eq!(ok["path"], "/echo?who=me");
    assert_eq!(ok["status"], 200);
    assert_eq!(ok["bytes_in"], 5);
    assert_eq!(ok["bytes_out"].as_u64(), Some(r.body.len() as u64));
    assert_eq!(ok["service"], "aggregator");
    assert_eq!(ok["instance"], agg.as_str());
    assert_eq!(ok["retries"], 0);
    assert_eq!(ok["shed"], false);
    assert!(
        ok["client"].as_str().unwrap().starts_with("127.0.0.1:"),
        "{ok}"
    );
    assert!(ok["duration_ms"].as_f64().unwrap() > 0.0, "{ok}");
    assert!(ok["time"].as_str().unwrap().ends_with('Z'), "{ok}");
    let d = all.iter().find(|l| l["path"] == "/down/x").unwrap();
    assert_eq!(
        (d["status"].as_u64(), d["service"].as_str()),
        (Some(503), Some("nobody"))
    );
    assert_eq!(d["bytes_out"].as_u64(), Some(down.body.len() as u64));

    // logrotate: move the file, then SIGHUP; new lines go to a new file.
    let rotated = dir.path().join("access.log.1");
    std::fs::rename(&log, &rotated).unwrap();
    // SAFETY: kill(2) on our own child.
    unsafe {
        libc::kill(t.pid(), libc::SIGHUP);
    }
    // Requests until one lands in the new file (the reopen is asynchronous);
    // none may be lost or land anywhere else.
    let mut sent = 0;
    let reopened = poll(Duration::from_secs(10), || {
        sent += 1;
        curl_with("GET", &format!("{base}/echo?n={sent}"), None, &[]);
        log.exists() && !lines(&log).is_empty()
    });
    assert!(reopened, "no new file after SIGHUP");
    // Every one of those requests once, in one file or the other.
    let numbered = |v: &[serde_json::Value]| -> Vec<String> {
        v.iter()
            .filter_map(|l| l["path"].as_str())
            .filter(|p| p.starts_with("/echo?n="))
            .map(String::from)
            .collect()
    };
    let mut seen = Vec::new();
    let all_in = poll(Duration::from_secs(10), || {
        seen = numbered(&lines(&rotated));
        seen.extend(numbered(&lines(&log)));
        seen.len() >= sent
    });
    seen.sort();
    let mut want: Vec<String> = (1..=sent).map(|n| format!("/echo?n={n}")).collect();
    want.sort();
    assert!(all_in && seen == want, "lines lost or doubled: {seen:?}");

    // SIGTERM right after a request: its line is written before the exit.
    let last = curl_with(
        "GET",
        &format!("{base}/echo?last"),
        None,
        &["x-request-id: the-last-one"],
    );
    assert_eq!(last.status, 200);
    let status = t
        .terminate(Duration::from_secs(20))
        .expect("exits on SIGTERM");
    assert!(status.success(), "{status:?}");
    let after = lines(&log);
    assert_eq!(after.last().unwrap()["request_id"], "the-last-one");
}

#[test]
fn stdout_gets_the_lines_after_the_listening_line() {
    let agg = common::aggregator();
    let mut t = common::terminator(&agg, &["--access-log", "stdout"], &[], None);
    let base = t.addr("http");
    wait_until(Duration::from_secs(20), "the terminator serves", || {
        curl_with(
            "GET",
            &format!("{base}/echo"),
            None,
            &["x-request-id: to-stdout"],
        )
        .status
            == 200
    });
    t.terminate(Duration::from_secs(20)).expect("exits");
    // The pipe is read by a thread of the test: give it a moment.
    let mut out = String::new();
    let found = poll(Duration::from_secs(10), || {
        out = t.stdout();
        out.lines()
            .filter(|l| l.starts_with('{'))
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .any(|v| v["request_id"] == "to-stdout")
    });
    assert!(found, "stdout: {out}");
}
