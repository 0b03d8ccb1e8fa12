//! Calls/s and p99 for one client and one echo service, 64 calls in flight,
//! 200 B bodies, loopback TCP; beside it a bare TCP echo round trip with
//! the same window (length-prefixed, blocking threads), measured in the
//! same run. The ratio is what ZMTP, the wire format and the SDK cost.
//!
//! The SDK runs twice: with the NULL mechanism and with CURVE (every frame
//! boxed both ways, keys authorised at the service), so the ratio of the
//! two is what encryption costs.
//!
//! Run: `cargo bench -p bus --bench roundtrip` (SECS=5 by default per case;
//! ONLY=raw|null|curve for one case, e.g. under `perf record`).

use bus::curve::KeyPair;
use bus::{Client, ClientOptions, Curve, Mechanism, Reply, Request, Service, ServiceOptions};
use bytes::Bytes;
use std::time::{Duration, Instant};

const WINDOW: usize = 64;
const BODY: usize = 200;

fn secs() -> Duration {
    Duration::from_secs(
        std::env::var("SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(5),
    )
}

struct Result {
    rate: f64,
    p50_us: f64,
    p99_us: f64,
}

fn summarize(mut lat: Vec<Duration>, took: Duration) -> Result {
    lat.sort_unstable();
    let q = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)].as_secs_f64() * 1e6;
    Result {
        rate: lat.len() as f64 / took.as_secs_f64(),
        p50_us: q(0.50),
        p99_us: q(0.99),
    }
}

/// Bare TCP: an echo thread, a client keeping 64 length-prefixed messages
/// in flight over one connection. What a round trip costs with no protocol.
fn raw(d: Duration) -> Result {
    use std::io::{Read, Write};
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let echo = std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        s.set_nodelay(true).unwrap();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if s.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
            }
        }
    });
    let mut c = std::net::TcpStream::connect(addr).unwrap();
    c.set_nodelay(true).unwrap();
    let mut msg = vec![7u8; BODY + 12];
    msg[..4].copy_from_slice(&(BODY as u32 + 8).to_le_bytes());
    let mut sent_at = std::collections::VecDeque::with_capacity(WINDOW);
    let mut lat = Vec::with_capacity(4_000_000);
    let start = Instant::now();
    for _ in 0..WINDOW {
        c.write_all(&msg).unwrap();
        sent_at.push_back(Instant::now());
    }
    let mut reply = vec![0u8; msg.len()];
    while start.elapsed() < d {
        c.read_exact(&mut reply).unwrap();
        lat.push(sent_at.pop_front().unwrap().elapsed());
        c.write_all(&msg).unwrap();
        sent_at.push_back(Instant::now());
    }
    let took = start.elapsed();
    for _ in 0..WINDOW {
        let _ = c.read_exact(&mut reply);
    }
    drop(c);
    echo.join().unwrap();
    summarize(lat, took)
}

/// The SDK: 64 tasks each calling in a loop; `curve`: under CURVE.
fn sdk(d: Duration, curve: bool) -> Result {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let mut so = ServiceOptions::new("echo", "tcp://127.0.0.1:0");
        let (server, caller) = (KeyPair::generate(), KeyPair::generate());
        if curve {
            so.tuning.mechanism = Mechanism::Curve(Curve::server(
                server.clone(),
                bus::curve::authorized([caller.public]),
            ));
        }
        let svc = Service::bind(so, |req: Request, _| async move {
            Reply::with_body(200, req.body)
        })
        .unwrap();
        let mut co = ClientOptions::new("echo").endpoint(svc.endpoint());
        if curve {
            co.tuning.mechanism = Mechanism::Curve(Curve::client(caller, Some(server.public)));
        }
        let client = Client::connect(co).unwrap();
        assert!(client.wait_connected(Duration::from_secs(5)).await);
        let body = Bytes::from(vec![7u8; BODY]);
        let start = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..WINDOW {
            let (c, body) = (client.clone(), body.clone());
            tasks.push(tokio::spawn(async move {
                let mut lat = Vec::with_capacity(100_000);
                while start.elapsed() < d {
                    let mut r = Request::new("echo", "echo");
                    r.body = body.clone();
                    let t = Instant::now();
                    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
                    c.call(r, deadline).await.expect("call");
                    lat.push(t.elapsed());
                }
                lat
            }));
        }
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.unwrap());
        }
        let took = start.elapsed();
        drop(svc);
        summarize(all, took)
    })
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` does not: skip.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let d = secs();
    let mut rows = Vec::new();
    // ONLY=raw|null|curve runs one case (for profiling it alone).
    let only = std::env::var("ONLY").unwrap_or_default();
    let run = |case: &str| only.is_empty() || only == case;
    for round in 0..2 {
        if run("raw") {
            rows.push((format!("raw TCP echo (round {})", round + 1), raw(d)));
        }
        if run("null") {
            rows.push((format!("bus SDK call (round {})", round + 1), sdk(d, false)));
        }
        if run("curve") {
            rows.push((
                format!("bus SDK call, CURVE (round {})", round + 1),
                sdk(d, true),
            ));
        }
    }
    println!("| case | calls/s | p50 µs | p99 µs |");
    println!("|---|---:|---:|---:|");
    for (n, r) in &rows {
        println!(
            "| {n} | {:.0} | {:.0} | {:.0} |",
            r.rate, r.p50_us, r.p99_us
        );
    }
    let best = |p: &str| {
        rows.iter()
            .filter(|(n, _)| n.starts_with(p))
            .map(|(_, r)| r.rate)
            .fold(0.0, f64::max)
    };
    println!(
        "\nSDK / raw throughput (best of rounds): {:.2}",
        best("bus SDK call (") / best("raw")
    );
    println!(
        "CURVE / NULL throughput (best of rounds): {:.2}",
        best("bus SDK call, CURVE") / best("bus SDK call (")
    );
}
