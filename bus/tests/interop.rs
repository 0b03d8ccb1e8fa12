//! The bus against libzmq 4.3 (pyzmq), the reference ZeroMQ peer, and
//! against raw TCP peers that break the protocol.

use bus::{Client, ClientOptions, Publisher, Reply, Request, Service, ServiceOptions};
use bytes::Bytes;
use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};
use testkit::python_run as python;

fn echo_service(opts: ServiceOptions) -> Service {
    Service::bind(opts, |req: Request, _| async move {
        Reply::with_body(200, req.body)
    })
    .expect("bind")
}

const DEALER: &str = r#"
import struct, sys, time, zmq
ep, header, n = sys.argv[1], bytes.fromhex(sys.argv[2]), int(sys.argv[3])
s = zmq.Context.instance().socket(zmq.DEALER)
for o, v in ((zmq.LINGER, 0), (zmq.RCVTIMEO, 5000), (zmq.HEARTBEAT_IVL, 100),
             (zmq.HEARTBEAT_TIMEOUT, 700), (zmq.HEARTBEAT_TTL, 700)):
    s.setsockopt(o, v)
s.connect(ep)
def round(first):
    for i in range(first, first + n):
        s.send_multipart([header[:4] + struct.pack("<Q", i) + header[12:], b"body%d" % i])
    for _ in range(n):
        print(" ".join(f.hex() for f in s.recv_multipart()))
round(1)
# Idle for fifteen heartbeat intervals: the connection must survive on
# PING/PONG alone.
time.sleep(1.5)
round(n + 1)
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_libzmq_dealer_calls_a_switchboard_service() {
    // Our own PINGs off: while idle, only our PONGs answer libzmq's PINGs,
    // so a missing PONG shows as a reconnect.
    let mut opts = ServiceOptions::new("echo", "tcp://127.0.0.1:0");
    opts.tuning.heartbeat_ivl = Duration::ZERO;
    let svc = echo_service(opts);
    let mut req = Request::new("echo", "echo");
    req.budget_us = 5_000_000;
    let header = bus::wire::encode_request(&req).unwrap();
    let hex: String = header.iter().map(|b| format!("{b:02x}")).collect();
    let ep = svc.endpoint().to_string();
    let out = tokio::task::spawn_blocking(move || {
        python(DEALER, &[&ep, &hex, "50"], Duration::from_secs(30))
    })
    .await
    .unwrap();
    let mut seen = Vec::new();
    for line in out.lines() {
        let frames: Vec<Vec<u8>> = line
            .split(' ')
            .map(|h| {
                (0..h.len())
                    .step_by(2)
                    .map(|i| u8::from_str_radix(&h[i..i + 2], 16).unwrap())
                    .collect()
            })
            .collect();
        assert_eq!(frames.len(), 2, "reply frames: {line}");
        match bus::wire::decode(
            Bytes::from(frames[0].clone()),
            Bytes::from(frames[1].clone()),
        )
        .unwrap()
        {
            bus::Message::Reply(r) => {
                assert_eq!(r.status, 200);
                assert_eq!(r.body, format!("body{}", r.correlation_id).as_bytes());
                seen.push(r.correlation_id);
            }
            m => panic!("{m:?}"),
        }
    }
    seen.sort_unstable();
    assert_eq!(seen, (1..=100).collect::<Vec<u64>>());
    let s = svc.stats();
    assert_eq!((s.received, s.replied, s.refused_peers), (100, 100, 0));
    // One connection throughout: the idle 1.5 s was bridged by libzmq's
    // PINGs and our PONGs (libzmq drops a peer silent for 700 ms after a
    // PING, and reconnects).
    assert_eq!(s.connections, 1);
}

const SUB: &str = r#"
import sys, zmq
s = zmq.Context.instance().socket(zmq.SUB)
s.setsockopt(zmq.LINGER, 0)
s.setsockopt(zmq.RCVTIMEO, 10000)
s.setsockopt(zmq.SUBSCRIBE, b"kv.")
s.connect(sys.argv[1])
for _ in range(3):
    print(" ".join(f.hex() for f in s.recv_multipart()), flush=True)
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_libzmq_sub_receives_only_the_events_it_subscribed_to() {
    let publisher = Publisher::bind("tcp://127.0.0.1:0", Some(Duration::from_millis(10))).unwrap();
    let ep = publisher.endpoint().to_string();
    let sub = tokio::task::spawn_blocking(move || python(SUB, &[&ep], Duration::from_secs(30)));
    // PUB/SUB has no handshake the publisher can wait on: publish until the
    // subscriber has had three (bounded by the python side's timeouts).
    while !sub.is_finished() {
        publisher
            .publish("other.topic", Bytes::from_static(b"no"))
            .unwrap();
        publisher
            .publish("kv.changed", Bytes::from_static(b"k1"))
            .unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let out = sub.await.unwrap();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    for line in lines {
        let f: Vec<&str> = line.split(' ').collect();
        assert_eq!(f.len(), 3, "[topic, header, body]: {line}");
        // topic "kv.changed", body "k1": never other.topic, never the
        // heartbeat it did not subscribe to.
        assert_eq!(f[0], "6b762e6368616e676564");
        assert_eq!(f[2], "6b31");
    }
}

/// A raw TCP peer: writes `bytes`, then reports whether the service closed
/// the connection within `bound`.
fn closed_after(ep: &str, bytes: &[u8], bound: Duration) -> bool {
    let mut s = TcpStream::connect(ep.trim_start_matches("tcp://")).unwrap();
    s.write_all(bytes).unwrap();
    testkit::zmtp::closed_within(&mut s, bound)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_violations_are_refused_and_the_service_keeps_serving() {
    let mut opts = ServiceOptions::new("echo", "tcp://127.0.0.1:0");
    opts.tuning.handshake_timeout = Duration::from_millis(300);
    let svc = echo_service(opts);
    let ep = svc.endpoint().to_string();
    let greeting = bus::zmtp::greeting::encode("NULL", false);
    let mut plain = greeting;
    plain[12..17].copy_from_slice(b"PLAIN");
    let mut pub_ready = greeting.to_vec();
    bus::zmtp::frame::Command::Ready(bus::zmtp::frame::Metadata(vec![(
        Bytes::from_static(b"Socket-Type"),
        Bytes::from_static(b"PUB"),
    )]))
    .put(&mut pub_ready);
    let ep2 = ep.clone();
    tokio::task::spawn_blocking(move || {
        let bound = Duration::from_secs(3);
        assert!(closed_after(&ep2, b"GET / HTTP/1.1\r\n\r\n", bound), "HTTP");
        assert!(
            closed_after(&ep2, &greeting[..5], bound),
            "truncated greeting"
        );
        assert!(closed_after(&ep2, &plain, bound), "PLAIN mechanism");
        assert!(closed_after(&ep2, &pub_ready, bound), "PUB socket type");
        // A frame that claims 1 GiB after a good handshake: refused from
        // its size field, before any of it is buffered.
        let mut p = testkit::zmtp::RawPeer::connect(&ep2, "DEALER");
        let mut huge = vec![bus::zmtp::frame::LONG];
        huge.extend_from_slice(&(1u64 << 30).to_be_bytes());
        p.stream.write_all(&huge).unwrap();
        assert!(p.closed_within(bound), "oversize frame");
    })
    .await
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while svc.stats().refused_peers < 5 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(svc.stats().refused_peers, 5);
    let c = Client::connect(ClientOptions::new("echo").endpoint(ep)).unwrap();
    let mut r = Request::new("echo", "echo");
    r.body = Bytes::from_static(b"still here");
    let reply = c
        .call(r, tokio::time::Instant::now() + Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(&reply.body[..], b"still here");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_started_before_its_libzmq_service_uses_it_once_it_is_up() {
    // A free port for the Python service to take later.
    let ep = testkit::free_endpoint();
    let c = Client::connect(ClientOptions::new("aggregator").endpoint(ep.clone())).unwrap();
    let call = |c: Client| async move {
        let mut r = Request::new("aggregator", "http");
        r.body = Bytes::from_static(b"ping");
        c.call(r, tokio::time::Instant::now() + Duration::from_secs(2))
            .await
    };
    // Nothing there: a fast refusal, not a hang.
    let t = Instant::now();
    assert!(call(c.clone()).await.is_err());
    assert!(t.elapsed() < Duration::from_secs(1));
    let ep2 = ep.clone();
    let py = tokio::task::spawn_blocking(move || testkit::python_echo_service(&ep2))
        .await
        .unwrap();
    // Up: used as soon as the reconnect (at most 1 s back-off) completes.
    let up = Instant::now();
    assert!(
        c.wait_connected(Duration::from_secs(3)).await,
        "never connected"
    );
    let waited = up.elapsed();
    for _ in 0..200 {
        let r = call(c.clone()).await.expect("call through libzmq ROUTER");
        assert_eq!((r.status, &r.body[..]), (200, &b"ping"[..]));
    }
    // One back-off at most: 1 s, plus its jitter (25%), plus slack.
    assert!(waited < Duration::from_millis(2500), "took {waited:?}");
    drop(py);
}
