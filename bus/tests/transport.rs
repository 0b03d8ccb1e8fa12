//! The bus over real ZeroMQ TCP sockets on loopback, port 0.

use bus::{CallError, Client, ClientOptions, Reply, Request, Service, ServiceOptions};
use bytes::Bytes;
use std::time::Duration;
use tokio::time::Instant;

const WAIT: Duration = Duration::from_secs(5);

/// A service that echoes the body and the `token` header, and tags the reply
/// with its own name. `slow` in the method sleeps that many ms first.
fn echo(name: &'static str, bind: &str, max_in_flight: usize) -> Service {
    try_echo(name, bind, max_in_flight).expect("bind")
}

fn try_echo(
    name: &'static str,
    bind: &str,
    max_in_flight: usize,
) -> Result<Service, bus::SetupError> {
    try_echo_tuned(name, bind, max_in_flight, bus::Tuning::default())
}

fn try_echo_tuned(
    name: &'static str,
    bind: &str,
    max_in_flight: usize,
    tuning: bus::Tuning,
) -> Result<Service, bus::SetupError> {
    let mut opts = ServiceOptions::new(name, bind);
    opts.max_in_flight = max_in_flight;
    opts.tuning = tuning;
    Service::bind(opts, move |req: Request, _deadline| async move {
        if let Some(ms) = req.method.strip_prefix("sleep:") {
            let ms: u64 = ms.parse().unwrap_or(0);
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        let mut r = Reply::with_body(200, req.body.clone());
        if let Some(t) = req.header("token") {
            r.headers.push(("token".into(), t.clone()));
        }
        r.headers
            .push(("served-by".into(), Bytes::from_static(name.as_bytes())));
        if req.ghost {
            r.headers.push(("ghost".into(), Bytes::from_static(b"1")));
        }
        r
    })
}

async fn client(endpoints: &[&str]) -> Client {
    client_tuned(endpoints, bus::Tuning::default()).await
}

async fn client_tuned(endpoints: &[&str], tuning: bus::Tuning) -> Client {
    let mut o = ClientOptions::new("echo");
    o.tuning = tuning;
    o.endpoints = endpoints.iter().map(|s| s.to_string()).collect();
    let c = Client::connect(o).expect("connect");
    assert!(c.wait_connected(WAIT).await, "never connected");
    // wait until every instance has connected, so spreading tests are fair
    let end = Instant::now() + WAIT;
    while c.instances().iter().any(|i| !i.is_connected()) && Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    c
}

fn req(method: &str, token: &str, body: Bytes) -> Request {
    let mut r = Request::new("echo", bus::Text::from(method.to_string()));
    r.headers
        .push(("token".into(), Bytes::copy_from_slice(token.as_bytes())));
    r.body = body;
    r
}

fn in_secs(s: u64) -> Instant {
    Instant::now() + Duration::from_secs(s)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_concurrent_calls_each_get_their_own_reply() {
    // 218 MB each way through one connection, at the default 3 s
    // heartbeat. Both ends share this runtime with the 10,000 callers, so
    // a caller must not hold a worker: built byte by byte through an
    // iterator (a debug build), the bodies cost 4.4 s of CPU, starved the
    // connections' own tasks, and the heartbeat fired in 3 of 5 runs with
    // 8 busy processes beside it. With `repeat` (a memcpy): 0 of 16.
    let svc =
        try_echo_tuned("echo", "tcp://127.0.0.1:0", 16_384, Default::default()).expect("bind");
    let c = client_tuned(&[svc.endpoint()], Default::default()).await;
    let sizes = [0usize, 1, 64 * 1024];
    let mut tasks = Vec::new();
    for i in 0..10_000u32 {
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            let token = format!("t{i}");
            let size = sizes[i as usize % 3];
            // A body unique to this call: its index, repeated.
            let mut body = i.to_le_bytes().repeat(size.div_ceil(4));
            body.truncate(size);
            let body = Bytes::from(body);
            let r = c
                .call(req("echo", &token, body.clone()), in_secs(30))
                .await
                .unwrap_or_else(|e| panic!("call {i}: {e}"));
            assert_eq!(r.status, 200);
            assert_eq!(r.header("token").map(|b| &b[..]), Some(token.as_bytes()));
            assert_eq!(r.body, body, "body of call {i}");
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(c.pending_len(), 0);
    let s = c.stats();
    assert_eq!(s.replies, 10_000);
    assert_eq!(s.late + s.unknown, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ghost_call_reaches_only_its_version_marked_and_uncounted() {
    let (a, b) = (
        echo("a", "tcp://127.0.0.1:0", 64),
        echo("b", "tcp://127.0.0.1:0", 64),
    );
    let c = client(&[a.endpoint(), b.endpoint()]).await;
    c.set_versions(&[(a.endpoint(), Some("v1")), (b.endpoint(), Some("v2"))]);
    for i in 0..20 {
        let r = c
            .call_ghost(
                req("echo", &format!("g{i}"), Bytes::new()),
                in_secs(5),
                "v2",
            )
            .await
            .expect("a ghost reply");
        assert_eq!(r.header("served-by").map(|b| &b[..]), Some(&b"b"[..]));
        assert_eq!(
            r.header("ghost").map(|b| &b[..]),
            Some(&b"1"[..]),
            "the flag crossed the wire"
        );
    }
    // No instance of the version: at once, never waiting for one.
    let started = Instant::now();
    let e = c
        .call_ghost(req("echo", "none", Bytes::new()), in_secs(5), "v3")
        .await
        .unwrap_err();
    assert!(matches!(e, CallError::NoInstance(_)), "{e:?}");
    assert!(started.elapsed() < Duration::from_millis(100));
    // A real call is unmarked and counted; the ghosts were not.
    let r = c
        .call(req("echo", "real", Bytes::new()), in_secs(5))
        .await
        .unwrap();
    assert_eq!(r.header("ghost"), None);
    let s = c.stats();
    assert_eq!((s.calls, s.replies, s.no_instance), (1, 1, 0), "{s:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadline_gives_timeout_then_late_reply_is_counted() {
    let svc = echo("echo", "tcp://127.0.0.1:0", 64);
    let c = client(&[svc.endpoint()]).await;
    let budget = Duration::from_millis(100);
    let start = Instant::now();
    let r = c
        .call(req("sleep:400", "a", Bytes::new()), start + budget)
        .await;
    let took = start.elapsed();
    assert_eq!(r.unwrap_err(), CallError::Timeout);
    assert!(took >= budget, "returned early: {took:?}");
    assert!(
        took < budget + Duration::from_millis(150),
        "slack: {took:?}"
    );
    assert_eq!(c.pending_len(), 0);
    // The service finishes after the deadline it was given and drops the
    // reply itself; either way nobody receives it.
    let end = Instant::now() + WAIT;
    while svc.stats().expired_in_handler + c.stats().late == 0 && Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(svc.stats().expired_in_handler + c.stats().late, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reply_after_caller_timeout_is_late() {
    // A service that ignores the deadline it is given (replies at 300 ms
    // whatever the budget) to exercise the client's late-reply path.
    let mut opts = ServiceOptions::new("echo", "tcp://127.0.0.1:0");
    opts.max_in_flight = 8;
    let raw = bus::client::ClientOptions::new("x"); // keep type in scope
    drop(raw);
    let svc = Service::bind(opts, |_req: Request, _d| async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        Reply::new(200)
    })
    .unwrap();
    let c = client(&[svc.endpoint()]).await;
    // Budget on the wire is large (service keeps working), but the caller
    // drops its future after 50 ms: the entry goes, the reply comes late.
    let fut = c.call(req("echo", "x", Bytes::new()), in_secs(10));
    assert!(tokio::time::timeout(Duration::from_millis(50), fut)
        .await
        .is_err());
    assert_eq!(c.pending_len(), 0, "dropped future left an entry");
    let end = Instant::now() + WAIT;
    while c.stats().late == 0 && Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(c.stats().late, 1);
    assert_eq!(c.stats().unknown, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_service_on_same_endpoint_recovers_without_hangs() {
    let svc = echo("echo", "tcp://127.0.0.1:0", 64);
    let ep = svc.endpoint().to_string();
    let c = client(&[&ep]).await;
    c.call(req("echo", "before", Bytes::new()), in_secs(5))
        .await
        .unwrap();
    drop(svc);
    // While it is down, calls fail fast: never a wait for the deadline.
    let end = Instant::now() + WAIT;
    loop {
        let t = Instant::now();
        let r = c.call(req("echo", "down", Bytes::new()), in_secs(5)).await;
        assert!(t.elapsed() < Duration::from_secs(1), "call hung: {r:?}");
        if matches!(r, Err(CallError::NoInstance(_))) {
            break;
        }
        assert!(Instant::now() < end, "never noticed the service left");
    }
    // The old listener closes when its accept task is next polled, which
    // on a loaded machine may be a moment after the drop: bind again with
    // a bound, as a restarted process would.
    let end = Instant::now() + WAIT;
    let svc = loop {
        match try_echo("echo", &ep, 64) {
            Ok(s) => break s,
            Err(e) => assert!(Instant::now() < end, "cannot bind {ep} again: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let end = Instant::now() + WAIT;
    loop {
        let t = Instant::now();
        let r = c.call(req("echo", "after", Bytes::new()), in_secs(5)).await;
        assert!(t.elapsed() < Duration::from_secs(1), "call hung: {r:?}");
        match r {
            Ok(r) => {
                assert_eq!(r.header("token").unwrap(), "after");
                break;
            }
            // Only what a service that is away can cause: never a
            // timeout or a protocol error.
            Err(e) => assert!(
                matches!(
                    e,
                    CallError::NoInstance(_) | CallError::Overloaded(_) | CallError::Disconnected
                ),
                "{e}"
            ),
        }
        assert!(Instant::now() < end, "never recovered");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(svc);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_clients_two_services_replies_reach_their_sender() {
    let a = echo("a", "tcp://127.0.0.1:0", 4096);
    let b = echo("b", "tcp://127.0.0.1:0", 4096);
    let c1 = client(&[a.endpoint(), b.endpoint()]).await;
    let c2 = client(&[a.endpoint(), b.endpoint()]).await;
    let mut tasks = Vec::new();
    for (n, c) in [(1, c1.clone()), (2, c2.clone())] {
        for i in 0..1000 {
            let c = c.clone();
            tasks.push(tokio::spawn(async move {
                let token = format!("c{n}-{i}");
                let r = c
                    .call(req("echo", &token, Bytes::from(token.clone())), in_secs(10))
                    .await
                    .unwrap();
                assert_eq!(r.body, token.as_bytes());
                r.header("served-by").unwrap().clone()
            }));
        }
    }
    let mut by_a = 0;
    for t in tasks {
        if t.await.unwrap() == "a" {
            by_a += 1;
        }
    }
    assert!(by_a > 200 && by_a < 1800, "one service got {by_a}/2000");
    assert_eq!(c1.stats().unknown + c2.stats().unknown, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_live_instance_takes_no_new_calls_and_finishes_the_sent_ones() {
    let a = echo("a", "tcp://127.0.0.1:0", 64);
    let b = echo("b", "tcp://127.0.0.1:0", 64);
    let c = client(&[a.endpoint(), b.endpoint()]).await;
    // Calls in flight on both instances.
    let mut calls = Vec::new();
    for i in 0..20 {
        let c2 = c.clone();
        calls.push(tokio::spawn(async move {
            c2.call(req("sleep:300", &i.to_string(), Bytes::new()), in_secs(10))
                .await
        }));
    }
    let end = Instant::now() + WAIT;
    while (a.in_flight() == 0 || b.in_flight() == 0) && Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(a.in_flight() > 0, "a got no call");
    // `a` deregistered (it is draining): remove it while its calls run.
    c.set_endpoints(&[b.endpoint()]).unwrap();
    for _ in 0..50 {
        let r = c
            .call(req("echo", "n", Bytes::new()), in_secs(5))
            .await
            .unwrap();
        assert_eq!(
            r.header("served-by").unwrap(),
            "b",
            "new calls go to b only"
        );
    }
    for call in calls {
        let r = call.await.unwrap();
        assert!(r.is_ok(), "a call sent before the removal failed: {r:?}");
    }
    assert_eq!(c.pending_len(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_instance_whose_connection_died_fails_its_calls_at_once() {
    let svc = echo("echo", "tcp://127.0.0.1:0", 64);
    let c = client(&[svc.endpoint()]).await;
    let c2 = c.clone();
    let call = tokio::spawn(async move {
        let t = Instant::now();
        let r = c2
            .call(req("sleep:5000", "x", Bytes::new()), in_secs(10))
            .await;
        (r, t.elapsed())
    });
    let end = Instant::now() + WAIT;
    while svc.in_flight() == 0 && Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // The instance goes away (a crash), then discovery removes it.
    drop(svc);
    c.set_endpoints::<&str>(&[]).unwrap();
    let (r, took) = call.await.unwrap();
    assert_eq!(r.unwrap_err(), CallError::Disconnected);
    assert!(took < Duration::from_secs(2), "{took:?}");
    assert_eq!(c.pending_len(), 0);
    let r = c.call(req("echo", "y", Bytes::new()), in_secs(5)).await;
    assert!(matches!(r, Err(CallError::NoInstance(_))), "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_instance_is_immediate_after_the_first_connect_window() {
    let mut o = ClientOptions::new("nobody");
    o.endpoints = vec!["tcp://127.0.0.1:1".into()];
    let c = Client::connect(o).unwrap();
    // A new instance gets FIRST_CONNECT_WAIT to finish its handshake...
    let t = Instant::now();
    let r = c.call(Request::new("nobody", "x"), in_secs(5)).await;
    assert!(matches!(r, Err(CallError::NoInstance(_))), "{r:?}");
    let first = t.elapsed();
    assert!(
        first >= bus::client::FIRST_CONNECT_WAIT - Duration::from_millis(20),
        "{first:?}"
    );
    assert!(
        first < bus::client::FIRST_CONNECT_WAIT + Duration::from_millis(150),
        "{first:?}"
    );
    // ...and never more than once: then failure is immediate.
    let t = Instant::now();
    let r = c.call(Request::new("nobody", "x"), in_secs(5)).await;
    assert!(matches!(r, Err(CallError::NoInstance(_))), "{r:?}");
    assert!(t.elapsed() < Duration::from_millis(100));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_right_after_start_waits_for_the_first_handshake() {
    let svc = echo("echo", "tcp://127.0.0.1:0", 64);
    let c = Client::connect(ClientOptions::new("echo").endpoint(svc.endpoint())).unwrap();
    // No wait_connected: the first call must not fail with NoInstance.
    let r = c.call(req("echo", "first", Bytes::new()), in_secs(5)).await;
    assert!(r.is_ok(), "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_pending_table_is_overloaded_not_queued() {
    let svc = echo("echo", "tcp://127.0.0.1:0", 64);
    let mut o = ClientOptions::new("echo");
    o.endpoints = vec![svc.endpoint().to_string()];
    o.max_pending = 2;
    let c = Client::connect(o).unwrap();
    assert!(c.wait_connected(WAIT).await);
    let slow: Vec<_> = (0..2)
        .map(|_| {
            let c = c.clone();
            tokio::spawn(async move {
                c.call(req("sleep:300", "s", Bytes::new()), in_secs(5))
                    .await
            })
        })
        .collect();
    let end = Instant::now() + WAIT;
    while c.pending_len() < 2 && Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let r = c.call(req("echo", "x", Bytes::new()), in_secs(5)).await;
    assert!(matches!(r, Err(CallError::Overloaded(_))), "{r:?}");
    for s in slow {
        assert!(s.await.unwrap().is_ok());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_concurrency_limit_answers_503() {
    let svc = echo("echo", "tcp://127.0.0.1:0", 1);
    let c = client(&[svc.endpoint()]).await;
    let c2 = c.clone();
    let slow = tokio::spawn(async move {
        c2.call(req("sleep:300", "s", Bytes::new()), in_secs(5))
            .await
    });
    let end = Instant::now() + WAIT;
    while svc.in_flight() == 0 && Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let r = c.call(req("echo", "x", Bytes::new()), in_secs(5)).await;
    assert!(matches!(r, Err(CallError::Overloaded(_))), "{r:?}");
    assert!(slow.await.unwrap().is_ok());
    assert_eq!(svc.stats().overloaded, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handler_panic_answers_500_and_frees_the_slot() {
    let svc = Service::bind(
        ServiceOptions::new("boom", "tcp://127.0.0.1:0"),
        |req: Request, _d| async move {
            if req.method.as_str() == "panic" {
                panic!("handler bug");
            }
            Reply::new(204)
        },
    )
    .unwrap();
    let c = client(&[svc.endpoint()]).await;
    let r = c.call(Request::new("boom", "panic"), in_secs(5)).await;
    assert!(
        matches!(r, Err(CallError::Remote { status: 500, .. })),
        "{r:?}"
    );
    let r = c
        .call(Request::new("boom", "ok"), in_secs(5))
        .await
        .unwrap();
    assert_eq!(r.status, 204);
    assert_eq!(svc.in_flight(), 0);
}

/// Raw DEALER frames a buggy or hostile peer might send.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_survives_bad_frames_and_drops_expired_work() {
    let svc = echo("echo", "tcp://127.0.0.1:0", 64);
    let mut d = testkit::zmtp::RawPeer::connect(svc.endpoint(), "DEALER");
    let wait = Duration::from_secs(2);

    // A request with a good prefix but a truncated body: 400 error reply.
    let mut good = Request::new("echo", "echo");
    good.correlation_id = 42;
    good.budget_us = 1_000_000;
    let h = bus::wire::encode_request(&good).unwrap();
    d.send(&[&h[..h.len() - 3], b""]);
    let frames = d.recv(wait).expect("an error reply");
    match bus::wire::decode(frames[0].clone(), Bytes::new()).unwrap() {
        bus::Message::Error(e) => {
            assert_eq!((e.correlation_id, e.status), (42, 400));
        }
        m => panic!("{m:?}"),
    }
    // Garbage and a lone frame: counted, no crash.
    d.send(&[b"\xff\xfe", b"x"]);
    d.send(&[b"lonely"]);
    // Budget 0: dropped without running the handler and without a reply.
    good.budget_us = 0;
    good.correlation_id = 43;
    let h = bus::wire::encode_request(&good).unwrap();
    d.send(&[&h, b""]);
    // Then a good one still works, and is the next thing we receive.
    good.budget_us = 1_000_000;
    good.correlation_id = 44;
    let h = bus::wire::encode_request(&good).unwrap();
    d.send(&[&h, b"ok"]);
    let frames = d.recv(wait).expect("a reply");
    match bus::wire::decode(frames[0].clone(), frames[1].clone()).unwrap() {
        bus::Message::Reply(r) => assert_eq!((r.correlation_id, &r.body[..]), (44, &b"ok"[..])),
        m => panic!("{m:?}"),
    }
    let s = svc.stats();
    assert_eq!(s.expired_on_arrival, 1);
    assert_eq!(s.malformed, 3);
}
