//! A request the server read and then cut (closed the connection without
//! answering) is a failed request, counted as a `read` error, not a
//! `connect` error and not silently sent again: in `--json` and in the
//! human summary.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// A server that reads each request whole, then: on odd connections cuts
/// the first request; on even ones answers the first and cuts the second.
/// Returns its address and how many requests it cut.
fn cutting_server() -> (String, Arc<AtomicU64>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let cuts = Arc::new(AtomicU64::new(0));
    let c = cuts.clone();
    std::thread::spawn(move || {
        for (n, s) in l.incoming().enumerate() {
            let Ok(s) = s else { continue };
            let c = c.clone();
            std::thread::spawn(move || serve(s, n % 2 == 1, &c));
        }
    });
    (addr, cuts)
}

fn serve(mut s: TcpStream, answer_first: bool, cuts: &AtomicU64) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    let mut answered = false;
    loop {
        // One whole request head (the requests have no body).
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
            match s.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        buf.clear();
        if answer_first && !answered {
            answered = true;
            if s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nok\n")
                .is_err()
            {
                return;
            }
            continue;
        }
        cuts.fetch_add(1, Ordering::SeqCst);
        return; // closed with the request read and unanswered
    }
}

#[test]
fn a_request_cut_by_the_server_is_a_failed_read_not_a_connect_error() {
    let _g = common::serial();
    // The lean client, then hyper's.
    for client in [None, Some("--hyper")] {
        let (addr, cuts) = cutting_server();
        let url = format!("http://{addr}/");
        let mut args = vec!["-c", "4", "-t", "1", "-d", "500ms", &url];
        args.extend(client);
        let (o, v) = common::loadtest_json(&args);
        assert_eq!(o.code, 0, "{client:?}: {}", o.stderr);
        let errors = &v["errors"];
        let read = errors["read"].as_u64().unwrap_or(0);
        let responses = v["requests"].as_u64().unwrap();
        let cut = cuts.load(Ordering::SeqCst);
        assert!(read > 0 && responses > 0, "{client:?}: {v}");
        assert!(
            errors.get("connect").is_none(),
            "{client:?}: cut requests counted as connect errors: {v}"
        );
        // Every cut the server made is one failed request (those still in
        // flight when the window closed aside: at most one per connection).
        assert!(
            read <= cut && cut <= read + 4,
            "{client:?}: read {read}, server cut {cut}: {v}"
        );
        assert_eq!(v["error_count"].as_u64(), Some(read), "{client:?}: {v}");
    }
    let (addr, _) = cutting_server();
    let url = format!("http://{addr}/");
    // The summary says so too.
    let o = common::loadtest(&["-q", "-c", "2", "-d", "300ms", &url]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    let line = o
        .stdout
        .lines()
        .find(|l| l.trim_start().starts_with("errors"))
        .unwrap_or_default();
    assert!(line.contains("read: "), "{}", o.stdout);
    assert!(!line.contains("connect"), "{}", o.stdout);
}
