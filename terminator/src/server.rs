//! Accept loops for the HTTP and admin listeners, and graceful drain.

use crate::config::Settings;
use crate::conn::{
    accept_now, default_max_connections, open_spare, refuse, stop_listening, ConnTable, Phase,
    ShardConns,
};
use crate::metrics::EdgeMetrics;
use crate::proxy::Edge;
use crate::registry;
use crate::routes::Routes;
use crate::upstream::Upstreams;
use http::StatusCode;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyper_util::server::conn::auto;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::net::TcpListener;

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("bus setup: {0}")]
    Bus(#[from] bus::SetupError),
}

/// What the shards of one terminator process share: the metrics, the
/// in-flight count (`--max-in-flight` is per process), the drain flag and
/// each upstream's limiter and retry budget.
#[derive(Clone)]
pub struct Shared {
    pub metrics: Arc<EdgeMetrics>,
    pub upstreams: Arc<Upstreams>,
    pub in_flight: Arc<AtomicUsize>,
    pub draining: Arc<AtomicBool>,
    /// Every shard's route table, so `/readyz` counts the calls pending in
    /// all of them.
    pub shards: Arc<parking_lot::Mutex<Vec<Arc<Routes>>>>,
    /// Every open HTTP connection of the process, for `--max-connections`.
    pub conns: Arc<ConnTable>,
    /// The TLS configuration (`--tls-cert`), shared and reloaded in place.
    pub tls: Option<Arc<crate::tls::Tls>>,
    /// `--access-log`: one writer for the process.
    pub access_log: Option<Arc<crate::access_log::AccessLog>>,
    /// `--policy`: traffic policies by service, reloaded in place.
    pub policies: Arc<traffic::policy::Policies>,
    /// Ghost copies in flight and their verdicts (`/ghost`).
    pub ghosts: Arc<traffic::ghost::Ledger>,
    /// `/console` on the admin port.
    pub console: Arc<crate::console::Console>,
}

impl Shared {
    pub fn new(settings: &Settings) -> Shared {
        Shared {
            metrics: Default::default(),
            upstreams: Upstreams::new(settings.upstream_policy()),
            in_flight: Default::default(),
            draining: Default::default(),
            shards: Default::default(),
            conns: Default::default(),
            tls: None,
            access_log: None,
            policies: Default::default(),
            ghosts: Default::default(),
            console: Arc::new(crate::console::Console::new(settings.p99_target)),
        }
    }
}

/// Serves HTTP on `http` and health on `admin` until `shutdown` resolves,
/// then drains: stops accepting, `/readyz` answers 503, requests in flight
/// get `settings.grace` to finish. One shard on the caller's runtime.
pub async fn run(
    settings: Settings,
    http: TcpListener,
    admin: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), RunError> {
    let shared = Shared::new(&settings);
    serve(settings, http, Some(admin), shared, shutdown).await
}

/// One shard: accepts from `http` (which other shards may share) with its
/// own route table and bus clients, so a request stays on the runtime that
/// accepted it. The shard given `admin` is the primary: it serves the
/// admin port and reports the process's edge metrics and instance gauges.
pub async fn serve(
    settings: Settings,
    http: TcpListener,
    admin: Option<TcpListener>,
    shared: Shared,
    shutdown: impl Future<Output = ()>,
) -> Result<(), RunError> {
    serve_listeners(settings, http, None, admin, shared, shutdown).await
}

/// [`serve`] with TLS as `shared.tls` says: on `https` when given (and
/// `http` stays cleartext), else on `http` itself.
pub async fn serve_listeners(
    settings: Settings,
    http: TcpListener,
    https: Option<TcpListener>,
    admin: Option<TcpListener>,
    shared: Shared,
    shutdown: impl Future<Output = ()>,
) -> Result<(), RunError> {
    let http_tls = shared.tls.is_some() && https.is_none();
    let https = https.filter(|_| shared.tls.is_some());
    let primary = admin.is_some();
    let metrics = shared.metrics.clone();
    let routes = Arc::new(Routes::build(
        &settings.routes,
        settings.timeout,
        metrics.clone(),
        shared.upstreams.clone(),
        primary,
    )?);
    shared.shards.lock().push(routes.clone());
    let _watch = settings.etcd.clone().map(|o| {
        let follower = Arc::new(parking_lot::Mutex::new(registry::Follower::new(
            settings.routes.clone(),
            settings.routes_explicit,
            settings.timeout,
            routes.clone(),
        )));
        let f = follower.clone();
        discovery::Watcher::start_with_liveness(
            o,
            discovery::PREFIX.into(),
            move |r| f.lock().is_live(r),
            move |snap| follower.lock().apply(snap),
        )
    });
    // Policies are process-wide: the primary shard follows etcd's.
    let _policy_watch = settings.etcd.clone().filter(|_| primary).map(|o| {
        let policies = shared.policies.clone();
        discovery::Watcher::start_documents(o, discovery::POLICY_PREFIX.into(), move |docs| {
            policies.apply_etcd(docs)
        })
    });
    let edge = Arc::new(Edge {
        routes,
        max_body: settings.max_body,
        max_header_bytes: settings.max_header_bytes,
        max_in_flight: settings.max_in_flight,
        in_flight: shared.in_flight.clone(),
        metrics,
        access_log: shared.access_log.clone(),
        policies: shared.policies.clone(),
        ghosts: shared.ghosts.clone(),
    });
    let draining = shared.draining.clone();
    // With etcd, the primary's fleet registration, watch and sampler:
    // held for the shard's life, dropped (deregistered) when it ends.
    let mut _fleet = None;
    let admin_task = admin.map(|admin| {
        // Reported once per process: the shards share these numbers.
        telemetry::register(&edge);
        _fleet = settings
            .etcd
            .clone()
            .zip(admin.local_addr().ok())
            .map(|(o, a)| fleet(&settings, o, a, &shared, &edge));
        tokio::spawn(svc_host::admin::serve_with(
            admin,
            Arc::new(AdminPages {
                edge: edge.clone(),
                draining: draining.clone(),
                shards: shared.shards.clone(),
                console: shared.console.clone(),
            }),
            settings.admin_token.clone(),
        ))
    });

    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(settings.header_read_timeout)
        // Heads up to twice our own limit reach the handler, which answers
        // 431 with a JSON body; beyond that hyper answers 431 itself.
        .max_buf_size((settings.max_header_bytes * 2).max(8192) + 8192);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size((settings.max_header_bytes * 2).min(u32::MAX as usize) as u32);
    let (done, mut done_rx) = tokio::sync::mpsc::channel::<()>(1);
    let shard = ShardConns {
        builder,
        edge: edge.clone(),
        table: shared.conns.clone(),
        draining: draining.clone(),
        max: settings
            .max_connections
            .unwrap_or_else(default_max_connections),
        idle_timeout: settings.idle_timeout,
        phase: tokio::sync::watch::channel(Phase::Serving).0,
        done,
        tls: shared.tls.as_ref().map(|t| t.acceptor()),
    };
    let mut backoff = svc_host::accept::Backoff::new("http");
    // One descriptor held back: out of descriptors, it is closed to accept
    // (and answer 503 to) a connection waiting in the kernel's queue.
    let mut spare = open_spare();
    tokio::pin!(shutdown);
    // The listeners, each with whether it speaks TLS.
    let listeners: Vec<(&TcpListener, bool)> = std::iter::once((&http, http_tls))
        .chain(https.as_ref().map(|l| (l, true)))
        .collect();
    let admit = |s, tls: bool| {
        if tls {
            shard.admit_tls(s)
        } else {
            shard.admit(s)
        }
    };
    loop {
        let (accepted, (from, tls)) = tokio::select! {
            _ = &mut shutdown => break,
            a = http.accept() => (a, listeners[0]),
            a = accept_on(https.as_ref()) => (a, listeners[listeners.len() - 1]),
        };
        match accepted {
            Ok((stream, _peer)) => {
                backoff.ok();
                admit(stream, tls);
            }
            Err(e) => {
                if draining.load(Ordering::SeqCst) || e.raw_os_error() == Some(libc::EINVAL) {
                    break; // another shard stopped the shared listener
                }
                if svc_host::accept::out_of_descriptors(&e) && !shard.table.evict_oldest_idle() {
                    // Nothing idle to close: shed the oldest waiting
                    // connection with a 503 (cleartext; a TLS client is
                    // just closed) rather than leave the queue full of
                    // clients that time out.
                    if let Some(f) = spare.take() {
                        drop(f);
                        if let Some(s) = accept_now(from) {
                            if !tls {
                                refuse(s);
                            }
                        }
                        spare = open_spare();
                    }
                }
                let wait = backoff.failed(&e);
                tokio::select! {
                    _ = &mut shutdown => break,
                    _ = tokio::time::sleep(wait) => {}
                }
            }
        }
    }
    // What already reached the listeners' queues is served; then the
    // listeners stop (for every shard: they share them), so a client told
    // `connection: close` below reconnects to a refusal rather than into a
    // queue nobody reads. Only then does the drain start.
    for &(l, tls) in &listeners {
        while let Some(s) = accept_now(l) {
            admit(s, tls);
        }
        stop_listening(l);
    }
    drop(listeners);
    drop(http);
    drop(https);
    drop(spare);
    draining.store(true, Ordering::SeqCst);
    let drain_ends = tokio::time::Instant::now() + settings.grace;
    tracing::info!(
        in_flight = edge.in_flight.load(Ordering::Relaxed),
        connections = shard.table.len(),
        "draining"
    );
    shard.phase.send_replace(Phase::Draining);
    let ShardConns { phase, done, .. } = shard;
    drop(done);
    if tokio::time::timeout_at(drain_ends, done_rx.recv())
        .await
        .is_err()
    {
        tracing::warn!(
            in_flight = edge.in_flight.load(Ordering::Relaxed),
            "grace period over; closing remaining connections"
        );
        phase.send_replace(Phase::Abort);
        // Each drops its connection the next time it runs.
        let _ = tokio::time::timeout(std::time::Duration::from_millis(500), done_rx.recv()).await;
    }
    if let Some(t) = admin_task {
        // The admin port says "draining" until every shard has drained,
        // not just this one.
        while edge.in_flight.load(Ordering::Relaxed) > 0 && tokio::time::Instant::now() < drain_ends
        {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        t.abort();
    }
    Ok(())
}

/// With etcd: registers this terminator's admin URL for its peers'
/// consoles, follows theirs, and starts the fleet sampler (idle unless
/// the console is watched). Dropping the result stops all three.
fn fleet(
    settings: &Settings,
    o: discovery::EtcdOptions,
    admin: std::net::SocketAddr,
    shared: &Shared,
    edge: &Edge,
) -> (discovery::Registrar, discovery::Watcher, AbortOnDrop) {
    let url = settings.advertise.advertised_url(admin);
    let f = crate::console::fleet::Fleet::new(url.clone());
    shared.console.set_fleet(f.clone());
    let instance = discovery::registration::instance_id();
    let reg = discovery::Registration {
        service: "terminator".into(),
        instance: instance.clone(),
        bus: String::new(),
        events: None,
        admin: url,
        routes: Vec::new(),
        version: env!("CARGO_PKG_VERSION").into(),
        started_at: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        draining: false,
        curve_key: None,
    };
    let key = format!("{}terminator/{instance}", discovery::TERMINATORS);
    let registrar = discovery::Registrar::start_at(o.clone(), key, reg);
    let w = f.clone();
    let watcher = discovery::Watcher::start(o, discovery::TERMINATORS.into(), move |snap| {
        w.registrations(snap)
    });
    let bearer = settings.admin_token.as_ref().map(|t| t.bearer());
    let task = tokio::spawn(f.run(edge.metrics.clone(), bearer));
    (registrar, watcher, AbortOnDrop(task))
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The next connection on `l`; never, without one.
async fn accept_on(
    l: Option<&TcpListener>,
) -> std::io::Result<(tokio::net::TcpStream, std::net::SocketAddr)> {
    match l {
        Some(l) => l.accept().await,
        None => std::future::pending().await,
    }
}

struct AdminPages {
    edge: Arc<Edge>,
    draining: Arc<AtomicBool>,
    shards: Arc<parking_lot::Mutex<Vec<Arc<Routes>>>>,
    console: Arc<crate::console::Console>,
}

impl svc_host::admin::Admin for AdminPages {
    fn ready(&self) -> (bool, String) {
        let (status, body) = readiness(&self.edge, &self.draining, &self.shards.lock());
        (status == StatusCode::OK, body.to_string())
    }

    fn page(&self, path: &str) -> Option<svc_host::admin::Page> {
        match path {
            "/policy" => Some((StatusCode::OK, self.edge.policies.page().to_string())),
            "/ghost" => Some((StatusCode::OK, self.edge.ghosts.page().to_string())),
            _ => None,
        }
    }

    fn reply(&self, path: &str, query: Option<&str>) -> Option<svc_host::admin::Reply> {
        self.console.reply(&self.edge, &self.shards, path, query)
    }
}

fn readiness(
    edge: &Edge,
    draining: &AtomicBool,
    shards: &[Arc<Routes>],
) -> (StatusCode, serde_json::Value) {
    {
        {
            // Ready once every route's service has been reached at least
            // once: before that, requests would wait out the first-connect
            // window or fail. A service that goes down later does not make
            // the terminator unready (its other routes still work; the
            // route answers 503 at once).
            let mut all_reached = true;
            let table = edge.routes.current();
            let services: serde_json::Map<String, serde_json::Value> = table
                .targets()
                .iter()
                .map(|t| {
                    let insts = t.client.instances();
                    let live = insts.iter().filter(|i| i.is_connected()).count();
                    all_reached &= insts.iter().any(|i| i.ever_connected());
                    // Calls to this route waiting in every shard.
                    let pending: usize = shards
                        .iter()
                        .filter_map(|r| {
                            r.current()
                                .targets()
                                .iter()
                                .find(|x| x.prefix == t.prefix)
                                .map(|x| x.client.pending_len())
                        })
                        .sum();
                    (
                        t.prefix.clone() + "/",
                        serde_json::json!({"service": t.service.as_str(), "instances": insts.len(), "connected": live, "pending": pending}),
                    )
                })
                .collect();
            if draining.load(Ordering::SeqCst) {
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    serde_json::json!({"status": "draining", "routes": services}),
                )
            } else if !all_reached {
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    serde_json::json!({"status": "connecting", "routes": services}),
                )
            } else {
                (
                    StatusCode::OK,
                    serde_json::json!({"status": "ready", "routes": services}),
                )
            }
        }
    }
}
