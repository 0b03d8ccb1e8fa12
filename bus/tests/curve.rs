//! CURVE (RFC 25/26) on real sockets: the bus against itself, against
//! libzmq 4.3 (pyzmq, built with CURVE) both ways and for events, and
//! against raw peers that break the handshake or replay a MESSAGE.

use bus::curve::{KeyPair, KeySet, PublicKey};
use bus::zmtp::curve::{ClientHandshake, Session};
use bus::zmtp::frame::{self, Metadata};
use bus::zmtp::greeting;
use bus::{
    CallError, Client, ClientOptions, Curve, Mechanism, Publisher, Reply, Request, Service,
    ServiceOptions, Subscriber, Tuning,
};
use bytes::{Bytes, BytesMut};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use testkit::python_run as python;

const WAIT: Duration = Duration::from_secs(5);

fn curve_tuning(c: Curve) -> Tuning {
    Tuning {
        mechanism: Mechanism::Curve(c),
        ..Tuning::default()
    }
}

/// An echo service under CURVE that counts its handler's runs.
fn service(keys: &KeyPair, authorized: &[PublicKey]) -> (Service, Arc<AtomicU64>) {
    let mut opts = ServiceOptions::new("echo", "tcp://127.0.0.1:0");
    opts.tuning = curve_tuning(Curve::server(
        keys.clone(),
        Some(Arc::new(KeySet::new(authorized.iter().copied()))),
    ));
    opts.tuning.handshake_timeout = Duration::from_secs(2);
    let runs = Arc::new(AtomicU64::new(0));
    let r = runs.clone();
    let svc = Service::bind(opts, move |req: Request, _| {
        r.fetch_add(1, Ordering::Relaxed);
        async move { Reply::with_body(200, req.body) }
    })
    .expect("bind");
    (svc, runs)
}

fn client(ep: &str, keys: &KeyPair, server: Option<PublicKey>) -> Client {
    let mut o = ClientOptions::new("echo").endpoint(ep);
    o.tuning = curve_tuning(Curve::client(keys.clone(), server));
    o.tuning.reconnect_ivl = Duration::from_millis(20);
    o.tuning.reconnect_ivl_max = Duration::from_millis(50);
    Client::connect(o).expect("client")
}

async fn call(c: &Client, body: Bytes) -> Result<Reply, CallError> {
    let mut r = Request::new("echo", "echo");
    r.body = body;
    c.call(r, tokio::time::Instant::now() + WAIT).await
}

async fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + WAIT;
    while !f() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_with_an_authorised_key_calls_a_curve_service() {
    let (server, caller) = (KeyPair::generate(), KeyPair::generate());
    let (svc, runs) = service(&server, &[caller.public]);
    let c = client(svc.endpoint(), &caller, Some(server.public));
    assert!(c.wait_connected(WAIT).await, "never connected");
    // Small bodies, and one past the outbox's zero-copy threshold.
    for n in [0usize, 1, 300, 5000, 200_000] {
        let body = Bytes::from((0..n).map(|i| i as u8).collect::<Vec<u8>>());
        let r = call(&c, body.clone()).await.expect("call");
        assert_eq!((r.status, r.body), (200, body));
    }
    // Many at once: nonces stay in order however the writer batches them.
    let calls: Vec<_> = (0..200)
        .map(|i| {
            let c = c.clone();
            tokio::spawn(async move { call(&c, Bytes::from(format!("m{i}"))).await })
        })
        .collect();
    for (i, t) in calls.into_iter().enumerate() {
        assert_eq!(t.await.unwrap().unwrap().body, format!("m{i}").as_bytes());
    }
    assert_eq!(runs.load(Ordering::Relaxed), 205);
    let s = svc.stats();
    assert_eq!((s.connections, s.refused_peers), (1, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_keep_an_idle_curve_connection() {
    let (server, caller) = (KeyPair::generate(), KeyPair::generate());
    let mut opts = ServiceOptions::new("echo", "tcp://127.0.0.1:0");
    opts.tuning = curve_tuning(Curve::server(server.clone(), None));
    opts.tuning.heartbeat_ivl = Duration::from_millis(20);
    opts.tuning.heartbeat_timeout = Duration::from_millis(150);
    let svc = Service::bind(opts, |req: Request, _| async move {
        Reply::with_body(200, req.body)
    })
    .unwrap();
    let mut o = ClientOptions::new("echo").endpoint(svc.endpoint());
    o.tuning = curve_tuning(Curve::client(caller, Some(server.public)));
    o.tuning.heartbeat_ivl = Duration::from_millis(20);
    o.tuning.heartbeat_timeout = Duration::from_millis(150);
    let c = Client::connect(o).unwrap();
    assert!(c.wait_connected(WAIT).await);
    // Idle for many heartbeat timeouts: PING and PONG travel boxed, and
    // each side hears the other.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        call(&c, Bytes::from_static(b"x")).await.unwrap().status,
        200
    );
    assert_eq!(svc.stats().connections, 1, "never reconnected");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unauthorised_key_is_refused_in_the_handshake() {
    let (server, caller, stranger) = (
        KeyPair::generate(),
        KeyPair::generate(),
        KeyPair::generate(),
    );
    let (svc, runs) = service(&server, &[caller.public]);
    let c = client(svc.endpoint(), &stranger, Some(server.public));
    wait_for("refusals", || svc.stats().refused_peers >= 2).await;
    assert!(!c.wait_connected(Duration::from_millis(50)).await);
    assert!(call(&c, Bytes::new()).await.is_err());
    // A caller that has the wrong server key fails at HELLO likewise.
    let wrong = client(svc.endpoint(), &caller, Some(stranger.public));
    let before = svc.stats().refused_peers;
    wait_for("refusal", || svc.stats().refused_peers > before).await;
    assert!(call(&wrong, Bytes::new()).await.is_err());
    assert_eq!(runs.load(Ordering::Relaxed), 0, "no handler ran");
    assert_eq!(svc.stats().connections, 0);
    // The authorised caller still gets in.
    let ok = client(svc.endpoint(), &caller, Some(server.public));
    assert!(ok.wait_connected(WAIT).await);
    assert_eq!(
        call(&ok, Bytes::from_static(b"y")).await.unwrap().status,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn null_and_curve_do_not_mix() {
    let (server, caller) = (KeyPair::generate(), KeyPair::generate());
    let (svc, runs) = service(&server, &[caller.public]);
    // A NULL client against the CURVE service: the greeting's mechanism.
    let null = Client::connect(ClientOptions::new("echo").endpoint(svc.endpoint())).unwrap();
    wait_for("refusal", || svc.stats().refused_peers >= 1).await;
    assert!(call(&null, Bytes::new()).await.is_err());
    assert_eq!(runs.load(Ordering::Relaxed), 0);
    // And a NULL raw peer's READY gets no READY back: the socket closes.
    let mut s = TcpStream::connect(svc.endpoint().trim_start_matches("tcp://")).unwrap();
    s.write_all(&greeting::encode("NULL", false)).unwrap();
    assert!(testkit::zmtp::closed_within(&mut s, WAIT));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_refuses_a_registered_key_that_is_not_the_configured_one() {
    let (server, caller, other) = (
        KeyPair::generate(),
        KeyPair::generate(),
        KeyPair::generate(),
    );
    let (svc, runs) = service(&server, &[caller.public]);
    // Configured key and a registration that disagrees: no connection.
    let c = client("tcp://127.0.0.1:1", &caller, Some(server.public));
    c.set_endpoints_with_keys(&[(svc.endpoint(), Some(other.public))])
        .unwrap();
    assert!(!c.wait_connected(Duration::from_millis(300)).await);
    assert_eq!(svc.stats().refused_peers, 0, "never even tried");
    // The registration corrected: used.
    c.set_endpoints_with_keys(&[(svc.endpoint(), Some(server.public))])
        .unwrap();
    assert!(c.wait_connected(WAIT).await);
    assert_eq!(
        call(&c, Bytes::from_static(b"a")).await.unwrap().status,
        200
    );
    // No configured key: the registered one is used.
    let d = client("tcp://127.0.0.1:1", &caller, None);
    d.set_endpoints_with_keys(&[(svc.endpoint(), Some(server.public))])
        .unwrap();
    assert!(d.wait_connected(WAIT).await);
    assert_eq!(
        call(&d, Bytes::from_static(b"b")).await.unwrap().status,
        200
    );
    assert_eq!(runs.load(Ordering::Relaxed), 2);
}

// ---- raw CURVE peers: exactly the bytes a test needs ----

struct Raw {
    s: TcpStream,
    buf: BytesMut,
}

impl Raw {
    /// Connects and exchanges CURVE greetings as a client.
    fn greet(ep: &str) -> Raw {
        let mut s = TcpStream::connect(ep.trim_start_matches("tcp://")).unwrap();
        s.set_read_timeout(Some(WAIT)).unwrap();
        s.write_all(&greeting::encode("CURVE", false)).unwrap();
        let mut g = [0u8; greeting::GREETING_LEN];
        s.read_exact(&mut g).unwrap();
        let g = greeting::parse(&g).unwrap().unwrap();
        assert_eq!((g.mechanism.as_str(), g.as_server), ("CURVE", true));
        Raw {
            s,
            buf: BytesMut::new(),
        }
    }

    fn command(&mut self, body: &[u8]) {
        let mut out = Vec::new();
        frame::put_head(&mut out, false, true, body.len());
        out.extend_from_slice(body);
        self.s.write_all(&out).unwrap();
    }

    fn frame(&mut self) -> Option<frame::RawFrame> {
        loop {
            if let Some(f) = frame::parse(&mut self.buf, 1 << 20).unwrap() {
                return Some(f);
            }
            let mut chunk = [0u8; 4096];
            match self.s.read(&mut chunk) {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// The whole handshake as a DEALER.
    fn handshake(ep: &str, keys: &KeyPair, server: PublicKey) -> (Raw, Session) {
        let mut raw = Raw::greet(ep);
        let mut hs = ClientHandshake::new(keys, server);
        raw.command(&hs.hello().unwrap());
        let welcome = raw.frame().expect("WELCOME");
        let initiate = hs.welcome(&welcome.body, &dealer_metadata()).unwrap();
        raw.command(&initiate);
        let ready = raw.frame().expect("READY");
        let (_, session) = hs.ready(&ready.body).unwrap();
        (raw, session)
    }
}

fn dealer_metadata() -> Vec<u8> {
    let mut m = Vec::new();
    Metadata(vec![(
        Bytes::from_static(b"Socket-Type"),
        Bytes::from_static(b"DEALER"),
    )])
    .put(&mut m);
    m
}

fn request_frames(id: u64) -> (Vec<u8>, Vec<u8>) {
    let mut r = Request::new("echo", "echo");
    r.correlation_id = id;
    r.budget_us = 5_000_000;
    (bus::wire::encode_request(&r).unwrap(), b"raw".to_vec())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_handshakes_and_replays_are_refused_without_a_handler() {
    let (server, caller) = (KeyPair::generate(), KeyPair::generate());
    let (svc, runs) = service(&server, &[caller.public]);
    let ep = svc.endpoint().to_string();
    let (k, p) = (caller.clone(), server.public);
    tokio::task::spawn_blocking(move || {
        // A corrupted HELLO (one bit of its box): closed.
        let mut raw = Raw::greet(&ep);
        let mut hello = ClientHandshake::new(&k, p).hello().unwrap();
        hello[150] ^= 1;
        raw.command(&hello);
        assert!(
            testkit::zmtp::closed_within(&mut raw.s, WAIT),
            "corrupted HELLO"
        );

        // A truncated INITIATE (a whole frame, the command cut short).
        let mut raw = Raw::greet(&ep);
        let mut hs = ClientHandshake::new(&k, p);
        raw.command(&hs.hello().unwrap());
        let welcome = raw.frame().expect("WELCOME");
        let initiate = hs.welcome(&welcome.body, &dealer_metadata()).unwrap();
        raw.command(&initiate[..200]);
        assert!(
            testkit::zmtp::closed_within(&mut raw.s, WAIT),
            "truncated INITIATE"
        );

        // A bad vouch: a client claims the authorised key C but does not
        // hold its secret, so its vouch (boxed C -> S') does not open.
        let impostor = KeyPair {
            public: k.public,
            secret: KeyPair::generate().secret,
        };
        let mut raw = Raw::greet(&ep);
        let mut hs = ClientHandshake::new(&impostor, p);
        raw.command(&hs.hello().unwrap());
        let welcome = raw.frame().expect("WELCOME");
        raw.command(&hs.welcome(&welcome.body, &dealer_metadata()).unwrap());
        assert!(testkit::zmtp::closed_within(&mut raw.s, WAIT), "bad vouch");

        // A replayed MESSAGE: the first is answered, the copy closes.
        let (mut raw, mut session) = Raw::handshake(&ep, &k, p);
        let (header, body) = request_frames(7);
        let mut sealed = Vec::new();
        session
            .sealer
            .seal_frame(true, false, &header, &mut sealed)
            .unwrap();
        session
            .sealer
            .seal_frame(false, false, &body, &mut sealed)
            .unwrap();
        raw.s.write_all(&sealed).unwrap();
        let mut reply = Vec::new();
        while reply.len() < 2 {
            let f = raw.frame().expect("reply");
            let (flags, b) = session.opener.open(&f.body).unwrap();
            if flags & frame::COMMAND == 0 {
                reply.push(b);
            }
        }
        assert_eq!(&reply[1][..], b"raw");
        raw.s.write_all(&sealed).unwrap();
        assert!(testkit::zmtp::closed_within(&mut raw.s, WAIT), "replay");

        // A reordered MESSAGE (the second frame before the first).
        let (mut raw, mut session) = Raw::handshake(&ep, &k, p);
        let (mut first, mut second) = (Vec::new(), Vec::new());
        let (header, body) = request_frames(8);
        session
            .sealer
            .seal_frame(true, false, &header, &mut first)
            .unwrap();
        session
            .sealer
            .seal_frame(false, false, &body, &mut second)
            .unwrap();
        raw.s.write_all(&second).unwrap();
        raw.s.write_all(&first).unwrap();
        assert!(testkit::zmtp::closed_within(&mut raw.s, WAIT), "reorder");
    })
    .await
    .unwrap();
    wait_for("five refusals", || svc.stats().refused_peers >= 5).await;
    let s = svc.stats();
    assert_eq!(s.refused_peers, 5, "{s:?}");
    assert_eq!(
        runs.load(Ordering::Relaxed),
        1,
        "only the original request ran"
    );
    // Still serving.
    let c = client(svc.endpoint(), &caller, Some(server.public));
    assert!(c.wait_connected(WAIT).await);
    assert_eq!(
        call(&c, Bytes::from_static(b"z")).await.unwrap().status,
        200
    );
}

// ---- libzmq (pyzmq) peers ----

const CURVE_DEALER: &str = r#"
import struct, sys, zmq
ep, header, n, secret, public, server = sys.argv[1], bytes.fromhex(sys.argv[2]), int(sys.argv[3]), *sys.argv[4:7]
assert zmq.has("curve")
s = zmq.Context.instance().socket(zmq.DEALER)
s.curve_secretkey, s.curve_publickey, s.curve_serverkey = secret.encode(), public.encode(), server.encode()
for o, v in ((zmq.LINGER, 0), (zmq.RCVTIMEO, 3000), (zmq.HEARTBEAT_IVL, 100),
             (zmq.HEARTBEAT_TIMEOUT, 700), (zmq.HEARTBEAT_TTL, 700)):
    s.setsockopt(o, v)
s.connect(ep)
for i in range(1, n + 1):
    s.send_multipart([header[:4] + struct.pack("<Q", i) + header[12:], b"body%d" % i * (i % 7 * 100 + 1)])
# Checked here, one short line each: a pipe holds far less than the bodies.
try:
    for _ in range(n):
        head, body = s.recv_multipart()
        i, status = struct.unpack_from("<Q", head, 4)[0], struct.unpack_from("<H", head, 16)[0]
        print(i, status, body == b"body%d" % i * (i % 7 * 100 + 1))
except zmq.Again:
    print("timeout")
"#;

fn request_hex() -> String {
    let mut req = Request::new("echo", "echo");
    req.budget_us = 5_000_000;
    let header = bus::wire::encode_request(&req).unwrap();
    header.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_libzmq_curve_dealer_calls_a_switchboard_service() {
    let (server, caller, stranger) = (
        KeyPair::generate(),
        KeyPair::generate(),
        KeyPair::generate(),
    );
    let (svc, runs) = service(&server, &[caller.public]);
    let ep = svc.endpoint().to_string();
    let (hex, sp) = (request_hex(), server.public.to_z85());
    let (cs, cp) = (caller.secret.to_z85(), caller.public.to_z85());
    let (ss, sp2) = (stranger.secret.to_z85(), stranger.public.to_z85());
    let (out, refused) = tokio::task::spawn_blocking(move || {
        let ok = python(CURVE_DEALER, &[&ep, &hex, "50", &cs, &cp, &sp], WAIT * 4);
        let refused = python(CURVE_DEALER, &[&ep, &hex, "1", &ss, &sp2, &sp], WAIT * 4);
        (ok, refused)
    })
    .await
    .unwrap();
    let mut seen: Vec<u64> = out
        .lines()
        .map(|line| {
            let f: Vec<&str> = line.split(' ').collect();
            assert_eq!(f[1..], ["200", "True"], "{line}");
            f[0].parse().unwrap()
        })
        .collect();
    seen.sort_unstable();
    assert_eq!(seen, (1..=50).collect::<Vec<u64>>());
    // The stranger's key: refused, its request never handled.
    assert_eq!(refused.trim(), "timeout");
    assert_eq!(runs.load(Ordering::Relaxed), 50);
    let s = svc.stats();
    assert_eq!(s.connections, 1);
    assert!(s.refused_peers >= 1, "{s:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_switchboard_caller_calls_a_libzmq_curve_router() {
    let (server, caller) = (KeyPair::generate(), KeyPair::generate());
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/examples/echo_service.py");
    let (ss, sp) = (server.secret.to_z85(), server.public.to_z85());
    let py = tokio::task::spawn_blocking(move || {
        testkit::python_service(
            &script,
            &[
                "tcp://127.0.0.1:*",
                "--curve-secret",
                &ss,
                "--curve-public",
                &sp,
            ],
        )
    })
    .await
    .unwrap();
    let ep = py.addr("bus");
    let c = client(&ep, &caller, Some(server.public));
    assert!(c.wait_connected(WAIT).await, "never connected");
    for n in [0usize, 10, 5000, 100_000] {
        let body = Bytes::from(vec![b'q'; n]);
        let r = call(&c, body.clone())
            .await
            .expect("call through a libzmq CURVE ROUTER");
        assert_eq!((r.status, r.body), (200, body));
    }
    // With the wrong server key, libzmq closes at HELLO: no reply ever.
    let wrong = client(&ep, &caller, Some(caller.public));
    assert!(!wrong.wait_connected(Duration::from_millis(300)).await);
    drop(py);
}

const CURVE_SUB: &str = r#"
import sys, zmq
ep, secret, public, server = sys.argv[1:5]
s = zmq.Context.instance().socket(zmq.SUB)
s.curve_secretkey, s.curve_publickey, s.curve_serverkey = secret.encode(), public.encode(), server.encode()
s.setsockopt(zmq.LINGER, 0)
s.setsockopt(zmq.RCVTIMEO, 10000)
s.setsockopt(zmq.SUBSCRIBE, b"kv.")
s.connect(ep)
for _ in range(3):
    print(" ".join(f.hex() for f in s.recv_multipart()), flush=True)
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_under_curve_reach_authorised_subscribers_only() {
    let (server, py_key, sb_key, stranger) = (
        KeyPair::generate(),
        KeyPair::generate(),
        KeyPair::generate(),
        KeyPair::generate(),
    );
    let tuning = curve_tuning(Curve::server(
        server.clone(),
        Some(Arc::new(KeySet::new([py_key.public, sb_key.public]))),
    ));
    let publisher = Publisher::bind_with(
        "tcp://127.0.0.1:0",
        Some(Duration::from_millis(10)),
        &tuning,
    )
    .unwrap();
    let ep = publisher.endpoint().to_string();
    // A Switchboard subscriber with an authorised key, and one without.
    let got = Arc::new(AtomicU64::new(0));
    let g = got.clone();
    let ok = Subscriber::connect_with(
        std::slice::from_ref(&ep),
        &["kv."],
        &curve_tuning(Curve::client(sb_key, Some(server.public))),
        move |_| {
            g.fetch_add(1, Ordering::Relaxed);
        },
    )
    .unwrap();
    let stolen = Arc::new(AtomicU64::new(0));
    let st = stolen.clone();
    let bad = Subscriber::connect_with(
        std::slice::from_ref(&ep),
        &["kv."],
        &curve_tuning(Curve::client(stranger, Some(server.public))),
        move |_| {
            st.fetch_add(1, Ordering::Relaxed);
        },
    )
    .unwrap();
    let args = [
        ep.clone(),
        py_key.secret.to_z85(),
        py_key.public.to_z85(),
        server.public.to_z85(),
    ];
    let sub = tokio::task::spawn_blocking(move || {
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        python(CURVE_SUB, &a, Duration::from_secs(30))
    });
    while !sub.is_finished() || got.load(Ordering::Relaxed) < 3 {
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
        assert_eq!(f[0], "6b762e6368616e676564");
        assert_eq!(f[2], "6b31");
    }
    assert!(publisher.refused() >= 1, "the stranger was refused");
    assert_eq!(
        stolen.load(Ordering::Relaxed),
        0,
        "the stranger got nothing"
    );
    assert_eq!(bad.silent_for(), None, "not even a heartbeat");
    drop(ok);
}
