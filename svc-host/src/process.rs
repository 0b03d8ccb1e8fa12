//! The life of every Switchboard binary, in the same steps for all three:
//!
//! ```text
//! Process::start   every argument problem reported at once (exit 2),
//!                  logging, the statsd flush
//! Process::bind    listeners bound before any runtime, so a taken port
//!                  fails fast with its name (exit 1)
//! Process::run     the runtime layout; `serve` per shard until SIGTERM or
//!                  SIGINT has drained it; exit 0, or 1 with the error
//! ```
//!
//! A process is one or more shards. [`Layout::Shared`] is one tokio runtime
//! (current-thread for one thread, work-stealing otherwise);
//! [`Layout::PerCore`] is one single-threaded runtime per thread, each
//! calling `serve` with its own index, so that nothing a shard owns is
//! touched by another thread. Shard 0 gets the admin listener. A shard that
//! fails stops the others: the process exits with its error rather than run
//! on short of a core.

use crate::metrics::MetricsSettings;
use std::fmt::Display;
use std::future::Future;
use std::net::{SocketAddr, TcpListener};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use tokio::sync::watch;

/// How a process uses the machine's cores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// One runtime with this many threads (one per core if `None`); one
    /// thread runs without work-stealing.
    Shared(Option<usize>),
    /// This many single-threaded runtimes, one per thread.
    PerCore(usize),
}

/// A started process: logging is up and the statsd flush runs while it
/// lives.
pub struct Process {
    name: &'static str,
    _statsd: Option<telemetry::statsd::Flusher>,
}

/// What one shard of a process gets.
pub struct Shard {
    pub index: usize,
    /// The admin listener, for shard 0 only.
    pub admin: Option<tokio::net::TcpListener>,
    stop: watch::Receiver<bool>,
}

impl Shard {
    /// Resolves on SIGTERM or SIGINT, or when another shard failed.
    pub fn shutdown(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut stop = self.stop.clone();
        async move {
            tokio::select! {
                _ = crate::signal::shutdown() => {}
                _ = stop.wait_for(|s| *s) => {}
            }
        }
    }
}

impl Process {
    /// Reports every problem with the arguments (exit 2), then sets up
    /// logging and the statsd flush.
    pub fn start(
        name: &'static str,
        problems: Vec<String>,
        metrics: Option<&MetricsSettings>,
    ) -> Result<Process, ExitCode> {
        if !problems.is_empty() {
            for p in problems {
                eprintln!("{name}: {p}");
            }
            return Err(ExitCode::from(2));
        }
        crate::init_tracing();
        Ok(Process {
            name,
            _statsd: metrics.and_then(|m| m.start(name)),
        })
    }

    /// Binds `addr` (non-blocking, for tokio); `what` names the port in the
    /// error.
    pub fn bind(&self, addr: SocketAddr, what: &str) -> Result<TcpListener, ExitCode> {
        TcpListener::bind(addr)
            .and_then(|l| l.set_nonblocking(true).map(|_| l))
            .map_err(|e| {
                eprintln!("{}: cannot listen on {addr} ({what}): {e}", self.name);
                ExitCode::FAILURE
            })
    }

    /// Runs `serve` on every shard of `layout` until each returns. Shard 0
    /// gets `admin`.
    pub fn run<F, Fut, E>(self, layout: Layout, admin: TcpListener, serve: F) -> ExitCode
    where
        F: Fn(Shard) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), E>>,
        E: Display,
    {
        let (stop_tx, stop_rx) = watch::channel(false);
        let stop_tx = Arc::new(stop_tx);
        let stop_all = stop_tx.clone();
        let admin = Arc::new(Mutex::new(Some(admin)));
        let serve = Arc::new(serve);
        let shard = move |index: usize| -> Result<(), String> {
            let rt = match layout {
                Layout::Shared(threads) => runtime(threads),
                Layout::PerCore(_) => runtime(Some(1)),
            }
            .map_err(|e| format!("cannot start runtime: {e}"))?;
            let result = rt.block_on(async {
                let admin = match admin.lock().ok().and_then(|mut a| a.take()) {
                    Some(a) => {
                        Some(tokio::net::TcpListener::from_std(a).map_err(|e| e.to_string())?)
                    }
                    None => None,
                };
                let shard = Shard {
                    index,
                    admin,
                    stop: stop_rx.clone(),
                };
                serve(shard).await.map_err(|e| e.to_string())
            });
            if result.is_err() {
                stop_tx.send_replace(true);
            }
            result
        };
        let result = match layout {
            Layout::Shared(_) => shard(0),
            Layout::PerCore(n) => {
                let shard = Arc::new(shard);
                let mut threads = Vec::new();
                let mut result = Ok(());
                for i in 0..n.max(1) {
                    let shard = shard.clone();
                    match std::thread::Builder::new()
                        .name(format!("{}-{i}", self.name))
                        .spawn(move || shard(i))
                    {
                        Ok(t) => threads.push(t),
                        Err(e) => {
                            result = Err(format!("cannot start a shard thread: {e}"));
                            stop_all.send_replace(true);
                            break;
                        }
                    }
                }
                for t in threads {
                    let r = t.join().unwrap_or_else(|_| Err("a shard panicked".into()));
                    if result.is_ok() {
                        result = r;
                    }
                }
                result
            }
        };
        match result {
            Ok(()) => {
                tracing::info!("stopped");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{}: {e}", self.name);
                ExitCode::FAILURE
            }
        }
    }
}

/// The whole life of a bus service binary, on the skeleton above: every
/// problem reported, the admin listener bound, then `serve(admin listener,
/// admin address)` on `layout` until SIGTERM or SIGINT has drained it.
pub fn service_main<F, Fut, E>(
    name: &'static str,
    problems: Vec<String>,
    metrics: Option<&MetricsSettings>,
    layout: Layout,
    admin: SocketAddr,
    serve: F,
) -> ExitCode
where
    F: Fn(tokio::net::TcpListener, String) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), E>>,
    E: Display,
{
    let process = match Process::start(name, problems, metrics) {
        Ok(p) => p,
        Err(code) => return code,
    };
    let admin = match process.bind(admin, "admin") {
        Ok(l) => l,
        Err(code) => return code,
    };
    let at = admin
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let serve = Arc::new(serve);
    process.run(layout, admin, move |shard| {
        let (serve, at) = (serve.clone(), at.clone());
        async move {
            let admin = shard.admin.ok_or("no admin listener")?;
            serve(admin, at).await.map_err(|e| e.to_string())
        }
    })
}

/// The tokio runtime for `threads` threads: current-thread for one,
/// work-stealing otherwise (one worker per core if `None`).
pub fn runtime(threads: Option<usize>) -> std::io::Result<tokio::runtime::Runtime> {
    match threads {
        Some(1) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        Some(n) => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n)
            .enable_all()
            .build(),
        None => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build(),
    }
}
