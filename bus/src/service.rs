//! `Service`: binds a ROUTER and runs an async handler per request.
//!
//! ```text
//!  service thread (owns the ROUTER)              tokio
//!  ────────────────────────────────              ─────
//!  recv [identity, header, body]
//!    peek prefix: bad ─► error reply 400 (or drop if no id)
//!    budget 0      ─► drop, count expired
//!    in_flight ≥ max or draining ─► error reply 503
//!    runtime.spawn ─────────────────────────►  decode, handler(req, deadline)
//!  send [identity, header, body] ◄── reply_tx  encode reply (or error 500)
//!    in_flight -= 1
//! ```
//!
//! `in_flight` is decremented by the thread when it takes a reply off the
//! queue, so the queue never holds more than `max_in_flight` items and a
//! reply can always be queued. A handler that panics still answers (500):
//! its guard sends the reply when dropped.

use crate::error::SetupError;
use crate::socket::{self, Tuning};
use crate::waker::Waker;
use crate::wire::{self, ErrorReply, Kind, Message, Reply, Request, Text};
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, SyncSender, TryRecvError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;
use tokio::sync::oneshot;
use tokio::time::Instant;

/// Requests handled at once before new ones are refused with 503.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 4096;
const BATCH: usize = 256;
/// How long a drained service stays open after its last reply, so callers
/// read it before the connection goes (measured: closing at once lost the
/// last reply in about half of the graceful-stop test runs; 100 ms, none).
const DRAIN_TAIL: Duration = Duration::from_millis(250);

#[derive(Debug, Clone)]
pub struct ServiceOptions {
    pub name: String,
    /// Where to bind, e.g. `tcp://127.0.0.1:8100`; port 0 picks a free port
    /// (see [`Service::endpoint`]).
    pub bind: String,
    pub max_in_flight: usize,
    pub tuning: Tuning,
}

impl ServiceOptions {
    pub fn new(name: impl Into<String>, bind: impl Into<String>) -> ServiceOptions {
        ServiceOptions {
            name: name.into(),
            bind: bind.into(),
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            tuning: Tuning::default(),
        }
    }
}

#[derive(Debug, Default)]
struct Counters {
    received: AtomicU64,
    replied: AtomicU64,
    overloaded: AtomicU64,
    expired_on_arrival: AtomicU64,
    expired_in_handler: AtomicU64,
    malformed: AtomicU64,
    undeliverable: AtomicU64,
    handler_failures: AtomicU64,
}

/// A snapshot of a service's counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServiceStats {
    pub received: u64,
    pub replied: u64,
    /// Refused with 503: at the concurrency limit or draining.
    pub overloaded: u64,
    /// Arrived with no budget left: dropped without work.
    pub expired_on_arrival: u64,
    /// The handler finished after the caller's deadline: reply not sent.
    pub expired_in_handler: u64,
    /// Frames that were not a valid request (answered 400 when possible).
    pub malformed: u64,
    /// Replies to callers that had gone or whose queue was full.
    pub undeliverable: u64,
    /// Handlers that panicked (answered 500).
    pub handler_failures: u64,
    pub in_flight: usize,
}

struct ReplyCmd {
    identity: zmq::Message,
    header: zmq::Message,
    body: zmq::Message,
}

enum Ctrl {
    Drain(oneshot::Sender<()>),
    Stop,
}

struct Shared {
    name: String,
    counters: Counters,
    in_flight: AtomicUsize,
    draining: AtomicBool,
    methods: crate::metrics::MethodHists,
}

/// Reports as `service.*` (one service per process by convention).
impl telemetry::Source for Shared {
    fn visit(&self, v: &mut dyn telemetry::Visitor) {
        let c = &self.counters;
        for (name, a) in [
            ("received", &c.received),
            ("replied", &c.replied),
            ("overloaded", &c.overloaded),
            ("expired_on_arrival", &c.expired_on_arrival),
            ("expired_in_handler", &c.expired_in_handler),
            ("malformed", &c.malformed),
            ("undeliverable", &c.undeliverable),
            ("handler_failures", &c.handler_failures),
        ] {
            v.counter(&format!("service.{name}"), a.load(Ordering::Relaxed));
        }
        v.gauge("service.in_flight", self.in_flight() as i64);
        self.methods.visit("service", v);
    }
}

impl Shared {
    fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    fn stats(&self) -> ServiceStats {
        let c = &self.counters;
        ServiceStats {
            received: c.received.load(Ordering::Relaxed),
            replied: c.replied.load(Ordering::Relaxed),
            overloaded: c.overloaded.load(Ordering::Relaxed),
            expired_on_arrival: c.expired_on_arrival.load(Ordering::Relaxed),
            expired_in_handler: c.expired_in_handler.load(Ordering::Relaxed),
            malformed: c.malformed.load(Ordering::Relaxed),
            undeliverable: c.undeliverable.load(Ordering::Relaxed),
            handler_failures: c.handler_failures.load(Ordering::Relaxed),
            in_flight: self.in_flight(),
        }
    }
}

/// Reads a [`Service`]'s counters; see [`Service::monitor`].
#[derive(Clone)]
pub struct ServiceMonitor(Arc<Shared>);

impl ServiceMonitor {
    pub fn stats(&self) -> ServiceStats {
        self.0.stats()
    }

    pub fn in_flight(&self) -> usize {
        self.0.in_flight()
    }

    /// True once a graceful stop has begun.
    pub fn draining(&self) -> bool {
        self.0.draining.load(Ordering::Relaxed)
    }
}

/// A running service. Stop it with [`Service::shutdown`]; dropping it stops
/// it at once without draining.
pub struct Service {
    endpoint: String,
    shared: Arc<Shared>,
    ctrl_tx: Sender<Ctrl>,
    waker: Arc<Waker>,
    thread: Option<JoinHandle<()>>,
}

impl Service {
    /// Binds `opts.bind` and serves requests with `handler`, which gets the
    /// decoded request and its deadline (arrival + the caller's budget).
    /// Must be called inside a tokio runtime: handlers are spawned on it.
    pub fn bind<F, Fut>(opts: ServiceOptions, handler: F) -> Result<Service, SetupError>
    where
        F: Fn(Request, Instant) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Reply> + Send + 'static,
    {
        socket::check_endpoint(&opts.bind)?;
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| SetupError::NoRuntime)?;
        let router = socket::router(&opts.tuning, &opts.bind)?;
        router
            .bind(&opts.bind)
            .map_err(socket::zerr("bind", &opts.bind))?;
        let endpoint = router
            .get_last_endpoint()
            .ok()
            .and_then(|r| r.ok())
            .unwrap_or_else(|| opts.bind.clone());
        let max = opts.max_in_flight.max(1);
        let (reply_tx, reply_rx) = mpsc::sync_channel(max);
        let (ctrl_tx, ctrl_rx) = mpsc::channel();
        let waker = Arc::new(Waker::new()?);
        let shared = Arc::new(Shared {
            name: opts.name.clone(),
            counters: Counters::default(),
            in_flight: AtomicUsize::new(0),
            draining: AtomicBool::new(false),
            methods: Default::default(),
        });
        telemetry::register(&shared);
        let worker = Worker {
            router,
            reply_rx,
            reply_tx,
            ctrl_rx,
            stash: None,
            waker: waker.clone(),
            shared: shared.clone(),
            runtime,
            handler: Arc::new(handler),
            max_in_flight: max,
            drained: None,
        };
        let thread = std::thread::Builder::new()
            .name(format!("bus-service-{}", opts.name))
            .spawn(move || worker.run())?;
        tracing::info!(service = %opts.name, %endpoint, "service bound");
        Ok(Service {
            endpoint,
            shared,
            ctrl_tx,
            waker,
            thread: Some(thread),
        })
    }

    /// The endpoint actually bound (the real port when bound to port 0).
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    pub fn name(&self) -> &str {
        &self.shared.name
    }

    pub fn in_flight(&self) -> usize {
        self.shared.in_flight()
    }

    pub fn stats(&self) -> ServiceStats {
        self.shared.stats()
    }

    /// A handle that reads the counters, for admin pages that outlive the
    /// borrow of the service (which `shutdown` consumes).
    pub fn monitor(&self) -> ServiceMonitor {
        ServiceMonitor(self.shared.clone())
    }

    /// Graceful stop: new requests are refused with 503 (callers may try
    /// another instance), requests in flight finish and are answered, for at
    /// most `grace`; then, after a short tail (`DRAIN_TAIL`, within `grace`)
    /// in which callers read the last replies, the socket closes.
    pub async fn shutdown(mut self, grace: Duration) {
        let (tx, rx) = oneshot::channel();
        self.shared.draining.store(true, Ordering::Relaxed);
        let _ = self.ctrl_tx.send(Ctrl::Drain(tx));
        self.waker.force();
        let start = tokio::time::Instant::now();
        let _ = tokio::time::timeout(grace, rx).await;
        // The last replies are on the wire now, but a caller whose DEALER
        // uses ZMQ_IMMEDIATE (ours do) drops what it has received and not
        // yet read when the connection closes under it: stay open, still
        // refusing new work, while callers read them (and close their side;
        // see bus::client's retired connections).
        let tail = DRAIN_TAIL.min(grace.saturating_sub(start.elapsed()));
        tokio::time::sleep(tail).await;
        self.stop_now();
    }

    fn stop_now(&mut self) {
        let _ = self.ctrl_tx.send(Ctrl::Stop);
        self.waker.force();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.stop_now();
    }
}

// ------------------------------------------------------------ socket thread

type DynHandler<F> = Arc<F>;

struct Worker<F> {
    router: zmq::Socket,
    reply_rx: Receiver<ReplyCmd>,
    reply_tx: SyncSender<ReplyCmd>,
    ctrl_rx: Receiver<Ctrl>,
    stash: Option<ReplyCmd>,
    waker: Arc<Waker>,
    shared: Arc<Shared>,
    runtime: tokio::runtime::Handle,
    handler: DynHandler<F>,
    max_in_flight: usize,
    drained: Option<oneshot::Sender<()>>,
}

impl<F, Fut> Worker<F>
where
    F: Fn(Request, Instant) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Reply> + Send + 'static,
{
    fn run(mut self) {
        loop {
            match self.ctrl_rx.try_recv() {
                Ok(Ctrl::Drain(tx)) => self.drained = Some(tx),
                Ok(Ctrl::Stop) | Err(TryRecvError::Disconnected) => break,
                Err(TryRecvError::Empty) => {}
            }
            let sent = self.send_replies();
            let received = self.receive();
            if self.drained.is_some() && self.shared.in_flight.load(Ordering::Acquire) == 0 {
                if let Some(tx) = self.drained.take() {
                    let _ = tx.send(());
                }
            }
            if !sent && !received {
                self.sleep();
            }
        }
    }

    fn send_replies(&mut self) -> bool {
        let mut any = false;
        let mut next = self.stash.take();
        for _ in 0..BATCH * 4 {
            let cmd = match next.take() {
                Some(c) => c,
                None => match self.reply_rx.try_recv() {
                    Ok(c) => c,
                    Err(_) => break,
                },
            };
            any = true;
            self.shared.in_flight.fetch_sub(1, Ordering::AcqRel);
            self.send(cmd);
        }
        any
    }

    fn send(&self, cmd: ReplyCmd) {
        let c = &self.shared.counters;
        let r = self
            .router
            .send(cmd.identity, zmq::SNDMORE | zmq::DONTWAIT)
            .and_then(|_| self.router.send(cmd.header, zmq::SNDMORE | zmq::DONTWAIT))
            .and_then(|_| self.router.send(cmd.body, zmq::DONTWAIT));
        match r {
            Ok(()) => c.replied.fetch_add(1, Ordering::Relaxed),
            // EHOSTUNREACH: the caller's connection is gone; EAGAIN: its queue
            // is full. Either way nobody can take this reply.
            Err(_) => c.undeliverable.fetch_add(1, Ordering::Relaxed),
        };
    }

    fn error_reply(&self, identity: zmq::Message, id: u64, status: u16, msg: &'static str) {
        let header = wire::encode_error(&ErrorReply {
            correlation_id: id,
            status,
            message: Text::from_static(msg),
        });
        self.send(ReplyCmd {
            identity,
            header: zmq::Message::from(header),
            body: zmq::Message::new(),
        });
    }

    fn receive(&mut self) -> bool {
        for n in 0..BATCH {
            let Ok(identity) = self.router.recv_msg(zmq::DONTWAIT) else {
                return n > 0;
            };
            self.one(identity);
        }
        true
    }

    fn one(&mut self, identity: zmq::Message) {
        let c = &self.shared.counters;
        c.received.fetch_add(1, Ordering::Relaxed);
        let mut frames: [Option<zmq::Message>; 2] = [None, None];
        let mut count = 0usize;
        let mut more = identity.get_more();
        while more {
            let Ok(m) = self.router.recv_msg(zmq::DONTWAIT) else {
                break;
            };
            more = m.get_more();
            if count < 2 {
                frames[count] = Some(m);
            }
            count += 1;
        }
        let [Some(header), Some(body)] = frames else {
            c.malformed.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let prefix = match wire::peek(&header) {
            Ok(p) if p.kind == Kind::Request && count == 2 => p,
            Ok(p) => {
                c.malformed.fetch_add(1, Ordering::Relaxed);
                if p.kind == Kind::Request {
                    self.error_reply(identity, p.correlation_id, 400, "expected 2 frames");
                }
                return;
            }
            Err(_) => {
                c.malformed.fetch_add(1, Ordering::Relaxed);
                if header.len() >= 12 {
                    let mut id = [0u8; 8];
                    id.copy_from_slice(&header[4..12]);
                    self.error_reply(identity, u64::from_le_bytes(id), 400, "bad header");
                }
                return;
            }
        };
        if prefix.budget_us == 0 {
            c.expired_on_arrival.fetch_add(1, Ordering::Relaxed);
            return;
        }
        if self.shared.draining.load(Ordering::Relaxed) {
            c.overloaded.fetch_add(1, Ordering::Relaxed);
            self.error_reply(identity, prefix.correlation_id, 503, "draining");
            return;
        }
        if self.shared.in_flight.load(Ordering::Acquire) >= self.max_in_flight {
            c.overloaded.fetch_add(1, Ordering::Relaxed);
            self.error_reply(identity, prefix.correlation_id, 503, "at capacity");
            return;
        }
        self.shared.in_flight.fetch_add(1, Ordering::AcqRel);
        let received = Instant::now();
        let deadline = received + Duration::from_micros(prefix.budget_us as u64);
        let mut guard = ReplyGuard {
            identity: Some(identity),
            id: prefix.correlation_id,
            tx: self.reply_tx.clone(),
            waker: self.waker.clone(),
            shared: self.shared.clone(),
        };
        let handler = self.handler.clone();
        let (header, body) = (socket::to_bytes(header), socket::to_bytes(body));
        let task = async move {
            let req = match wire::decode(header, body) {
                Ok(Message::Request(r)) => r,
                _ => {
                    guard
                        .shared
                        .counters
                        .malformed
                        .fetch_add(1, Ordering::Relaxed);
                    guard.error(400, "malformed request");
                    return;
                }
            };
            // The budget may have run out while the task waited for a
            // worker (or, for a 1 µs budget, while decoding): do no work.
            if Instant::now() >= deadline {
                guard
                    .shared
                    .counters
                    .expired_on_arrival
                    .fetch_add(1, Ordering::Relaxed);
                guard.finish(None);
                return;
            }
            let id = req.correlation_id;
            let hist = guard.shared.methods.get(&req.method);
            let mut reply = handler(req, deadline).await;
            hist.record_duration(received.elapsed());
            if Instant::now() > deadline {
                guard
                    .shared
                    .counters
                    .expired_in_handler
                    .fetch_add(1, Ordering::Relaxed);
                guard.finish(None);
                return;
            }
            reply.correlation_id = id;
            match wire::encode_reply(&reply) {
                Ok(h) => guard.finish(Some((h, reply.body))),
                Err(_) => guard.error(500, "reply could not be encoded"),
            }
        };
        self.run_inline_or_spawn(task);
    }

    /// Polls a handler's task once right here: a handler that finishes
    /// without waiting (most do: echo, cache hits, validation errors) is
    /// answered with no hop to a tokio worker and back, which measured as
    /// the largest cost of a bus hop on two cores (docs/benchmarks.md).
    /// Anything that waits is spawned and finishes on tokio. A panic is
    /// caught; dropping the task then answers 500 through its guard.
    fn run_inline_or_spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        let mut task = Box::pin(task);
        let _rt = self.runtime.enter();
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        let polled =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| task.as_mut().poll(&mut cx)));
        match polled {
            Ok(std::task::Poll::Ready(())) => {}
            Ok(std::task::Poll::Pending) => {
                self.runtime.spawn(task);
            }
            Err(_) => drop(task),
        }
    }

    fn sleep(&mut self) {
        self.waker.prepare_sleep();
        if let Ok(cmd) = self.reply_rx.try_recv() {
            self.stash = Some(cmd);
            self.waker.awake();
            return;
        }
        let mut items = [
            zmq::PollItem::from_fd(self.waker.fd(), zmq::POLLIN),
            self.router.as_poll_item(zmq::POLLIN),
        ];
        let _ = zmq::poll(&mut items, 1000);
        let woke = items[0].is_readable();
        self.waker.awake();
        if woke {
            self.waker.drain();
        }
    }
}

/// Sends exactly one reply for one request: the handler's, an error, or,
/// if dropped unfinished (the handler panicked), a 500.
struct ReplyGuard {
    identity: Option<zmq::Message>,
    id: u64,
    tx: SyncSender<ReplyCmd>,
    waker: Arc<Waker>,
    shared: Arc<Shared>,
}

impl ReplyGuard {
    fn push(&mut self, header: Vec<u8>, body: bytes::Bytes) {
        if let Some(identity) = self.identity.take() {
            // Never full: the queue holds max_in_flight and this request
            // counts in in_flight until the thread takes its reply.
            let _ = self.tx.try_send(ReplyCmd {
                identity,
                header: zmq::Message::from(header),
                body: socket::to_message(body),
            });
            self.waker.wake();
        }
    }

    /// `None`: nothing to send (expired), but the slot must still be freed.
    fn finish(&mut self, reply: Option<(Vec<u8>, bytes::Bytes)>) {
        match reply {
            Some((h, b)) => self.push(h, b),
            None => {
                if self.identity.take().is_some() {
                    self.shared.in_flight.fetch_sub(1, Ordering::AcqRel);
                    self.waker.wake();
                }
            }
        }
    }

    fn error(&mut self, status: u16, message: &'static str) {
        let h = wire::encode_error(&ErrorReply {
            correlation_id: self.id,
            status,
            message: Text::from_static(message),
        });
        self.push(h, bytes::Bytes::new());
    }
}

impl Drop for ReplyGuard {
    fn drop(&mut self) {
        if self.identity.is_some() {
            self.shared
                .counters
                .handler_failures
                .fetch_add(1, Ordering::Relaxed);
            self.error(500, "handler failed");
        }
    }
}
