//! SIGTERM under keep-alive load loses no request: 64 connections send
//! requests back to back (each the moment the previous response is in, as
//! wrk does), the terminator is stopped mid-run, and every request that was
//! written got a complete response (the ones during the drain carry
//! `connection: close`); a client that reconnects afterwards is refused
//! (nothing sent, nothing lost). The process exits 0 within `--grace`.

mod common;

use common::{get, hostport, Got};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use testkit::wait_until;

const CONNECTIONS: usize = 64;
const GRACE: Duration = Duration::from_secs(5);

#[derive(Default)]
struct Tally {
    sent: AtomicU64,
    responses: AtomicU64,
    /// Responses that said `connection: close`.
    closes: AtomicU64,
    cut: Mutex<Vec<String>>,
    /// Status other than 200.
    odd: Mutex<Vec<u16>>,
}

/// One keep-alive user: sends until its connection is closed by a
/// `connection: close` answer or cut, reconnects, and ends when a connect
/// is refused (the server stopped listening) or `stop` is set.
fn user(addr: String, t: Arc<Tally>, stop: Arc<AtomicBool>) {
    let mut buf = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let Ok(mut s) = TcpStream::connect(&addr) else {
            return; // refused: nothing was sent on it
        };
        let _ = s.set_nodelay(true);
        s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
        while !stop.load(Ordering::Relaxed) {
            t.sent.fetch_add(1, Ordering::SeqCst);
            match get(&mut s, "/echo", &mut buf) {
                Got::Response(status, close) => {
                    t.responses.fetch_add(1, Ordering::SeqCst);
                    if status != 200 {
                        t.odd.lock().unwrap().push(status);
                    }
                    if close {
                        t.closes.fetch_add(1, Ordering::SeqCst);
                        break;
                    }
                }
                Got::Cut(why) => {
                    t.cut.lock().unwrap().push(why);
                    break;
                }
            }
        }
    }
}

#[test]
fn sigterm_under_keep_alive_load_answers_every_request_sent() {
    let ep = common::aggregator();
    let grace = format!("{}s", GRACE.as_secs());
    let mut term = common::terminator(&ep, &["--grace", &grace], &[], None);
    let base = term.addr("http");
    wait_until(Duration::from_secs(20), "the aggregator is reached", || {
        testkit::curl("GET", &format!("{base}/echo"), None).status == 200
    });

    let tally = Arc::new(Tally::default());
    let stop = Arc::new(AtomicBool::new(false));
    let users: Vec<_> = (0..CONNECTIONS)
        .map(|_| {
            let (addr, t, stop) = (hostport(&base), tally.clone(), stop.clone());
            std::thread::spawn(move || user(addr, t, stop))
        })
        .collect();
    // Mid-run: every connection is busy.
    wait_until(Duration::from_secs(30), "load is running", || {
        tally.responses.load(Ordering::SeqCst) >= 20 * CONNECTIONS as u64
    });
    let before = tally.responses.load(Ordering::SeqCst);
    let t0 = Instant::now();
    let status = term.terminate(GRACE + Duration::from_secs(10));
    let took = t0.elapsed();
    // Let users that somehow still run stop (none should be left: a
    // refused connect ends each one).
    stop.store(true, Ordering::SeqCst);
    for u in users {
        u.join().unwrap();
    }
    let status = status.expect("terminator did not exit");
    assert!(status.success(), "exit status {status:?}");
    assert!(
        took < GRACE + Duration::from_secs(1),
        "exit took {took:?}, grace {GRACE:?}"
    );

    let (sent, responses) = (
        tally.sent.load(Ordering::SeqCst),
        tally.responses.load(Ordering::SeqCst),
    );
    let cut = tally.cut.lock().unwrap().clone();
    assert!(
        cut.is_empty(),
        "{} of {sent} requests sent were cut (responses before SIGTERM: {before}): {:?}",
        cut.len(),
        &cut[..cut.len().min(10)]
    );
    assert_eq!(sent, responses, "every request sent got its response");
    assert!(tally.odd.lock().unwrap().is_empty(), "{:?}", tally.odd);
    // The drain told the clients: each connection's last answer said close.
    assert!(
        tally.closes.load(Ordering::SeqCst) >= 1,
        "no response said connection: close"
    );
    eprintln!(
        "sent {sent}, answered {responses} ({before} before SIGTERM), {} said close, exit after {took:?}",
        tally.closes.load(Ordering::SeqCst)
    );
}
