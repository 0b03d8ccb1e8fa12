//! `Client`: calls one service over DEALER sockets, one per instance.
//!
//! ```text
//!  tokio tasks                          client thread (owns the sockets)
//!  ───────────                          ────────────────────────────────
//!  call(req, deadline)
//!    pick instance (p2c, least outstanding)
//!    table.insert ─► correlation id
//!    encode header
//!    data_tx.try_send ───────────────►  DEALER.send(header, body)
//!    waker.wake (only if it sleeps)     zmq::poll(DEALERs, monitors, eventfd)
//!    await oneshot ◄──────────────────  recv ─► peek id ─► table.complete
//!    decode reply                       monitor: handshake ─► connected
//!                                                disconnect ─► fail its calls
//! ```
//!
//! Every queue is bounded: the pending table (`max_pending`), the send queue
//! (`send_queue`) and each socket (`Tuning::hwm`). A full one is an
//! `Overloaded` error to the caller at once.

use crate::error::{CallError, SetupError};
use crate::socket::{self, Tuning};
use crate::table::{Delivery, RawReply, Table};
use crate::waker::Waker;
use crate::wire::{self, Kind, Message, Reply, Request};
use parking_lot::{Mutex, RwLock};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, SyncSender, TryRecvError, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;
use tokio::time::Instant;

/// Calls waiting for a reply, per client, before `call` fails with
/// `Overloaded` (the table's hard ceiling is 2^20).
pub const DEFAULT_MAX_PENDING: usize = 65_536;
/// Encoded requests waiting for the socket thread.
pub const DEFAULT_SEND_QUEUE: usize = 16_384;
/// Messages the socket thread moves per socket before looking at the others.
const BATCH: usize = 256;
/// How long a call waits for a newly added instance's first handshake
/// before it reports `NoInstance`.
pub const FIRST_CONNECT_WAIT: Duration = Duration::from_millis(250);
/// How often connection state is re-read while it matters.
const RECHECK_MS: i64 = 20;

/// How to reach a service.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    pub service: String,
    pub endpoints: Vec<String>,
    pub max_pending: usize,
    pub send_queue: usize,
    pub tuning: Tuning,
}

impl ClientOptions {
    pub fn new(service: impl Into<String>) -> ClientOptions {
        ClientOptions {
            service: service.into(),
            endpoints: Vec::new(),
            max_pending: DEFAULT_MAX_PENDING,
            send_queue: DEFAULT_SEND_QUEUE,
            tuning: Tuning::default(),
        }
    }

    pub fn endpoint(mut self, ep: impl Into<String>) -> Self {
        self.endpoints.push(ep.into());
        self
    }
}

/// One instance of the service, as the callers see it.
#[derive(Debug)]
pub struct Instance {
    id: u64,
    endpoint: String,
    connected: AtomicBool,
    /// False until the first handshake completes; see [`FIRST_CONNECT_WAIT`].
    ever_connected: AtomicBool,
    added: std::time::Instant,
    outstanding: AtomicUsize,
}

impl Instance {
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }
    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }
    pub fn outstanding(&self) -> usize {
        self.outstanding.load(Ordering::Relaxed)
    }
    /// Whether a handshake with this instance ever completed.
    pub fn ever_connected(&self) -> bool {
        self.ever_connected.load(Ordering::Relaxed)
    }
}

/// Counters, readable at any time with [`Client::stats`].
#[derive(Debug, Default)]
struct Counters {
    calls: AtomicU64,
    replies: AtomicU64,
    timeouts: AtomicU64,
    no_instance: AtomicU64,
    overloaded: AtomicU64,
    disconnected: AtomicU64,
    protocol: AtomicU64,
    malformed_frames: AtomicU64,
    /// Also counted in `overloaded`: the client's own queue was full.
    send_queue_full: AtomicU64,
}

/// A snapshot of a client's counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientStats {
    pub calls: u64,
    pub replies: u64,
    pub timeouts: u64,
    pub no_instance: u64,
    pub overloaded: u64,
    pub disconnected: u64,
    pub protocol: u64,
    /// Replies whose call had already ended; dropped.
    pub late: u64,
    /// Replies with an id this client never issued; dropped.
    pub unknown: u64,
    /// Frames from a service that were not a (header, body) pair.
    pub malformed_frames: u64,
    pub pending: usize,
}

struct SendCmd {
    endpoint: u64,
    id: u64,
    header: zmq::Message,
    body: zmq::Message,
}

enum Ctrl {
    Add(Arc<Instance>),
    Remove(u64),
    /// Removed while connected: no new calls, and the socket stays open
    /// until the calls already sent have their replies (or their deadline).
    Retire(u64),
    Shutdown,
}

struct Shared {
    service: String,
    table: Arc<Table>,
    instances: RwLock<Arc<Vec<Arc<Instance>>>>,
    data_tx: SyncSender<SendCmd>,
    ctrl_tx: Mutex<Sender<Ctrl>>,
    waker: Arc<Waker>,
    next_instance: AtomicU64,
    counters: Arc<Counters>,
    methods: crate::metrics::MethodHists,
    thread: Mutex<Option<JoinHandle<()>>>,
}

/// Reports as `bus.<service>.*` (docs/operations.md has the catalogue).
impl telemetry::Source for Shared {
    fn visit(&self, v: &mut dyn telemetry::Visitor) {
        let p = format!("bus.{}", telemetry::sanitize(&self.service));
        let c = &self.counters;
        let t = &self.table.stats;
        for (name, a) in [
            ("calls", &c.calls),
            ("replies", &c.replies),
            ("timeouts", &c.timeouts),
            ("no_instance", &c.no_instance),
            ("overloaded", &c.overloaded),
            ("send_queue_full", &c.send_queue_full),
            ("disconnected", &c.disconnected),
            ("protocol_errors", &c.protocol),
            ("late", &t.late),
            ("unknown_replies", &t.unknown),
            ("malformed_frames", &c.malformed_frames),
        ] {
            v.counter(&format!("{p}.{name}"), a.load(Ordering::Relaxed));
        }
        let insts = self.instances.read().clone();
        v.gauge(&format!("{p}.pending"), self.table.len() as i64);
        v.gauge(&format!("{p}.endpoints"), insts.len() as i64);
        v.gauge(
            &format!("{p}.connected"),
            insts.iter().filter(|i| i.is_connected()).count() as i64,
        );
        self.methods.visit(&p, v);
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        let _ = self.ctrl_tx.lock().send(Ctrl::Shutdown);
        self.waker.force();
        if let Some(t) = self.thread.lock().take() {
            let _ = t.join();
        }
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
    /// Starts the socket thread and connects to `opts.endpoints`.
    pub fn connect(opts: ClientOptions) -> Result<Client, SetupError> {
        for ep in &opts.endpoints {
            socket::check_endpoint(ep)?;
        }
        let (data_tx, data_rx) = mpsc::sync_channel(opts.send_queue.max(1));
        let (ctrl_tx, ctrl_rx) = mpsc::channel();
        let waker = Arc::new(Waker::new()?);
        let table = Table::new(opts.max_pending);
        let counters = Arc::new(Counters::default());
        let worker = Worker {
            conns: Vec::new(),
            data_rx,
            ctrl_rx,
            stash: None,
            waker: waker.clone(),
            table: table.clone(),
            counters: counters.clone(),
            tuning: opts.tuning.clone(),
            service: opts.service.clone(),
        };
        let thread = std::thread::Builder::new()
            .name(format!("bus-client-{}", opts.service))
            .spawn(move || worker.run())?;
        let client = Client {
            shared: Arc::new(Shared {
                service: opts.service,
                table,
                instances: RwLock::new(Arc::new(Vec::new())),
                data_tx,
                ctrl_tx: Mutex::new(ctrl_tx),
                waker,
                next_instance: AtomicU64::new(1),
                counters,
                methods: Default::default(),
                thread: Mutex::new(Some(thread)),
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
            socket::check_endpoint(ep.as_ref())?;
        }
        let mut guard = self.shared.instances.write();
        let current = guard.clone();
        let mut next: Vec<Arc<Instance>> = Vec::with_capacity(endpoints.len());
        let ctrl = self.shared.ctrl_tx.lock();
        for ep in endpoints {
            let ep = ep.as_ref();
            if next.iter().any(|i| i.endpoint == ep) {
                continue;
            }
            if let Some(i) = current.iter().find(|i| i.endpoint == ep) {
                next.push(i.clone());
            } else {
                let inst = Arc::new(Instance {
                    id: self.shared.next_instance.fetch_add(1, Ordering::Relaxed),
                    endpoint: ep.to_string(),
                    connected: AtomicBool::new(false),
                    ever_connected: AtomicBool::new(false),
                    added: std::time::Instant::now(),
                    outstanding: AtomicUsize::new(0),
                });
                let _ = ctrl.send(Ctrl::Add(inst.clone()));
                next.push(inst);
            }
        }
        for old in current.iter() {
            if !next.iter().any(|i| i.id == old.id) {
                let live = old.connected.swap(false, Ordering::Relaxed);
                let _ = ctrl.send(if live {
                    Ctrl::Retire(old.id)
                } else {
                    Ctrl::Remove(old.id)
                });
            }
        }
        *guard = Arc::new(next);
        drop(ctrl);
        drop(guard);
        self.shared.waker.force();
        Ok(())
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
        let c = &self.shared.counters;
        let t = &self.shared.table.stats;
        ClientStats {
            calls: c.calls.load(Ordering::Relaxed),
            replies: c.replies.load(Ordering::Relaxed),
            timeouts: c.timeouts.load(Ordering::Relaxed),
            no_instance: c.no_instance.load(Ordering::Relaxed),
            overloaded: c.overloaded.load(Ordering::Relaxed),
            disconnected: c.disconnected.load(Ordering::Relaxed),
            protocol: c.protocol.load(Ordering::Relaxed),
            late: t.late.load(Ordering::Relaxed),
            unknown: t.unknown.load(Ordering::Relaxed),
            malformed_frames: c.malformed_frames.load(Ordering::Relaxed),
            pending: self.pending_len(),
        }
    }

    /// Waits until at least one instance is connected, or `timeout` passes.
    /// Returns whether one is.
    pub async fn wait_connected(&self, timeout: Duration) -> bool {
        let end = Instant::now() + timeout;
        loop {
            if self.instances().iter().any(|i| i.is_connected()) {
                return true;
            }
            if Instant::now() >= end {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Power of two choices over connected instances: two at random, the one
    /// with fewer calls outstanding wins.
    fn pick(&self) -> Option<Arc<Instance>> {
        let list = self.shared.instances.read().clone();
        let n = list.len();
        match n {
            0 => None,
            1 => list[0].is_connected().then(|| list[0].clone()),
            _ => {
                let a = fastrand::usize(..n);
                let mut b = fastrand::usize(..n - 1);
                if b >= a {
                    b += 1;
                }
                let (ia, ib) = (&list[a], &list[b]);
                match (ia.is_connected(), ib.is_connected()) {
                    (true, true) => Some(if ib.outstanding() < ia.outstanding() {
                        ib.clone()
                    } else {
                        ia.clone()
                    }),
                    (true, false) => Some(ia.clone()),
                    (false, true) => Some(ib.clone()),
                    (false, false) => {
                        let start = fastrand::usize(..n);
                        (0..n)
                            .map(|k| &list[(start + k) % n])
                            .find(|i| i.is_connected())
                            .cloned()
                    }
                }
            }
        }
    }

    /// No instance is connected, but one was added moments ago and has not
    /// finished its first handshake: wait for it (a process that just
    /// started, or an instance discovery just announced) rather than fail a
    /// request that would succeed a millisecond later. An instance that was
    /// connected before and is down now fails at once.
    async fn await_first_connection(&self, deadline: Instant) -> Option<Arc<Instance>> {
        let waiting = |insts: &[Arc<Instance>]| {
            insts.iter().any(|i| {
                !i.ever_connected.load(Ordering::Relaxed) && i.added.elapsed() < FIRST_CONNECT_WAIT
            })
        };
        while waiting(&self.instances()) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(2)).await;
            if let Some(i) = self.pick() {
                return Some(i);
            }
        }
        None
    }

    /// Sends `req` to an instance and waits for its reply until `deadline`.
    ///
    /// `req.service` defaults to this client's service; the correlation id
    /// and budget are filled in here. Dropping the returned future removes
    /// the call from the pending table.
    pub async fn call(&self, mut req: Request, deadline: Instant) -> Result<Reply, CallError> {
        let sh = &self.shared;
        let c = &sh.counters;
        c.calls.fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        if deadline <= now {
            c.timeouts.fetch_add(1, Ordering::Relaxed);
            return Err(CallError::Timeout);
        }
        let inst = match self.pick() {
            Some(i) => i,
            None => match self.await_first_connection(deadline).await {
                Some(i) => i,
                None => {
                    c.no_instance.fetch_add(1, Ordering::Relaxed);
                    return Err(CallError::NoInstance(sh.service.clone()));
                }
            },
        };
        let now = Instant::now();
        let hist = sh.methods.get(&req.method);
        let Some((guard, rx)) = sh.table.insert(inst.id) else {
            c.overloaded.fetch_add(1, Ordering::Relaxed);
            return Err(CallError::Overloaded("pending call table full"));
        };
        let _outstanding = Outstanding::new(&inst);
        if req.service.is_empty() {
            req.service = sh.service.clone().into();
        }
        req.correlation_id = guard.id();
        req.budget_us = (deadline - now).as_micros().min(u32::MAX as u128) as u32;
        let header = wire::encode_request(&req).inspect_err(|_| {
            c.protocol.fetch_add(1, Ordering::Relaxed);
        })?;
        let cmd = SendCmd {
            endpoint: inst.id,
            id: guard.id(),
            header: zmq::Message::from(header),
            body: socket::to_message(req.body),
        };
        match sh.data_tx.try_send(cmd) {
            Ok(()) => sh.waker.wake(),
            Err(TrySendError::Full(_)) => {
                c.overloaded.fetch_add(1, Ordering::Relaxed);
                c.send_queue_full.fetch_add(1, Ordering::Relaxed);
                return Err(CallError::Overloaded("client send queue full"));
            }
            Err(TrySendError::Disconnected(_)) => {
                c.disconnected.fetch_add(1, Ordering::Relaxed);
                return Err(CallError::Disconnected);
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
            hist.record_duration(now.elapsed());
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
        result
    }
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

struct Outstanding(Arc<Instance>);

impl Outstanding {
    fn new(i: &Arc<Instance>) -> Outstanding {
        i.outstanding.fetch_add(1, Ordering::Relaxed);
        Outstanding(i.clone())
    }
}

impl Drop for Outstanding {
    fn drop(&mut self) {
        self.0.outstanding.fetch_sub(1, Ordering::Relaxed);
    }
}

// ------------------------------------------------------------ socket thread

struct Conn {
    inst: Arc<Instance>,
    dealer: zmq::Socket,
    /// Set when the instance was removed while calls were in flight.
    retired: Option<std::time::Instant>,
}

/// A retired connection stays at least this long, so a call that picked
/// the instance just before its removal still finds the socket.
const RETIRE_MIN: Duration = Duration::from_millis(50);

struct Worker {
    conns: Vec<Conn>,
    data_rx: Receiver<SendCmd>,
    ctrl_rx: Receiver<Ctrl>,
    /// A command taken while re-checking the queue before sleeping.
    stash: Option<SendCmd>,
    waker: Arc<Waker>,
    table: Arc<Table>,
    counters: Arc<Counters>,
    tuning: Tuning,
    service: String,
}

impl Worker {
    fn run(mut self) {
        loop {
            if !self.control() {
                break;
            }
            let mut idle = self.sends();
            for i in 0..self.conns.len() {
                idle &= self.receive(i);
                self.track_connection(i);
            }
            self.close_drained();
            if idle {
                self.sleep();
            }
        }
        for c in self.conns.drain(..) {
            drop(c);
        }
        self.table.fail_all(CallError::Disconnected);
    }

    /// Applies control commands; false on shutdown.
    fn control(&mut self) -> bool {
        loop {
            match self.ctrl_rx.try_recv() {
                Ok(Ctrl::Add(inst)) => self.add(inst),
                Ok(Ctrl::Remove(id)) => {
                    self.conns.retain(|c| c.inst.id != id);
                    self.table.fail_endpoint(id, CallError::Disconnected);
                }
                Ok(Ctrl::Retire(id)) => {
                    for c in self.conns.iter_mut().filter(|c| c.inst.id == id) {
                        c.retired = Some(std::time::Instant::now());
                        // track_connection reads this flag as "was up".
                        c.inst.connected.store(true, Ordering::Relaxed);
                    }
                }
                Ok(Ctrl::Shutdown) | Err(TryRecvError::Disconnected) => return false,
                Err(TryRecvError::Empty) => return true,
            }
        }
    }

    fn add(&mut self, inst: Arc<Instance>) {
        match self.open(&inst) {
            Ok(dealer) => self.conns.push(Conn {
                inst,
                dealer,
                retired: None,
            }),
            Err(e) => {
                tracing::error!(service = %self.service, endpoint = %inst.endpoint, error = %e, "cannot connect")
            }
        }
    }

    fn open(&self, inst: &Instance) -> Result<zmq::Socket, SetupError> {
        let ep = &inst.endpoint;
        let dealer = socket::dealer(&self.tuning, ep)?;
        dealer.connect(ep).map_err(socket::zerr("connect", ep))?;
        Ok(dealer)
    }

    /// Moves queued requests onto their sockets; true if there were none.
    fn sends(&mut self) -> bool {
        let mut idle = true;
        if let Some(cmd) = self.stash.take() {
            self.send(cmd);
            idle = false;
        }
        for _ in 0..BATCH * 4 {
            match self.data_rx.try_recv() {
                Ok(cmd) => {
                    self.send(cmd);
                    idle = false;
                }
                Err(_) => break,
            }
        }
        idle
    }

    fn send(&mut self, cmd: SendCmd) {
        let Some(conn) = self.conns.iter().find(|c| c.inst.id == cmd.endpoint) else {
            self.table.complete(cmd.id, Err(CallError::Disconnected));
            return;
        };
        let err = match conn.dealer.send(cmd.header, zmq::SNDMORE | zmq::DONTWAIT) {
            // libzmq accepts a multipart message atomically: once the first
            // frame is queued, the rest cannot hit the high-water mark.
            Ok(()) => match conn.dealer.send(cmd.body, zmq::DONTWAIT) {
                Ok(()) => return,
                Err(_) => CallError::Disconnected,
            },
            Err(zmq::Error::EAGAIN) if conn.inst.is_connected() => {
                CallError::Overloaded("instance socket queue full")
            }
            Err(zmq::Error::EAGAIN) => CallError::NoInstance(self.service.clone()),
            Err(_) => CallError::Disconnected,
        };
        self.table.complete(cmd.id, Err(err));
    }

    /// Hands received replies to their callers; true if there were none.
    fn receive(&mut self, i: usize) -> bool {
        let conn = &self.conns[i];
        for n in 0..BATCH {
            let header = match conn.dealer.recv_msg(zmq::DONTWAIT) {
                Ok(m) => m,
                Err(_) => return n == 0,
            };
            if !header.get_more() {
                self.counters
                    .malformed_frames
                    .fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let Ok(body) = conn.dealer.recv_msg(zmq::DONTWAIT) else {
                continue;
            };
            if body.get_more() {
                while conn
                    .dealer
                    .recv_msg(zmq::DONTWAIT)
                    .is_ok_and(|m| m.get_more())
                {}
                self.counters
                    .malformed_frames
                    .fetch_add(1, Ordering::Relaxed);
                continue;
            }
            match wire::peek(&header) {
                Ok(p) if matches!(p.kind, Kind::Reply | Kind::Error) => {
                    let raw = RawReply {
                        header: socket::to_bytes(header),
                        body: socket::to_bytes(body),
                    };
                    let _: Delivery = self.table.complete(p.correlation_id, Ok(raw));
                }
                _ => {
                    self.counters
                        .malformed_frames
                        .fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        false
    }

    /// Tracks whether the instance has a live connection. With IMMEDIATE,
    /// a DEALER is writable exactly when a completed connection has room, so
    /// POLLOUT is the connection state unless the pipe is full (then more
    /// calls are outstanding than the high-water mark). Reading ZMQ_EVENTS
    /// also makes libzmq process pending connect/disconnect commands.
    ///
    /// (Socket monitors would report the same transitions as events, but
    /// libzmq 4.3's monitor can stall its I/O thread when many sockets are
    /// monitored from one context; see docs/architecture.md.)
    fn track_connection(&mut self, i: usize) {
        let conn = &self.conns[i];
        let Ok(events) = conn.dealer.get_events() else {
            return;
        };
        if events.contains(zmq::POLLIN) {
            // Replies that arrived before the peer closed are still
            // readable after it has: read them (next pass) before failing
            // what is left, or a drained instance's last answers are lost.
            return;
        }
        let writable = events.contains(zmq::POLLOUT);
        let was = conn.inst.connected.load(Ordering::Relaxed);
        if writable && !was {
            conn.inst.connected.store(true, Ordering::Relaxed);
            conn.inst.ever_connected.store(true, Ordering::Relaxed);
            tracing::debug!(service = %self.service, endpoint = %conn.inst.endpoint, "instance connected");
        } else if !writable && was && conn.inst.outstanding() < self.tuning.hwm.max(1) as usize {
            conn.inst.connected.store(false, Ordering::Relaxed);
            // Requests on a dropped connection can never be answered: the
            // service routes replies by the old connection's identity.
            let n = self
                .table
                .fail_endpoint(conn.inst.id, CallError::Disconnected);
            tracing::warn!(service = %self.service, endpoint = %conn.inst.endpoint, failed = n, "instance disconnected");
        }
    }

    /// Closes retired connections with nothing left in flight (or whose
    /// connection dropped: track_connection has failed their calls then).
    fn close_drained(&mut self) {
        if self.conns.iter().all(|c| c.retired.is_none()) {
            return;
        }
        let table = &self.table;
        self.conns.retain(|c| {
            let Some(at) = c.retired else { return true };
            let up = c.inst.connected.load(Ordering::Relaxed);
            if up && (c.inst.outstanding() > 0 || at.elapsed() < RETIRE_MIN) {
                return true;
            }
            table.fail_endpoint(c.inst.id, CallError::Disconnected);
            false
        });
    }

    fn sleep(&mut self) {
        self.waker.prepare_sleep();
        // Re-check after announcing the sleep: a producer that pushed before
        // seeing the flag did not write the eventfd.
        match self.data_rx.try_recv() {
            Ok(cmd) => {
                self.stash = Some(cmd);
                self.waker.awake();
                return;
            }
            Err(TryRecvError::Disconnected) => {
                self.waker.awake();
                return;
            }
            Err(TryRecvError::Empty) => {}
        }
        let mut items = Vec::with_capacity(1 + self.conns.len());
        items.push(zmq::PollItem::from_fd(self.waker.fd(), zmq::POLLIN));
        for c in &self.conns {
            items.push(c.dealer.as_poll_item(zmq::POLLIN));
        }
        // Connection changes raise no poll event: look again soon while an
        // instance is down (to take it back promptly) or calls are waiting
        // (to fail them promptly if their instance dies).
        let watch = !self.table.is_empty()
            || self
                .conns
                .iter()
                .any(|c| !c.inst.is_connected() || c.retired.is_some());
        let _ = zmq::poll(&mut items, if watch { RECHECK_MS } else { 1000 });
        let woke = items[0].is_readable();
        drop(items);
        self.waker.awake();
        if woke {
            self.waker.drain();
        }
    }
}
