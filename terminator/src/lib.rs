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
    let Some((http, admin)) = bind(&settings) else {
        return ExitCode::FAILURE;
    };
    if settings.runtime == config::RuntimeKind::PerCore {
        return per_core::main(settings, http, admin);
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
        let listeners = tokio::net::TcpListener::from_std(http)
            .and_then(|h| Ok((h, tokio::net::TcpListener::from_std(admin)?)));
        let (http, admin) = match listeners {
            Ok(l) => l,
            Err(e) => {
                eprintln!("terminator: {e}");
                return ExitCode::FAILURE;
            }
        };
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

/// Binds the HTTP and admin ports (non-blocking, for tokio) and prints the
/// one machine-readable line through which scripts and tests using port 0
/// learn the real ports.
fn bind(settings: &config::Settings) -> Option<(std::net::TcpListener, std::net::TcpListener)> {
    let listen = |addr: std::net::SocketAddr, what: &str| match std::net::TcpListener::bind(addr)
        .and_then(|l| l.set_nonblocking(true).map(|_| l))
    {
        Ok(l) => Some(l),
        Err(e) => {
            eprintln!("terminator: cannot listen on {addr} ({what}): {e}");
            None
        }
    };
    let http = listen(settings.http, "http")?;
    let admin = listen(settings.admin, "admin")?;
    let addr =
        |l: &std::net::TcpListener| l.local_addr().map(|a| a.to_string()).unwrap_or_default();
    println!(
        "terminator listening http=http://{} admin=http://{}",
        addr(&http),
        addr(&admin)
    );
    Some((http, admin))
}
