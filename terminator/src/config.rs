//! Settings: `DEFAULT_*` constants, overridden by a TOML file, then by
//! `SWITCHBOARD_*` environment variables, then by flags (highest wins).
//! Every bad value is reported before exit, not just the first.

use clap::Parser;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

pub const DEFAULT_HTTP: &str = "127.0.0.1:8000";
pub const DEFAULT_ADMIN: &str = "127.0.0.1:8001";
/// The convention: everything under `/` goes to the aggregator.
pub const DEFAULT_ROUTE: (&str, &str, &str) = ("/", "aggregator", "tcp://127.0.0.1:8100");
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
pub const DEFAULT_MAX_BODY: usize = 1024 * 1024;
pub const DEFAULT_MAX_HEADER_BYTES: usize = 16 * 1024;
pub const DEFAULT_MAX_IN_FLIGHT: usize = 10_000;
/// Retries: 20% of calls plus 10 a second, over 10 s (Finagle's and
/// Linkerd's defaults).
pub const DEFAULT_RETRY_BUDGET: &str = "0.2,10,10s";

/// How the terminator uses the machine's cores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuntimeKind {
    /// One single-threaded runtime per thread, each accepting HTTP
    /// connections and owning its own bus connections: a request never
    /// leaves the thread that accepted it (the default: it measured
    /// cheaper per request, docs/benchmarks.md).
    PerCore,
    /// One work-stealing runtime with `threads` workers shared by all
    /// connections.
    Shared,
}
/// A client must finish sending its request head within this (slowloris).
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
pub const DEFAULT_GRACE: Duration = Duration::from_secs(30);
/// A connection with no request in progress that sends nothing for this
/// long is closed: from accept to the first byte, and between requests.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(10);

/// One entry of the route table.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// Path prefix, matched on whole segments: `/api` matches `/api` and
    /// `/api/x`, not `/apix`.
    pub prefix: String,
    pub service: String,
    pub endpoints: Vec<String>,
    /// Per-route deadline, e.g. `"250ms"`; the default timeout otherwise.
    #[serde(default, with = "opt_duration")]
    pub timeout: Option<Duration>,
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub http: SocketAddr,
    pub admin: SocketAddr,
    pub routes: Vec<Route>,
    pub timeout: Duration,
    /// The p99 the console holds every route to (`--p99-target`).
    pub p99_target: Duration,
    pub max_body: usize,
    pub max_header_bytes: usize,
    pub max_in_flight: usize,
    /// Adaptive admission per upstream service (`admission.rs`).
    pub admission: bool,
    /// (ratio, minimum per second, window); `None`: no retries.
    pub retry_budget: Option<(f64, u32, Duration)>,
    pub header_read_timeout: Duration,
    pub grace: Duration,
    pub runtime: RuntimeKind,
    /// Threads (per-core runtimes, or shared workers); default: one per core.
    pub threads: usize,
    /// Whether `routes` were configured (flags or file) rather than the
    /// built-in convention; configured routes beat registrations.
    pub routes_explicit: bool,
    /// etcd discovery; None keeps the static routes.
    pub etcd: Option<discovery::EtcdOptions>,
    /// `--advertise`: how peers reach this terminator's admin port (the
    /// console's fleet view).
    pub advertise: discovery::EtcdArgs,
    pub metrics: svc_host::metrics::MetricsSettings,
    /// `--bus-security` and `--curve-*`: what the bus clients use.
    pub bus_security: svc_host::security::BusSecurity,
    /// Closes connections idle this long (no request in progress, nothing
    /// read or written): before the first byte and between requests.
    pub idle_timeout: Duration,
    /// Open HTTP connections per process; at the cap the connection idle
    /// the longest is closed for each new one. None: three quarters of the
    /// open-file limit (`server::default_max_connections`).
    pub max_connections: Option<usize>,
    /// Certificate and key files (PEM), the first the default; empty:
    /// no TLS. Checked to load when the settings are.
    pub tls: Vec<crate::tls::CertFiles>,
    /// A TLS listener beside the cleartext `http` one. None with `tls`
    /// given: `http` itself serves TLS.
    pub https: Option<SocketAddr>,
    /// Bearer token for the admin pages other than /healthz and /readyz.
    pub admin_token: Option<svc_host::admin::Token>,
    /// `--access-log`: where one JSON line per request goes; None: off.
    pub access_log: Option<crate::access_log::Target>,
    /// `--policy`: traffic policies by service (checked at load).
    pub policy: Option<PathBuf>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            http: DEFAULT_HTTP.parse().expect("valid default"),
            admin: DEFAULT_ADMIN.parse().expect("valid default"),
            routes: vec![Route {
                prefix: DEFAULT_ROUTE.0.into(),
                service: DEFAULT_ROUTE.1.into(),
                endpoints: vec![DEFAULT_ROUTE.2.into()],
                timeout: None,
            }],
            timeout: DEFAULT_TIMEOUT,
            p99_target: crate::console::DEFAULT_P99_TARGET,
            max_body: DEFAULT_MAX_BODY,
            max_header_bytes: DEFAULT_MAX_HEADER_BYTES,
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            admission: true,
            retry_budget: parse_retry_budget(DEFAULT_RETRY_BUDGET).expect("valid default"),
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
            grace: DEFAULT_GRACE,
            runtime: RuntimeKind::PerCore,
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            routes_explicit: false,
            etcd: None,
            advertise: Default::default(),
            metrics: svc_host::metrics::MetricsArgs::default()
                .settings()
                .expect("defaults are valid"),
            bus_security: Default::default(),
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            max_connections: None,
            tls: Vec::new(),
            https: None,
            admin_token: None,
            access_log: None,
            policy: None,
        }
    }
}

/// The HTTP edge of Switchboard: turns each HTTP request into a bus call.
#[derive(Parser, Debug, Default)]
#[command(name = "terminator", version, about)]
pub struct Args {
    /// TOML config file (keys as the long flags, with `_`; `[[route]]` tables).
    #[arg(long, env = "SWITCHBOARD_CONFIG")]
    pub config: Option<PathBuf>,
    /// HTTP listen address [default: 127.0.0.1:8000]
    #[arg(long, env = "SWITCHBOARD_HTTP")]
    pub http: Option<String>,
    /// Admin listen address (/healthz, /readyz, /stats, /stats/histograms)
    /// [default: 127.0.0.1:8001]
    #[arg(long, env = "SWITCHBOARD_ADMIN")]
    pub admin: Option<String>,
    /// Route, repeatable: PREFIX=SERVICE@ENDPOINT[,ENDPOINT...][;TIMEOUT]
    /// [default: /=aggregator@tcp://127.0.0.1:8100]
    #[arg(long = "route", env = "SWITCHBOARD_ROUTES", value_delimiter = ' ')]
    pub routes: Vec<String>,
    /// Default deadline per request, e.g. 5s, 250ms [default: 5s]
    #[arg(long, env = "SWITCHBOARD_TIMEOUT")]
    pub timeout: Option<String>,
    /// The p99 latency target each route is shown against on /console [default: 25ms]
    #[arg(long, env = "SWITCHBOARD_P99_TARGET")]
    pub p99_target: Option<String>,
    /// Largest request body in bytes [default: 1048576]
    #[arg(long, env = "SWITCHBOARD_MAX_BODY")]
    pub max_body: Option<String>,
    /// Largest request head (all header names and values) in bytes [default: 16384]
    #[arg(long, env = "SWITCHBOARD_MAX_HEADER_BYTES")]
    pub max_header_bytes: Option<String>,
    /// Requests in flight before new ones get 503: the hard ceiling, per
    /// process and per upstream service [default: 10000]
    #[arg(long, env = "SWITCHBOARD_MAX_IN_FLIGHT")]
    pub max_in_flight: Option<String>,
    /// adaptive (each upstream service's in-flight limit follows its
    /// latency; over it, 503 at once) or off [default: adaptive]
    #[arg(long, env = "SWITCHBOARD_ADMISSION")]
    pub admission: Option<String>,
    /// Retries to another instance: RATIO,PER_SEC,WINDOW (a share of calls
    /// plus a floor per second, over a window) or off [default: 0.2,10,10s]
    #[arg(long, env = "SWITCHBOARD_RETRY_BUDGET")]
    pub retry_budget: Option<String>,
    /// Time a client has to send its request head [default: 5s]
    #[arg(long, env = "SWITCHBOARD_HEADER_READ_TIMEOUT")]
    pub header_read_timeout: Option<String>,
    /// Time in-flight requests get to finish on SIGTERM [default: 30s]
    #[arg(long, env = "SWITCHBOARD_GRACE")]
    pub grace: Option<String>,
    /// per-core (a single-threaded runtime per thread, each with its own
    /// connections) or shared (one work-stealing runtime) [default: per-core]
    #[arg(long, env = "SWITCHBOARD_RUNTIME")]
    pub runtime: Option<String>,
    /// Threads to run on [default: one per core]
    #[arg(long, env = "SWITCHBOARD_THREADS")]
    pub threads: Option<String>,
    #[command(flatten)]
    pub discovery: discovery::EtcdArgs,
    #[command(flatten)]
    pub metrics: svc_host::metrics::MetricsArgs,
    #[command(flatten)]
    pub security: svc_host::security::SecurityArgs,
    /// Close a connection that sends nothing for this long while no request
    /// is in progress: before its first byte and between keep-alive
    /// requests [default: 10s]
    #[arg(long, env = "SWITCHBOARD_IDLE_TIMEOUT")]
    pub idle_timeout: Option<String>,
    /// Open HTTP connections per process; at the cap each new connection
    /// closes the one idle the longest (503 if none is idle)
    /// [default: three quarters of the open-file limit]
    #[arg(long, env = "SWITCHBOARD_MAX_CONNECTIONS")]
    pub max_connections: Option<String>,
    /// Certificate chain (PEM, leaf first) to serve HTTPS with; repeatable,
    /// one per --tls-key in the same order. The client's SNI name picks the
    /// certificate valid for it; the first is the default. Reloaded when the
    /// file changes and on SIGHUP [default: none: cleartext HTTP]
    #[arg(long = "tls-cert", value_name = "FILE", env = "SWITCHBOARD_TLS_CERT")]
    pub tls_cert: Vec<PathBuf>,
    /// Private key (PEM: PKCS#8, RSA or EC) of the --tls-cert in the same position
    #[arg(long = "tls-key", value_name = "FILE", env = "SWITCHBOARD_TLS_KEY")]
    pub tls_key: Vec<PathBuf>,
    /// Serve HTTPS on this address and keep --http cleartext; without it,
    /// --tls-cert makes --http itself HTTPS [default: none]
    #[arg(long, env = "SWITCHBOARD_HTTPS")]
    pub https: Option<String>,
    #[command(flatten)]
    pub admin_token: svc_host::admin::TokenArgs,
    /// One JSON line per request to `stdout` or a FILE (appended to,
    /// reopened on SIGHUP), written off the request path: when the writer
    /// falls behind, lines are dropped and counted, never requests slowed;
    /// `off` [default: off]
    #[arg(
        long = "access-log",
        value_name = "stdout|FILE|off",
        env = "SWITCHBOARD_ACCESS_LOG"
    )]
    pub access_log: Option<String>,
    /// Traffic policy per service, JSON: weights by version and pinning by
    /// header or cookie (docs/operations.md); re-read when it changes and
    /// on SIGHUP [default: none: every instance alike]
    #[arg(long = "policy", value_name = "FILE", env = "SWITCHBOARD_POLICY")]
    pub policy: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    http: Option<String>,
    admin: Option<String>,
    timeout: Option<String>,
    p99_target: Option<String>,
    max_body: Option<usize>,
    max_header_bytes: Option<usize>,
    max_in_flight: Option<usize>,
    admission: Option<String>,
    retry_budget: Option<String>,
    header_read_timeout: Option<String>,
    grace: Option<String>,
    runtime: Option<String>,
    threads: Option<usize>,
    #[serde(default)]
    route: Vec<Route>,
    idle_timeout: Option<String>,
    max_connections: Option<usize>,
    #[serde(default)]
    tls_cert: Vec<PathBuf>,
    #[serde(default)]
    tls_key: Vec<PathBuf>,
    https: Option<String>,
    admin_token: Option<PathBuf>,
    access_log: Option<String>,
    policy: Option<PathBuf>,
    bus_security: Option<String>,
    curve_secret: Option<String>,
    curve_server_key: Option<String>,
}

/// Parses `250ms`, `5s`, `2m`, `1h`.
pub use svc_host::parse_duration;

mod opt_duration {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let s: Option<String> = Option::deserialize(d)?;
        s.map(|s| super::parse_duration(&s).map_err(serde::de::Error::custom))
            .transpose()
    }
}

/// `RATIO,PER_SEC,WINDOW` (`0.2,10,10s`) or `off`.
pub fn parse_retry_budget(v: &str) -> Result<Option<(f64, u32, Duration)>, String> {
    if v == "off" {
        return Ok(None);
    }
    let bad = || format!("`{v}` is not RATIO,PER_SEC,WINDOW (e.g. 0.2,10,10s) or off");
    let parts: Vec<&str> = v.split(',').map(str::trim).collect();
    let [ratio, per_sec, window] = parts[..] else {
        return Err(bad());
    };
    let ratio: f64 = ratio.parse().map_err(|_| bad())?;
    let per_sec: u32 = per_sec.parse().map_err(|_| bad())?;
    let window = parse_duration(window)?;
    if !(0.0..=10.0).contains(&ratio) || window.is_zero() {
        return Err(format!(
            "`{v}`: the ratio must be 0 to 10 and the window above 0"
        ));
    }
    Ok(Some((ratio, per_sec, window)))
}

/// `PREFIX=SERVICE@EP[,EP...][;TIMEOUT]`
pub fn parse_route(s: &str) -> Result<Route, String> {
    let (prefix, rest) = s
        .split_once('=')
        .ok_or_else(|| format!("route `{s}`: expected PREFIX=SERVICE@ENDPOINT"))?;
    let (rest, timeout) = match rest.split_once(';') {
        Some((r, t)) => (r, Some(parse_duration(t)?)),
        None => (rest, None),
    };
    let (service, eps) = rest
        .split_once('@')
        .ok_or_else(|| format!("route `{s}`: expected SERVICE@ENDPOINT after `=`"))?;
    Ok(Route {
        prefix: prefix.to_string(),
        service: service.to_string(),
        endpoints: eps.split(',').map(str::to_string).collect(),
        timeout,
    })
}

fn check_route(r: &Route, errors: &mut Vec<String>) {
    if !r.prefix.starts_with('/') {
        errors.push(format!("route prefix `{}` must start with `/`", r.prefix));
    }
    if r.service.is_empty() || r.service.len() > 255 {
        errors.push(format!(
            "route `{}`: service name must be 1-255 bytes",
            r.prefix
        ));
    }
    if r.endpoints.is_empty() {
        errors.push(format!("route `{}`: no endpoints", r.prefix));
    }
    for ep in &r.endpoints {
        if let Err(e) = bus::check_endpoint(ep) {
            errors.push(format!("route `{}`: {e}", r.prefix));
        }
    }
}

impl Settings {
    /// How each upstream service's limiter and retry budget are made.
    pub fn upstream_policy(&self) -> crate::upstream::Policy {
        crate::upstream::Policy {
            adaptive: self.admission,
            max_in_flight: self.max_in_flight,
            retries: self.retry_budget,
            mechanism: self.bus_security.client(),
        }
    }

    /// Merges defaults, the config file, the environment and the flags
    /// (clap has already put env under flags). All errors at once.
    pub fn load(args: Args) -> Result<Settings, Vec<String>> {
        let mut errors = Vec::new();
        let file = match &args.config {
            None => File::default(),
            Some(p) => match std::fs::read_to_string(p) {
                Err(e) => {
                    errors.push(format!("config file {}: {e}", p.display()));
                    File::default()
                }
                Ok(text) => match toml::from_str::<File>(&text) {
                    Ok(f) => f,
                    Err(e) => {
                        errors.push(format!("config file {}: {e}", p.display()));
                        File::default()
                    }
                },
            },
        };
        let mut s = Settings::default();
        fn pick<T>(
            name: &str,
            flag: Option<String>,
            file: Option<String>,
            parse: impl Fn(&str) -> Result<T, String>,
            slot: &mut T,
            errors: &mut Vec<String>,
        ) {
            if let Some(v) = flag.or(file) {
                match parse(&v) {
                    Ok(x) => *slot = x,
                    Err(e) => errors.push(format!("{name}: {e}")),
                }
            }
        }
        let addr = |v: &str| {
            v.parse::<std::net::SocketAddr>()
                .map_err(|_| format!("`{v}` is not HOST:PORT (an IP address and a port)"))
        };
        let count = |v: &str| match v.parse::<usize>() {
            Ok(0) => Err("must be at least 1".to_string()),
            Ok(n) => Ok(n),
            Err(_) => Err(format!("`{v}` is not a positive integer")),
        };
        let dur = |v: &str| match parse_duration(v) {
            Ok(d) if d.is_zero() => Err("must be more than 0".to_string()),
            other => other,
        };
        let e = &mut errors;
        pick("http", args.http, file.http, addr, &mut s.http, e);
        pick("admin", args.admin, file.admin, addr, &mut s.admin, e);
        pick(
            "timeout",
            args.timeout,
            file.timeout,
            dur,
            &mut s.timeout,
            e,
        );
        pick(
            "p99_target",
            args.p99_target,
            file.p99_target,
            dur,
            &mut s.p99_target,
            e,
        );
        let num = |v: Option<usize>| v.map(|n| n.to_string());
        pick(
            "max_body",
            args.max_body,
            num(file.max_body),
            count,
            &mut s.max_body,
            e,
        );
        pick(
            "max_header_bytes",
            args.max_header_bytes,
            num(file.max_header_bytes),
            count,
            &mut s.max_header_bytes,
            e,
        );
        pick(
            "max_in_flight",
            args.max_in_flight,
            num(file.max_in_flight),
            count,
            &mut s.max_in_flight,
            e,
        );
        pick(
            "header_read_timeout",
            args.header_read_timeout,
            file.header_read_timeout,
            dur,
            &mut s.header_read_timeout,
            e,
        );
        pick("grace", args.grace, file.grace, dur, &mut s.grace, e);
        let admission = |v: &str| match v {
            "adaptive" => Ok(true),
            "off" => Ok(false),
            _ => Err(format!("`{v}` is not adaptive or off")),
        };
        pick(
            "admission",
            args.admission,
            file.admission,
            admission,
            &mut s.admission,
            e,
        );
        pick(
            "retry_budget",
            args.retry_budget,
            file.retry_budget,
            parse_retry_budget,
            &mut s.retry_budget,
            e,
        );
        let runtime = |v: &str| match v {
            "per-core" => Ok(RuntimeKind::PerCore),
            "shared" => Ok(RuntimeKind::Shared),
            _ => Err(format!("`{v}` is not per-core or shared")),
        };
        pick(
            "runtime",
            args.runtime,
            file.runtime,
            runtime,
            &mut s.runtime,
            e,
        );
        pick(
            "threads",
            args.threads,
            num(file.threads),
            count,
            &mut s.threads,
            e,
        );
        s.routes_explicit = !args.routes.is_empty() || !file.route.is_empty();
        match args.discovery.options() {
            Ok(o) => s.etcd = o,
            Err(p) => errors.extend(p),
        }
        s.advertise = args.discovery.clone();
        match args.metrics.settings() {
            Ok(m) => s.metrics = m,
            Err(p) => errors.extend(p),
        }
        let security = svc_host::security::SecurityArgs {
            bus_security: args.security.bus_security.or(file.bus_security),
            curve_secret: args.security.curve_secret.or(file.curve_secret),
            curve_authorized: args.security.curve_authorized,
            curve_server_key: args.security.curve_server_key.or(file.curve_server_key),
        };
        match security.settings() {
            Ok(b) => s.bus_security = b,
            Err(p) => errors.extend(p),
        }
        let routes: Vec<Route> = if !args.routes.is_empty() {
            args.routes
                .iter()
                .filter(|r| !r.is_empty())
                .filter_map(|r| parse_route(r).map_err(|x| errors.push(x)).ok())
                .collect()
        } else if !file.route.is_empty() {
            file.route
        } else {
            s.routes.clone()
        };
        for r in &routes {
            check_route(r, &mut errors);
        }
        for (i, a) in routes.iter().enumerate() {
            // `/api` and `/api/` are one route.
            let same = |b: &Route| {
                crate::routes::normalize(&b.prefix) == crate::routes::normalize(&a.prefix)
            };
            if routes[..i].iter().any(same) {
                errors.push(format!("route prefix `{}` given twice", a.prefix));
            }
        }
        s.routes = routes;
        pick(
            "idle_timeout",
            args.idle_timeout,
            file.idle_timeout,
            dur,
            &mut s.idle_timeout,
            &mut errors,
        );
        let mut max_connections = 0;
        pick(
            "max_connections",
            args.max_connections,
            num(file.max_connections),
            count,
            &mut max_connections,
            &mut errors,
        );
        s.max_connections = (max_connections > 0).then_some(max_connections);
        let (certs, keys) = if args.tls_cert.is_empty() && args.tls_key.is_empty() {
            (file.tls_cert, file.tls_key)
        } else {
            (args.tls_cert, args.tls_key)
        };
        if certs.len() != keys.len() {
            errors.push(format!(
                "tls_cert/tls_key: {} certificate(s) but {} key(s): give one --tls-key per --tls-cert, in the same order",
                certs.len(),
                keys.len()
            ));
        } else {
            s.tls = certs
                .into_iter()
                .zip(keys)
                .map(|(cert, key)| crate::tls::CertFiles { cert, key })
                .collect();
            if let Err(e) = crate::tls::load_all(&s.tls) {
                errors.extend(e.into_iter().map(|e| format!("tls: {e}")));
            }
        }
        let mut https = None;
        pick(
            "https",
            args.https,
            file.https,
            |v| addr(v).map(Some),
            &mut https,
            &mut errors,
        );
        if https.is_some() && s.tls.is_empty() {
            errors.push("https: needs --tls-cert and --tls-key".into());
        }
        s.https = https;
        pick(
            "access_log",
            args.access_log,
            file.access_log,
            crate::access_log::Target::parse,
            &mut s.access_log,
            &mut errors,
        );
        s.policy = args.policy.or(file.policy);
        if let Some(p) = &s.policy {
            if let Err(e) = traffic::policy::read(p) {
                errors.extend(e.into_iter().map(|e| format!("policy: {e}")));
            }
        }
        let token_args = svc_host::admin::TokenArgs {
            admin_token: args.admin_token.admin_token.or(file.admin_token),
        };
        match token_args.token() {
            Ok(t) => s.admin_token = t,
            Err(e) => errors.push(e),
        }
        if errors.is_empty() {
            Ok(s)
        } else {
            Err(errors)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_convention() {
        let s = Settings::load(Args::default()).unwrap();
        assert_eq!(s.http.to_string(), "127.0.0.1:8000");
        assert_eq!(s.admin.to_string(), "127.0.0.1:8001");
        assert_eq!(s.routes[0].endpoints, vec!["tcp://127.0.0.1:8100"]);
    }

    #[test]
    fn every_bad_value_is_reported() {
        let args = Args {
            http: Some("nope".into()),
            timeout: Some("5 parsecs".into()),
            max_body: Some("-1".into()),
            routes: vec!["api=svc@tcp://x".into()],
            ..Args::default()
        };
        let errs = Settings::load(args).unwrap_err();
        assert_eq!(errs.len(), 5, "{errs:#?}");
    }

    #[test]
    fn runtime_layout_defaults_to_per_core_shards_one_per_core() {
        let s = Settings::load(Args::default()).unwrap();
        assert_eq!(s.runtime, RuntimeKind::PerCore);
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert_eq!(s.threads, cores);
        let s = Settings::load(Args {
            runtime: Some("shared".into()),
            threads: Some("3".into()),
            ..Args::default()
        })
        .unwrap();
        assert_eq!((s.runtime, s.threads), (RuntimeKind::Shared, 3));
        let errs = Settings::load(Args {
            runtime: Some("green-threads".into()),
            threads: Some("0".into()),
            ..Args::default()
        })
        .unwrap_err();
        assert_eq!(errs.len(), 2, "{errs:#?}");
        assert!(errs[0].contains("per-core or shared"), "{errs:#?}");
    }

    #[test]
    fn flag_beats_file() {
        let dir = std::env::temp_dir().join(format!("sb-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("t.toml");
        std::fs::write(
            &p,
            "timeout = \"2s\"\nmax_body = 10\n[[route]]\nprefix = \"/x\"\nservice = \"s\"\nendpoints = [\"tcp://127.0.0.1:9\"]\ntimeout = \"100ms\"\n",
        )
        .unwrap();
        let s = Settings::load(Args {
            config: Some(p),
            timeout: Some("3s".into()),
            ..Args::default()
        })
        .unwrap();
        assert_eq!(s.timeout, Duration::from_secs(3));
        assert_eq!(s.max_body, 10);
        assert_eq!(s.routes[0].timeout, Some(Duration::from_millis(100)));
    }

    #[test]
    fn bus_security_from_the_file_and_the_flag_over_it() {
        let dir = std::env::temp_dir().join(format!("sb-cfg-sec-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let me = bus::curve::KeyPair::generate();
        let server = bus::curve::KeyPair::generate();
        me.write_files(&dir, "me").unwrap();
        let p = dir.join("t.toml");
        let secret = dir.join("me.key_secret");
        std::fs::write(
            &p,
            format!(
                "bus_security = \"curve\"\ncurve_secret = {:?}\ncurve_server_key = \"{}\"\n",
                secret.to_str().unwrap(),
                server.public.to_z85()
            ),
        )
        .unwrap();
        let s = Settings::load(Args {
            config: Some(p.clone()),
            ..Args::default()
        })
        .unwrap();
        assert_eq!(s.bus_security.public_key(), Some(me.public.to_z85()));
        // The flag wins over the file.
        let s = Settings::load(Args {
            config: Some(p),
            security: svc_host::security::SecurityArgs {
                bus_security: Some("off".into()),
                ..Default::default()
            },
            ..Args::default()
        });
        let e = s.unwrap_err();
        assert!(
            e.iter()
                .any(|e| e.contains("only with --bus-security curve")),
            "{e:?}"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_prefix_given_twice_is_refused_with_or_without_its_slash() {
        let errs = Settings::load(Args {
            routes: vec![
                "/api=a@tcp://127.0.0.1:1".into(),
                "/api/=b@tcp://127.0.0.1:2".into(),
            ],
            ..Args::default()
        })
        .unwrap_err();
        assert_eq!(errs.len(), 1, "{errs:#?}");
        assert!(errs[0].contains("given twice"), "{errs:#?}");
    }

    #[test]
    fn admission_and_retry_budget() {
        let s = Settings::load(Args::default()).unwrap();
        assert!(s.admission);
        assert_eq!(s.retry_budget, Some((0.2, 10, Duration::from_secs(10))));
        let s = Settings::load(Args {
            admission: Some("off".into()),
            retry_budget: Some("off".into()),
            ..Args::default()
        })
        .unwrap();
        assert_eq!((s.admission, s.retry_budget), (false, None));
        let errs = Settings::load(Args {
            admission: Some("magic".into()),
            retry_budget: Some("20%".into()),
            ..Args::default()
        })
        .unwrap_err();
        assert_eq!(errs.len(), 2, "{errs:#?}");
    }

    #[test]
    fn idle_timeout_and_connection_cap() {
        let s = Settings::load(Args::default()).unwrap();
        assert_eq!(
            (s.idle_timeout, s.max_connections),
            (DEFAULT_IDLE_TIMEOUT, None)
        );
        let s = Settings::load(Args {
            idle_timeout: Some("750ms".into()),
            max_connections: Some("5000".into()),
            ..Args::default()
        })
        .unwrap();
        assert_eq!(
            (s.idle_timeout, s.max_connections),
            (Duration::from_millis(750), Some(5000))
        );
        let errs = Settings::load(Args {
            idle_timeout: Some("0s".into()),
            max_connections: Some("0".into()),
            ..Args::default()
        })
        .unwrap_err();
        assert_eq!(errs.len(), 2, "{errs:#?}");
    }

    #[test]
    fn admin_help_names_every_page() {
        use clap::CommandFactory;
        let help = Args::command().render_long_help().to_string();
        let admin = help.split("--admin").nth(1).unwrap_or_default();
        let admin = admin.split("--route").next().unwrap_or_default();
        for page in ["/healthz", "/readyz", "/stats", "/stats/histograms"] {
            assert!(admin.contains(page), "{page} missing: {admin}");
        }
    }

    #[test]
    fn route_flag_syntax() {
        let r = parse_route("/api=svc@tcp://127.0.0.1:1,tcp://127.0.0.1:2;250ms").unwrap();
        assert_eq!(r.prefix, "/api");
        assert_eq!(r.endpoints.len(), 2);
        assert_eq!(r.timeout, Some(Duration::from_millis(250)));
    }
}
