//! `loadtest`: Switchboard's HTTP load generator.
//!
//! Closed loop like wrk (`-c` connections each sending back to back), or open
//! loop at a fixed `--rate` where every request has an intended send instant
//! and latency counts from it, so a stalled server cannot hide the requests
//! it delayed (coordinated omission). HDR histograms in constant memory,
//! human/JSON/hgrm output, rate sweeps with an SLO search, and the server's
//! own histograms beside the client's. See `docs/loadtest.md`.
//!
//! # Layout
//!
//! The hot path (a worker's send loop and its recording) is kept apart from
//! everything that runs once (flags, reports, sweeps), so that the part
//! that decides whether the generator can keep up stays small enough to
//! read and measure on its own.
//!
//! - [`args`]: flags (clap) and the parsers for durations, rates, SLOs.
//!   Every bad value is a message and exit code 2, never a panic.
//! - [`target`]: the URL and its `{i}` key pattern; builds each request.
//!   Requests are built before the run, so the hot path only picks one.
//! - [`schedule`]: due instants (open/closed loop) and the send loop, written
//!   against an `Exchange` trait so tokio's paused clock can test the
//!   scheduling without a network.
//! - [`timer`]: sub-millisecond sleeps (timerfd) for the open-loop schedule,
//!   because tokio's millisecond timer wheel alone would add 1–2 ms of lag.
//! - [`worker`]: worker threads, each a single-threaded runtime (no work
//!   stealing, no cross-thread wakeups), connections (HTTP/1.1, h2c),
//!   thread-local recording (no locks on the hot path).
//! - [`h1`]: the lean HTTP/1.1 client connection used on the hot path: one
//!   write and one read per request; hyper's client spends ~3.5× its user
//!   CPU per request (measured in `docs/loadtest.md`).
//! - [`stats`]: per-worker counts: histograms, statuses, failures.
//! - [`histo`]: HDR histogram helpers (µs, 3 significant digits, constant
//!   memory, exact merges), percentiles, `.hgrm` text.
//! - [`run`]: one measured window: start, per-second lines, merge.
//! - [`report`]: human summary, `--json`, the rate check.
//! - [`sweep`], [`svg`]: `--sweep`/`--find-max`, CSV and the chart.
//! - [`server_stats`]: `--server-stats`: the server's histograms.

pub mod args;
pub mod h1;
pub mod histo;
pub mod report;
pub mod run;
pub mod schedule;
pub mod server_stats;
pub mod stats;
pub mod svg;
pub mod sweep;
pub mod target;
pub mod timer;
pub mod worker;

use std::io::IsTerminal as _;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use clap::Parser as _;

use crate::args::Args;
use crate::run::Chatter;
use crate::worker::Plan;

/// Why the process stops early: bad input (exit 2) or a failed run (exit 1).
enum Failure {
    Usage(String),
    Run(String),
}

pub fn main() -> ExitCode {
    let args = Args::parse(); // clap reports bad flags itself, with code 2
    match cli(args) {
        Ok(code) => code,
        Err(Failure::Usage(m)) => {
            eprintln!("loadtest: error: {m}");
            ExitCode::from(2)
        }
        Err(Failure::Run(m)) => {
            eprintln!("loadtest: {m}");
            ExitCode::FAILURE
        }
    }
}

/// What every window of this invocation shares.
struct Setup {
    args: Args,
    addr: std::net::SocketAddr,
    body: Bytes,
    threads: u32,
}

impl Setup {
    fn plan(&self, rate: Option<f64>, window: Duration) -> Result<Arc<Plan>, Failure> {
        let a = &self.args;
        let template = target::Template::new(
            &a.url,
            a.h2,
            !a.hyper,
            target::RequestSpec {
                method: a.method.clone(),
                headers: &a.headers,
                body: self.body.clone(),
                keys: a.keys,
                order: a.key_order,
            },
        )
        .map_err(Failure::Usage)?;
        Ok(Arc::new(Plan {
            addr: self.addr,
            template,
            h2: a.h2,
            lean_h1: !a.hyper,
            connections: a.connections,
            streams: if a.h2 { a.streams } else { 1 },
            threads: self.threads,
            rate,
            window,
            timeout: a.timeout,
        }))
    }

    /// Warm-up (discarded), then the measured window.
    fn measure(&self, rate: Option<f64>, chatter: Chatter) -> Result<run::RunOutput, Failure> {
        if let Some(w) = self.args.warmup.filter(|w| !w.is_zero()) {
            run::run(self.plan(rate, w)?, Chatter::Quiet).map_err(Failure::Run)?;
        }
        run::run(self.plan(rate, self.args.duration)?, chatter).map_err(Failure::Run)
    }

    fn report_setup(&self, rate: Option<f64>) -> report::Setup<'_> {
        report::Setup {
            url: &self.args.url.raw,
            connections: self.args.connections,
            threads: self.threads,
            h2: self.args.h2,
            streams: if self.args.h2 { self.args.streams } else { 1 },
            target_rps: rate,
        }
    }
}

fn cli(args: Args) -> Result<ExitCode, Failure> {
    args.validate().map_err(Failure::Usage)?;
    args.check_outputs().map_err(Failure::Usage)?;
    let body = match (&args.body, &args.body_file) {
        (Some(b), _) => Bytes::from(b.clone()),
        (None, Some(p)) => std::fs::read(p)
            .map(Bytes::from)
            .map_err(|e| Failure::Usage(format!("--body-file {}: {e}", p.display())))?,
        (None, None) => Bytes::new(),
    };
    let addr = args.url.resolve().map_err(Failure::Usage)?;
    // One plain connect first: an unreachable target is one clear message,
    // not thousands of connect errors.
    std::net::TcpStream::connect_timeout(&addr, args.timeout).map_err(|e| {
        Failure::Run(format!(
            "cannot connect to {} ({addr}): {e}",
            args.url.authority
        ))
    })?;
    let setup = Setup {
        threads: args.threads.min(args.connections),
        args,
        addr,
        body,
    };
    if setup.args.sweep.is_some() || setup.args.find_max {
        return sweep_cli(&setup);
    }
    single(&setup)
}

fn chatter(quiet: bool) -> Chatter {
    if quiet {
        Chatter::Quiet
    } else if std::io::stderr().is_terminal() {
        Chatter::Bar
    } else {
        Chatter::Lines
    }
}

fn single(setup: &Setup) -> Result<ExitCode, Failure> {
    let a = &setup.args;
    let stats_timeout = Duration::from_secs(2);
    let before = server_stats::snapshot(&a.server_stats, stats_timeout);
    let out = setup.measure(a.rate, chatter(a.quiet))?;
    let after = server_stats::snapshot(&a.server_stats, stats_timeout);
    let server = server_stats::compare(&a.server_stats, before, after);
    for v in &server {
        if let Err(e) = &v.result {
            eprintln!(
                "loadtest: warning: --server-stats {}: {e}; carrying on without it",
                v.url
            );
        }
    }
    let rs = setup.report_setup(a.rate);
    if a.json {
        println!("{}", report::json(&rs, &out, &server, a.tolerance));
    } else {
        print!("{}", report::human(&rs, &out, &server));
    }
    if let Some(p) = &a.hgrm {
        std::fs::write(p, histo::hgrm(&out.stats.corrected))
            .map_err(|e| Failure::Run(format!("cannot write {}: {e}", p.display())))?;
    }
    if out.stats.responses() == 0 {
        let errors: Vec<String> = out
            .stats
            .errors()
            .iter()
            .map(|(k, n)| format!("{k}: {n}"))
            .collect();
        eprintln!(
            "loadtest: no responses in the window (errors: {}); nothing was measured",
            if errors.is_empty() {
                "none".to_string()
            } else {
                errors.join(", ")
            }
        );
        return Ok(ExitCode::FAILURE);
    }
    if let Some(msg) = report::rate_shortfall(&out, a.rate, a.tolerance) {
        eprintln!("loadtest: {msg}");
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

fn sweep_cli(setup: &Setup) -> Result<ExitCode, Failure> {
    let a = &setup.args;
    let criteria = sweep::Criteria {
        slo: a.slo,
        tolerance_pct: a.tolerance,
        max_errors_pct: a.max_errors,
    };
    let mut measure = |rate: f64| -> Result<sweep::Step, String> {
        let out = match setup.measure(Some(rate), Chatter::Quiet) {
            Ok(o) => o,
            Err(Failure::Run(m) | Failure::Usage(m)) => return Err(m),
        };
        let step = sweep::Step::judge(rate, &out, &criteria);
        if !a.quiet {
            eprintln!("{}", step.line());
        }
        Ok(step)
    };
    let steps = match a.sweep {
        Some(spec) => sweep::rates(spec)
            .into_iter()
            .map(&mut measure)
            .collect::<Result<Vec<_>, _>>(),
        None => sweep::find_max(a.rate.unwrap_or(500.0), &mut measure),
    }
    .map_err(Failure::Run)?;

    let conclusion = sweep::conclusion(&steps, a.slo);
    if a.json {
        println!("{}", sweep::to_json(&steps, a.slo));
    } else {
        let mut sorted: Vec<&sweep::Step> = steps.iter().collect();
        sorted.sort_by(|x, y| x.rate.total_cmp(&y.rate));
        for s in sorted {
            println!("{}", s.line());
        }
        println!("{conclusion}");
    }
    let write = |path: &std::path::Path, text: String| {
        std::fs::write(path, text)
            .map_err(|e| Failure::Run(format!("cannot write {}: {e}", path.display())))
    };
    if let Some(p) = &a.csv {
        write(p, sweep::csv(&steps))?;
    }
    if let Some(p) = &a.svg {
        let title = format!("{} — {} connections", a.url.raw, a.connections);
        write(p, svg::chart(&steps, a.slo, &title))?;
    }
    if a.json {
        eprintln!("{conclusion}");
    }
    Ok(ExitCode::SUCCESS)
}
