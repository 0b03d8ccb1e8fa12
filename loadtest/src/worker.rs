//! Worker threads: each runs a single-threaded tokio runtime (no work
//! stealing, no cross-thread wakeups: the fastest shape for a generator) and
//! a share of the users. A user is one request loop: for HTTP/1.1 it owns a
//! connection (like wrk); for h2, `--streams` users share one.
//!
//! Users record into a thread-local [`Stats`] (never shared, never locked);
//! a ticker hands it to the main thread once a second and at the end.

use std::cell::RefCell;
use std::future::{poll_fn, Future};
use std::net::SocketAddr;
use std::pin::{pin, Pin};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::h1;
use crate::schedule::{drive, Exchange, Outcome, Pacer};
use crate::stats::Stats;
use crate::target::{KeyCursor, Template};

/// Everything one run needs, shared read-only by the workers.
pub struct Plan {
    pub addr: SocketAddr,
    pub template: Template,
    pub h2: bool,
    /// HTTP/1.1 through [`h1`] (else hyper's client).
    pub lean_h1: bool,
    pub connections: u32,
    /// h2: users per connection (1 for HTTP/1.1).
    pub streams: u32,
    pub threads: u32,
    /// Open loop rate (req/s), `None` for closed loop.
    pub rate: Option<f64>,
    pub window: Duration,
    pub timeout: Duration,
}

impl Plan {
    fn users(&self) -> u64 {
        self.connections as u64 * self.streams as u64
    }
}

/// Worker → main thread.
pub enum Msg {
    /// Connections are up; waiting for the start instant.
    Ready,
    /// Counts since the previous message; `tick` is whole seconds since start.
    Tick(u64, Box<Stats>),
    /// The rest of the counts; this worker is finished.
    Done(Box<Stats>),
}

thread_local! {
    // One per worker thread: the hot path records without locks or atomics.
    static STATS: RefCell<Stats> = RefCell::new(Stats::default());
}

fn take_stats() -> Box<Stats> {
    STATS.with(|s| Box::new(std::mem::take(&mut *s.borrow_mut())))
}

fn count_connect_error() {
    STATS.with(|s| s.borrow_mut().connect_errors += 1);
}

/// Runs worker `idx`: connects, reports `Ready`, waits for the start instant,
/// runs its users, reports `Done`.
pub fn run_worker(
    idx: u32,
    plan: Arc<Plan>,
    tx: mpsc::Sender<(u32, Msg)>,
    start_rx: mpsc::Receiver<std::time::Instant>,
) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(_) => return, // the main thread sees the channel close
    };
    // Connections owned by this worker: global index k with k % threads == idx.
    let conns: Vec<u64> = (idx as u64..plan.connections as u64)
        .step_by(plan.threads as usize)
        .collect();
    let pre = rt.block_on(preconnect(&plan, &conns));
    if tx.send((idx, Msg::Ready)).is_err() {
        return;
    }
    let Ok(start) = start_rx.recv() else { return };
    let start = Instant::from_std(start);
    rt.block_on(async {
        // Open loop sends at due instants: use the sub-millisecond timer.
        let precise = plan.rate.and_then(|_| crate::timer::install());
        let ticker = {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut iv = tokio::time::interval_at(
                    start + Duration::from_secs(1),
                    Duration::from_secs(1),
                );
                iv.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
                loop {
                    let at = iv.tick().await;
                    let tick = (at - start).as_secs_f64().round() as u64;
                    let _ = tx.send((idx, Msg::Tick(tick, take_stats())));
                }
            })
        };
        let mut users = Vec::new();
        for (k, pre) in conns.iter().zip(pre) {
            match pre {
                Pre::H1(c) => {
                    users.push(tokio::spawn(h1_user(plan.clone(), *k, c, start)));
                }
                Pre::H2(slot) => {
                    for s in 0..plan.streams as u64 {
                        let u = k * plan.streams as u64 + s;
                        users.push(tokio::spawn(h2_user(plan.clone(), u, slot.clone(), start)));
                    }
                }
            }
        }
        let mut unsent = 0;
        for u in users {
            unsent += u.await.unwrap_or(0);
        }
        ticker.abort();
        if let Some(p) = precise {
            crate::timer::uninstall();
            p.abort();
        }
        STATS.with(|s| s.borrow_mut().unsent += unsent);
    });
    let _ = tx.send((idx, Msg::Done(take_stats())));
}

/// A connection made before the clock starts, so handshakes do not count
/// against the first requests.
enum Pre {
    H1(Option<H1Conn>),
    H2(Arc<H2Slot>),
}

async fn preconnect(plan: &Arc<Plan>, conns: &[u64]) -> Vec<Pre> {
    let tasks: Vec<_> = conns
        .iter()
        .map(|_| {
            let plan = plan.clone();
            tokio::spawn(async move {
                if plan.h2 {
                    let slot = Arc::new(H2Slot::default());
                    let _ = slot.get(&plan, None).await;
                    Pre::H2(slot)
                } else {
                    let c = connect_h1(&plan).await;
                    if c.is_none() {
                        count_connect_error();
                    }
                    Pre::H1(c)
                }
            })
        })
        .collect();
    let mut out = Vec::with_capacity(tasks.len());
    for t in tasks {
        out.push(t.await.unwrap_or(Pre::H1(None)));
    }
    out
}

fn pacer(plan: &Plan, user: u64, start: Instant) -> Pacer {
    match plan.rate {
        Some(r) => Pacer::open(start, plan.window, r, user, plan.users()),
        None => Pacer::closed(start, plan.window),
    }
}

/// After a failed connect: wait a little (a refused port would otherwise
/// spin), but never past the end of the window.
async fn backoff(end: Instant) -> bool {
    tokio::time::sleep_until((Instant::now() + Duration::from_millis(10)).min(end)).await;
    Instant::now() < end
}

async fn connect_tcp(plan: &Plan) -> Option<TcpStream> {
    let s = tokio::time::timeout(plan.timeout, TcpStream::connect(plan.addr))
        .await
        .ok()?
        .ok()?;
    // Requests are small and latency is the point.
    let _ = s.set_nodelay(true);
    Some(s)
}

// ---- HTTP/1.1: one connection per user ---------------------------------

/// A user's HTTP/1.1 connection: the lean client (default) or hyper's.
enum H1Conn {
    Lean(h1::Conn),
    Hyper {
        sender: http1::SendRequest<Full<Bytes>>,
        /// Polled inside the user's own task instead of a spawned one: one
        /// task per connection saves a wakeup and a context switch per
        /// request. `None` once finished (dropping it fails what is pending).
        conn: Option<Pin<Box<HyperH1Connection>>>,
    },
}

type HyperH1Connection = http1::Connection<TokioIo<TcpStream>, Full<Bytes>>;

async fn connect_h1(plan: &Plan) -> Option<H1Conn> {
    if plan.lean_h1 {
        let c = tokio::time::timeout(plan.timeout, h1::Conn::connect(plan.addr));
        return c.await.ok()?.ok().map(H1Conn::Lean);
    }
    let s = connect_tcp(plan).await?;
    let (sender, conn) = tokio::time::timeout(plan.timeout, http1::handshake(TokioIo::new(s)))
        .await
        .ok()?
        .ok()?;
    Some(H1Conn::Hyper {
        sender,
        conn: Some(Box::pin(conn)),
    })
}

struct H1Exchange<'a> {
    c: H1Conn,
    plan: &'a Plan,
    keys: KeyCursor,
    /// Where per-key requests are serialized when there are too many keys
    /// to keep them all.
    scratch: Vec<u8>,
    /// Responses on this connection: a connection that dies before its
    /// first one backs off before the next connect.
    served: u64,
    /// The connection ended before a request was written on it (`Closed`).
    ended_unsent: bool,
    /// The last response allowed another request on this connection.
    reusable: bool,
}

impl Exchange for H1Exchange<'_> {
    async fn exchange(&mut self) -> Outcome {
        if !self.reusable {
            return Outcome::Closed; // the server said `connection: close`
        }
        let plan = self.plan;
        let out = match &mut self.c {
            H1Conn::Lean(conn) => {
                let req = plan.template.h1_request(&mut self.keys, &mut self.scratch);
                let work = conn.exchange(req, plan.template.is_head());
                match tokio::time::timeout(plan.timeout, work).await {
                    Err(_) => Outcome::Timeout,
                    Ok(Ok(r)) => {
                        self.reusable = r.reusable;
                        Outcome::Status(r.status)
                    }
                    // The idle close of a kept-alive connection, seen before
                    // writing: send again on a new connection.
                    Ok(Err(h1::Error::Closed)) => Outcome::Closed,
                    // Written, then cut: a failed request.
                    Ok(Err(h1::Error::Read(_))) => Outcome::Read,
                    Ok(Err(_)) => Outcome::Io,
                }
            }
            H1Conn::Hyper { sender, conn } => {
                let req = plan.template.request(&mut self.keys);
                let work = tokio::time::timeout(plan.timeout, async {
                    if sender.ready().await.is_err() {
                        return Outcome::Closed;
                    }
                    match sender.send_request(req).await {
                        Ok(resp) => read_response(resp).await,
                        Err(e) => failed_send(&e),
                    }
                });
                let mut work = pin!(work);
                poll_fn(|cx| {
                    if let Some(c) = conn {
                        if c.as_mut().poll(cx).is_ready() {
                            *conn = None;
                        }
                    }
                    work.as_mut().poll(cx)
                })
                .await
                .unwrap_or(Outcome::Timeout)
            }
        };
        match out {
            Outcome::Status(_) => self.served += 1,
            Outcome::Closed => self.ended_unsent = true,
            _ => {}
        }
        out
    }
}

/// Reads the whole body (frame by frame, nothing kept) and returns the status.
async fn read_response(resp: http::Response<hyper::body::Incoming>) -> Outcome {
    let status = resp.status().as_u16();
    let mut body = resp.into_body();
    while let Some(f) = body.frame().await {
        if f.is_err() {
            return Outcome::Read; // the connection ended inside the body
        }
    }
    Outcome::Status(status)
}

/// hyper's client could not deliver a response: a request it never wrote
/// (`Closed`: send again), one cut after it was sent (`Read`), or another
/// failure (`Io`).
fn failed_send(e: &hyper::Error) -> Outcome {
    if e.is_canceled() {
        Outcome::Closed
    } else if e.is_incomplete_message() {
        Outcome::Read
    } else {
        Outcome::Io
    }
}

async fn h1_user(plan: Arc<Plan>, user: u64, mut pre: Option<H1Conn>, start: Instant) -> u64 {
    let mut pacer = pacer(&plan, user, start);
    let mut keys = plan.template.cursor(user, plan.users());
    if Instant::now() < start {
        tokio::time::sleep_until(start).await;
    }
    loop {
        let c = match pre.take() {
            Some(c) => c,
            None => match connect_h1(&plan).await {
                Some(c) => c,
                None => {
                    count_connect_error();
                    if !backoff(pacer.end()).await {
                        break;
                    }
                    continue;
                }
            },
        };
        let mut ex = H1Exchange {
            c,
            plan: &plan,
            keys,
            scratch: Vec::new(),
            served: 0,
            ended_unsent: false,
            reusable: true,
        };
        let finished = drive(&mut pacer, &mut ex, &mut |s| {
            STATS.with(|st| st.borrow_mut().record(&s))
        })
        .await;
        keys = ex.keys;
        if finished {
            break;
        }
        if ex.served == 0 {
            // Accepted, then closed before answering anything: a connect
            // error if no request went out on it (a request that did is
            // already counted as failed). Either way, do not re-dial in a
            // tight loop.
            if ex.ended_unsent {
                count_connect_error();
            }
            if !backoff(pacer.end()).await {
                break;
            }
        }
    }
    pacer.unsent()
}

// ---- HTTP/2: users share a connection per slot --------------------------

/// One h2 connection shared by `--streams` users; re-made by the first user
/// that finds it dead (`generation` stops the others re-making it again).
#[derive(Default)]
struct H2Slot {
    cur: tokio::sync::Mutex<(u64, Option<http2::SendRequest<Full<Bytes>>>)>,
}

impl H2Slot {
    /// The live connection, or a new one if there is none or it is the
    /// generation the caller saw fail.
    async fn get(
        &self,
        plan: &Plan,
        failed: Option<u64>,
    ) -> Option<(u64, http2::SendRequest<Full<Bytes>>)> {
        let mut cur = self.cur.lock().await;
        if let Some(s) = &cur.1 {
            if Some(cur.0) != failed && !s.is_closed() {
                return Some((cur.0, s.clone()));
            }
        }
        cur.1 = None;
        let Some(tcp) = connect_tcp(plan).await else {
            count_connect_error();
            return None;
        };
        let hs = http2::handshake(TokioExecutor::new(), TokioIo::new(tcp));
        let Ok(Ok((sender, conn))) = tokio::time::timeout(plan.timeout, hs).await else {
            count_connect_error();
            return None;
        };
        tokio::spawn(conn);
        cur.0 += 1;
        cur.1 = Some(sender.clone());
        Some((cur.0, sender))
    }
}

struct H2Exchange<'a> {
    sender: http2::SendRequest<Full<Bytes>>,
    plan: &'a Plan,
    keys: KeyCursor,
}

impl Exchange for H2Exchange<'_> {
    const MULTIPLEXED: bool = true;

    async fn exchange(&mut self) -> Outcome {
        let req = self.plan.template.request(&mut self.keys);
        let sender = &mut self.sender;
        tokio::time::timeout(self.plan.timeout, async {
            if sender.ready().await.is_err() {
                return Outcome::Closed;
            }
            match sender.send_request(req).await {
                Ok(resp) => read_response(resp).await,
                Err(e) => failed_send(&e),
            }
        })
        .await
        .unwrap_or(Outcome::Timeout)
    }
}

async fn h2_user(plan: Arc<Plan>, user: u64, slot: Arc<H2Slot>, start: Instant) -> u64 {
    let mut pacer = pacer(&plan, user, start);
    let mut keys = plan.template.cursor(user, plan.users());
    if Instant::now() < start {
        tokio::time::sleep_until(start).await;
    }
    let mut failed = None;
    loop {
        let Some((generation, sender)) = slot.get(&plan, failed).await else {
            if !backoff(pacer.end()).await {
                break;
            }
            continue;
        };
        let mut ex = H2Exchange {
            sender,
            plan: &plan,
            keys,
        };
        let mut served = 0u64;
        let finished = drive(&mut pacer, &mut ex, &mut |s| {
            served += u64::from(matches!(s.outcome, Outcome::Status(_)));
            STATS.with(|st| st.borrow_mut().record(&s))
        })
        .await;
        keys = ex.keys;
        if finished {
            break;
        }
        failed = Some(generation);
        // A server that accepts and then fails every h2 connection (one that
        // does not speak h2c) would otherwise be re-dialled in a tight loop.
        if served == 0 && !backoff(pacer.end()).await {
            break;
        }
    }
    pacer.unsent()
}
