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
//! - [`metrics`]: counters and latency histograms per route and class.
//! - [`request_id`]: accept or generate `x-request-id`.
//! - [`server`]: accept loops, admin endpoints, graceful drain; a process
//!   is one or more shards (`server::serve`).
//! - `per_core`: the default runtime layout, one single-threaded shard per
//!   core.

pub mod config;
pub mod metrics;
pub mod proxy;
pub mod registry;
pub mod request_id;
pub mod rescue;
pub mod routes;
pub mod server;

mod per_core;

use clap::Parser;
use std::process::ExitCode;

pub use server::run;

pub use svc_host::init_tracing;

/// The binary: parse, validate (all errors at once), bind, serve, drain.
pub fn main() -> ExitCode {
    let args = config::Args::parse();
    let settings = match config::Settings::load(args) {
        Ok(s) => s,
        Err(errors) => {
            for e in errors {
                eprintln!("terminator: {e}");
            }
            return ExitCode::from(2);
        }
    };
    init_tracing();
    let _statsd = settings.metrics.start("terminator");
    if settings.runtime == config::RuntimeKind::PerCore {
        return per_core::main(settings);
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(settings.threads)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("terminator: cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async move {
        let http = match tokio::net::TcpListener::bind(settings.http).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("terminator: cannot listen on {} (http): {e}", settings.http);
                return ExitCode::FAILURE;
            }
        };
        let admin = match tokio::net::TcpListener::bind(settings.admin).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!(
                    "terminator: cannot listen on {} (admin): {e}",
                    settings.admin
                );
                return ExitCode::FAILURE;
            }
        };
        // One machine-readable line, so scripts and tests using port 0 learn
        // the real ports.
        println!(
            "terminator listening http=http://{} admin=http://{}",
            http.local_addr().map(|a| a.to_string()).unwrap_or_default(),
            admin
                .local_addr()
                .map(|a| a.to_string())
                .unwrap_or_default()
        );
        match run(settings, http, admin, bus::signal::shutdown()).await {
            Ok(()) => {
                tracing::info!("stopped");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("terminator: {e}");
                ExitCode::FAILURE
            }
        }
    })
}
