//! What every bus service process needs besides the bus: the admin HTTP
//! listener, logging set up the same way everywhere, and the runtime.
//!
//! # Layout
//!
//! - [`admin`]: `/healthz`, `/readyz`, `/stats`, `/stats/histograms` and
//!   process-specific JSON pages.
//! - [`metrics`]: the `--statsd*` / `--metrics` flags and the statsd flush.
//! - [`service_main`]: the whole life of a bus service binary (arguments,
//!   logging, statsd, runtime, admin listener, drain).
//! - [`init_tracing`], [`runtime`]: process setup shared by the binaries.
//! - [`parse_duration`]: `250ms`, `2s`, `1m`, `1h` in flags, env and files.

pub mod admin;
pub mod flags;
pub mod metrics;

use std::fmt::Display;
use std::future::Future;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;
use tokio::net::TcpListener;

/// The whole life of a bus service binary around its `serve`: every
/// argument problem reported (exit 2), logging, the statsd flush, the
/// runtime and the admin listener; `serve(admin listener, admin address)`
/// runs until the signal has drained it.
pub fn service_main<F, Fut, E>(
    name: &str,
    problems: Vec<String>,
    metrics: &metrics::MetricsArgs,
    runtime_args: &RuntimeArgs,
    admin: SocketAddr,
    serve: F,
) -> ExitCode
where
    F: FnOnce(TcpListener, String) -> Fut,
    Fut: Future<Output = Result<(), E>>,
    E: Display,
{
    if !problems.is_empty() {
        for p in problems {
            eprintln!("{name}: {p}");
        }
        return ExitCode::from(2);
    }
    init_tracing();
    let _statsd = metrics.settings().ok().and_then(|m| m.start(name));
    let rt = match runtime(runtime_args.threads().ok().flatten()) {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{name}: cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async move {
        let listener = match TcpListener::bind(admin).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("{name}: cannot listen on {admin} (admin): {e}");
                return ExitCode::FAILURE;
            }
        };
        let addr = listener
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        match serve(listener, addr).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("{name}: {e}");
                ExitCode::FAILURE
            }
        }
    })
}

/// Logs to stderr, filtered by `SWITCHBOARD_LOG` (default `info`); colour
/// only when stderr is a terminal and `NO_COLOR` is unset, so logs piped or
/// written to a file carry no escape codes.
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SWITCHBOARD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(use_colour(
            std::io::IsTerminal::is_terminal(&std::io::stderr()),
            std::env::var_os("NO_COLOR").as_deref(),
        ))
        .try_init();
}

/// Colour on a terminal unless `NO_COLOR` is set to anything non-empty
/// (<https://no-color.org>).
fn use_colour(terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    terminal && !matches!(no_color, Some(v) if !v.is_empty())
}

/// `--threads` for a service: how many threads its runtime has.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct RuntimeArgs {
    /// Threads to run on; 1 runs everything on one thread (no work-stealing
    /// wake-ups: cheapest per request where the stack shares a few cores,
    /// as under scripts/up; add instances to scale) [default: one per core]
    #[arg(long, env = "SWITCHBOARD_THREADS")]
    pub threads: Option<String>,
}

impl RuntimeArgs {
    /// `--threads` as a number (None: one per core), or the problem.
    pub fn threads(&self) -> Result<Option<u16>, String> {
        self.threads
            .as_deref()
            .map(|v| match v.trim().parse::<u16>() {
                Ok(n) if n >= 1 => Ok(n),
                _ => Err(format!("--threads: `{v}` is not a number from 1 to 65535")),
            })
            .transpose()
    }
}

/// The tokio runtime a service binary runs on: work-stealing with one
/// worker per core by default, a single thread for `--threads 1`.
pub fn runtime(threads: Option<u16>) -> std::io::Result<tokio::runtime::Runtime> {
    match threads {
        Some(1) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        Some(n) => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n as usize)
            .enable_all()
            .build(),
        None => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build(),
    }
}

/// `250ms`, `2s`, `1m`, `1h`: durations in flags, env and config files.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("`{s}` has no unit (ms, s, m, h)"))?;
    let (n, unit) = s.split_at(split);
    let n: u64 = n.parse().map_err(|_| format!("`{s}` is not a duration"))?;
    let d = match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n * 60),
        "h" => Duration::from_secs(n * 3600),
        _ => return Err(format!("`{s}`: unknown unit `{unit}` (ms, s, m, h)")),
    };
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        use std::ffi::OsStr;
        assert!(use_colour(true, None));
        assert!(use_colour(true, Some(OsStr::new(""))));
        assert!(!use_colour(true, Some(OsStr::new("1"))));
        assert!(!use_colour(false, None));
    }

    #[test]
    fn threads_reports_its_problem() {
        let t = |v: &str| {
            RuntimeArgs {
                threads: Some(v.into()),
            }
            .threads()
        };
        assert_eq!(RuntimeArgs::default().threads(), Ok(None));
        assert_eq!(t("2"), Ok(Some(2)));
        assert!(t("0").unwrap_err().starts_with("--threads: `0`"));
        assert!(t("many").is_err());
    }
}
