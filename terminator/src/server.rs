//! Accept loops for the HTTP and admin listeners, and graceful drain.

use crate::config::Settings;
use crate::metrics::EdgeMetrics;
use crate::proxy::{self, Edge};
use crate::registry;
use crate::routes::Routes;
use crate::upstream::Upstreams;
use http::{Request, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
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
}

impl Shared {
    pub fn new(settings: &Settings) -> Shared {
        Shared {
            metrics: Default::default(),
            upstreams: Upstreams::new(settings.upstream_policy()),
            in_flight: Default::default(),
            draining: Default::default(),
            shards: Default::default(),
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
    let edge = Arc::new(Edge {
        routes,
        max_body: settings.max_body,
        max_header_bytes: settings.max_header_bytes,
        max_in_flight: settings.max_in_flight,
        in_flight: shared.in_flight.clone(),
        metrics,
    });
    let draining = shared.draining.clone();
    let admin_task = admin.map(|admin| {
        // Reported once per process: the shards share these numbers.
        telemetry::register(&edge);
        tokio::spawn(svc_host::admin::serve(
            admin,
            Arc::new(AdminPages {
                edge: edge.clone(),
                draining: draining.clone(),
                shards: shared.shards.clone(),
            }),
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
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            accepted = http.accept() => {
                let (stream, _peer) = match accepted {
                    Ok(x) => x,
                    Err(e) => {
                        // EMFILE and friends: back off briefly, keep serving.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let open = OpenConnection::new(&edge.metrics);
                let edge = edge.clone();
                let svc = service_fn(move |req: Request<Incoming>| {
                    let edge = edge.clone();
                    async move { proxy::handle(&edge, req).await }
                });
                let conn = builder.serve_connection(TokioIo::new(stream), svc).into_owned();
                let conn = graceful.watch(conn);
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(error = %e, "connection ended with error");
                    }
                    drop(open);
                });
            }
        }
    }
    draining.store(true, Ordering::SeqCst);
    let drain_ends = tokio::time::Instant::now() + settings.grace;
    drop(http);
    tracing::info!(
        in_flight = edge.in_flight.load(Ordering::Relaxed),
        "draining"
    );
    if tokio::time::timeout(settings.grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            in_flight = edge.in_flight.load(Ordering::Relaxed),
            "grace period over; closing remaining connections"
        );
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

struct AdminPages {
    edge: Arc<Edge>,
    draining: Arc<AtomicBool>,
    shards: Arc<parking_lot::Mutex<Vec<Arc<Routes>>>>,
}

impl svc_host::admin::Admin for AdminPages {
    fn ready(&self) -> (bool, String) {
        let (status, body) = readiness(&self.edge, &self.draining, &self.shards.lock());
        (status == StatusCode::OK, body.to_string())
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
