//! What every bus service process needs besides the bus: the admin HTTP
//! listener, logging set up the same way everywhere, and the runtime.
//!
//! # Layout
//!
//! - [`accept`]: back-off and once-per-burst logging for failed accepts
//!   (out of file descriptors).
//! - [`admin`]: `/healthz`, `/readyz`, `/stats`, `/stats/histograms` and
//!   process-specific JSON pages.
//! - [`metrics`]: the `--statsd*` / `--metrics` flags and the statsd flush.
//! - [`process`]: the life of every binary, terminator included:
//!   arguments, logging, statsd, listeners, runtime layout, exit code.
//! - [`signal`]: SIGTERM/SIGINT, on which every binary drains.
//! - [`init_tracing`]: logging, set up the same way everywhere.
//! - [`parse_duration`]: `250ms`, `2s`, `1m`, `1h` in flags, env and files.

pub mod accept;
pub mod admin;
pub mod metrics;
pub mod process;
pub mod signal;

pub use process::{Layout, Process, Shard};

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

/// `--threads` for a service: how many threads its runtime has.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct RuntimeArgs {
    /// Threads to run on; 1 runs everything on one thread (no work-stealing
    /// wake-ups: cheapest per request where the stack shares a few cores,
    /// as under scripts/up; add instances to scale) [default: one per core]
    #[arg(long, env = "SWITCHBOARD_THREADS", value_parser = clap::value_parser!(u16).range(1..))]
    pub threads: Option<u16>,
}

impl RuntimeArgs {
    pub fn layout(&self) -> Layout {
        Layout::Shared(self.threads.map(usize::from))
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
