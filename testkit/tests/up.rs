//! `scripts/up`, the README's run command: the stack it starts answers
//! `/echo` and `/kv/...`, and SIGINT stops every process it started; a
//! taken port (the stack's or the dashboard's) fails at once, named, with
//! the setting that moves it.
//!
//! It runs on free ports (`UP_PORT_BASE`) with the debug binaries cargo
//! built for the tests (`SWITCHBOARD_BIN_DIR`), so it neither collides with
//! a stack a developer has running nor waits minutes for a release build.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;
use testkit::{curl, poll, wait_until};

/// A base port whose offsets +0, +1, +100, +101, +200, +201, +202 are free.
fn free_base() -> u16 {
    for _ in 0..200 {
        let base = 20_000 + fastish_random() % 30_000;
        let all_free = [0u16, 1, 100, 101, 200, 201, 202]
            .iter()
            .all(|o| TcpListener::bind(("127.0.0.1", base + o)).is_ok());
        if all_free {
            return base;
        }
    }
    panic!("no free port range found");
}

fn fastish_random() -> u16 {
    let n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    ((n ^ std::process::id().rotate_left(7)) % 65_521) as u16
}

/// Processes whose parent is `pid`, recursively.
fn descendants(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let mut frontier = vec![pid];
    while let Some(p) = frontier.pop() {
        for e in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(child) = e.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let stat = std::fs::read_to_string(format!("/proc/{child}/stat")).unwrap_or_default();
            // pid (comm) state ppid ...: comm may hold spaces; split after ')'.
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                .and_then(|s| s.parse::<u32>().ok());
            if ppid == Some(p) {
                out.push(child);
                frontier.push(child);
            }
        }
    }
    out
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            let state = s
                .rsplit_once(')')
                .and_then(|(_, r)| r.split_whitespace().next());
            state != Some("Z")
        })
        .unwrap_or(false)
}

fn exe_name(pid: u32) -> String {
    std::fs::read_link(format!("/proc/{pid}/exe"))
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_default()
}

#[test]
fn scripts_up_serves_the_stack_and_sigint_stops_every_process() {
    up_serves_and_sigint_stops_it(&[], "plain", |_, _| {});
}

/// `scripts/up --curve`: keys made into the data directory's parent, the
/// same requests served, and the bus refuses a NULL peer.
#[test]
fn scripts_up_curve_serves_the_stack_with_an_encrypted_bus() {
    testkit::bin("bus-keygen");
    up_serves_and_sigint_stops_it(&["--curve"], "curve", |base, data| {
        let keys = data.parent().unwrap().join("keys");
        for f in [
            "terminator.key",
            "aggregator.key_secret",
            "authorized-backend/aggregator.key",
        ] {
            assert!(keys.join(f).is_file(), "{} missing", keys.join(f).display());
        }
        // A NULL greeting to the aggregator: the CURVE service hangs up.
        let mut s = std::net::TcpStream::connect(("127.0.0.1", base + 100)).unwrap();
        std::io::Write::write_all(&mut s, &bus::zmtp::greeting::encode("NULL", false)).unwrap();
        assert!(
            testkit::zmtp::closed_within(&mut s, Duration::from_secs(10)),
            "the aggregator took a NULL peer under --curve"
        );
    });
}

fn up_serves_and_sigint_stops_it(args: &[&str], tag: &str, check: impl Fn(u16, &Path)) {
    let bin_dir = testkit::bin("terminator").parent().unwrap().to_path_buf();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let data = tempfile_dir(tag).join("backend");
    let base = free_base();
    let mut up = Command::new("bash")
        .arg(root.join("scripts/up"))
        .args(args)
        .env("UP_PORT_BASE", base.to_string())
        .env("SWITCHBOARD_BIN_DIR", &bin_dir)
        .env("SWITCHBOARD_DATA_DIR", &data)
        .env("SWITCHBOARD_STATSD", "off")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("run scripts/up");
    // Its "switchboard: up" line says every process answered /readyz.
    let stdout = up.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut seen = Vec::new();
    let up_line = loop {
        match rx.recv_timeout(Duration::from_secs(90)) {
            Ok(l) if l.contains("switchboard: up") => break true,
            Ok(l) => seen.push(l),
            Err(_) => break false,
        }
    };
    if !up_line {
        let _ = up.kill();
        panic!("scripts/up never came up; stdout:\n{}", seen.join("\n"));
    }

    let http = format!("http://127.0.0.1:{base}");
    assert_eq!(curl("GET", &format!("{http}/echo"), None).status, 200);
    assert_eq!(
        curl(
            "PUT",
            &format!("{http}/kv/up-test"),
            Some(b"from scripts/up")
        )
        .status,
        204
    );
    assert_eq!(
        curl("GET", &format!("{http}/kv/up-test"), None).text(),
        "from scripts/up"
    );
    check(base, &data);

    let stack: Vec<(u32, String)> = descendants(up.id())
        .into_iter()
        .map(|p| (p, exe_name(p)))
        .filter(|(_, n)| ["terminator", "aggregator", "backend-svc"].contains(&n.as_str()))
        .collect();
    let mut names: Vec<&str> = stack.iter().map(|(_, n)| n.as_str()).collect();
    names.sort();
    assert_eq!(
        names,
        ["aggregator", "backend-svc", "terminator"],
        "{stack:?}"
    );
    let everything = descendants(up.id());

    // SAFETY: kill(2) on our own child.
    unsafe {
        libc::kill(up.id() as i32, libc::SIGINT);
    }
    let mut status = None;
    wait_until(Duration::from_secs(60), "scripts/up to exit", || {
        status = up.try_wait().unwrap();
        status.is_some()
    });
    let left: Vec<u32> = everything.iter().copied().filter(|p| alive(*p)).collect();
    assert!(
        poll(Duration::from_secs(5), || everything
            .iter()
            .all(|p| !alive(*p))),
        "processes left behind: {:?}",
        left.iter().map(|p| (p, exe_name(*p))).collect::<Vec<_>>()
    );
    // And nothing listens on the stack's ports any more.
    for o in [0u16, 1, 100, 101, 200, 201, 202] {
        assert!(
            TcpListener::bind(("127.0.0.1", base + o)).is_ok(),
            "port {} still taken",
            base + o
        );
    }
    let _ = std::fs::remove_dir_all(data.parent().unwrap());
}

fn tempfile_dir(tag: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("switchboard-up-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn a_taken_port_fails_at_once_naming_it_and_how_to_move_it() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let base = free_base();
    let _taken = TcpListener::bind(("127.0.0.1", base + 101)).unwrap();
    // No binaries and nothing to build: the check comes before either.
    let out = Command::new("bash")
        .arg(root.join("scripts/up"))
        .env("UP_PORT_BASE", base.to_string())
        .env("SWITCHBOARD_BIN_DIR", "/nonexistent")
        .stdin(Stdio::null())
        .output()
        .expect("run scripts/up");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("127.0.0.1:{} (aggregator admin)", base + 101)),
        "{err}"
    );
    assert!(err.contains("UP_PORT_BASE=N"), "{err}");
}

#[test]
fn a_taken_dashboard_port_is_named_with_the_variable_that_moves_it() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let free = |n: usize| -> Vec<u16> {
        let ls: Vec<TcpListener> = (0..n)
            .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
            .collect();
        ls.iter().map(|l| l.local_addr().unwrap().port()).collect()
    };
    let p = free(4);
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let query = taken.local_addr().unwrap().port();
    let out = Command::new("bash")
        .arg(root.join("scripts/dashboard"))
        .arg("--ports")
        .env("DASHBOARD_CARBON_PORT", p[0].to_string())
        .env("DASHBOARD_WEB_PORT", p[1].to_string())
        .env("DASHBOARD_STATSD_ADMIN", p[2].to_string())
        .env("DASHBOARD_STATSD_PORT", p[3].to_string())
        .env("DASHBOARD_CARBON_QUERY", query.to_string())
        .stdin(Stdio::null())
        .output()
        .expect("run scripts/dashboard --ports");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("127.0.0.1:{query} (TCP, carbon-cache query)")),
        "{err}"
    );
    assert!(err.contains("DASHBOARD_CARBON_QUERY=PORT"), "{err}");
    assert_eq!(err.lines().count(), 2, "only the taken port: {err}");
}
