//! The aggregator: the web-facing bus service (`/` routes to it by
//! convention). For now it serves `/echo`; the key-value fan-out lands with
//! the full-chain issue.
//!
//! # Layout
//!
//! - [`echo`]: the `/echo` handler.
//! - [`run`]: binds the bus service and the admin listener, drains on stop.

pub mod echo;

use bus::{Reply, Request, Service, ServiceOptions};
use bytes::Bytes;
use clap::Parser;
use http::StatusCode;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use std::future::Future;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::time::Instant;

pub const DEFAULT_BUS: &str = "tcp://127.0.0.1:8100";
pub const DEFAULT_ADMIN: &str = "127.0.0.1:8101";
pub const DEFAULT_GRACE: Duration = Duration::from_secs(30);

/// Switchboard aggregator: composes responses for the web.
#[derive(Parser, Debug, Clone)]
#[command(name = "aggregator", version, about)]
pub struct Args {
    /// Bus endpoint to bind (port 0 picks a free one)
    #[arg(long, env = "SWITCHBOARD_BUS", default_value = DEFAULT_BUS)]
    pub bus: String,
    /// Admin listen address (/healthz, /readyz)
    #[arg(long, env = "SWITCHBOARD_ADMIN", default_value = DEFAULT_ADMIN)]
    pub admin: std::net::SocketAddr,
    /// Requests handled at once before new ones get 503
    #[arg(long, env = "SWITCHBOARD_MAX_IN_FLIGHT", default_value_t = bus::service::DEFAULT_MAX_IN_FLIGHT)]
    pub max_in_flight: usize,
}

/// The bus handler: routes on the HTTP path the terminator forwarded.
pub async fn handle(req: Request, deadline: Instant) -> Reply {
    let path = req.path.split('?').next().unwrap_or("");
    match (req.method.as_str(), path) {
        ("http", "/echo") => echo::echo(req, deadline).await,
        ("http", _) => json_reply(StatusCode::NOT_FOUND, r#"{"error":"not_found"}"#),
        _ => {
            let mut r = json_reply(StatusCode::NOT_FOUND, r#"{"error":"unknown_method"}"#);
            r.status = 404;
            r
        }
    }
}

pub fn json_reply(status: StatusCode, body: &'static str) -> Reply {
    let mut r = Reply::with_body(status.as_u16(), Bytes::from_static(body.as_bytes()));
    r.headers.push((
        "content-type".into(),
        Bytes::from_static(b"application/json"),
    ));
    r
}

/// Serves until `shutdown`, then drains for at most `grace`.
pub async fn run(
    args: Args,
    admin: TcpListener,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
    on_bound: impl FnOnce(&str),
) -> Result<(), bus::SetupError> {
    let mut opts = ServiceOptions::new("aggregator", args.bus.clone());
    opts.max_in_flight = args.max_in_flight;
    let svc = Service::bind(opts, handle)?;
    on_bound(svc.endpoint());
    let draining = Arc::new(AtomicBool::new(false));
    let admin_task = tokio::spawn(serve_admin(admin, draining.clone()));
    shutdown.await;
    draining.store(true, Ordering::SeqCst);
    svc.shutdown(grace).await;
    admin_task.abort();
    Ok(())
}

async fn serve_admin(listener: TcpListener, draining: Arc<AtomicBool>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let draining = draining.clone();
        let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
            let (status, body) = match req.uri().path() {
                "/healthz" => (StatusCode::OK, "{\"status\":\"ok\"}"),
                "/readyz" if draining.load(Ordering::SeqCst) => {
                    (StatusCode::SERVICE_UNAVAILABLE, "{\"status\":\"draining\"}")
                }
                "/readyz" => (StatusCode::OK, "{\"status\":\"ready\"}"),
                _ => (StatusCode::NOT_FOUND, "{\"error\":\"not_found\"}"),
            };
            let mut r = http::Response::new(Full::new(Bytes::from_static(body.as_bytes())));
            *r.status_mut() = status;
            async move { Ok::<_, std::convert::Infallible>(r) }
        });
        tokio::spawn(async move {
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

pub fn main() -> ExitCode {
    let args = Args::parse();
    if let Err(e) = bus::check_endpoint(&args.bus) {
        eprintln!("aggregator: --bus: {e}");
        return ExitCode::from(2);
    }
    let filter = tracing_subscriber::EnvFilter::try_from_env("SWITCHBOARD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("aggregator: cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async move {
        let admin = match TcpListener::bind(args.admin).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("aggregator: cannot listen on {} (admin): {e}", args.admin);
                return ExitCode::FAILURE;
            }
        };
        let admin_addr = admin
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        let r = run(args, admin, bus::signal::shutdown(), DEFAULT_GRACE, |ep| {
            println!("aggregator listening bus={ep} admin=http://{admin_addr}");
        })
        .await;
        match r {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("aggregator: {e}");
                ExitCode::FAILURE
            }
        }
    })
}
