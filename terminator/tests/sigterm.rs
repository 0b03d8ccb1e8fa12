//! The real terminator binary drains on SIGTERM: 200 slow requests in
//! flight all complete with 200, /readyz says 503 meanwhile, exit code 0.

mod common;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;
use tokio::time::Instant;

/// The child and its stderr log: killed on drop; the log is removed, or,
/// when the test is failing, its tail joins the test's output.
struct Kill(std::process::Child, std::path::PathBuf);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
        if std::thread::panicking() {
            testkit::print_log_tail("terminator", &self.1);
        } else {
            let _ = std::fs::remove_file(&self.1);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_requests_then_exits_0() {
    let ep = tokio::task::spawn_blocking(common::aggregator)
        .await
        .unwrap();

    let log = std::env::temp_dir().join(format!(
        "switchboard-test-sigterm-{}.log",
        std::process::id()
    ));
    let mut child = Kill(
        Command::new(env!("CARGO_BIN_EXE_terminator"))
            .args([
                "--http",
                "127.0.0.1:0",
                "--admin",
                "127.0.0.1:0",
                "--grace",
                "10s",
            ])
            .arg("--route")
            .arg(format!("/=aggregator@{ep}"))
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
        log,
    );
    let mut line = String::new();
    BufReader::new(child.0.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    // "terminator listening http=http://A admin=http://B"
    let field = |k: &str| {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(k))
            .unwrap()
            .to_string()
    };
    let (http, admin) = (field("http="), field("admin="));

    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let get = |url: String| {
        let client = client.clone();
        async move {
            let r = client
                .request(
                    http::Request::get(url)
                        .body(Full::new(Bytes::new()))
                        .unwrap(),
                )
                .await?;
            let status = r.status().as_u16();
            let b = r.into_body().collect().await?.to_bytes();
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>((status, b))
        }
    };
    // Wait for the bus connection before loading.
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok((200, b)) = get(format!("{admin}/readyz")).await {
            if String::from_utf8_lossy(&b).contains("\"connected\":1") {
                break;
            }
        }
        assert!(Instant::now() < end, "terminator never became ready");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let tasks: Vec<_> = (0..200)
        .map(|_| tokio::spawn(get(format!("{http}/echo?sleep_ms=1500"))))
        .collect();
    loop {
        let (_, b) = get(format!("{admin}/readyz")).await.unwrap();
        let j: serde_json::Value = serde_json::from_slice(&b).unwrap();
        if j["routes"]["/"]["pending"].as_u64() == Some(200) {
            break;
        }
        assert!(
            Instant::now() < end + Duration::from_secs(10),
            "not all 200 in flight: {j}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // SAFETY: signalling our own child process.
    unsafe {
        libc::kill(child.0.id() as i32, libc::SIGTERM);
    }
    // While draining, readiness says so (the admin port stays up).
    let t = Instant::now();
    loop {
        if let Ok((503, _)) = get(format!("{admin}/readyz")).await {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(1),
            "/readyz never went 503"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for t in tasks {
        let (status, body) = t.await.unwrap().expect("in-flight request failed");
        assert_eq!(status, 200);
        assert_eq!(&body[..], b"echo\n");
    }
    let t = Instant::now();
    let status = loop {
        if let Some(s) = child.0.try_wait().unwrap() {
            break s;
        }
        assert!(t.elapsed() < Duration::from_secs(10), "did not exit");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert!(status.success(), "exit status {status:?}");
}
