//! A service in another language that registers itself in etcd
//! (`docs/examples/etcd_service.py`: pyzmq, and etcd's v3 JSON gateway
//! through urllib) behind the real terminator with discovery on and no
//! `--route`. Real etcd, real processes, real curl.
//!
//! Without `--route` the terminator keeps its convention route (`/` →
//! aggregator at tcp://127.0.0.1:8100, not running here) and adds the
//! prefixes services register (terminator/src/registry.rs).

use std::path::Path;
use std::process::Command;
use std::time::Duration;
use testkit::{curl, wait_until, Etcd, Proc};

const PREFIX: &str = "/switchboard/services/";

/// `docs/examples/etcd_service.py` on a free port, registering in `etcd`.
fn python_etcd_service(etcd: &str, args: &[&str]) -> Proc {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/examples/etcd_service.py");
    let mut cmd = Command::new("/usr/bin/python3");
    cmd.arg(script)
        .args(["--bus", "tcp://127.0.0.1:0", "--etcd", etcd])
        .args(args);
    let log = std::env::temp_dir().join(format!(
        "switchboard-test-etcd-py-{}.log",
        std::process::id()
    ));
    Proc::start_command("etcd_service.py", cmd, log)
}

/// A response with its headers, as curl saw it.
struct Answer {
    status: u16,
    /// Names in lowercase.
    headers: Vec<(String, String)>,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("{}: {e}: {}", self.status, self.body))
    }
}

/// GET `url` with the real curl, sending `x-request-id: rid`.
fn get_with_id(url: &str, rid: &str) -> Answer {
    let out = Command::new("curl")
        .args(["-s", "-S", "--max-time", "20", "-i", "-H"])
        .arg(format!("x-request-id: {rid}"))
        .arg(url)
        .output()
        .expect("curl is installed (scripts/deps)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Answer {
        status,
        headers,
        body: body.to_string(),
    }
}

#[test]
fn a_python_service_registered_in_etcd_is_routed_by_prefix_until_it_deregisters() {
    let etcd = Etcd::start();
    // A TTL far above the bounds below: the key can only go that fast
    // because the service revokes its lease, not because it expired.
    let mut py = python_etcd_service(&etcd.url(), &["--route", "/py", "--ttl", "30"]);
    let key = py.addr("key");
    assert!(key.starts_with(&format!("{PREFIX}pyhello/")), "{key}");

    // What it registered reads as the Rust services' own registrations.
    assert_eq!(etcd.keys(PREFIX), [key.as_str()]);
    let value = etcd.ctl(&["get", &key, "--print-value-only"]);
    let reg: discovery::Registration =
        serde_json::from_str(value.trim()).unwrap_or_else(|e| panic!("{e}: {value}"));
    assert_eq!(reg.key(), key);
    assert_eq!(
        (reg.service.as_str(), reg.bus.as_str(), &reg.routes[..]),
        ("pyhello", py.addr("bus").as_str(), &["/py".to_string()][..])
    );
    assert_eq!(reg.events, None);

    let t = testkit::etcd::terminator(&etcd, &["--statsd", "off"]);
    let http = t.addr("http");

    // The route appears once the terminator's watch has listed etcd.
    wait_until(Duration::from_secs(10), "the /py route", || {
        get_with_id(&format!("{http}/py/hello"), "probe").status == 200
    });
    let r = get_with_id(&format!("{http}/py/hello"), "py-etcd-1");
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("x-request-id"), Some("py-etcd-1"));
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(
        r.json(),
        serde_json::json!({"service": "pyhello", "method": "GET",
                           "path": "/py/hello", "request_id": "py-etcd-1"})
    );
    // The whole path and query cross the bus: the prefix is not stripped.
    let r = get_with_id(&format!("{http}/py?x=1"), "py-etcd-2");
    assert_eq!(
        (r.status, r.json()["path"].clone()),
        (200, serde_json::json!("/py?x=1"))
    );

    // Whole segments: /pyx is not under /py. It falls to the convention
    // route, whose aggregator is not running: 503 no_instance.
    let aggregator_absent = std::net::TcpStream::connect("127.0.0.1:8100").is_err();
    let r = get_with_id(&format!("{http}/pyx"), "py-etcd-3");
    assert!(!r.body.contains("pyhello"), "{}", r.body);
    if aggregator_absent {
        assert_eq!(
            (r.status, r.json()["error"].clone()),
            (503, "no_instance".into())
        );
    }
    assert_eq!(r.header("x-request-id"), Some("py-etcd-3"));

    // The terminator's table, as /readyz shows it.
    let ready = curl("GET", &format!("{}/readyz", t.addr("admin")), None);
    let ready: serde_json::Value = serde_json::from_slice(&ready.body).unwrap();
    assert_eq!(ready["routes"]["/py/"]["service"], "pyhello", "{ready}");
    assert_eq!(ready["routes"]["/"]["service"], "aggregator", "{ready}");

    // SIGTERM: the service revokes its lease and exits 0.
    let st = py.terminate(Duration::from_secs(10));
    assert!(st.is_some_and(|s| s.success()), "{st:?}");
    wait_until(Duration::from_secs(5), "the registration to go", || {
        etcd.keys(PREFIX).is_empty()
    });
    // The /py route goes with it: /py/hello is the convention route's now.
    let gone = |r: &Answer| {
        !r.body.contains("pyhello")
            && (!aggregator_absent || (r.status == 503 && r.json()["error"] == "no_instance"))
    };
    wait_until(Duration::from_secs(5), "/py/hello to be refused", || {
        // Every shard of the per-core terminator follows etcd on its own.
        (0..4).all(|i| {
            gone(&get_with_id(
                &format!("{http}/py/hello"),
                &format!("after-{i}"),
            ))
        })
    });
    let r = get_with_id(&format!("{http}/py/hello"), "py-etcd-4");
    assert_eq!(r.header("x-request-id"), Some("py-etcd-4"));
    if aggregator_absent {
        assert_eq!(r.header("retry-after"), Some("1"));
    }
}

#[test]
fn the_example_passes_its_own_selftest() {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/examples/etcd_service.py");
    let out = Command::new("/usr/bin/python3")
        .arg(script)
        .arg("--selftest")
        .output()
        .expect("python3 (scripts/deps installs python3-zmq)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("selftest ok"),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
