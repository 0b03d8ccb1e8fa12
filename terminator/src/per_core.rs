//! The default runtime layout: one single-threaded tokio runtime per core
//! (`--threads`, default one per core), each a shard that accepts from the
//! same HTTP socket and owns its own route table and bus connections, so a
//! request never leaves the thread that accepted it. The first shard also
//! serves the admin port. `--runtime shared` is the alternative: one
//! work-stealing runtime. docs/benchmarks.md has the comparison that chose
//! this one (less CPU per request: no work-stealing wake-ups between
//! workers).

use crate::config::Settings;
use crate::server::{self, Shared};
use std::process::ExitCode;

pub(crate) fn main(
    settings: Settings,
    http: std::net::TcpListener,
    admin: std::net::TcpListener,
) -> ExitCode {
    let shared = Shared::default();
    // A shard that fails stops the others: the process then exits with its
    // error instead of running on short of a core.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stop_tx = std::sync::Arc::new(stop_tx);
    let mut admin = Some(admin);
    let mut shards = Vec::new();
    for i in 0..settings.threads.max(1) {
        let http = match http.try_clone() {
            Ok(h) => h,
            Err(e) => {
                eprintln!("terminator: {e}");
                return ExitCode::FAILURE;
            }
        };
        let (settings, shared, admin) = (settings.clone(), shared.clone(), admin.take());
        let (stop_tx, mut stop_rx) = (stop_tx.clone(), stop_rx.clone());
        let shard = std::thread::Builder::new()
            .name(format!("terminator-{i}"))
            .spawn(move || -> Result<(), String> {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| format!("cannot start runtime: {e}"))?;
                let result = rt.block_on(async {
                    let http =
                        tokio::net::TcpListener::from_std(http).map_err(|e| e.to_string())?;
                    let admin = match admin {
                        Some(a) => {
                            Some(tokio::net::TcpListener::from_std(a).map_err(|e| e.to_string())?)
                        }
                        None => None,
                    };
                    let shutdown = async {
                        tokio::select! {
                            _ = bus::signal::shutdown() => {}
                            _ = stop_rx.wait_for(|stop| *stop) => {}
                        }
                    };
                    server::serve(settings, http, admin, shared, shutdown)
                        .await
                        .map_err(|e| e.to_string())
                });
                if result.is_err() {
                    stop_tx.send_replace(true);
                }
                result
            });
        match shard {
            Ok(t) => shards.push(t),
            Err(e) => {
                eprintln!("terminator: cannot start a shard thread: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    let mut code = ExitCode::SUCCESS;
    for t in shards {
        match t.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                eprintln!("terminator: {e}");
                code = ExitCode::FAILURE;
            }
            Err(_) => code = ExitCode::FAILURE,
        }
    }
    if code == ExitCode::SUCCESS {
        tracing::info!("stopped");
    }
    code
}
