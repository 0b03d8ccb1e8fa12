//! Command line: clap derive for the flags, plus the small parsers for the
//! values clap cannot read on its own (durations like `5s`, rates like `2k`,
//! `--sweep FROM:TO:STEP`, `--slo p99=25ms`, `--keys A..B`).
//!
//! Every parser returns a message instead of panicking: clap prints it and
//! exits with code 2, as the other Switchboard binaries do for bad values.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};

use crate::target::Target;

/// HTTP load generator: closed loop (like wrk) or open loop at a fixed rate
/// with latency measured from the intended send time (coordinated omission
/// corrected). `{i}` in the URL is replaced by a key from `--keys`.
#[derive(Parser, Debug, Clone)]
#[command(name = "loadtest", version, about, max_term_width = 100)]
pub struct Args {
    /// Target URL (http:// only), e.g. http://127.0.0.1:8000/kv/k{i}
    #[arg(value_parser = Target::parse)]
    pub url: Target,

    /// Connections (HTTP/1.1: one request in flight each)
    #[arg(short = 'c', long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub connections: u32,

    /// Measured window, e.g. 10s, 500ms, 2m
    #[arg(short = 'd', long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,

    /// Worker threads, each with its own single-threaded runtime
    #[arg(short = 't', long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub threads: u32,

    /// Open loop: total requests per second, scheduled at fixed instants (e.g. 2000, 2.5k)
    #[arg(short = 'R', long, value_parser = parse_rate)]
    pub rate: Option<f64>,

    /// HTTP/2 with prior knowledge (h2c)
    #[arg(long)]
    pub h2: bool,

    /// HTTP/1.1 through hyper's client instead of the built-in lean one
    /// (slower; to cross-check)
    #[arg(long, conflicts_with = "h2")]
    pub hyper: bool,

    /// HTTP/2 only: concurrent streams per connection
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub streams: u32,

    /// Request method
    #[arg(short = 'm', long, default_value = "GET", value_parser = parse_method)]
    pub method: http::Method,

    /// Request header 'name: value' (repeatable)
    #[arg(short = 'H', long = "header", value_parser = parse_header)]
    pub headers: Vec<(http::HeaderName, http::HeaderValue)>,

    /// Request body
    #[arg(long, conflicts_with = "body_file")]
    pub body: Option<String>,

    /// Request body read from a file
    #[arg(long)]
    pub body_file: Option<PathBuf>,

    /// Keys substituted for `{i}` in the URL: N (0..N) or a range A..B (B excluded)
    #[arg(long, value_parser = parse_keys)]
    pub keys: Option<(u64, u64)>,

    /// How keys are picked
    #[arg(long, value_enum, default_value_t = KeyOrder::RoundRobin)]
    pub key_order: KeyOrder,

    /// Per-request timeout (counted as a `timeout` error)
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub timeout: Duration,

    /// Run this long before each measured window and discard it
    #[arg(long, value_parser = parse_duration)]
    pub warmup: Option<Duration>,

    /// Print one JSON object on stdout instead of the human summary
    #[arg(long)]
    pub json: bool,

    /// Write the corrected latency distribution (HdrHistogram .hgrm text, ms)
    #[arg(long, value_name = "FILE")]
    pub hgrm: Option<PathBuf>,

    /// Open loop: fail (exit 1) when the achieved rate misses the target by more than PCT
    #[arg(long, default_value_t = 5.0, value_name = "PCT")]
    pub tolerance: f64,

    /// Rate sweep FROM:TO:STEP (open loop, one window per rate)
    #[arg(long, value_parser = parse_sweep, value_name = "FROM:TO:STEP")]
    pub sweep: Option<(f64, f64, f64)>,

    /// Search the highest rate meeting --slo (starts at --rate or 500, doubles, then bisects)
    #[arg(long)]
    pub find_max: bool,

    /// Latency objective for --sweep/--find-max, e.g. p99=25ms
    #[arg(long, value_parser = parse_slo)]
    pub slo: Option<Slo>,

    /// Sweep/find-max: a step fails above this share of errors (PCT of requests)
    #[arg(long, default_value_t = 1.0, value_name = "PCT")]
    pub max_errors: f64,

    /// Sweep results as CSV
    #[arg(long, value_name = "FILE")]
    pub csv: Option<PathBuf>,

    /// Sweep results as an SVG chart
    #[arg(long, value_name = "FILE")]
    pub svg: Option<PathBuf>,

    /// Server histogram endpoint(s) fetched before and after the window (repeatable or comma-separated)
    #[arg(long, value_name = "URL", value_delimiter = ',')]
    pub server_stats: Vec<String>,

    /// No per-second lines or progress bar
    #[arg(short = 'q', long)]
    pub quiet: bool,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyOrder {
    RoundRobin,
    Random,
}

/// A latency objective: `quantile` (0.99 for p99) must stay at or under `limit`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Slo {
    pub quantile: f64,
    pub limit: Duration,
    /// As the user wrote it ("p99"), for messages.
    pub label: &'static str,
}

impl Args {
    /// Checks that concern several flags at once; clap has read each value.
    pub fn validate(&self) -> Result<(), String> {
        let sweeping = self.sweep.is_some() || self.find_max;
        if self.find_max && self.slo.is_none() {
            return Err("--find-max needs --slo, e.g. --slo p99=25ms".into());
        }
        if self.find_max && self.sweep.is_some() {
            return Err("give either --sweep or --find-max, not both".into());
        }
        if sweeping && self.hgrm.is_some() {
            return Err(
                "--hgrm describes one window; it cannot be used with --sweep/--find-max".into(),
            );
        }
        if sweeping && !self.server_stats.is_empty() {
            return Err(
                "--server-stats compares one window; it cannot be used with --sweep/--find-max"
                    .into(),
            );
        }
        if !sweeping && (self.csv.is_some() || self.svg.is_some()) {
            return Err("--csv and --svg need --sweep or --find-max".into());
        }
        if self.streams > 1 && !self.h2 {
            return Err(
                "--streams needs --h2 (HTTP/1.1 has one request in flight per connection)".into(),
            );
        }
        if !(self.tolerance >= 0.0 && self.tolerance < 100.0) {
            return Err(format!("--tolerance {}: must be in 0..100", self.tolerance));
        }
        if !(self.max_errors >= 0.0 && self.max_errors <= 100.0) {
            return Err(format!(
                "--max-errors {}: must be in 0..100",
                self.max_errors
            ));
        }
        if self.duration.is_zero() {
            return Err("--duration must be more than 0".into());
        }
        if self.timeout.is_zero() {
            return Err("--timeout must be more than 0".into());
        }
        // A window that holds no scheduled request measures nothing, and
        // its "achieved rate" would be one request over a short window.
        let lowest = match (self.sweep, self.rate) {
            (Some((from, _, _)), _) if !self.find_max => Some(from),
            (_, r) => r,
        };
        if let Some(r) = lowest {
            if r * self.duration.as_secs_f64() < 1.0 {
                return Err(format!(
                    "{r} req/s over {:?} is less than one request: lengthen --duration or raise the rate",
                    self.duration
                ));
            }
        }
        match (self.url.has_key(), self.keys) {
            (true, None) => return Err("the URL contains {i}: give --keys N or --keys A..B".into()),
            (false, Some(_)) => return Err("--keys given but the URL has no {i} to replace".into()),
            _ => {}
        }
        Ok(())
    }

    /// Output files are written after the run: refuse a path that cannot
    /// be written before spending the run on it.
    pub fn check_outputs(&self) -> Result<(), String> {
        let outputs = [
            ("--hgrm", &self.hgrm),
            ("--csv", &self.csv),
            ("--svg", &self.svg),
        ];
        for (flag, path) in outputs {
            let Some(p) = path else { continue };
            if p.is_dir() {
                return Err(format!("{flag} {}: is a directory", p.display()));
            }
            let parent = match p.parent() {
                Some(d) if !d.as_os_str().is_empty() => d,
                _ => std::path::Path::new("."),
            };
            if !parent.is_dir() {
                return Err(format!(
                    "{flag} {}: no directory {}",
                    p.display(),
                    parent.display()
                ));
            }
        }
        Ok(())
    }

    /// Users: concurrent request loops (connections × streams).
    pub fn users(&self) -> u32 {
        self.connections
            .saturating_mul(if self.h2 { self.streams } else { 1 })
    }
}

/// `250ms`, `5s`, `2m`, `1h`, `1.5s`, `100us`; a bare number is seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let v: f64 = num
        .parse()
        .map_err(|_| format!("bad duration {s:?}: expected e.g. 5s, 500ms, 2m"))?;
    let scale = match unit.trim() {
        "" | "s" => 1.0,
        "ms" => 1e-3,
        "us" | "µs" => 1e-6,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        other => {
            return Err(format!(
                "bad duration {s:?}: unknown unit {other:?} (use us, ms, s, m, h)"
            ))
        }
    };
    let secs = v * scale;
    if !secs.is_finite() || !(0.0..=1e9).contains(&secs) {
        return Err(format!("bad duration {s:?}: out of range"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// `2000`, `2.5k`, `1M`: requests per second, more than 0.
pub fn parse_rate(s: &str) -> Result<f64, String> {
    let t = s.trim();
    let (num, scale) = match t.as_bytes().last() {
        Some(b'k' | b'K') => (&t[..t.len() - 1], 1e3),
        Some(b'm' | b'M') => (&t[..t.len() - 1], 1e6),
        _ => (t, 1.0),
    };
    let v: f64 = num
        .parse()
        .map_err(|_| format!("bad rate {s:?}: expected requests per second, e.g. 2000 or 2.5k"))?;
    let r = v * scale;
    if !r.is_finite() || r <= 0.0 || r > 1e8 {
        return Err(format!(
            "bad rate {s:?}: must be more than 0 and at most 100M"
        ));
    }
    Ok(r)
}

fn parse_method(s: &str) -> Result<http::Method, String> {
    http::Method::from_bytes(s.as_bytes()).map_err(|_| format!("bad method {s:?}"))
}

fn parse_header(s: &str) -> Result<(http::HeaderName, http::HeaderValue), String> {
    let (k, v) = s
        .split_once(':')
        .ok_or_else(|| format!("bad header {s:?}: expected 'name: value'"))?;
    let name = http::HeaderName::from_bytes(k.trim().as_bytes())
        .map_err(|_| format!("bad header name {:?}", k.trim()))?;
    let value = http::HeaderValue::from_str(v.trim())
        .map_err(|_| format!("bad header value for {name}"))?;
    Ok((name, value))
}

/// `N` means keys 0..N; `A..B` keys A..B, B excluded.
pub fn parse_keys(s: &str) -> Result<(u64, u64), String> {
    let bad = || format!("bad --keys {s:?}: expected N or A..B");
    let (a, b) = match s.split_once("..") {
        Some((a, b)) => (
            a.trim().parse::<u64>().map_err(|_| bad())?,
            b.trim().parse::<u64>().map_err(|_| bad())?,
        ),
        None => (0, s.trim().parse::<u64>().map_err(|_| bad())?),
    };
    if b <= a {
        return Err(format!("bad --keys {s:?}: the range is empty"));
    }
    Ok((a, b))
}

/// `FROM:TO:STEP`, rates as for `--rate`.
pub fn parse_sweep(s: &str) -> Result<(f64, f64, f64), String> {
    let parts: Vec<&str> = s.split(':').collect();
    let [from, to, step] = parts[..] else {
        return Err(format!(
            "bad --sweep {s:?}: expected FROM:TO:STEP, e.g. 1000:20000:1000"
        ));
    };
    let (from, to, step) = (parse_rate(from)?, parse_rate(to)?, parse_rate(step)?);
    if to < from {
        return Err(format!("bad --sweep {s:?}: TO is below FROM"));
    }
    if (to - from) / step > 1000.0 {
        return Err(format!("bad --sweep {s:?}: more than 1000 steps"));
    }
    Ok((from, to, step))
}

/// `p99=25ms`, `p50=5ms`, `p99.9=100ms`, `p999=100ms`.
pub fn parse_slo(s: &str) -> Result<Slo, String> {
    let bad = || format!("bad --slo {s:?}: expected e.g. p99=25ms (p50, p90, p99, p99.9)");
    let (p, limit) = s.split_once('=').ok_or_else(bad)?;
    let (quantile, label) = match p.trim() {
        "p50" => (0.5, "p50"),
        "p90" => (0.9, "p90"),
        "p99" => (0.99, "p99"),
        "p99.9" | "p999" => (0.999, "p99.9"),
        _ => return Err(bad()),
    };
    let limit = parse_duration(limit)?;
    if limit.is_zero() {
        return Err(bad());
    }
    Ok(Slo {
        quantile,
        limit,
        label,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("5s").unwrap(), Duration::from_secs(5));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("1.5").unwrap(), Duration::from_millis(1500));
        for bad in ["", "s", "5x", "-1s", "1e400s", "abc"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn rates_and_sweeps() {
        assert_eq!(parse_rate("2.5k").unwrap(), 2500.0);
        assert!(parse_rate("0").is_err() && parse_rate("x").is_err() && parse_rate("-5").is_err());
        assert_eq!(parse_sweep("100:1k:100").unwrap(), (100.0, 1000.0, 100.0));
        assert!(parse_sweep("100:50:10").is_err() && parse_sweep("1:2").is_err());
    }

    #[test]
    fn keys_and_slo() {
        assert_eq!(parse_keys("10").unwrap(), (0, 10));
        assert_eq!(parse_keys("5..9").unwrap(), (5, 9));
        assert!(parse_keys("9..5").is_err() && parse_keys("0").is_err());
        let s = parse_slo("p99=25ms").unwrap();
        assert_eq!((s.quantile, s.limit), (0.99, Duration::from_millis(25)));
        assert!(parse_slo("p98=1ms").is_err() && parse_slo("p99").is_err());
    }
}
