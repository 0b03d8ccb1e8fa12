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
//! - [`request_id`]: accept or generate `x-request-id`.
//! - [`conn`]: one HTTP connection from accept to close: idle timeout,
//!   the connection cap, what a drain does to it.
//! - [`server`]: accept loops, admin endpoints, graceful drain; a process
//!   is one or more shards (`server::serve`): one single-threaded shard
//!   per core by default (`--runtime per-core`), so a request never leaves
//!   the thread that accepted it, or one work-stealing runtime
//!   (`--runtime shared`); docs/benchmarks.md has the comparison.
//!
//! `main` is the process skeleton all three binaries share
//! (`svc_host::Process`).

pub mod admission;
pub mod config;
pub mod conn;
pub mod metrics;
pub mod proxy;
pub mod registry;
pub mod request_id;
pub mod rescue;
pub mod routes;
pub mod server;
pub mod upstream;

use clap::Parser;
use std::process::ExitCode;
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
    // The one machine-readable line through which scripts and tests using
    // port 0 learn the real ports.
    let addr =
        |l: &std::net::TcpListener| l.local_addr().map(|a| a.to_string()).unwrap_or_default();
    println!(
        "terminator listening http=http://{} admin=http://{}",
        addr(&http),
        addr(&admin)
    );
    let layout = match settings.runtime {
        config::RuntimeKind::PerCore => Layout::PerCore(settings.threads),
        config::RuntimeKind::Shared => Layout::Shared(Some(settings.threads)),
    };
    settings.bus_security.log("terminator", false);
    let shared = server::Shared::new(&settings);
    process.run(layout, admin, move |shard| {
        let (settings, shared) = (settings.clone(), shared.clone());
        let http = http.try_clone();
        async move {
            let http = tokio::net::TcpListener::from_std(http?)?;
            let shutdown = shard.shutdown();
            server::serve(settings, http, shard.admin, shared, shutdown)
                .await
                .map_err(|e| std::io::Error::other(e.to_string()))
        }
    })
}
