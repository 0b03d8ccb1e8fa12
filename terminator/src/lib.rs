//! The terminator: Switchboard's HTTP edge. Each HTTP request becomes a bus
//! call to the service that owns its path; the reply becomes the response.
//!
//! # Layout
//!
//! - [`config`]: settings, `DEFAULT_*` constants, flag/env/file layering.
//! - [`routes`]: longest-prefix route table, swapped whole on change.
//! - [`registry`]: routes from etcd registrations merged with static ones.
//! - [`proxy`]: the request path (HTTP → bus → HTTP).
//! - [`rescue`]: every failure cause and its one HTTP status.
//! - [`admission`]: the adaptive in-flight limit per upstream service.
//! - [`upstream`]: per service, process-wide: the limiter and the retry
//!   budget every shard's bus client shares.
//! - [`metrics`]: counters and latency histograms per route and class.
//! - `--policy` (the `traffic` crate): weights by version, pinning and
//!   ghost mode per service; the request path applies them in [`proxy`].
//! - [`access_log`]: `--access-log`, one JSON line per request, written by
//!   a thread of its own from a bounded queue.
//! - [`request_id`]: accept or generate `x-request-id`.
//! - [`conn`]: one HTTP connection from accept to close: idle timeout,
//!   the connection cap, what a drain does to it, the TLS handshake.
//! - [`tls`]: certificates (SNI, reload on change and SIGHUP), rustls.
//! - [`console`]: `/console` on the admin port, the live page and its
//!   JSON, computed from the metrics' totals on the admin side; with
//!   etcd, the fleet's histograms merged.
//! - [`server`]: accept loops, admin endpoints, graceful drain; a process
//!   is one or more shards (`server::serve`): one single-threaded shard
//!   per core by default (`--runtime per-core`), so a request never leaves
//!   the thread that accepted it, or one work-stealing runtime
//!   (`--runtime shared`); docs/benchmarks.md has the comparison.
//!
//! `main` is the process skeleton all three binaries share
//! (`svc_host::Process`).

pub mod access_log;
pub mod admission;
pub mod config;
pub mod conn;
pub mod console;
pub mod metrics;

pub mod proxy;
pub mod registry;
pub mod request_id;
pub mod rescue;
pub mod routes;
pub mod server;
pub mod tls;
pub mod upstream;

use clap::Parser;
use std::process::ExitCode;
use std::sync::Arc;
use svc_host::{Layout, Process};

pub use server::run;

pub use svc_host::init_tracing;

/// The binary: the process skeleton every Switchboard binary shares
/// (`svc_host::Process`), with the HTTP listener bound beside the admin
/// one and shared by every shard.
pub fn main() -> ExitCode {
    let loaded = config::Settings::load(config::Args::parse());
    let problems = loaded.as_ref().err().cloned().unwrap_or_default();
    let metrics = loaded.as_ref().ok().map(|s| &s.metrics);
    let process = match Process::start("terminator", problems, metrics) {
        Ok(p) => p,
        Err(code) => return code,
    };
    let Ok(settings) = loaded else {
        return ExitCode::from(2);
    };
    let (http, admin) = match process
        .bind(settings.http, "http")
        .and_then(|h| Ok((h, process.bind(settings.admin, "admin")?)))
    {
        Ok(l) => l,
        Err(code) => return code,
    };
    let https = match settings.https.map(|a| process.bind(a, "https")).transpose() {
        Ok(l) => l,
        Err(code) => return code,
    };
    let mut shared = server::Shared::new(&settings);
    if !settings.tls.is_empty() {
        // Checked with the other settings; read again here (a file
        // replaced in between is reported the same way).
        let tls = match tls::Tls::load(&settings.tls) {
            Ok(t) => Arc::new(t),
            Err(problems) => {
                for p in problems {
                    eprintln!("terminator: tls: {p}");
                }
                return ExitCode::from(2);
            }
        };
        if let Err(e) = tls.clone().watch() {
            eprintln!("terminator: cannot watch the certificates for changes: {e}");
            return ExitCode::FAILURE;
        }
        shared.tls = Some(tls);
    }
    if let Some(t) = &settings.access_log {
        match access_log::AccessLog::open(t.clone()) {
            Ok(l) => shared.access_log = Some(l),
            Err(e) => {
                eprintln!("terminator: --access-log: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    if let Some(p) = &settings.policy {
        if let Err(problems) = shared.policies.follow(p.clone()) {
            for p in problems {
                eprintln!("terminator: policy: {p}");
            }
            return ExitCode::from(2);
        }
    }
    let access = shared.access_log.clone();
    // The one machine-readable line through which scripts and tests using
    // port 0 learn the real ports.
    let addr =
        |l: &std::net::TcpListener| l.local_addr().map(|a| a.to_string()).unwrap_or_default();
    let scheme = if shared.tls.is_some() && https.is_none() {
        "https"
    } else {
        "http"
    };
    let https_field = https
        .as_ref()
        .map(|l| format!(" https=https://{}", addr(l)))
        .unwrap_or_default();
    println!(
        "terminator listening http={scheme}://{}{https_field} admin=http://{}",
        addr(&http),
        addr(&admin)
    );
    let layout = match settings.runtime {
        config::RuntimeKind::PerCore => Layout::PerCore(settings.threads),
        config::RuntimeKind::Shared => Layout::Shared(Some(settings.threads)),
    };
    settings.bus_security.log("terminator", false);
    let code = process.run(layout, admin, move |shard| {
        let (settings, shared) = (settings.clone(), shared.clone());
        let http = http.try_clone();
        let https = https.as_ref().map(|l| l.try_clone());
        async move {
            let http = tokio::net::TcpListener::from_std(http?)?;
            let https = match https {
                Some(l) => Some(tokio::net::TcpListener::from_std(l?)?),
                None => None,
            };
            let shutdown = shard.shutdown();
            server::serve_listeners(settings, http, https, shard.admin, shared, shutdown)
                .await
                .map_err(|e| std::io::Error::other(e.to_string()))
        }
    });
    // The drain is over: write what the last requests logged.
    if let Some(l) = access {
        if !l.flush(std::time::Duration::from_secs(5)) {
            eprintln!("terminator: the access log could not be flushed at exit");
        }
    }
    code
}
