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
//! - [`security`]: the `--bus-security` / `--curve-*` flags: NULL or CURVE,
//!   keys and who may connect.
//! - [`process`]: the life of every binary, terminator included:
//!   arguments, logging, statsd, listeners, runtime layout, exit code.
//! - [`reload`]: files re-read on change and on SIGHUP (certificates,
//!   authorised keys, the admin token), the old kept when a reload fails.
//! - [`signal`]: SIGTERM/SIGINT, on which every binary drains.
//! - [`init_tracing`]: logging, set up the same way everywhere.
//! - [`parse_duration`]: `250ms`, `2s`, `1m`, `1h` in flags, env and files.

pub mod accept;
pub mod admin;
pub mod flags;
pub mod metrics;
pub mod process;
pub mod reload;
pub mod security;
pub mod signal;

pub use process::{Layout, Process, Shard};

use std::time::Duration;

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

impl RuntimeArgs {
    /// The runtime layout `--threads` asks for (a bad value is one of the
    /// process's problems, reported before this is used).
    pub fn layout(&self) -> Layout {
        Layout::Shared(self.threads().ok().flatten().map(usize::from))
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
