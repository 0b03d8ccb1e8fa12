//! `Client`: calls one service, over one ZMTP connection per instance.
//!
//! ```text
//!  call(req, deadline)                       (on the caller's own task)
//!    pick instance (p2c, least outstanding)  client/pick.rs
//!    table.insert ─► correlation id          table.rs
//!    encode header, push [header, body] ─►   the instance's outbox; its writer
//!                                            task sends the batch in one write
//!    await oneshot ◄── link task reads the reply, table.complete   client/link.rs
//!    decode reply
//! ```
//!
//! A call that failed without the instance doing any work is sent once
//! more to another instance, under a retry budget (`client/retry.rs`).
//!
//! No thread is crossed: the call, the writer and the reader are tokio
//! tasks on the same workers as the HTTP server. Every queue is bounded: the
//! pending table (`max_pending`) and each connection's outbox
//! (`Tuning::hwm`, `Tuning::queue_bytes`). A full one is an `Overloaded`
//! error to the caller at once.

mod link;
mod pick;
mod retry;
mod stats;

pub use pick::{Instance, Route, Weights};
pub use retry::{
    RetryBudget, DEFAULT_MIN_RETRIES_PER_SEC, DEFAULT_RETRY_RATIO, DEFAULT_RETRY_WINDOW,
};
pub use stats::ClientStats;
pub(crate) use stats::Counters;

use crate::curve::PublicKey;
use crate::error::{CallError, SetupError};
use crate::table::{RawReply, Table};
use crate::tuning::{self, Tuning};
use crate::wire::{self, Kind, Message, Reply, Request};
use crate::zmtp::outbox::PushError;
use link::LinkCtx;
use parking_lot::{Mutex, RwLock};
use pick::Outstanding;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Calls waiting for a reply, per client, before `call` fails with
/// `Overloaded` (the table's hard ceiling is 2^20).
pub const DEFAULT_MAX_PENDING: usize = 65_536;
/// How long a call waits for a newly added instance's first handshake
/// before it reports `NoInstance`.
pub const FIRST_CONNECT_WAIT: Duration = Duration::from_millis(250);

/// How to reach a service.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    pub service: String,
    pub endpoints: Vec<String>,
    pub max_pending: usize,
    pub tuning: Tuning,
    /// Whether this client reports the `endpoints` and `connected` gauges.
    /// A process with several clients to the same service (one per core)
    /// lets one report them, or the sum would count each instance N times;
    /// counters and `pending` are summed as they should be.
    pub report_instances: bool,
    /// Retries allowed (`client/retry.rs`); `None` turns retries off. The
    /// clients of one service in a process (one per core) share one.
    pub retry_budget: Option<Arc<RetryBudget>>,
}

impl ClientOptions {
    pub fn new(service: impl Into<String>) -> ClientOptions {
        ClientOptions {
            service: service.into(),
            endpoints: Vec::new(),
            max_pending: DEFAULT_MAX_PENDING,
            tuning: Tuning::default(),
            report_instances: true,
            retry_budget: Some(Arc::new(RetryBudget::default())),
        }
    }

    pub fn endpoint(mut self, ep: impl Into<String>) -> Self {
        self.endpoints.push(ep.into());
        self
    }
}

pub(crate) struct Shared {
    service: String,
    table: Arc<Table>,
    instances: RwLock<Arc<Vec<Arc<Instance>>>>,
    links: Mutex<HashMap<u64, JoinHandle<()>>>,
    ctx: Arc<LinkCtx>,
    runtime: tokio::runtime::Handle,
    next_instance: AtomicU64,
    counters: Arc<Counters>,
    /// Ghost copies' outcomes (`Request::ghost`), kept out of `counters`
    /// and the method histograms, so mirrored traffic never shows as the
    /// service's own calls, timeouts or no-instance failures. Their
    /// verdicts are the caller's to count (`traffic::ghost`).
    ghost_counters: Counters,
    methods: crate::metrics::MethodHists,
    report_instances: bool,
    retry_budget: Option<Arc<RetryBudget>>,
}

impl Shared {
    fn counters_for(&self, req: &Request) -> &Counters {
        if req.ghost {
            &self.ghost_counters
        } else {
            &self.counters
        }
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        for (_, h) in self.links.lock().drain() {
            h.abort();
        }
        self.table.fail_all(CallError::Disconnected);
    }
}

/// A handle to one service's instances. Cheap to clone; the socket thread
/// stops when the last clone is dropped, failing pending calls with
/// `Disconnected`.
#[derive(Clone)]
pub struct Client {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("service", &self.shared.service)
            .field("pending", &self.pending_len())
            .finish()
    }
}

impl Client {
    /// Connects to `opts.endpoints` (and keeps reconnecting). Must be
    /// called inside a tokio runtime: the connections are tasks on it.
    pub fn connect(opts: ClientOptions) -> Result<Client, SetupError> {
        for ep in &opts.endpoints {
            tuning::check_endpoint(ep)?;
        }
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| SetupError::NoRuntime)?;
        let table = Table::new(opts.max_pending);
        let counters = Arc::new(Counters::default());
        let ctx = Arc::new(LinkCtx {
            table: table.clone(),
            counters: counters.clone(),
            tuning: opts.tuning.clone(),
            service: opts.service.clone(),
            connected: tokio::sync::Notify::new(),
            registered_keys: Default::default(),
        });
        let client = Client {
            shared: Arc::new(Shared {
                service: opts.service,
                table,
                instances: RwLock::new(Arc::new(Vec::new())),
                links: Mutex::new(HashMap::new()),
                ctx,
                runtime,
                next_instance: AtomicU64::new(1),
                counters,
                ghost_counters: Counters::default(),
                methods: Default::default(),
                report_instances: opts.report_instances,
                retry_budget: opts.retry_budget,
            }),
        };
        telemetry::register(&client.shared);
        client.set_endpoints(&opts.endpoints)?;
        Ok(client)
    }

    pub fn service(&self) -> &str {
        &self.shared.service
    }

    /// Replaces the set of instances. New endpoints are connected. A removed
    /// instance takes no new call at once; if its connection is down, its
    /// pending calls fail with `Disconnected` at once, and if it is up (an
    /// instance that deregistered to drain), the calls already sent keep
    /// their replies and the socket closes when the last one is answered or
    /// times out. Duplicates are ignored.
    pub fn set_endpoints<S: AsRef<str>>(&self, endpoints: &[S]) -> Result<(), SetupError> {
        for ep in endpoints {
            tuning::check_endpoint(ep.as_ref())?;
        }
        let sh = &self.shared;
        let mut guard = sh.instances.write();
        let current = guard.clone();
        let mut next: Vec<Arc<Instance>> = Vec::with_capacity(endpoints.len());
        let mut links = sh.links.lock();
        for ep in endpoints {
            let ep = ep.as_ref();
            if next.iter().any(|i| i.endpoint == ep) {
                continue;
            }
            if let Some(i) = current.iter().find(|i| i.endpoint == ep) {
                next.push(i.clone());
            } else {
                let id = sh.next_instance.fetch_add(1, Ordering::Relaxed);
                let inst = Arc::new(Instance::new(id, ep));
                let task = sh.runtime.spawn(link::run(inst.clone(), sh.ctx.clone()));
                links.insert(id, task);
                next.push(inst);
            }
        }
        for old in current.iter() {
            if next.iter().any(|i| i.id == old.id) {
                continue;
            }
            let live = old.connected.swap(false, Ordering::Relaxed);
            old.retiring.store(true, Ordering::Relaxed);
            if live {
                // The link finishes the calls already sent, then ends.
                old.retire.notify_one();
                if let Some(h) = links.remove(&old.id) {
                    drop(h);
                }
            } else {
                if let Some(h) = links.remove(&old.id) {
                    h.abort();
                }
                sh.table.fail_endpoint(old.id, CallError::Disconnected);
            }
        }
        *guard = Arc::new(next);
        Ok(())
    }

    /// As [`set_endpoints`](Self::set_endpoints), with each instance's
    /// CURVE key from its registration (`None`: not registered). A key
    /// takes effect on the instance's next connect; see
    /// [`Tuning`]'s CURVE settings for how it meets a configured key.
    pub fn set_endpoints_with_keys<S: AsRef<str>>(
        &self,
        endpoints: &[(S, Option<PublicKey>)],
    ) -> Result<(), SetupError> {
        {
            let mut keys = self.shared.ctx.registered_keys.write();
            keys.clear();
            for (ep, k) in endpoints {
                if let Some(k) = k {
                    keys.insert(ep.as_ref().to_string(), *k);
                }
            }
        }
        let eps: Vec<&str> = endpoints.iter().map(|(e, _)| e.as_ref()).collect();
        self.set_endpoints(&eps)
    }

    /// Records each instance's registered version (by endpoint; an
    /// endpoint not in `versions` has none), for [`Route`]s by version.
    pub fn set_versions<S: AsRef<str>>(&self, versions: &[(S, Option<S>)]) {
        for i in self.shared.instances.read().iter() {
            let v = versions
                .iter()
                .find(|(ep, _)| ep.as_ref() == i.endpoint())
                .and_then(|(_, v)| v.as_ref())
                .map(|v| Arc::new(v.as_ref().to_string()));
            i.version.store(v);
        }
    }

    /// The instances as they stand.
    pub fn instances(&self) -> Arc<Vec<Arc<Instance>>> {
        self.shared.instances.read().clone()
    }

    /// Calls waiting for a reply.
    pub fn pending_len(&self) -> usize {
        self.shared.table.len()
    }

    pub fn stats(&self) -> ClientStats {
        self.shared.stats()
    }

    /// Waits until at least one instance is connected, or `timeout` passes.
    /// Returns whether one is.
    pub async fn wait_connected(&self, timeout: Duration) -> bool {
        let end = Instant::now() + timeout;
        loop {
            let woken = self.shared.ctx.connected.notified();
            if self.instances().iter().any(|i| i.is_connected()) {
                return true;
            }
            if tokio::time::timeout_at(end, woken).await.is_err() {
                return self.instances().iter().any(|i| i.is_connected());
            }
        }
    }

    fn pick(&self, route: Route<'_>) -> Option<Arc<Instance>> {
        let list = self.shared.instances.read();
        match route {
            Route {
                version: None,
                weights: None,
            } => pick::pick(&list),
            _ => pick::pick_routed(&list, route),
        }
    }

    /// No instance is connected, but one was added moments ago and has not
    /// finished its first handshake: wait for it (a process that just
    /// started, or an instance discovery just announced) rather than fail a
    /// request that would succeed a millisecond later. An instance that was
    /// connected before and is down now fails at once.
    async fn await_first_connection(
        &self,
        deadline: Instant,
        route: Route<'_>,
    ) -> Option<Arc<Instance>> {
        loop {
            let woken = self.shared.ctx.connected.notified();
            if let Some(i) = self.pick(route) {
                return Some(i);
            }
            let first_window_ends = self
                .instances()
                .iter()
                .filter(|i| !i.ever_connected())
                .map(|i| i.added + FIRST_CONNECT_WAIT)
                .max()?;
            let until = deadline.min(Instant::from_std(first_window_ends));
            if Instant::now() >= until {
                return None;
            }
            if tokio::time::timeout_at(until, woken).await.is_err() {
                return self.pick(route);
            }
        }
    }

    /// Sends `req` to an instance and waits for its reply until `deadline`.
    ///
    /// `req.service` defaults to this client's service; the correlation id
    /// and budget are filled in here. Dropping the returned future removes
    /// the call from the pending table.
    ///
    /// A failure that guarantees the instance did no work (its connection
    /// queue full or closed before the request was written, or its error
    /// 503: at capacity or draining) is tried once more on another
    /// instance, within the deadline and the retry budget
    /// ([`ClientOptions::retry_budget`]). A timeout is never retried.
    pub async fn call(&self, req: Request, deadline: Instant) -> Result<Reply, CallError> {
        let any = Route::default();
        self.call_traced(req, deadline, false, any, &mut CallTrace::default())
            .await
    }

    /// [`call`](Self::call) for a request that may safely run twice (an
    /// idempotent HTTP method): also retried when the connection dropped
    /// after the request was sent.
    pub async fn call_idempotent(
        &self,
        req: Request,
        deadline: Instant,
    ) -> Result<Reply, CallError> {
        let any = Route::default();
        self.call_traced(req, deadline, true, any, &mut CallTrace::default())
            .await
    }

    /// [`call`](Self::call) (`idempotent`: [`call_idempotent`](Self::call_idempotent))
    /// to the instances `route` allows (a pinned version, weights by
    /// version), that also says, in `trace`, which instance the last
    /// attempt went to and how many times the call was retried.
    pub async fn call_traced(
        &self,
        mut req: Request,
        deadline: Instant,
        idempotent: bool,
        route: Route<'_>,
        trace: &mut CallTrace,
    ) -> Result<Reply, CallError> {
        let sh = &self.shared;
        let c = sh.counters_for(&req);
        c.calls.fetch_add(1, Ordering::Relaxed);
        if let (Some(b), false) = (&sh.retry_budget, req.ghost) {
            b.deposit();
        }
        // One clock read serves the check and the first attempt (40 ns a
        // read on the VMs this runs on), unless the call waits for an
        // instance first.
        let mut now = Instant::now();
        if deadline <= now {
            c.timeouts.fetch_add(1, Ordering::Relaxed);
            return Err(CallError::Timeout);
        }
        let mut inst = match self.pick(route) {
            Some(i) => i,
            None => match self.await_first_connection(deadline, route).await {
                Some(i) => {
                    now = Instant::now();
                    i
                }
                None => {
                    c.no_instance.fetch_add(1, Ordering::Relaxed);
                    return Err(CallError::NoInstance(sh.service.clone()));
                }
            },
        };
        // Instances already tried; no allocation unless a call is retried.
        let mut tried: Vec<u64> = Vec::new();
        loop {
            trace.instance = Some(inst.clone());
            let e = match self.attempt(&mut req, deadline, &inst, now).await {
                Attempt::Done(r) => return r,
                Attempt::NotSent(e) => e,
                Attempt::MaybeSent(e) if idempotent => e,
                Attempt::MaybeSent(e) => return Err(e),
            };
            tried.push(inst.id);
            // A ghost is never retried: it would spend the real traffic's
            // budget on a copy nobody waits for.
            let Some(budget) = sh.retry_budget.as_ref().filter(|_| !req.ghost) else {
                return Err(e);
            };
            now = Instant::now();
            if now >= deadline {
                return Err(e);
            }
            let Some(next) = pick::pick_untried(&sh.instances.read(), &tried, route) else {
                return Err(e);
            };
            if !budget.try_withdraw() {
                c.retry_budget_exhausted.fetch_add(1, Ordering::Relaxed);
                return Err(e);
            }
            c.retries.fetch_add(1, Ordering::Relaxed);
            trace.retries += 1;
            trace.failed.push(std::mem::replace(&mut inst, next));
        }
    }

    /// A ghost copy of a request to `version`'s instances only: marked
    /// [`wire::FLAG_GHOST`], one attempt, no retry, nothing paid into the
    /// retry budget (mirrored traffic must not earn the real traffic its
    /// retries). No connected instance of `version` is
    /// [`CallError::NoInstance`] at once: a ghost never waits for one.
    ///
    /// Any call whose request is marked ghost (this one, or one a service
    /// makes on a ghost's behalf through [`call_traced`](Self::call_traced))
    /// is kept out of the client's counters and method histograms, and is
    /// never retried.
    pub async fn call_ghost(
        &self,
        mut req: Request,
        deadline: Instant,
        version: &str,
    ) -> Result<Reply, CallError> {
        let sh = &self.shared;
        req.ghost = true;
        let c = sh.counters_for(&req);
        c.calls.fetch_add(1, Ordering::Relaxed);
        let inst = {
            let list = sh.instances.read();
            let mine: Vec<Arc<Instance>> = list
                .iter()
                .filter(|i| i.is_connected() && i.is_version(version))
                .cloned()
                .collect();
            pick::pick(&mine)
        };
        let Some(inst) = inst else {
            c.no_instance.fetch_add(1, Ordering::Relaxed);
            return Err(CallError::NoInstance(sh.service.clone()));
        };
        let now = Instant::now();
        if deadline <= now {
            c.timeouts.fetch_add(1, Ordering::Relaxed);
            return Err(CallError::Timeout);
        }
        match self.attempt(&mut req, deadline, &inst, now).await {
            Attempt::Done(r) => r,
            Attempt::NotSent(e) | Attempt::MaybeSent(e) => Err(e),
        }
    }

    /// One attempt on `inst`, starting `now`; each outcome is counted here.
    async fn attempt(
        &self,
        req: &mut Request,
        deadline: Instant,
        inst: &Arc<Instance>,
        now: Instant,
    ) -> Attempt {
        let sh = &self.shared;
        let c = sh.counters_for(req);
        let hist = (!req.ghost).then(|| sh.methods.get(&req.method));
        let Some((guard, rx)) = sh.table.insert(inst.id) else {
            c.overloaded.fetch_add(1, Ordering::Relaxed);
            return Attempt::Done(Err(CallError::Overloaded("pending call table full")));
        };
        let _outstanding = Outstanding::new(inst);
        if req.service.is_empty() {
            req.service = sh.service.clone().into();
        }
        req.correlation_id = guard.id();
        req.budget_us = (deadline - now).as_micros().min(u32::MAX as u128) as u32;
        let header = match wire::encode_request(req) {
            Ok(h) => h,
            Err(e) => {
                c.protocol.fetch_add(1, Ordering::Relaxed);
                return Attempt::Done(Err(e.into()));
            }
        };
        let pushed = match &*inst.outbox.load() {
            Some(ob) => ob.push(&[&header], &req.body),
            None => Err(PushError::Closed),
        };
        match pushed {
            Ok(()) => {}
            Err(PushError::Full) => {
                c.overloaded.fetch_add(1, Ordering::Relaxed);
                c.send_queue_full.fetch_add(1, Ordering::Relaxed);
                return Attempt::NotSent(CallError::Overloaded("instance connection queue full"));
            }
            Err(PushError::Closed) => {
                c.disconnected.fetch_add(1, Ordering::Relaxed);
                return Attempt::NotSent(CallError::Disconnected);
            }
        }
        let outcome = tokio::time::timeout_at(deadline, rx).await;
        drop(guard);
        let result = match outcome {
            Err(_elapsed) => Err(CallError::Timeout),
            Ok(Err(_closed)) => Err(CallError::Disconnected),
            Ok(Ok(Err(e))) => Err(e),
            Ok(Ok(Ok(raw))) => decode_reply(raw),
        };
        if matches!(result, Ok(_) | Err(CallError::Remote { .. })) {
            let took = now.elapsed();
            if let Some(h) = &hist {
                h.record_duration(took);
            }
            inst.latency.record_duration(took);
        }
        let counter = match &result {
            Ok(_) => &c.replies,
            Err(CallError::Timeout) => &c.timeouts,
            Err(CallError::NoInstance(_)) => &c.no_instance,
            Err(CallError::Overloaded(_)) => &c.overloaded,
            Err(CallError::Disconnected) => &c.disconnected,
            Err(CallError::Protocol(_)) => &c.protocol,
            Err(CallError::Remote { .. }) => &c.replies,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        match result {
            // The service refused it before starting: at capacity or
            // draining (protocol.md §4 row 6).
            Err(e @ CallError::Overloaded(_)) => Attempt::NotSent(e),
            Err(e @ CallError::Disconnected) => Attempt::MaybeSent(e),
            r => Attempt::Done(r),
        }
    }
}

/// Where a call went: filled in by [`Client::call_traced`].
#[derive(Debug, Default, Clone)]
pub struct CallTrace {
    /// The instance of the last attempt; `None` if none was tried.
    pub instance: Option<Arc<Instance>>,
    /// Attempts after the first.
    pub retries: u32,
    /// The instances of the attempts that failed and were retried
    /// elsewhere (empty unless retried): a version that fails every call
    /// it gets must not look healthy because its calls were rescued.
    pub failed: Vec<Arc<Instance>>,
}

/// How one attempt ended, and whether the call may go to another instance.
enum Attempt {
    /// A reply, or a failure no other instance would change.
    Done(Result<Reply, CallError>),
    /// The instance did no work: safe to send elsewhere.
    NotSent(CallError),
    /// The request may have reached the instance: elsewhere only if it is
    /// idempotent.
    MaybeSent(CallError),
}

fn decode_reply(raw: RawReply) -> Result<Reply, CallError> {
    match wire::decode(raw.header, raw.body)? {
        Message::Reply(r) => Ok(r),
        Message::Error(e) => Err(match e.status {
            503 => CallError::Overloaded("service at capacity or draining"),
            504 => CallError::Timeout,
            status => CallError::Remote {
                status,
                message: e.message.to_string(),
            },
        }),
        other => Err(CallError::Protocol(format!(
            "expected a reply, got {:?}",
            kind_of(&other)
        ))),
    }
}

fn kind_of(m: &Message) -> Kind {
    match m {
        Message::Request(_) => Kind::Request,
        Message::Reply(_) => Kind::Reply,
        Message::Event(_) => Kind::Event,
        Message::Error(_) => Kind::Error,
    }
}
