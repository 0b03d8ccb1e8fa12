//! Connections that never send a byte cannot lock clients out: the
//! terminator runs with 600 open files allowed, 700 connections open and
//! stay silent, and still a normal request (curl) is answered, the silent
//! connections are closed by `--idle-timeout` (the client reads EOF), and
//! the accept loop does not flood stderr with "Too many open files".
//!
//! The flags go through the environment (`SWITCHBOARD_IDLE_TIMEOUT`,
//! `SWITCHBOARD_MAX_CONNECTIONS`) so that the same test runs, and fails on
//! behaviour, against a build that does not know them.

mod common;

use std::io::Read;
use std::net::TcpStream;
use std::sync::Mutex;
use std::time::{Duration, Instant};

const NOFILE: u32 = 600;
const SILENT: usize = 700;

/// One test at a time: each holds 700 connections on a small machine.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// Opens `n` connections (in parallel: some wait in the kernel's queue)
/// that send nothing; those that connected within 3 s.
fn open_silent(addr: &str, n: usize) -> Vec<TcpStream> {
    let addr: std::net::SocketAddr = addr.parse().unwrap();
    let threads: Vec<_> = (0..10)
        .map(|_| {
            std::thread::spawn(move || {
                (0..n / 10)
                    .filter_map(|_| TcpStream::connect_timeout(&addr, Duration::from_secs(3)).ok())
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect()
}

/// The whole scenario; `env` sets the idle timeout and the connection
/// cap. `emfile`: the open-file limit must have been reached (and said so).
fn silent_connections_do_not_lock_clients_out(env: &[(&str, &str)], emfile: bool) {
    let _g = serial();
    let ep = common::aggregator();
    let term = common::terminator(&ep, &[], env, Some(NOFILE));
    let base = term.addr("http");
    testkit::wait_until(Duration::from_secs(20), "the aggregator is reached", || {
        testkit::curl("GET", &format!("{base}/echo"), None).status == 200
    });

    let silent = open_silent(&common::hostport(&base), SILENT);
    assert!(
        silent.len() as u32 > NOFILE,
        "only {} silent connections connected",
        silent.len()
    );

    // A client is still served, promptly.
    let t0 = Instant::now();
    let r = testkit::curl("GET", &format!("{base}/echo"), None);
    let took = t0.elapsed();
    assert_eq!(
        (r.status, r.text().as_str()),
        (200, "echo\n"),
        "curl after {took:?}; stderr:\n{}",
        tail(&term.stderr())
    );
    assert!(took < Duration::from_secs(10), "curl took {took:?}");

    // Every silent connection is closed (EOF) within the bound: the idle
    // timeout (2 s) for those accepted, plus the time to be accepted.
    let until = Instant::now() + Duration::from_secs(30);
    let mut open = 0;
    for mut s in silent {
        let left = until.saturating_duration_since(Instant::now());
        s.set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .unwrap();
        let mut b = [0u8; 64];
        match s.read(&mut b) {
            Ok(0) => {}
            // Closed after a 503 (over the cap, nothing idle to close).
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            Err(_) => open += 1,
        }
    }
    assert_eq!(open, 0, "silent connections still open after the bound");

    let log = term.stderr();
    let floods = log.matches("Too many open files").count();
    assert!(floods < 20, "{floods} lines about EMFILE:\n{}", tail(&log));
    if emfile {
        assert!(floods >= 1, "never ran out of descriptors:\n{}", tail(&log));
    }
    eprintln!("curl answered in {took:?}; EMFILE lines: {floods}");
}

fn tail(s: &str) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// The default cap (three quarters of the open-file limit) is reached
/// before the limit itself: the oldest idle connections make room.
#[test]
fn silent_connections_under_the_default_cap() {
    silent_connections_do_not_lock_clients_out(&[("SWITCHBOARD_IDLE_TIMEOUT", "2s")], false);
}

/// A cap above the open-file limit: accept hits EMFILE, backs off, frees a
/// descriptor by closing the oldest idle connection, and logs it once.
#[test]
fn silent_connections_past_the_open_file_limit() {
    // The idle timeout is long enough for all 700 to be open at once.
    silent_connections_do_not_lock_clients_out(
        &[
            ("SWITCHBOARD_IDLE_TIMEOUT", "6s"),
            ("SWITCHBOARD_MAX_CONNECTIONS", "100000"),
        ],
        true,
    );
}
