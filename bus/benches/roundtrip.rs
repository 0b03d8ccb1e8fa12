//! Calls/s and p99 for one client and one echo service, 64 calls in flight,
//! 200 B bodies, loopback TCP; beside it the raw libzmq DEALER→ROUTER round
//! trip with the same window, measured in the same run. The ratio is what
//! the SDK costs.
//!
//! Run: `cargo bench -p bus --bench roundtrip` (SECS=5 by default per case).

use bus::{Client, ClientOptions, Reply, Request, Service, ServiceOptions};
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

/// Raw sockets: a ROUTER thread echoing frames, a DEALER keeping 64 in flight.
fn raw(d: Duration) -> Result {
    let ctx = zmq::Context::new();
    let router = ctx.socket(zmq::ROUTER).unwrap();
    router.bind("tcp://127.0.0.1:*").unwrap();
    let ep = router.get_last_endpoint().unwrap().unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop2 = stop.clone();
    let echo = std::thread::spawn(move || {
        router.set_rcvtimeo(100).unwrap();
        while !stop2.load(std::sync::atomic::Ordering::Relaxed) {
            if let Ok(frames) = router.recv_multipart(0) {
                router.send_multipart(frames, 0).unwrap();
            }
        }
    });
    let dealer = ctx.socket(zmq::DEALER).unwrap();
    dealer.connect(&ep).unwrap();
    let body = [7u8; BODY];
    let mut sent_at = std::collections::VecDeque::with_capacity(WINDOW);
    let mut lat = Vec::with_capacity(4_000_000);
    let start = Instant::now();
    for i in 0..WINDOW as u64 {
        dealer
            .send_multipart([&i.to_le_bytes()[..], &body[..]], 0)
            .unwrap();
        sent_at.push_back(Instant::now());
    }
    let mut i = WINDOW as u64;
    while start.elapsed() < d {
        let _ = dealer.recv_multipart(0).unwrap();
        lat.push(sent_at.pop_front().unwrap().elapsed());
        dealer
            .send_multipart([&i.to_le_bytes()[..], &body[..]], 0)
            .unwrap();
        sent_at.push_back(Instant::now());
        i += 1;
    }
    let took = start.elapsed();
    for _ in 0..WINDOW {
        let _ = dealer.recv_multipart(0);
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    echo.join().unwrap();
    summarize(lat, took)
}

/// The SDK: 64 tasks each calling in a loop.
fn sdk(d: Duration) -> Result {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let svc = Service::bind(
            ServiceOptions::new("echo", "tcp://127.0.0.1:0"),
            |req: Request, _| async move { Reply::with_body(200, req.body) },
        )
        .unwrap();
        let client = Client::connect(ClientOptions::new("echo").endpoint(svc.endpoint())).unwrap();
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
    for round in 0..2 {
        rows.push((format!("raw DEALER→ROUTER (round {})", round + 1), raw(d)));
        rows.push((format!("bus SDK call (round {})", round + 1), sdk(d)));
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
        best("bus") / best("raw")
    );
}
