//! backend-svc: the `backend` bus service, a durable key-value store.
//!
//! # Layout
//!
//! The methods and body encodings it serves are in the `kv-proto` crate,
//! shared with its callers.
//!
//! - [`store`]: fjall behind a group-committing writer thread.
//! - [`handler`]: bus requests → store operations → replies.
//! - [`run`]: binds the bus service, the events publisher and the admin
//!   listener; drains on stop.

pub mod handler;
pub mod store;

use kv_proto as proto;

use clap::Parser;
use std::future::Future;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

pub const DEFAULT_BUS: &str = kv_proto::DEFAULT_BUS;
pub const DEFAULT_ADMIN: &str = "127.0.0.1:8201";
pub const DEFAULT_EVENTS: &str = kv_proto::DEFAULT_EVENTS;
pub const DEFAULT_DATA_DIR: &str = "./data/backend";
/// Matches the terminator's default body limit: any value a client can PUT
/// through the edge can be stored.
pub const DEFAULT_MAX_VALUE: usize = 1024 * 1024;
pub const DEFAULT_GRACE: Duration = Duration::from_secs(30);

/// Switchboard backend-svc: the durable key-value service `backend`.
//
// The flags as given (clap's part: --help, env, unknown flags); values stay
// strings until `Args::from_flags` parses them all at once, so that every
// bad value is reported, not just the first.
#[derive(Parser, Debug, Clone, Default)]
#[command(name = "backend-svc", version, about)]
pub struct Flags {
    /// Bus endpoint to bind (port 0 picks a free one) [default: tcp://127.0.0.1:8200]
    #[arg(long, env = "SWITCHBOARD_BUS")]
    pub bus: Option<String>,
    /// Endpoint to publish kv.changed events on (PUB; port 0 picks one)
    /// [default: tcp://127.0.0.1:8202]
    #[arg(long, env = "SWITCHBOARD_EVENTS")]
    pub events: Option<String>,
    /// Admin listen address (/healthz, /readyz, /stats, /stats/histograms)
    /// [default: 127.0.0.1:8201]
    #[arg(long, env = "SWITCHBOARD_ADMIN")]
    pub admin: Option<String>,
    /// Directory holding the store (created if missing) [default: ./data/backend]
    #[arg(long, env = "SWITCHBOARD_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Largest value accepted, in bytes [default: 1048576]
    #[arg(long, env = "SWITCHBOARD_MAX_VALUE")]
    pub max_value: Option<String>,
    /// Writes queued for the disk before new ones get 503 [default: 4096]
    #[arg(long, env = "SWITCHBOARD_WRITE_QUEUE")]
    pub write_queue: Option<String>,
    /// Requests handled at once before new ones get 503 [default: 4096]
    #[arg(long, env = "SWITCHBOARD_MAX_IN_FLIGHT")]
    pub max_in_flight: Option<String>,
    /// Time in-flight requests get to finish on SIGTERM [default: 30s]
    #[arg(long, env = "SWITCHBOARD_GRACE")]
    pub grace: Option<String>,

    /// --etcd*, --advertise, --service-version, metrics, security,
    /// --threads, --admin-token: the flags every service takes.
    #[command(flatten)]
    pub common: discovery::ServiceFlags,
}

/// backend-svc's settings, parsed from [`Flags`].
#[derive(Debug, Clone)]
pub struct Args {
    pub bus: String,
    pub events: String,
    pub admin: std::net::SocketAddr,
    pub data_dir: PathBuf,
    pub max_value: usize,
    pub write_queue: usize,
    pub max_in_flight: usize,
    pub grace: Duration,
    /// The flags every service takes (etcd, version, metrics, security,
    /// runtime, admin token).
    pub common: discovery::ServiceFlags,
    /// Values that did not parse (their fields keep the default).
    unparsed: Vec<String>,
}

impl Args {
    /// The command line and environment; `--help`, `--version` and unknown
    /// flags are clap's. Bad values are kept for [`Args::problems`].
    pub fn parse() -> Args {
        Args::from_flags(Flags::parse())
    }

    pub fn parse_from<I, T>(args: I) -> Args
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        Args::from_flags(Flags::parse_from(args))
    }

    pub fn from_flags(f: Flags) -> Args {
        use svc_host::flags::{addr, count, duration, Parsed};
        let mut p = Parsed::default();
        Args {
            bus: f.bus.unwrap_or_else(|| DEFAULT_BUS.into()),
            events: f.events.unwrap_or_else(|| DEFAULT_EVENTS.into()),
            admin: p.get(
                "--admin",
                f.admin.as_deref(),
                DEFAULT_ADMIN.parse().expect("valid default"),
                addr,
            ),
            data_dir: f.data_dir.unwrap_or_else(|| DEFAULT_DATA_DIR.into()),
            max_value: p.get(
                "--max-value",
                f.max_value.as_deref(),
                DEFAULT_MAX_VALUE,
                count,
            ),
            write_queue: p.get(
                "--write-queue",
                f.write_queue.as_deref(),
                store::DEFAULT_WRITE_QUEUE,
                count,
            ),
            max_in_flight: p.get(
                "--max-in-flight",
                f.max_in_flight.as_deref(),
                bus::service::DEFAULT_MAX_IN_FLIGHT,
                count,
            ),
            grace: p.get("--grace", f.grace.as_deref(), DEFAULT_GRACE, duration),
            common: f.common,
            unparsed: p.problems,
        }
    }

    /// Every problem with the arguments, not just the first.
    pub fn problems(&self) -> Vec<String> {
        let mut p = self.unparsed.clone();
        if let Err(e) = bus::check_endpoint(&self.bus) {
            p.push(format!("--bus: {e}"));
        }
        if let Err(e) = bus::check_endpoint(&self.events) {
            p.push(format!("--events: {e}"));
        }
        p.extend(self.common.problems(env!("CARGO_PKG_VERSION")));
        p
    }
}

#[cfg(test)]
mod args_tests;

/// What `run` bound, for the startup line and for tests.
pub struct Bound<'a> {
    pub bus: &'a str,
    pub events: &'a str,
}

/// Opens the store, serves until `shutdown`, then drains for at most `grace`
/// and closes the store after the last queued write.
pub async fn run(
    args: Args,
    admin: TcpListener,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
    on_bound: impl FnOnce(Bound<'_>),
) -> Result<(), RunError> {
    // Checked by `problems` before `run`; a test that skips it gets NULL.
    let security = args.common.security.settings().unwrap_or_default();
    security.log("backend-svc", true);
    if let Err(e) = security.watch() {
        tracing::warn!(error = %e, "--curve-authorized will not be reloaded: no watcher");
    }
    let tuning = bus::Tuning {
        mechanism: security.server(),
        ..bus::Tuning::default()
    };
    let publisher = Arc::new(bus::Publisher::bind_with(
        &args.events,
        Some(bus::events::DEFAULT_HEARTBEAT),
        &tuning,
    )?);
    let p = publisher.clone();
    let on_changed: store::OnChanged = Box::new(move |key| {
        let body = serde_json::json!({ "key": String::from_utf8_lossy(key) }).to_string();
        if let Err(e) = p.publish(proto::CHANGED_TOPIC, body.into()) {
            tracing::warn!(error = %e, "kv.changed not published");
        }
    });
    let store = Arc::new(store::Store::open(
        &args.data_dir,
        args.write_queue,
        on_changed,
    )?);
    let kv = Arc::new(handler::Kv::new(store.clone(), args.max_value));
    let mut opts = bus::ServiceOptions::new(proto::SERVICE, args.bus.clone());
    opts.max_in_flight = args.max_in_flight;
    opts.tuning = tuning;
    let h = kv.clone();
    let svc = bus::Service::bind(opts, move |req, deadline| {
        let h = h.clone();
        async move { h.handle(req, deadline).await }
    })?;
    on_bound(Bound {
        bus: svc.endpoint(),
        events: publisher.endpoint(),
    });
    let registrar = args.common.register(discovery::service_flags::Published {
        service: proto::SERVICE,
        bus: svc.endpoint(),
        events: Some(publisher.endpoint()),
        admin: admin.local_addr().ok(),
        // Reached through the aggregator, never routed from HTTP.
        routes: Vec::new(),
        curve_key: security.public_key(),
        crate_version: env!("CARGO_PKG_VERSION"),
    });
    let draining = Arc::new(AtomicBool::new(false));
    let admin_task = tokio::spawn(svc_host::admin::serve_with(
        admin,
        Arc::new(AdminPages {
            svc: svc.monitor(),
            store: store.clone(),
            draining: draining.clone(),
        }),
        args.common.admin_token.token().ok().flatten(),
    ));
    shutdown.await;
    draining.store(true, Ordering::SeqCst);
    discovery::service_flags::leave(registrar).await;
    svc.shutdown(grace).await;
    admin_task.abort();
    let _ = admin_task.await;
    drop(kv);
    // The writer finishes what is queued, then fsyncs once more (whoever
    // drops the last handle does the same; this makes it happen here).
    if let Ok(store) = Arc::try_unwrap(store) {
        store.close();
    }
    Ok(())
}

struct AdminPages {
    svc: bus::ServiceMonitor,
    store: Arc<store::Store>,
    draining: Arc<AtomicBool>,
}

impl svc_host::admin::Admin for AdminPages {
    fn ready(&self) -> (bool, String) {
        if self.draining.load(Ordering::SeqCst) {
            (false, r#"{"status":"draining"}"#.into())
        } else {
            (true, r#"{"status":"ready"}"#.into())
        }
    }

    fn page(&self, path: &str) -> Option<svc_host::admin::Page> {
        if path != "/stats" {
            return None;
        }
        let s = self.svc.stats();
        let st = self.store.stats();
        let v = serde_json::json!({
            "service": s.to_json(),
            "store": {
                "writes": st.writes.load(Ordering::Relaxed),
                "batches": st.batches.load(Ordering::Relaxed),
                "expired_writes": st.expired_writes.load(Ordering::Relaxed),
                "failed_writes": st.failed_writes.load(Ordering::Relaxed),
            },
        });
        Some((http::StatusCode::OK, v.to_string()))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Bus(#[from] bus::SetupError),
    #[error(transparent)]
    Store(#[from] store::StoreError),
}

pub fn main() -> ExitCode {
    let args = Args::parse();
    let metrics = args.common.metrics.settings().ok();
    let (problems, layout, admin) = (args.problems(), args.common.runtime.layout(), args.admin);
    svc_host::process::service_main(
        "backend-svc",
        problems,
        metrics.as_ref(),
        layout,
        admin,
        move |listener, at| {
            let args = args.clone();
            let (grace, data_dir) = (args.grace, args.data_dir.display().to_string());
            run(
                args,
                listener,
                svc_host::signal::shutdown(),
                grace,
                move |b| {
                    println!(
                        "backend-svc listening bus={} events={} admin=http://{at} data={data_dir}",
                        b.bus, b.events
                    );
                },
            )
        },
    )
}
