//! What the edge-fault tests share: an in-process aggregator on its own
//! runtime, the real terminator binary (optionally under a lower
//! open-file limit), and a minimal blocking HTTP/1.1 client that tells a
//! complete response from a cut one.

#![allow(dead_code)] // each test binary uses a different part

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;
use testkit::Proc;

/// An aggregator on a free bus port, on a runtime of its own thread (it
/// lives as long as the test process); returns its bus endpoint.
pub fn aggregator() -> String {
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let args = aggregator::Args::parse_from([
                "aggregator",
                "--bus",
                "tcp://127.0.0.1:0",
                "--admin",
                &admin.local_addr().unwrap().to_string(),
            ]);
            aggregator::run(
                args,
                admin,
                std::future::pending(),
                Duration::from_secs(5),
                move |ep| {
                    let _ = tx.send(ep.to_string());
                },
            )
            .await
            .unwrap();
        });
    });
    rx.recv_timeout(Duration::from_secs(30))
        .expect("aggregator bound")
}

/// The terminator binary routing `/` to `ep`, HTTP and admin on port 0,
/// with `extra` flags and `env`; `nofile` lowers its open-file limit
/// (soft and hard) before exec.
pub fn terminator(ep: &str, extra: &[&str], env: &[(&str, &str)], nofile: Option<u32>) -> Proc {
    let exe = env!("CARGO_BIN_EXE_terminator");
    let mut cmd = match nofile {
        Some(n) => {
            let mut c = Command::new("bash");
            c.arg("-c")
                .arg(format!("ulimit -n {n} && exec \"$0\" \"$@\""))
                .arg(exe);
            c
        }
        None => Command::new(exe),
    };
    cmd.args(["--http", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
        .arg("--route")
        .arg(format!("/=aggregator@{ep}"))
        .args(extra)
        .env("SWITCHBOARD_LOG", "warn");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let log = std::env::temp_dir().join(format!(
        "switchboard-test-edge-{}-{}.log",
        std::process::id(),
        fastrand::u64(..)
    ));
    Proc::start_command("terminator", cmd, log)
}

/// `http://HOST:PORT` → `HOST:PORT`.
pub fn hostport(url: &str) -> String {
    url.trim_start_matches("http://").to_string()
}

/// How one request on a kept-alive connection ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Got {
    /// A complete response: status, and whether it said `connection: close`.
    Response(u16, bool),
    /// The connection ended (EOF, reset, timeout) before a complete
    /// response: a request that was sent and lost.
    Cut(String),
}

/// Sends one GET on `s` and reads one complete response (content-length
/// bodies only: what the terminator sends).
pub fn get(s: &mut TcpStream, path: &str, buf: &mut Vec<u8>) -> Got {
    let req = format!("GET {path} HTTP/1.1\r\nhost: t\r\n\r\n");
    if let Err(e) = s.write_all(req.as_bytes()) {
        return Got::Cut(format!("write: {e}"));
    }
    buf.clear();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let status = head
                .split_whitespace()
                .nth(1)
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            let close = head
                .lines()
                .any(|l| l.starts_with("connection:") && l.contains("close"));
            if buf.len() >= end + 4 + len {
                return Got::Response(status, close);
            }
        }
        match s.read(&mut chunk) {
            Ok(0) => return Got::Cut(format!("eof after {} bytes", buf.len())),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) => return Got::Cut(format!("read after {} bytes: {e}", buf.len())),
        }
    }
}

/// A pyzmq bus service that answers as the request's path says
/// (`support/status_service.py`: error frames, replies of any status,
/// holds, exits), for the error and degradation tests.
pub fn status_service() -> Proc {
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/status_service.py");
    testkit::python_service(&script, &["tcp://127.0.0.1:*"])
}
