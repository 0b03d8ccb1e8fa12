//! The aggregator: the web-facing bus service (`/` routes to it by
//! convention). It composes backend calls into HTTP answers.
//!
//! # Layout
//!
//! - [`echo`]: `/echo`, the one-hop path.
//! - [`kv`]: `/kv/{key}` and `/kv?keys=`, the full chain to backend-svc.
//! - [`cache`]: the optional read cache, invalidated by `kv.changed` events.
//! - [`run`]: binds the bus service and the admin listener, drains on stop.

pub mod cache;
pub mod echo;
pub mod kv;

use bus::{Client, ClientOptions, Problem, Reply, Request, Service, ServiceOptions};
use clap::Parser;
use http::StatusCode;
use std::future::Future;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::time::Instant;

pub const DEFAULT_BUS: &str = "tcp://127.0.0.1:8100";
pub const DEFAULT_ADMIN: &str = "127.0.0.1:8101";
pub const DEFAULT_BACKEND: &str = kv_proto::DEFAULT_BUS;
pub const DEFAULT_BACKEND_EVENTS: &str = kv_proto::DEFAULT_EVENTS;
pub const DEFAULT_GRACE: Duration = Duration::from_secs(30);

/// Switchboard aggregator: composes responses for the web.
//
// The flags as given (clap's part: --help, env, unknown flags); values stay
// strings until `Args::from_flags` parses them all at once, so that every
// bad value is reported, not just the first.
#[derive(Parser, Debug, Clone, Default)]
#[command(name = "aggregator", version, about)]
pub struct Flags {
    /// Bus endpoint to bind (port 0 picks a free one) [default: tcp://127.0.0.1:8100]
    #[arg(long, env = "SWITCHBOARD_BUS")]
    pub bus: Option<String>,
    /// Admin listen address (/healthz, /readyz, /stats, /stats/histograms)
    /// [default: 127.0.0.1:8101]
    #[arg(long, env = "SWITCHBOARD_ADMIN")]
    pub admin: Option<String>,
    /// Requests handled at once before new ones get 503 [default: 4096]
    #[arg(long, env = "SWITCHBOARD_MAX_IN_FLIGHT")]
    pub max_in_flight: Option<String>,
    /// backend-svc bus endpoints, comma-separated [default: tcp://127.0.0.1:8200]
    #[arg(long, env = "SWITCHBOARD_BACKEND", value_delimiter = ',')]
    pub backend: Vec<String>,
    /// backend-svc event endpoints (kv.changed), comma-separated; used by the
    /// cache [default: tcp://127.0.0.1:8202]
    #[arg(long, env = "SWITCHBOARD_BACKEND_EVENTS", value_delimiter = ',')]
    pub backend_events: Vec<String>,
    /// Turn on the read cache (invalidated by kv.changed events)
    #[arg(long, env = "SWITCHBOARD_CACHE")]
    pub cache: bool,
    /// Longest a cached value is served without being re-read [default: 10s]
    #[arg(long, env = "SWITCHBOARD_CACHE_TTL")]
    pub cache_ttl: Option<String>,
    /// Most values the cache holds [default: 100000]
    #[arg(long, env = "SWITCHBOARD_CACHE_ENTRIES")]
    pub cache_entries: Option<String>,
    /// Keys per backend call when a multi-get fans out [default: 16]
    #[arg(long, env = "SWITCHBOARD_MULTI_CHUNK")]
    pub multi_chunk: Option<String>,
    /// Time in-flight requests get to finish on SIGTERM [default: 30s]
    #[arg(long, env = "SWITCHBOARD_GRACE")]
    pub grace: Option<String>,
    /// Traffic policy for the backend calls, JSON (docs/operations.md):
    /// weights by version and pins; re-read on change and on SIGHUP.
    /// With --etcd, /switchboard/policy/backend wins over it
    #[arg(long = "policy", value_name = "FILE", env = "SWITCHBOARD_POLICY")]
    pub policy: Option<std::path::PathBuf>,

    /// --etcd*, --advertise, --service-version, metrics, security,
    /// --threads, --admin-token: the flags every service takes.
    #[command(flatten)]
    pub common: discovery::ServiceFlags,
}

/// The aggregator's settings, parsed from [`Flags`].
#[derive(Debug, Clone)]
pub struct Args {
    pub bus: String,
    pub admin: std::net::SocketAddr,
    pub max_in_flight: usize,
    pub backend: Vec<String>,
    pub backend_events: Vec<String>,
    pub cache: bool,
    pub cache_ttl: Duration,
    pub cache_entries: usize,
    pub multi_chunk: usize,
    pub grace: Duration,
    /// `--policy`: the backend calls' traffic policy file.
    pub policy: Option<std::path::PathBuf>,
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
        let or = |v: Vec<String>, d: &str| if v.is_empty() { vec![d.to_string()] } else { v };
        Args {
            bus: f.bus.unwrap_or_else(|| DEFAULT_BUS.into()),
            admin: p.get(
                "--admin",
                f.admin.as_deref(),
                DEFAULT_ADMIN.parse().expect("valid default"),
                addr,
            ),
            max_in_flight: p.get(
                "--max-in-flight",
                f.max_in_flight.as_deref(),
                bus::service::DEFAULT_MAX_IN_FLIGHT,
                count,
            ),
            backend: or(f.backend, DEFAULT_BACKEND),
            backend_events: or(f.backend_events, DEFAULT_BACKEND_EVENTS),
            cache: f.cache,
            cache_ttl: p.get(
                "--cache-ttl",
                f.cache_ttl.as_deref(),
                cache::DEFAULT_TTL,
                duration,
            ),
            cache_entries: p.get(
                "--cache-entries",
                f.cache_entries.as_deref(),
                cache::DEFAULT_MAX_ENTRIES,
                count,
            ),
            multi_chunk: p.get(
                "--multi-chunk",
                f.multi_chunk.as_deref(),
                kv::DEFAULT_CHUNK,
                count,
            ),
            grace: p.get("--grace", f.grace.as_deref(), DEFAULT_GRACE, duration),
            policy: f.policy,
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
        for (flag, eps) in [
            ("--backend", &self.backend),
            ("--backend-events", &self.backend_events),
        ] {
            for ep in eps {
                if let Err(e) = bus::check_endpoint(ep) {
                    p.push(format!("{flag}: {e}"));
                }
            }
        }
        if let Some(f) = &self.policy {
            if let Err(e) = traffic::policy::read(f) {
                p.extend(e.into_iter().map(|e| format!("--policy: {e}")));
            }
        }
        p.extend(self.common.problems(env!("CARGO_PKG_VERSION")));
        p
    }
}

#[cfg(test)]
mod args_tests;

fn opts_tuning(mechanism: bus::Mechanism) -> bus::Tuning {
    bus::Tuning {
        mechanism,
        ..bus::Tuning::default()
    }
}

/// The aggregator's state, shared by every request.
pub struct App {
    pub kv: kv::Kv,
    /// Registered with telemetry (which holds it weakly) for as long as
    /// the app lives.
    _metrics: Arc<Metrics>,
}

/// The aggregator's own metrics beside the bus's: the backend's calls by
/// version and the ghost copies' verdicts.
struct Metrics(kv::Backend);

impl telemetry::Source for Metrics {
    fn visit(&self, v: &mut dyn telemetry::Visitor) {
        self.0.versions.visit(v);
        self.0.ghosts.visit(v);
    }
}

impl App {
    pub fn new(args: &Args) -> Result<App, bus::SetupError> {
        // Checked by `problems` before `run`; a test that skips it gets NULL.
        let security = args.common.security.settings().unwrap_or_default();
        let mut opts = ClientOptions::new(kv_proto::SERVICE);
        opts.endpoints = args.backend.clone();
        opts.tuning.mechanism = security.client();
        let client = Arc::new(Client::connect(opts)?);
        let backend = kv::Backend {
            client,
            versions: Default::default(),
            ghosts: Default::default(),
        };
        let metrics = Arc::new(Metrics(backend.clone()));
        telemetry::register(&metrics);
        let cache = if args.cache {
            Some(cache::Cache::new(
                &args.backend_events,
                &opts_tuning(security.client()),
                args.cache_ttl,
                args.cache_entries,
            )?)
        } else {
            None
        };
        Ok(App {
            kv: kv::Kv {
                backend,
                cache,
                chunk: args.multi_chunk,
                policies: Default::default(),
            },
            _metrics: metrics,
        })
    }

    /// The bus handler: routes on the HTTP path the terminator forwarded.
    pub async fn handle(&self, req: Request, deadline: Instant) -> Reply {
        if req.method.as_str() != "http" {
            // A reply, not an error frame: the caller sees this 404 as is.
            return Problem::new(
                404,
                "unknown_method",
                format!(
                    "the aggregator serves only the `http` method, not {:?}",
                    req.method.as_str()
                ),
            )
            .into_reply(req.request_id.as_str());
        }
        let full = req.path.clone();
        let path = full.split('?').next().unwrap_or("");
        if path == "/echo" {
            echo::echo(req, deadline).await
        } else if path == "/kv" || path.starts_with("/kv/") {
            self.kv.handle(&req, &full, deadline).await
        } else {
            Problem::new(404, "not_found", "no such page: try /echo or /kv/{key}")
                .into_reply(req.request_id.as_str())
        }
    }
}

/// Serves until `shutdown`, then drains for at most `grace`.
pub async fn run(
    args: Args,
    admin: TcpListener,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
    on_bound: impl FnOnce(&str),
) -> Result<(), bus::SetupError> {
    let app = Arc::new(App::new(&args)?);
    let security = args.common.security.settings().unwrap_or_default();
    security.log("aggregator", true);
    if let Err(e) = security.watch() {
        tracing::warn!(error = %e, "--curve-authorized will not be reloaded: no watcher");
    }
    let mut opts = ServiceOptions::new("aggregator", args.bus.clone());
    opts.max_in_flight = args.max_in_flight;
    opts.tuning.mechanism = security.server();
    let a = app.clone();
    let svc = Service::bind(opts, move |req, deadline| {
        let a = a.clone();
        async move { a.handle(req, deadline).await }
    })?;
    on_bound(svc.endpoint());
    if let Some(f) = &args.policy {
        // Checked by `problems`; a file that went bad since is refused
        // here the same way, and the calls go unweighted.
        if let Err(e) = app.kv.policies.follow(f.clone()) {
            tracing::warn!(problems = %e.join("; "), "traffic policy refused");
        }
    }
    let etcd = args.common.discovery.options().ok().flatten();
    let _backend_watch = etcd.clone().map(|o| watch_backend(o, app.clone(), &args));
    let _policy_watch = etcd.map(|o| {
        let policies = app.kv.policies.clone();
        discovery::Watcher::start_documents(o, discovery::POLICY_PREFIX.into(), move |docs| {
            policies.apply_etcd(docs)
        })
    });
    let registrar = args.common.register(discovery::service_flags::Published {
        service: "aggregator",
        bus: svc.endpoint(),
        events: None,
        admin: admin.local_addr().ok(),
        // The convention: the aggregator is the web-facing service.
        routes: vec!["/".into()],
        curve_key: security.public_key(),
        crate_version: env!("CARGO_PKG_VERSION"),
    });
    let draining = Arc::new(AtomicBool::new(false));
    let admin_task = tokio::spawn(svc_host::admin::serve_with(
        admin,
        Arc::new(AdminPages {
            app: app.clone(),
            svc: svc.monitor(),
            draining: draining.clone(),
        }),
        args.common.admin_token.token().ok().flatten(),
    ));
    shutdown.await;
    draining.store(true, Ordering::SeqCst);
    discovery::service_flags::leave(registrar).await;
    svc.shutdown(grace).await;
    admin_task.abort();
    Ok(())
}

/// Follows the `backend` registrations: the kv client and the cache's event
/// subscriber use the registered instances, or the static `--backend` /
/// `--backend-events` endpoints while none is registered.
fn watch_backend(o: discovery::EtcdOptions, app: Arc<App>, args: &Args) -> discovery::Watcher {
    let static_bus = args.backend.clone();
    let static_events = args.backend_events.clone();
    let prefix = discovery::Registration::service_prefix(kv_proto::SERVICE);
    let kv = app.kv.backend.client.clone();
    // An instance whose key vanished stays while its connection is up: its
    // lease may have expired only because etcd was away (removal grace).
    let live = move |r: &discovery::Registration| {
        kv.instances()
            .iter()
            .any(|i| i.endpoint() == r.bus && i.is_connected())
    };
    discovery::Watcher::start_with_liveness(o, prefix, live, move |snap| {
        // With each endpoint, the instance's registered CURVE key, if any
        // (its events come from the same process, under the same key).
        type Keyed = Vec<(String, Option<bus::curve::PublicKey>)>;
        let key = |ep: &str, r: &discovery::Registration| {
            svc_host::security::registered_key(ep, r.curve_key.as_deref())
        };
        let (bus_keyed, events_keyed): (Keyed, Keyed) = if snap.is_empty() {
            (
                static_bus.iter().map(|e| (e.clone(), None)).collect(),
                static_events.iter().map(|e| (e.clone(), None)).collect(),
            )
        } else {
            (
                snap.values()
                    .map(|r| (r.bus.clone(), key(&r.bus, r)))
                    .collect(),
                snap.values()
                    .filter_map(|r| r.events.as_ref().map(|e| (e.clone(), key(e, r))))
                    .collect(),
            )
        };
        let bus: Vec<String> = bus_keyed.iter().map(|(e, _)| e.clone()).collect();
        tracing::info!(instances = snap.len(), endpoints = ?bus, "backend instances changed");
        if let Err(e) = app.kv.backend.client.set_endpoints_with_keys(&bus_keyed) {
            tracing::warn!(error = %e, "a registered backend endpoint is unusable; ignored");
            let good: Keyed = bus_keyed
                .into_iter()
                .filter(|(e, _)| bus::check_endpoint(e).is_ok())
                .collect();
            let _ = app.kv.backend.client.set_endpoints_with_keys(&good);
        }
        let versions: Vec<(String, Option<String>)> = snap
            .values()
            .map(|r| (r.bus.clone(), Some(r.version.clone())))
            .collect();
        app.kv.backend.client.set_versions(&versions);
        if let Some(c) = &app.kv.cache {
            if let Err(e) = c.set_event_endpoints(&events_keyed) {
                tracing::warn!(error = %e, "a registered events endpoint is unusable");
            }
        }
    })
}

struct AdminPages {
    app: Arc<App>,
    svc: bus::ServiceMonitor,
    draining: Arc<AtomicBool>,
}

impl svc_host::admin::Admin for AdminPages {
    fn ready(&self) -> (bool, String) {
        if self.draining.load(Ordering::SeqCst) {
            return (false, r#"{"status":"draining"}"#.into());
        }
        let insts = self.app.kv.backend.client.instances();
        let backend_connected = insts.iter().filter(|i| i.is_connected()).count();
        let reached = insts.iter().any(|i| i.ever_connected());
        let events_live = self.app.kv.cache.as_ref().map(|c| c.live());
        let status = if reached { "ready" } else { "connecting" };
        let body = serde_json::json!({
            "status": status,
            "backend_connected": backend_connected,
            "cache_events_live": events_live,
        });
        // Ready once the backend has been reached: a backend that goes down
        // later leaves /echo working and /kv answering 503 at once.
        (reached, body.to_string())
    }

    fn page(&self, path: &str) -> Option<svc_host::admin::Page> {
        if path == "/policy" {
            return Some((StatusCode::OK, self.app.kv.policies.page().to_string()));
        }
        if path == "/ghost" {
            let page = self.app.kv.backend.ghosts.page();
            return Some((StatusCode::OK, page.to_string()));
        }
        if path != "/stats" {
            return None;
        }
        let s = self.svc.stats();
        let c = self.app.kv.backend.client.stats();
        let v = serde_json::json!({
            "service": s.to_json(),
            "backend": c.to_json(),
            "cache": self.app.kv.cache.as_ref().map(|c| c.stats()),
        });
        Some((StatusCode::OK, v.to_string()))
    }
}

pub fn main() -> ExitCode {
    let args = Args::parse();
    let metrics = args.common.metrics.settings().ok();
    let (problems, layout, admin) = (args.problems(), args.common.runtime.layout(), args.admin);
    svc_host::process::service_main(
        "aggregator",
        problems,
        metrics.as_ref(),
        layout,
        admin,
        move |listener, at| {
            let args = args.clone();
            let grace = args.grace;
            run(
                args,
                listener,
                svc_host::signal::shutdown(),
                grace,
                move |ep| {
                    println!("aggregator listening bus={ep} admin=http://{at}");
                },
            )
        },
    )
}
