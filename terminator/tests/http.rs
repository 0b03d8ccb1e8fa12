//! The terminator against a real aggregator over real ZeroMQ, driven by real
//! HTTP clients (hyper's client, curl, raw TCP), everything on port 0.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::time::Duration;
use terminator::config::{Route, Settings};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::time::Instant;

const WAIT: Duration = Duration::from_secs(10);

struct Stack {
    http: SocketAddr,
    admin: SocketAddr,
    _stops: Vec<oneshot::Sender<()>>,
}

/// Starts an aggregator on a free bus port; returns its endpoint.
async fn aggregator(stops: &mut Vec<oneshot::Sender<()>>) -> String {
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let (ep_tx, ep_rx) = oneshot::channel::<String>();
    let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let args = aggregator::Args::parse_from([
        "aggregator",
        "--bus",
        "tcp://127.0.0.1:0",
        "--admin",
        &admin.local_addr().unwrap().to_string(),
    ]);
    tokio::spawn(async move {
        aggregator::run(
            args,
            admin,
            async move {
                let _ = stop_rx.await;
            },
            Duration::from_secs(5),
            move |ep| {
                let _ = ep_tx.send(ep.to_string());
            },
        )
        .await
        .unwrap();
    });
    stops.push(stop_tx);
    ep_rx.await.unwrap()
}

async fn terminator(mut s: Settings, stops: &mut Vec<oneshot::Sender<()>>, wait: bool) -> Stack {
    let http = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (h, a) = (http.local_addr().unwrap(), admin.local_addr().unwrap());
    s.http = h;
    s.admin = a;
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    tokio::spawn(async move {
        terminator::run(s, http, admin, async move {
            let _ = stop_rx.await;
        })
        .await
        .unwrap();
    });
    stops.push(stop_tx);
    let stack = Stack {
        http: h,
        admin: a,
        _stops: std::mem::take(stops),
    };
    if wait {
        stack.wait_connected().await;
    }
    stack
}

fn route(prefix: &str, ep: &str, timeout: Option<Duration>) -> Route {
    Route {
        prefix: prefix.into(),
        service: "aggregator".into(),
        endpoints: vec![ep.into()],
        timeout,
    }
}

/// Terminator → aggregator with default settings but the real endpoint.
async fn stack_with(f: impl FnOnce(&mut Settings, &str)) -> Stack {
    let mut stops = Vec::new();
    let ep = aggregator(&mut stops).await;
    let mut s = Settings {
        routes: vec![route("/", &ep, None)],
        ..Settings::default()
    };
    f(&mut s, &ep);
    terminator(s, &mut stops, true).await
}

/// Logs through libtest's capture: printed with a failing test's output,
/// never into a passing run's (the binaries' own `init_tracing` writes
/// straight to stderr, which libtest does not capture).
fn init_test_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SWITCHBOARD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}

async fn stack() -> Stack {
    init_test_tracing();
    stack_with(|_, _| {}).await
}

type Resp = (u16, http::HeaderMap, Bytes);

impl Stack {
    fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.http, path)
    }

    async fn readyz(&self) -> (u16, serde_json::Value) {
        let (s, _, b) = send(
            http::Request::get(format!("http://{}/readyz", self.admin))
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await;
        (s, serde_json::from_slice(&b).unwrap_or_default())
    }

    async fn pending(&self) -> u64 {
        let (_, j) = self.readyz().await;
        j["routes"]
            .as_object()
            .map(|m| m.values().map(|r| r["pending"].as_u64().unwrap_or(0)).sum())
            .unwrap_or(0)
    }

    async fn wait_connected(&self) {
        let end = Instant::now() + WAIT;
        loop {
            let (_, j) = self.readyz().await;
            let all = j["routes"]
                .as_object()
                .is_some_and(|m| m.values().all(|r| r["connected"].as_u64().unwrap_or(0) > 0));
            if all {
                return;
            }
            assert!(Instant::now() < end, "terminator never connected: {j}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

async fn send(req: http::Request<Full<Bytes>>) -> Resp {
    let client = Client::builder(TokioExecutor::new()).build_http();
    let r = client.request(req).await.expect("request");
    let (parts, body) = r.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    (parts.status.as_u16(), parts.headers, body)
}

async fn get(url: &str) -> Resp {
    send(
        http::Request::get(url)
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await
}

fn json(b: &Bytes) -> serde_json::Value {
    serde_json::from_slice(b).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(b)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_and_post_round_trip_byte_exact() {
    let s = stack().await;
    let (st, h, b) = get(&s.url("/echo")).await;
    assert_eq!(st, 200);
    assert_eq!(&b[..], b"echo\n");
    assert!(h.contains_key("x-request-id"));

    let req = http::Request::get(s.url("/echo?inspect&q=a%20b&empty="))
        .header("x-custom", "v1")
        .header("x-custom", "v2")
        .header("connection", "keep-alive")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let (st, _, b) = send(req).await;
    assert_eq!(st, 200);
    let j = json(&b);
    assert_eq!(j["method"], "GET");
    assert_eq!(j["path"], "/echo");
    assert_eq!(j["query"], "inspect&q=a%20b&empty=");
    let headers = j["headers"].as_array().unwrap();
    let customs: Vec<_> = headers
        .iter()
        .filter(|h| h[0] == "x-custom")
        .map(|h| h[1].as_str().unwrap())
        .collect();
    assert_eq!(customs, ["v1", "v2"], "repeated headers in order");
    assert!(
        !headers.iter().any(|h| h[0] == "connection"),
        "hop-by-hop header crossed the bus"
    );

    let body: Vec<u8> = (0..=255u8).cycle().take(300_000).collect();
    let req = http::Request::post(s.url("/echo?x=1"))
        .header("content-type", "application/x-binary")
        .body(Full::new(Bytes::from(body.clone())))
        .unwrap();
    let (st, h, b) = send(req).await;
    assert_eq!(st, 200);
    assert_eq!(h["content-type"], "application/x-binary");
    assert_eq!(b.len(), body.len());
    assert!(b[..] == body[..], "binary body changed on the way");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_concurrent_requests_each_get_their_own_response() {
    let s = stack().await;
    // HTTP/2 so 1,000 requests are concurrent on a few sockets.
    let client = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http::<Full<Bytes>>();
    let mut tasks = Vec::new();
    for i in 0..1000 {
        let (client, url) = (client.clone(), s.url("/echo"));
        tasks.push(tokio::spawn(async move {
            let token = format!("tok-{i}-{}", i * 7919);
            let req = http::Request::post(url)
                .header("x-request-id", &token)
                .body(Full::new(Bytes::from(token.clone())))
                .unwrap();
            let r = client.request(req).await.unwrap();
            assert_eq!(r.status(), 200);
            assert_eq!(r.headers()["x-request-id"], token.as_str());
            let b = r.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(b, token.as_bytes());
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(s.pending().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_route_is_404_json_with_request_id() {
    let s = stack_with(|set, ep| set.routes = vec![route("/echo", ep, None)]).await;
    let (st, h, b) = get(&s.url("/other")).await;
    assert_eq!(st, 404);
    let j = json(&b);
    assert_eq!(j["error"], "no_route");
    assert_eq!(j["request_id"], h["x-request-id"].to_str().unwrap());
    // segment match: /echox is not under /echo
    assert_eq!(get(&s.url("/echox")).await.0, 404);
    assert_eq!(get(&s.url("/echo")).await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_down_is_503_at_once() {
    let mut stops = Vec::new();
    // A bus port nobody listens on.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("tcp://{}", l.local_addr().unwrap())
    };
    let set = Settings {
        routes: vec![route("/", &dead, None)],
        ..Settings::default()
    };
    let s = terminator(set, &mut stops, false).await;
    for i in 0..3 {
        let t = Instant::now();
        let (st, h, b) = get(&s.url("/echo")).await;
        assert_eq!(st, 503);
        // The first call may wait out the client's first-connection window
        // (a freshly started process); after that, failure is immediate.
        let bound = if i == 0 {
            bus::client::FIRST_CONNECT_WAIT + Duration::from_millis(100)
        } else {
            Duration::from_millis(100)
        };
        assert!(t.elapsed() < bound, "{:?}", t.elapsed());
        assert_eq!(json(&b)["error"], "no_instance");
        assert!(h.contains_key("retry-after"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadline_is_504_and_leaves_nothing_pending() {
    let s =
        stack_with(|set, ep| set.routes = vec![route("/", ep, Some(Duration::from_millis(200)))])
            .await;
    let t = Instant::now();
    let (st, _, b) = get(&s.url("/echo?sleep_ms=3000")).await;
    let took = t.elapsed();
    assert_eq!(st, 504);
    assert_eq!(json(&b)["error"], "deadline_exceeded");
    assert!(took >= Duration::from_millis(200), "{took:?}");
    assert!(took < Duration::from_millis(700), "{took:?}");
    assert_eq!(s.pending().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_that_disconnects_mid_request_leaves_nothing_pending() {
    let s = stack().await;
    let mut sock = std::net::TcpStream::connect(s.http).unwrap();
    sock.write_all(b"GET /echo?sleep_ms=5000 HTTP/1.1\r\nhost: x\r\n\r\n")
        .unwrap();
    let end = Instant::now() + WAIT;
    while s.pending().await == 0 {
        assert!(Instant::now() < end, "request never became pending");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    drop(sock);
    let t = Instant::now();
    while s.pending().await != 0 {
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "pending entry outlived its client"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_body_is_413() {
    let s = stack_with(|set, _| set.max_body = 1024).await;
    let req = http::Request::post(s.url("/echo"))
        .body(Full::new(Bytes::from(vec![b'x'; 1025])))
        .unwrap();
    let (st, _, b) = send(req).await;
    assert_eq!(st, 413);
    assert_eq!(json(&b)["error"], "body_too_large");
    // Chunked, no content-length: caught while reading.
    let out = std::process::Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-H",
            "transfer-encoding: chunked",
            "--data-binary",
            "@-",
        ])
        .arg(s.url("/echo"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            c.stdin.take().unwrap().write_all(&vec![b'y'; 4096])?;
            c.wait_with_output()
        })
        .expect("curl");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "413");
    // Exactly at the limit is fine.
    let req = http::Request::post(s.url("/echo"))
        .body(Full::new(Bytes::from(vec![b'x'; 1024])))
        .unwrap();
    assert_eq!(send(req).await.0, 200);
}

fn raw_exchange(addr: SocketAddr, bytes: &[u8]) -> String {
    let mut sock = std::net::TcpStream::connect(addr).unwrap();
    sock.set_read_timeout(Some(WAIT)).unwrap();
    sock.write_all(bytes).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    // Read until the status line and headers arrive (or the peer closes).
    loop {
        match sock.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
        if out.windows(4).any(|w| w == b"\r\n\r\n") {
            break;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_headers_are_431_and_garbage_is_400() {
    let s = stack().await;
    let big = "a".repeat(20 * 1024);
    let req = http::Request::get(s.url("/echo"))
        .header("x-big", big.as_str())
        .body(Full::new(Bytes::new()))
        .unwrap();
    let (st, _, b) = send(req).await;
    assert_eq!(st, 431);
    assert_eq!(json(&b)["error"], "headers_too_large");
    // Far beyond the limit: hyper refuses before buffering more.
    let huge = format!(
        "GET /echo HTTP/1.1\r\nhost: x\r\nx-huge: {}\r\n\r\n",
        "b".repeat(200_000)
    );
    let addr = s.http;
    let r = tokio::task::spawn_blocking(move || raw_exchange(addr, huge.as_bytes()))
        .await
        .unwrap();
    assert!(r.starts_with("HTTP/1.1 431"), "{r:?}");
    let r = tokio::task::spawn_blocking(move || raw_exchange(addr, b"GARBAGE\x01\r\n\r\n"))
        .await
        .unwrap();
    assert!(r.starts_with("HTTP/1.1 400"), "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_header_client_is_cut_off() {
    let s = stack_with(|set, _| set.header_read_timeout = Duration::from_millis(300)).await;
    let addr = s.http;
    let took = tokio::task::spawn_blocking(move || {
        let mut sock = std::net::TcpStream::connect(addr).unwrap();
        sock.set_read_timeout(Some(WAIT)).unwrap();
        sock.write_all(b"GET /echo HTTP/1.1\r\nhost: x\r\n")
            .unwrap();
        let t = std::time::Instant::now();
        let mut buf = Vec::new();
        let _ = sock.read_to_end(&mut buf); // returns when the server closes
        t.elapsed()
    })
    .await
    .unwrap();
    assert!(took < Duration::from_secs(3), "slowloris held for {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_in_flight_limit_is_503_with_retry_after() {
    let s = stack_with(|set, _| set.max_in_flight = 1).await;
    let url = s.url("/echo?sleep_ms=1000");
    let slow = tokio::spawn(async move { get(&url).await.0 });
    let end = Instant::now() + WAIT;
    while s.pending().await == 0 {
        assert!(Instant::now() < end);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (st, h, b) = get(&s.url("/echo")).await;
    assert_eq!(st, 503);
    assert_eq!(h["retry-after"], "1");
    assert_eq!(json(&b)["error"], "overloaded");
    assert_eq!(slow.await.unwrap(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_prior_knowledge_with_curl() {
    let s = stack().await;
    let url = s.url("/echo");
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("curl")
            .args([
                "-s",
                "--http2-prior-knowledge",
                "-w",
                "\n%{http_version} %{http_code}",
            ])
            .arg(url)
            .output()
            .expect("curl")
    })
    .await
    .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "echo\n\n2 200");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_id_round_trip() {
    let s = stack().await;
    let req = http::Request::get(s.url("/echo?inspect"))
        .header("x-request-id", "client-chosen-42")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let (_, h, b) = send(req).await;
    assert_eq!(h["x-request-id"], "client-chosen-42");
    assert_eq!(
        json(&b)["request_id"],
        "client-chosen-42",
        "id did not travel on the bus"
    );
    let req = http::Request::get(s.url("/echo"))
        .header("x-request-id", "bad id with spaces")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let (_, h, _) = send(req).await;
    let rid = h["x-request-id"].to_str().unwrap();
    assert_ne!(rid, "bad id with spaces");
    assert!(!rid.is_empty());
}
