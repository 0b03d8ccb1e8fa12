//! The full chain with every bus hop under CURVE, as `scripts/up --curve`
//! runs it: each service authorises only its caller's key. /echo and /kv
//! work; `kill -9` of the aggregator and of backend-svc, restarted with
//! the same keys on the same endpoints, recovers as under NULL; a
//! terminator whose key nobody authorised gets an error, never a reply,
//! and the aggregator counts the refusal.

use bus::curve::KeyPair;
use std::path::{Path, PathBuf};
use std::time::Duration;
use testkit::{curl, wait_until, Proc};

struct Keys {
    dir: tempfile::TempDir,
}

impl Keys {
    /// A pair per process, and a directory per service holding the one
    /// public key it lets in (what `scripts/up --curve` makes).
    fn make() -> Keys {
        let dir = tempfile::tempdir().unwrap();
        for name in ["backend-svc", "aggregator", "terminator", "intruder"] {
            KeyPair::generate().write_files(dir.path(), name).unwrap();
        }
        for (service, caller) in [("backend", "aggregator"), ("aggregator", "terminator")] {
            let auth = dir.path().join(format!("authorized-{service}"));
            std::fs::create_dir_all(&auth).unwrap();
            std::fs::copy(
                dir.path().join(format!("{caller}.key")),
                auth.join(format!("{caller}.key")),
            )
            .unwrap();
        }
        Keys { dir }
    }

    fn path(&self, name: &str) -> String {
        let p: PathBuf = self.dir.path().join(name);
        p.to_str().unwrap().to_string()
    }
}

fn backend(k: &Keys, data: &Path, bus: &str, events: &str) -> Proc {
    let (secret, auth) = (
        k.path("backend-svc.key_secret"),
        k.path("authorized-backend"),
    );
    let p = testkit::backend_svc(
        data,
        bus,
        events,
        &[
            "--bus-security",
            "curve",
            "--curve-secret",
            &secret,
            "--curve-authorized",
            &auth,
        ],
    );
    wait_ready(&p);
    p
}

fn aggregator(k: &Keys, bus: &str, b: &Proc) -> Proc {
    let (secret, auth) = (
        k.path("aggregator.key_secret"),
        k.path("authorized-aggregator"),
    );
    let server = k.path("backend-svc.key");
    let (backend, events) = (b.addr("bus"), b.addr("events"));
    let p = Proc::start(
        "aggregator",
        &[
            "--bus",
            bus,
            "--admin",
            "127.0.0.1:0",
            "--backend",
            &backend,
            "--backend-events",
            &events,
            "--bus-security",
            "curve",
            "--curve-secret",
            &secret,
            "--curve-authorized",
            &auth,
            "--curve-server-key",
            &server,
        ],
    );
    wait_ready(&p);
    p
}

fn terminator(k: &Keys, who: &str, agg_bus: &str) -> Proc {
    let secret = k.path(&format!("{who}.key_secret"));
    let server = k.path("aggregator.key");
    testkit::terminator(
        &format!("/=aggregator@{agg_bus};2s"),
        &[
            "--bus-security",
            "curve",
            "--curve-secret",
            &secret,
            "--curve-server-key",
            &server,
        ],
    )
}

fn wait_ready(p: &Proc) {
    let url = format!("{}/readyz", p.addr("admin"));
    wait_until(Duration::from_secs(20), "ready", || {
        curl("GET", &url, None).status == 200
    });
}

fn refused_peers(agg: &Proc) -> u64 {
    let r = curl("GET", &format!("{}/stats", agg.addr("admin")), None);
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap_or_default();
    v["service"]["refused_peers"].as_u64().unwrap_or(0)
}

#[test]
fn curve_chain_serves_and_recovers_from_kill_9_with_the_same_keys() {
    let keys = Keys::make();
    let data = tempfile::tempdir().unwrap();
    let mut b = backend(&keys, data.path(), "tcp://127.0.0.1:0", "tcp://127.0.0.1:0");
    let mut agg = aggregator(&keys, "tcp://127.0.0.1:0", &b);
    let agg_bus = agg.addr("bus");
    let t = terminator(&keys, "terminator", &agg_bus);
    let url = |p: &str| format!("{}{p}", t.addr("http"));
    wait_until(Duration::from_secs(20), "the chain answers", || {
        curl("GET", &url("/echo"), None).status == 200
    });
    assert_eq!(curl("PUT", &url("/kv/sealed"), Some(b"v1")).status, 204);
    let r = curl("GET", &url("/kv/sealed"), None);
    assert_eq!((r.status, r.text()), (200, "v1".to_string()));

    // The aggregator dies with no goodbye and comes back with its keys.
    agg.kill9();
    agg = aggregator(&keys, &agg_bus, &b);
    wait_until(
        Duration::from_secs(20),
        "/echo after the aggregator's restart",
        || curl("GET", &url("/echo"), None).status == 200,
    );
    let r = curl("GET", &url("/kv/sealed"), None);
    assert_eq!((r.status, r.text()), (200, "v1".to_string()));

    // Then backend-svc, on the same endpoints and data.
    let (bus, events) = (b.addr("bus"), b.addr("events"));
    b.kill9();
    b = backend(&keys, data.path(), &bus, &events);
    wait_until(
        Duration::from_secs(20),
        "/kv after backend-svc's restart",
        || {
            let r = curl("GET", &url("/kv/sealed"), None);
            r.status == 200 && r.text() == "v1"
        },
    );
    assert_eq!(curl("PUT", &url("/kv/sealed"), Some(b"v2")).status, 204);
    assert_eq!(curl("GET", &url("/kv/sealed"), None).text(), "v2");

    // A terminator with a key the aggregator was not given: refused in the
    // handshake, so it has no instance to send to.
    let before = refused_peers(&agg);
    let intruder = terminator(&keys, "intruder", &agg_bus);
    let iurl = format!("{}/echo", intruder.addr("http"));
    wait_until(
        Duration::from_secs(20),
        "the aggregator refuses the intruder",
        || refused_peers(&agg) > before,
    );
    let r = curl("GET", &iurl, None);
    assert!(
        r.status == 502 || r.status == 503,
        "an unauthorised caller got {} {}",
        r.status,
        r.text()
    );
    // The authorised one is untouched.
    assert_eq!(curl("GET", &url("/echo"), None).status, 200);
    drop(b);
}
