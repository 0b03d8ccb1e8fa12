//! `Service`: binds a ROUTER endpoint and runs an async handler per request.
//!
//! ```text
//!  accept task ─► per connection: handshake, then read (service/conn.rs)
//!    [header, body] ─► peek prefix: bad ─► error reply 400 (or drop if no id)
//!                      budget 0 ─► drop, count expired
//!                      in_flight ≥ max or draining ─► error reply 503
//!                      handler(req, deadline): polled once right there;
//!                      a handler that waits is spawned on tokio
//!    reply ─► the connection's outbox ─► its writer task, batched
//! ```
//!
//! A reply goes back on the connection its request came in on: the
//! connection is the identity a libzmq ROUTER would have put in front. A
//! handler that panics still answers (500): its guard replies when dropped.

mod conn;

use crate::curve::PublicKey;
use crate::error::SetupError;
use crate::tuning::{self, Tuning};
use crate::wire::{Reply, Request};
use crate::zmtp::outbox::Outbox;
use crate::zmtp::stream::Listener;
use parking_lot::Mutex;
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Requests handled at once before new ones are refused with 503.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 4096;
/// After the last reply of a graceful stop, how long connections may take
/// to flush and be closed by their callers before they are cut.
const CLOSE_TAIL: Duration = Duration::from_millis(250);

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
    refused_peers: AtomicU64,
    connections: AtomicU64,
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
    /// Connections closed for a protocol fault: a bad greeting, another
    /// mechanism or socket type, a frame over the size limit; under CURVE
    /// also a handshake that does not check out (corrupted or truncated
    /// commands, a bad vouch), a client key not authorised, a replayed or
    /// reordered MESSAGE.
    pub refused_peers: u64,
    /// Connections that completed the handshake, since the start.
    pub connections: u64,
    pub in_flight: usize,
}

impl ServiceStats {
    /// Every counter with its name: the one place the names are written,
    /// for telemetry (`service.<name>`) and the admin `/stats` page alike.
    pub fn counters(&self) -> [(&'static str, u64); 10] {
        [
            ("received", self.received),
            ("replied", self.replied),
            ("overloaded", self.overloaded),
            ("expired_on_arrival", self.expired_on_arrival),
            ("expired_in_handler", self.expired_in_handler),
            ("malformed", self.malformed),
            ("undeliverable", self.undeliverable),
            ("handler_failures", self.handler_failures),
            ("refused_peers", self.refused_peers),
            ("connections", self.connections),
        ]
    }

    /// The counters and `in_flight`, as a JSON object.
    pub fn to_json(&self) -> serde_json::Value {
        crate::metrics::counters_json(&self.counters(), ("in_flight", self.in_flight))
    }
}

struct Shared {
    name: String,
    counters: Counters,
    in_flight: AtomicUsize,
    draining: AtomicBool,
    methods: crate::metrics::MethodHists,
    /// CURVE client keys already logged as refused.
    refused_keys: Mutex<HashSet<PublicKey>>,
}

/// Keys remembered as logged; past it every refusal logs at debug only.
const MAX_REFUSED_KEYS: usize = 4096;

/// Reports as `service.*` (one service per process by convention).
impl telemetry::Source for Shared {
    fn visit(&self, v: &mut dyn telemetry::Visitor) {
        let s = self.stats();
        for (name, n) in s.counters() {
            v.counter(&format!("service.{name}"), n);
        }
        v.gauge("service.in_flight", s.in_flight as i64);
        self.methods.visit("service", v);
    }
}

impl Shared {
    /// True the first time `key` is refused (bounded memory).
    fn note_refused_key(&self, key: &PublicKey) -> bool {
        let mut seen = self.refused_keys.lock();
        seen.len() < MAX_REFUSED_KEYS && seen.insert(*key)
    }

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
            refused_peers: c.refused_peers.load(Ordering::Relaxed),
            connections: c.connections.load(Ordering::Relaxed),
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

/// The live connections, so a stop can close each one.
pub(crate) type Conns = Arc<Mutex<HashMap<u64, ConnEntry>>>;

pub(crate) struct ConnEntry {
    /// Set once the handshake is done.
    outbox: Option<Arc<Outbox>>,
    task: tokio::task::AbortHandle,
}

/// A running service. Stop it with [`Service::shutdown`]; dropping it stops
/// it at once without draining.
pub struct Service {
    endpoint: String,
    shared: Arc<Shared>,
    accept: JoinHandle<()>,
    conns: Conns,
}

impl Service {
    /// Binds `opts.bind` and serves requests with `handler`, which gets the
    /// decoded request and its deadline (arrival + the caller's budget).
    /// Must be called inside a tokio runtime: everything runs on it.
    pub fn bind<F, Fut>(opts: ServiceOptions, handler: F) -> Result<Service, SetupError>
    where
        F: Fn(Request, Instant) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Reply> + Send + 'static,
    {
        let (runtime, listener, endpoint) = tuning::listen(&opts.bind)?;
        let shared = Arc::new(Shared {
            name: opts.name.clone(),
            counters: Counters::default(),
            in_flight: AtomicUsize::new(0),
            draining: AtomicBool::new(false),
            methods: Default::default(),
            refused_keys: Mutex::new(HashSet::new()),
        });
        telemetry::register(&shared);
        let conns: Conns = Arc::default();
        let ctx = Arc::new(conn::Ctx {
            shared: shared.clone(),
            handler,
            max_in_flight: opts.max_in_flight.max(1),
            settings: opts.tuning.settings(),
            conns: conns.clone(),
        });
        let accept = runtime.spawn(accept_loop(listener, ctx));
        tracing::info!(service = %opts.name, %endpoint, "service bound");
        Ok(Service {
            endpoint,
            shared,
            accept,
            conns,
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
    /// most `grace`; then every connection flushes its last replies and is
    /// closed, and the callers, having read them, close their side.
    pub async fn shutdown(self, grace: Duration) {
        let end = Instant::now() + grace;
        self.shared.draining.store(true, Ordering::Relaxed);
        while self.shared.in_flight() > 0 && Instant::now() < end {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        self.accept.abort();
        for e in self.conns.lock().values() {
            match &e.outbox {
                Some(outbox) => outbox.close(),
                None => e.task.abort(),
            }
        }
        // Each connection task ends when its caller closes in turn.
        let tail = end.min(Instant::now() + CLOSE_TAIL);
        while !self.conns.lock().is_empty() && Instant::now() < tail {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.accept.abort();
        for (_, e) in self.conns.lock().drain() {
            if let Some(outbox) = e.outbox {
                outbox.close();
            }
            e.task.abort();
        }
    }
}

async fn accept_loop<F, Fut>(listener: Listener, ctx: Arc<conn::Ctx<F>>)
where
    F: Fn(Request, Instant) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Reply> + Send + 'static,
{
    let mut next_id = 0u64;
    loop {
        let stream = listener.next(&ctx.shared.name).await;
        next_id += 1;
        // Registered under the lock before the task can end and unregister
        // itself.
        let mut conns = ctx.conns.lock();
        let task = tokio::spawn(conn::serve(stream, ctx.clone(), next_id));
        conns.insert(
            next_id,
            ConnEntry {
                outbox: None,
                task: task.abort_handle(),
            },
        );
    }
}
