//! `sbctl` against a real fleet: etcd, backend-svc, three versions of the
//! aggregator (v1 and v2 healthy, v3 with no backend: its /kv answers 503)
//! and the terminator, under load from loadtest. `weights` and `status`
//! show and set the split; `ramp` of the failing v3 rolls back by itself;
//! `ramp` of the healthy v2 reaches 100%; `ghost` mirrors to v1 and
//! reports no mismatch, refuses a non-idempotent method, and goes off.

use std::process::{Command, Stdio};
use std::time::Duration;
use testkit::etcd::Etcd;
use testkit::{bin, curl, wait_until, Proc};

fn aggregator(etcd: &Etcd, version: &str, backend: &str) -> Proc {
    testkit::etcd::versioned_aggregator(etcd, version, &["--backend", backend])
}

fn sbctl(etcd: &Etcd, admin: &str, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_sbctl"))
        .args(["--etcd", &etcd.url(), "--terminator-admin", admin])
        .args(args)
        .output()
        .expect("run sbctl");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn weights(etcd: &Etcd, admin: &str) -> serde_json::Value {
    let (ok, out, err) = sbctl(etcd, admin, &["policy", "aggregator"]);
    assert!(ok, "{err}");
    serde_json::from_str::<serde_json::Value>(&out).unwrap()["weights"].clone()
}

#[test]
fn ramp_rolls_back_a_failing_version_and_completes_a_healthy_one() {
    let etcd = Etcd::start();
    let data = tempfile::tempdir().unwrap();
    let backend = testkit::backend_svc(data.path(), "tcp://127.0.0.1:0", "tcp://127.0.0.1:0", &[]);
    let good = backend.addr("bus");
    let _v1 = aggregator(&etcd, "v1", &good);
    let _v2 = aggregator(&etcd, "v2", &good);
    let _v3 = aggregator(&etcd, "v3", &testkit::free_endpoint());
    let t = testkit::etcd::terminator(&etcd, &[]);
    let (http, admin) = (t.addr("http"), t.addr("admin"));

    // Everything to v1 first.
    let (ok, out, err) = sbctl(&etcd, &admin, &["weights", "aggregator", "v1=100"]);
    assert!(ok && out.contains("v1=100"), "{out}{err}");
    wait_until(Duration::from_secs(20), "the key is served by v1", || {
        curl("PUT", &format!("{http}/kv/ramp"), Some(b"x")).status == 204
            && curl("GET", &format!("{http}/kv/ramp"), None).header("x-switchboard-version")
                == Some("v1")
    });
    let (ok, out, err) = sbctl(&etcd, &admin, &["weights", "aggregator", "v1=-1"]);
    assert!(!ok && err.contains("whole number"), "{out}{err}");

    let mut load = Command::new(bin("loadtest"))
        .args([
            "-R",
            "300",
            "-d",
            "40s",
            "-c",
            "8",
            "-q",
            "--tolerance",
            "99",
        ])
        .arg(format!("{http}/kv/ramp"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("loadtest");

    let (ok, out, err) = sbctl(&etcd, &admin, &["status", "aggregator", "--window", "1s"]);
    assert!(ok, "{err}");
    for v in ["v1", "v2", "v3"] {
        assert!(out.contains(v), "status lacks {v}:\n{out}");
    }

    let (ok, out, err) = sbctl(
        &etcd,
        &admin,
        &[
            "ramp",
            "aggregator",
            "v3",
            "--step",
            "25",
            "--every",
            "1s",
            "--min-requests",
            "5",
        ],
    );
    assert!(!ok, "a failing version was ramped up:\n{out}{err}");
    assert!(
        err.contains("rolled back") && err.contains("error rate"),
        "{err}"
    );
    let w = weights(&etcd, &admin);
    assert_eq!(
        (w["v3"].as_u64(), w["v1"].as_u64()),
        (Some(0), Some(100)),
        "{w}"
    );

    let (ok, out, err) = sbctl(
        &etcd,
        &admin,
        &[
            "ramp",
            "aggregator",
            "v2",
            "--step",
            "50",
            "--every",
            "1s",
            "--min-requests",
            "5",
        ],
    );
    assert!(ok, "the healthy version did not reach 100%:\n{out}{err}");
    assert!(out.contains("ramp done"), "{out}");
    let w = weights(&etcd, &admin);
    assert_eq!(
        (w["v2"].as_u64(), w["v1"].as_u64()),
        (Some(100), Some(0)),
        "{w}"
    );

    // Ghost: v1 (same backend) gets a copy of every GET; the answers agree.
    let (ok, out, err) = sbctl(
        &etcd,
        &admin,
        &["ghost", "aggregator", "v1", "--fraction", "1"],
    );
    assert!(ok && out.contains("ghost v1"), "{out}{err}");
    wait_until(Duration::from_secs(10), "ghost verdicts", || {
        let (ok, out, _) = sbctl(&etcd, &admin, &["ghost", "aggregator"]);
        ok && out
            .lines()
            .find(|l| l.starts_with('/'))
            .and_then(|l| l.split_whitespace().nth(2))
            .and_then(|m| m.parse::<u64>().ok())
            .is_some_and(|m| m > 20)
    });
    let (ok, out, err) = sbctl(&etcd, &admin, &["status", "aggregator"]);
    assert!(ok && out.contains("ghost v1 on /: matched "), "{out}{err}");
    let (_, out, _) = sbctl(&etcd, &admin, &["ghost", "aggregator"]);
    let row: Vec<&str> = out
        .lines()
        .find(|l| l.starts_with('/'))
        .unwrap()
        .split_whitespace()
        .collect();
    assert_eq!(
        (row[1], row[3]),
        ("v1", "0"),
        "no mismatch between equals:\n{out}"
    );
    // Refused before etcd: POST is not idempotent; the ghost stays.
    let (ok, _, err) = sbctl(
        &etcd,
        &admin,
        &["ghost", "aggregator", "v1", "--methods", "POST"],
    );
    assert!(!ok && err.contains("not idempotent"), "{err}");
    let (ok, _, err) = sbctl(
        &etcd,
        &admin,
        &["ghost", "aggregator", "v1", "--fraction", "1.5"],
    );
    assert!(!ok && err.contains("from 0 to 1"), "{err}");
    let (ok, out, err) = sbctl(&etcd, &admin, &["policy", "aggregator"]);
    assert!(ok && out.contains(r#""ghost""#), "{out}{err}");
    let (ok, _, err) = sbctl(&etcd, &admin, &["ghost", "aggregator", "--off"]);
    assert!(ok, "{err}");
    let (_, out, _) = sbctl(&etcd, &admin, &["policy", "aggregator"]);
    assert!(!out.contains("ghost"), "{out}");
    let _ = load.kill();
    let _ = load.wait();
}
