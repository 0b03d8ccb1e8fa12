//! What every bus service process needs besides the bus: the admin HTTP
//! listener, logging set up the same way everywhere, and the runtime.
//!
//! # Layout
//!
//! - [`admin`]: `/healthz`, `/readyz`, `/stats`, `/stats/histograms` and
//!   process-specific JSON pages.
//! - [`metrics`]: the `--statsd*` / `--metrics` flags and the statsd flush.
//! - [`init_tracing`], [`runtime`]: process setup shared by the binaries.
//! - [`parse_duration`]: `250ms`, `2s`, `1m`, `1h` in flags, env and files.

pub mod admin;
pub mod metrics;

use std::time::Duration;

/// Logs to stderr, filtered by `SWITCHBOARD_LOG` (default `info`).
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SWITCHBOARD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// The multi-thread tokio runtime every service binary runs on.
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
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
