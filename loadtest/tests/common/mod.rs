//! An in-process HTTP server (HTTP/1.1 and h2c) for the loadtest tests:
//! bound before `start` returns (no waiting for readiness), counting every
//! request, with a configurable delay or a one-time stall, and a
//! `/stats/histograms` endpoint in the format `--server-stats` reads.

#![allow(dead_code)] // each test binary uses a different part

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use hdrhistogram::serialization::{Serializer as _, V2DeflateSerializer};
use hdrhistogram::Histogram;
use http_body_util::{BodyExt as _, Full};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;

#[derive(Clone, Copy)]
pub enum Behavior {
    Fast,
    /// Every request waits this long.
    Delay(Duration),
    /// The first request arriving `after` the first one ever waits `stall`.
    StallOnce {
        after: Duration,
        stall: Duration,
    },
}

pub struct Server {
    pub addr: SocketAddr,
    /// Requests served (the stats endpoint excluded).
    pub count: Arc<AtomicU64>,
    /// Requests per path.
    pub paths: Arc<Mutex<std::collections::BTreeMap<String, u64>>>,
    /// The last request seen on each path.
    pub last: Arc<Mutex<std::collections::BTreeMap<String, Seen>>>,
}

/// What the server saw of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    pub method: String,
    pub version: http::Version,
    /// The `x-test` header, if any.
    pub x_test: Option<String>,
    pub content_type: Option<String>,
    pub body: Bytes,
}

impl Server {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

struct State {
    behavior: Behavior,
    count: Arc<AtomicU64>,
    paths: Arc<Mutex<std::collections::BTreeMap<String, u64>>>,
    last: Arc<Mutex<std::collections::BTreeMap<String, Seen>>>,
    first: OnceLock<Instant>,
    stalled: AtomicBool,
    /// Service times in µs, as a server's admin endpoint would keep them.
    hist: Mutex<Histogram<u64>>,
}

pub fn start(behavior: Behavior) -> Server {
    let std_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    std_listener.set_nonblocking(true).unwrap();
    let addr = std_listener.local_addr().unwrap();
    let state = Arc::new(State {
        behavior,
        count: Arc::new(AtomicU64::new(0)),
        paths: Arc::default(),
        last: Arc::default(),
        first: OnceLock::new(),
        stalled: AtomicBool::new(false),
        hist: Mutex::new(Histogram::new_with_bounds(1, 60_000_000, 3).unwrap()),
    });
    let server = Server {
        addr,
        count: state.count.clone(),
        paths: state.paths.clone(),
        last: state.last.clone(),
    };
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let l = tokio::net::TcpListener::from_std(std_listener).unwrap();
            loop {
                let Ok((s, _)) = l.accept().await else {
                    continue;
                };
                let _ = s.set_nodelay(true);
                let state = state.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| serve(state.clone(), req));
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(s), svc)
                        .await;
                });
            }
        });
    });
    server
}

async fn serve(
    st: Arc<State>,
    req: http::Request<hyper::body::Incoming>,
) -> Result<http::Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path().to_string();
    if path == "/stats/histograms" {
        let mut buf = Vec::new();
        V2DeflateSerializer::new()
            .serialize(&*st.hist.lock().unwrap(), &mut buf)
            .unwrap();
        let b64 = base64::engine::general_purpose::STANDARD.encode(buf);
        let body = format!(r#"{{"unit": "us", "routes": {{"/": {{"latency": "{b64}"}}}}}}"#);
        return Ok(http::Response::new(Full::new(Bytes::from(body))));
    }
    let t0 = Instant::now();
    let header = |name: &str| {
        req.headers()
            .get(name)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
    };
    let mut seen = Seen {
        method: req.method().to_string(),
        version: req.version(),
        x_test: header("x-test"),
        content_type: header("content-type"),
        body: Bytes::new(),
    };
    seen.body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => Bytes::from_static(b"<body error>"),
    };
    let first = *st.first.get_or_init(Instant::now);
    // `/503…`: refused at once, whatever the behaviour (an overloaded
    // server shedding).
    if path.starts_with("/503") {
        st.count.fetch_add(1, Ordering::SeqCst);
        let mut r = http::Response::new(Full::new(Bytes::from_static(b"busy\n")));
        *r.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
        return Ok(r);
    }
    match st.behavior {
        Behavior::Fast => {}
        Behavior::Delay(d) => tokio::time::sleep(d).await,
        Behavior::StallOnce { after, stall } => {
            if first.elapsed() >= after && !st.stalled.swap(true, Ordering::SeqCst) {
                tokio::time::sleep(stall).await;
            }
        }
    }
    st.count.fetch_add(1, Ordering::SeqCst);
    *st.paths.lock().unwrap().entry(path.clone()).or_default() += 1;
    st.last.lock().unwrap().insert(path, seen);
    st.hist
        .lock()
        .unwrap()
        .saturating_record(t0.elapsed().as_micros() as u64);
    Ok(http::Response::new(Full::new(Bytes::from_static(b"ok\n"))))
}

/// Tests measure latency: run them one at a time on a small machine.
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

pub struct Outcome {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Runs the real binary.
pub fn loadtest(args: &[&str]) -> Outcome {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_loadtest"))
        .args(args)
        .output()
        .unwrap();
    Outcome {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Runs the binary with `--json` and parses stdout.
pub fn loadtest_json(args: &[&str]) -> (Outcome, serde_json::Value) {
    let mut a = vec!["--json", "-q"];
    a.extend_from_slice(args);
    let o = loadtest(&a);
    let v = serde_json::from_str(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}): {}\nstderr: {}",
            o.stdout, o.stderr
        )
    });
    (o, v)
}
