//! HTTP connections from accept to close, and what bounds them.
//!
//! - **Idle timeout** (`--idle-timeout`): a connection with no request in
//!   progress that reads and writes nothing for this long is closed, from
//!   accept on (a connection that never sends a byte; hyper's header-read
//!   timeout only starts at the first byte) and between keep-alive requests.
//! - **Connection cap** (`--max-connections`, per process): at the cap, each
//!   new connection closes the open one that has been idle the longest
//!   (least recently used); if none is idle, the new one gets a 503 and is
//!   closed. Connections that hold a slot without using it are what goes.
//! - **Drain** ([`Phase::Draining`]): every HTTP/1 response carries
//!   `connection: close` and the connection closes after it; an HTTP/1
//!   connection with no request in progress is closed only once it has
//!   been silent for [`DRAIN_IDLE`] (a request may be on the wire: closing
//!   at once, as hyper's graceful shutdown does, resets it); HTTP/2 gets
//!   GOAWAY at once and finishes its streams.
//!
//! - **TLS** (`--tls-cert`): the handshake runs on the connection's own
//!   task (the accept loop never waits for it) and must finish within the
//!   idle timeout from accept, so a client that connects and says nothing,
//!   or trickles its handshake, is cut as a silent cleartext one is. A
//!   connection over the cap on a TLS listener is closed without a 503
//!   (the client could not read one before a handshake).
//!
//! Activity is seen by wrapping the socket ([`Watched`]): every read or
//! write that moves bytes stamps the connection, and the service counts
//! the requests in progress. Under TLS the wrapper sits below rustls, so
//! handshake and record bytes count.

use crate::metrics::EdgeMetrics;
use crate::proxy::{self, Edge};
use http::{header, HeaderValue, Request, Version};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use std::collections::HashMap;
use std::convert::Infallible;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, Notify};

/// While draining, an HTTP/1 connection with no request in progress is
/// closed once it has been silent this long (or `--idle-timeout`, if
/// shorter): long enough for a request already sent to arrive, short
/// enough that idle clients do not hold the drain to `--grace`.
pub const DRAIN_IDLE: Duration = Duration::from_secs(1);

/// What a shard's connections are told.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Phase {
    Serving,
    /// Finish what is on the wire, then close.
    Draining,
    /// The grace period is over: close now.
    Abort,
}

/// Milliseconds on a monotonic clock: what connections are stamped with
/// (one atomic store per read or write).
///
/// The coarse clock (`CLOCK_MONOTONIC_COARSE`, ticks of 1-4 ms) is ample
/// for idle timeouts of seconds and costs a quarter of the precise one:
/// 9 ns against 40 ns a read on the 2-core VM (`perf` had the precise
/// clock at 5% of the terminator's CPU, four reads a request of it here).
fn now_ms() -> u64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec it is given, nothing else.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut t) };
    if rc != 0 {
        // Never on Linux; a clock that cannot be read stays put, which
        // only delays an idle close.
        static EPOCH: OnceLock<Instant> = OnceLock::new();
        return EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u64;
    }
    t.tv_sec as u64 * 1000 + t.tv_nsec as u64 / 1_000_000
}

/// One open connection, as its task, its service, its socket wrapper and
/// the process's [`ConnTable`] see it.
pub struct ConnState {
    /// Requests in progress (HTTP/2: streams).
    active: AtomicUsize,
    /// [`now_ms`] of the last read or write that moved bytes, or of the
    /// last request start or end.
    last: AtomicU64,
    /// Spoke HTTP/2 (set at its first request).
    h2: AtomicBool,
    /// Chosen to make room under the cap.
    evicted: AtomicBool,
    close: Notify,
}

impl ConnState {
    fn new() -> ConnState {
        ConnState {
            active: AtomicUsize::new(0),
            last: AtomicU64::new(now_ms()),
            h2: AtomicBool::new(false),
            evicted: AtomicBool::new(false),
            close: Notify::new(),
        }
    }

    #[inline]
    fn touch(&self) {
        self.last.store(now_ms(), Ordering::Relaxed);
    }

    /// Milliseconds without activity, or `None` while a request is in
    /// progress.
    fn idle_ms(&self) -> Option<u64> {
        (self.active.load(Ordering::SeqCst) == 0)
            .then(|| now_ms().saturating_sub(self.last.load(Ordering::Relaxed)))
    }
}

/// A request in progress on a connection.
struct Busy<'a>(&'a ConnState);

impl<'a> Busy<'a> {
    fn new(st: &'a ConnState) -> Busy<'a> {
        // No stamp: the request's bytes were just read (stamped), and a
        // busy connection is never idle.
        st.active.fetch_add(1, Ordering::SeqCst);
        Busy(st)
    }
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.0.touch();
        self.0.active.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Every open HTTP connection of the process (all shards).
#[derive(Default)]
pub struct ConnTable {
    next: AtomicU64,
    open: parking_lot::Mutex<HashMap<u64, Arc<ConnState>>>,
    count: AtomicUsize,
}

impl ConnTable {
    pub fn len(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn add(&self, st: Arc<ConnState>) -> u64 {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.open.lock().insert(id, st);
        self.count.fetch_add(1, Ordering::Relaxed);
        id
    }

    fn remove(&self, id: u64) {
        if self.open.lock().remove(&id).is_some() {
            self.count.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Asks the connection idle the longest (no request in progress, oldest
    /// activity: one that never sent a byte counts from its accept) to
    /// close. False if no connection is idle.
    pub fn evict_oldest_idle(&self) -> bool {
        let open = self.open.lock();
        let victim = open
            .values()
            .filter(|c| c.active.load(Ordering::SeqCst) == 0 && !c.evicted.load(Ordering::Relaxed))
            .min_by_key(|c| c.last.load(Ordering::Relaxed));
        match victim {
            Some(c) => {
                c.evicted.store(true, Ordering::Relaxed);
                c.close.notify_one();
                true
            }
            None => false,
        }
    }
}

/// What one shard needs to serve a connection it accepted.
pub struct ShardConns {
    pub builder: auto::Builder<TokioExecutor>,
    pub edge: Arc<Edge>,
    pub table: Arc<ConnTable>,
    /// The process drains: HTTP/1 responses say `connection: close`.
    pub draining: Arc<AtomicBool>,
    pub max: usize,
    pub idle_timeout: Duration,
    pub phase: watch::Sender<Phase>,
    /// Held by every connection task: the receiver sees the channel close
    /// when the last one ends.
    pub done: mpsc::Sender<()>,
    /// What [`ShardConns::admit_tls`] handshakes with; None without TLS.
    pub tls: Option<tokio_rustls::TlsAcceptor>,
}

impl ShardConns {
    /// Serves `stream` (cleartext) on its own task, or refuses it at the
    /// cap when no connection is idle.
    pub fn admit(&self, stream: TcpStream) {
        self.admit_with(stream, None)
    }

    /// Serves `stream` over TLS: the handshake, then HTTP, on its own task.
    pub fn admit_tls(&self, stream: TcpStream) {
        let tls = self.tls.clone();
        debug_assert!(tls.is_some(), "admit_tls without a TLS acceptor");
        self.admit_with(stream, tls)
    }

    fn admit_with(&self, stream: TcpStream, tls: Option<tokio_rustls::TlsAcceptor>) {
        if self.table.len() >= self.max && !self.table.evict_oldest_idle() {
            tracing::debug!("connection cap reached and none idle: refused");
            if tls.is_none() {
                refuse(stream);
            }
            return;
        }
        let _ = stream.set_nodelay(true);
        let st = Arc::new(ConnState::new());
        let id = self.table.add(st.clone());
        let open = OpenConnection::new(&self.edge.metrics);
        let (edge, draining, svc_st) = (self.edge.clone(), self.draining.clone(), st.clone());
        // One getpeername per connection, and only for the access log.
        let peer = edge
            .access_log
            .as_ref()
            .and_then(|_| stream.peer_addr().ok());
        let svc = service_fn(move |req: Request<Incoming>| {
            let (edge, draining, st) = (edge.clone(), draining.clone(), svc_st.clone());
            async move {
                let h1 = req.version() < Version::HTTP_2;
                if !h1 {
                    st.h2.store(true, Ordering::Relaxed);
                }
                let _busy = Busy::new(&st);
                let mut res = proxy::handle(&edge, req, peer).await?;
                if h1 && draining.load(Ordering::SeqCst) {
                    // hyper closes the connection once this is written.
                    res.headers_mut()
                        .insert(header::CONNECTION, HeaderValue::from_static("close"));
                }
                Ok::<_, Infallible>(res)
            }
        });
        let watched = Watched {
            io: stream,
            st: st.clone(),
        };
        let (table, mut phase, done) = (
            self.table.clone(),
            self.phase.subscribe(),
            self.done.clone(),
        );
        let idle_timeout = self.idle_timeout;
        let builder = self.builder.clone();
        tokio::spawn(async move {
            let io = match tls {
                None => Some(Io::Plain(watched)),
                Some(acceptor) => handshake(&acceptor, watched, &st, &mut phase, idle_timeout)
                    .await
                    .map(|s| Io::Tls(Box::new(s))),
            };
            if let Some(io) = io {
                serve(&builder, io, svc, &st, &mut phase, idle_timeout).await;
            }
            table.remove(id);
            drop(open);
            drop(done);
        });
    }
}

/// The TLS handshake of one connection, bounded by the idle timeout from
/// accept; cut early when the connection is evicted or the drain aborts.
async fn handshake(
    acceptor: &tokio_rustls::TlsAcceptor,
    io: Watched,
    st: &ConnState,
    phase: &mut watch::Receiver<Phase>,
    limit: Duration,
) -> Option<tokio_rustls::server::TlsStream<Watched>> {
    let deadline = tokio::time::Instant::now() + limit;
    let hs = acceptor.accept(io);
    tokio::pin!(hs);
    loop {
        tokio::select! {
            r = &mut hs => {
                return match r {
                    Ok(s) => Some(s),
                    Err(e) => {
                        tracing::debug!(error = %e, "tls handshake failed");
                        None
                    }
                };
            }
            _ = tokio::time::sleep_until(deadline) => {
                tracing::debug!("tls handshake not done within the idle timeout");
                return None;
            }
            _ = st.close.notified() => if st.evicted.load(Ordering::Relaxed) {
                return None;
            },
            r = phase.changed() => if r.is_err() || *phase.borrow_and_update() == Phase::Abort {
                return None;
            },
        }
    }
}

/// One connection's HTTP, from its first byte (after any handshake) to
/// close: the idle timeout, eviction and the drain as the module says.
async fn serve<S>(
    builder: &auto::Builder<TokioExecutor>,
    io: Io,
    svc: S,
    st: &ConnState,
    phase: &mut watch::Receiver<Phase>,
    idle_timeout: Duration,
) where
    S: hyper::service::Service<
            Request<Incoming>,
            Response = http::Response<http_body_util::Full<bytes::Bytes>>,
            Error = Infallible,
        > + Send
        + 'static,
    S::Future: Send + 'static,
{
    let conn = builder.serve_connection(TokioIo::new(io), svc);
    tokio::pin!(conn);
    // When the connection was asked to close (graceful_shutdown).
    let mut closing: Option<tokio::time::Instant> = None;
    loop {
        let p = *phase.borrow_and_update();
        if p == Phase::Abort {
            break;
        }
        let now = tokio::time::Instant::now();
        let limit = match p {
            Phase::Draining => idle_timeout.min(DRAIN_IDLE),
            _ => idle_timeout,
        };
        let idle = st.idle_ms();
        if closing.is_none()
            && (st.evicted.load(Ordering::Relaxed)
                || idle.is_some_and(|ms| ms >= limit.as_millis() as u64)
                || (p == Phase::Draining && st.h2.load(Ordering::Relaxed)))
        {
            // HTTP/1 idle: closes now. HTTP/1 busy: closes after the
            // response (which says `connection: close`). HTTP/2:
            // GOAWAY, then closes when its streams are done. Nothing
            // read yet: closes now.
            conn.as_mut().graceful_shutdown();
            closing = Some(now);
        }
        let wake = match (closing, idle) {
            // A peer that holds up a graceful close (an HTTP/2
            // client that never answers the GOAWAY ping) is cut
            // once idle for another idle timeout.
            (Some(t), Some(_)) if now >= t + idle_timeout => break,
            (Some(t), _) if now < t + idle_timeout => t + idle_timeout,
            (Some(_), _) => now + limit,
            (None, Some(ms)) => now + limit.saturating_sub(Duration::from_millis(ms)),
            (None, None) => now + limit,
        };
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(error = %e, "connection ended with error");
                }
                break;
            }
            r = phase.changed() => if r.is_err() { break },
            _ = st.close.notified() => {}
            _ = tokio::time::sleep_until(wake) => {}
        }
    }
}

/// The socket a connection's HTTP runs on: cleartext, or TLS above it.
enum Io {
    Plain(Watched),
    Tls(Box<tokio_rustls::server::TlsStream<Watched>>),
}

impl AsyncRead for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Io {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Io::Plain(s) => s.is_write_vectored(),
            Io::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// The socket, stamping its connection whenever bytes move.
struct Watched {
    io: TcpStream,
    st: Arc<ConnState>,
}

impl AsyncRead for Watched {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut this.io).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.st.touch();
        }
        r
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.io).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            this.st.touch();
        }
        r
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            this.st.touch();
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// Counts a connection in the `connections` gauge while it is open.
struct OpenConnection(Arc<EdgeMetrics>);

impl OpenConnection {
    fn new(m: &Arc<EdgeMetrics>) -> OpenConnection {
        m.connections.fetch_add(1, Ordering::Relaxed);
        OpenConnection(m.clone())
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Answers 503 `overloaded` (the one JSON shape, `retry-after: 1`) without
/// reading the request, and closes: for a connection over the cap, or one
/// shed from the queue when the process is out of descriptors.
pub fn refuse(s: TcpStream) {
    let rid = crate::request_id::generate();
    let rid = rid.to_str().unwrap_or("");
    let body = bus::Problem::new(503, "overloaded", "too many open connections; try again")
        .retry_after(1)
        .body(rid);
    let mut out = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nretry-after: 1\r\nx-request-id: {rid}\r\nconnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(&body);
    // Best effort: a fresh socket's buffer takes this at once.
    let _ = s.try_write(&out);
}

/// One `accept` that does not wait (and does not rely on the reactor having
/// seen the queue): `None` when nothing is queued, or on any error.
pub fn accept_now(l: &TcpListener) -> Option<TcpStream> {
    // SAFETY: accept4 on a listening socket we own; the descriptor it
    // returns is new and owned by the std stream from here on.
    let fd = unsafe {
        libc::accept4(
            l.as_raw_fd(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
        )
    };
    if fd < 0 {
        return None;
    }
    // SAFETY: `fd` is a connected TCP socket nobody else owns.
    let s = unsafe { std::net::TcpStream::from_raw_fd(fd) };
    TcpStream::from_std(s).ok()
}

/// Stops the listening socket for every descriptor that shares it (the
/// shards' clones): new connections are refused from here on.
pub fn stop_listening(l: &TcpListener) {
    // SAFETY: shutdown(2) on a socket we own; no memory is involved.
    unsafe {
        libc::shutdown(l.as_raw_fd(), libc::SHUT_RD);
    }
}

/// A descriptor held in reserve, given up to shed a connection when the
/// process is out of them.
pub fn open_spare() -> Option<std::fs::File> {
    std::fs::File::open("/dev/null").ok()
}

/// `--max-connections` when not given: three quarters of the soft
/// open-file limit, leaving the rest to bus sockets, etcd, the admin port
/// and logs; 10,000 if the limit cannot be read.
pub fn default_max_connections() -> usize {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } != 0 {
        return 10_000;
    }
    let soft = if r.rlim_cur == libc::RLIM_INFINITY {
        1 << 20
    } else {
        r.rlim_cur.min(1 << 20) as usize
    };
    (soft / 4 * 3).max(1)
}
