//! `sbctl`: the operator's CLI for a Switchboard fleet: what runs where
//! at which version, the traffic policy per service, and ramping a new
//! version up with automatic rollback. It works against the etcd the
//! stack uses and reads the terminators' admin ports.
//!
//! # Layout
//!
//! - [`store`]: registrations and policies in etcd.
//! - [`fleet`]: per-version counts and latency from the terminators.
//! - [`ramp`]: `sbctl ramp`, step by step, judged between steps.
//! - this file: the commands.

pub mod fleet;
pub mod ramp;
pub mod store;

use clap::{Parser, Subcommand};
use std::process::ExitCode;
use std::time::Duration;
use store::Store;

const EXAMPLES: &str = "\
Examples:
  sbctl status
  sbctl weights aggregator v1=90 v2=10
  sbctl pin aggregator --header x-switchboard-version --cookie sb-version
  sbctl pin aggregator --off
  sbctl ramp aggregator v2 --step 10 --every 30s --max-error-rate 1% --max-p99 25ms
  sbctl ghost aggregator v2 --fraction 0.1 --ignore /generated_at,/items/*/id
  sbctl ghost aggregator            (what the ghost found: counts and last mismatches)
  sbctl ghost aggregator --off
  sbctl policy aggregator";

#[derive(Parser, Debug)]
#[command(name = "sbctl", version, about = "Switchboard's operator CLI: versions, traffic policy, ramp-ups", after_help = EXAMPLES)]
pub struct Cli {
    /// etcd endpoints, comma-separated
    #[arg(
        long,
        env = "SWITCHBOARD_ETCD",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:2379"
    )]
    pub etcd: Vec<String>,
    /// Admin URLs of the terminators whose measurements count (status and
    /// ramp sum them), comma-separated; the registered processes of other
    /// services are added (the aggregator measures its backend calls)
    #[arg(
        long = "terminator-admin",
        env = "SBCTL_TERMINATOR_ADMIN",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:8001"
    )]
    pub terminator_admin: Vec<String>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Services, their instances and versions, the weights in force, and
    /// each version's request rate, error rate and p99 (over --window)
    Status {
        /// Only this service
        service: Option<String>,
        /// How long to measure rates over
        #[arg(long, default_value = "1s", value_parser = duration)]
        window: Duration,
    },
    /// Sets the weights of a service's versions (VERSION=WEIGHT ...,
    /// relative, 0-10000); versions not named get no new calls
    Weights {
        service: String,
        #[arg(required = true, value_parser = weight)]
        weights: Vec<(String, u32)>,
    },
    /// Pins requests to the version a header or cookie names
    Pin {
        service: String,
        #[arg(long)]
        header: Option<String>,
        #[arg(long)]
        cookie: Option<String>,
        /// Removes the pin
        #[arg(long, conflicts_with_all = ["header", "cookie"])]
        off: bool,
    },
    /// Moves traffic to VERSION step by step; rolls back by itself when the
    /// version's error rate or p99 over a step exceeds the limit
    Ramp {
        service: String,
        version: String,
        /// Percentage points added per step
        #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=100))]
        step: u32,
        /// Time between steps: each step is judged over it
        #[arg(long, default_value = "30s", value_parser = duration)]
        every: Duration,
        /// Rolls back above this share of 5xx (`1%` or `0.01`)
        #[arg(long = "max-error-rate", default_value = "1%", value_parser = rate)]
        max_error_rate: f64,
        /// Rolls back above this p99 (`25ms`) [default: not judged]
        #[arg(long = "max-p99", value_parser = duration)]
        max_p99: Option<Duration>,
        /// Fewer requests than this in a step: hold and judge again
        #[arg(long = "min-requests", default_value_t = 20)]
        min_requests: u64,
    },
    /// Mirrors a sampled fraction of SERVICE's idempotent requests to
    /// VERSION and compares its replies with the real ones (which alone
    /// reach clients). Without VERSION: what the ghost found so far,
    /// summed over the terminators, and the last mismatches
    Ghost {
        service: String,
        version: Option<String>,
        /// Share of requests copied, 0 to 1
        #[arg(long, default_value = "0.1", value_parser = fraction)]
        fraction: f64,
        /// Methods copied, comma-separated (idempotent ones only) [default: GET,HEAD]
        #[arg(long, value_delimiter = ',')]
        methods: Vec<String>,
        /// Headers compared, comma-separated [default: content-type]
        #[arg(long = "compare-headers", value_delimiter = ',')]
        compare_headers: Vec<String>,
        /// JSON pointers left out of the body comparison (fields that
        /// differ on every call), comma-separated; `*` matches any member
        #[arg(long, value_delimiter = ',')]
        ignore: Vec<String>,
        /// Copies in flight at once per terminator; more are skipped [default: 64]
        #[arg(long = "max-in-flight")]
        max_in_flight: Option<usize>,
        /// Mismatches kept per route on the admin port [default: 20]
        #[arg(long)]
        samples: Option<usize>,
        /// Stops the ghost
        #[arg(long, conflicts_with = "version")]
        off: bool,
    },
    /// Prints the service's policy document from etcd
    Policy { service: String },
}

fn fraction(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(f) if (0.0..=1.0).contains(&f) => Ok(f),
        _ => Err(format!("{s:?}: a fraction is from 0 to 1, e.g. 0.1")),
    }
}

fn duration(s: &str) -> Result<Duration, String> {
    svc_host::parse_duration(s)
}

fn weight(s: &str) -> Result<(String, u32), String> {
    let (v, w) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: give VERSION=WEIGHT, e.g. v2=10"))?;
    let w: u32 = w
        .parse()
        .map_err(|_| format!("{s:?}: the weight must be a whole number"))?;
    Ok((v.to_string(), w))
}

fn rate(s: &str) -> Result<f64, String> {
    let r = match s.strip_suffix('%') {
        Some(p) => p.parse::<f64>().map(|p| p / 100.0),
        None => s.parse::<f64>(),
    }
    .map_err(|_| format!("{s:?}: give a rate as `1%` or `0.01`"))?;
    if (0.0..=1.0).contains(&r) {
        Ok(r)
    } else {
        Err(format!("{s:?}: a rate is between 0% and 100%"))
    }
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("sbctl: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sbctl: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<(), String> {
    let mut store = Store::connect(&cli.etcd).await?;
    match cli.command {
        Command::Status { service, window } => {
            status(
                &mut store,
                &cli.terminator_admin,
                service.as_deref(),
                window,
            )
            .await
        }
        Command::Weights { service, weights } => {
            let mut doc = store.policy(&service).await?;
            Store::set_weights(&mut doc, &weights);
            store.put_policy(&service, &doc).await?;
            println!("{service}: weights {}", show(&weights));
            Ok(())
        }
        Command::Pin {
            service,
            header,
            cookie,
            off,
        } => {
            let mut doc = store.policy(&service).await?;
            if off {
                doc.remove("pin");
            } else {
                if header.is_none() && cookie.is_none() {
                    return Err("pin: give --header, --cookie or both (or --off)".into());
                }
                let mut pin = serde_json::Map::new();
                if let Some(h) = header {
                    pin.insert("header".into(), h.into());
                }
                if let Some(c) = cookie {
                    pin.insert("cookie".into(), c.into());
                }
                doc.insert("pin".into(), pin.into());
            }
            store.put_policy(&service, &doc).await?;
            println!("{service}: {}", serde_json::Value::Object(doc));
            Ok(())
        }
        Command::Ramp {
            service,
            version,
            step,
            every,
            max_error_rate,
            max_p99,
            min_requests,
        } => {
            let plan = ramp::Plan {
                service,
                version,
                step,
                every,
                max_error_rate,
                max_p99_ms: max_p99.map(|d| d.as_secs_f64() * 1000.0),
                min_requests,
                max_holds: 10,
            };
            let admins = store.callers(&cli.terminator_admin, &plan.service).await?;
            ramp::run(&mut store, &admins, &plan).await
        }
        Command::Ghost {
            service,
            version,
            fraction,
            methods,
            compare_headers,
            ignore,
            max_in_flight,
            samples,
            off,
        } => {
            let Some(version) = version.filter(|_| !off) else {
                if off {
                    let mut doc = store.policy(&service).await?;
                    doc.remove("ghost");
                    store.put_policy(&service, &doc).await?;
                    println!("{service}: ghost off");
                    return Ok(());
                }
                let admins = store.callers(&cli.terminator_admin, &service).await?;
                return fleet::ghost_report(&admins, &service).await;
            };
            let mut g = serde_json::Map::new();
            g.insert("version".into(), version.clone().into());
            g.insert("fraction".into(), fraction.into());
            if !methods.is_empty() {
                g.insert("methods".into(), methods.into());
            }
            if !compare_headers.is_empty() {
                g.insert("compare_headers".into(), compare_headers.into());
            }
            if !ignore.is_empty() {
                g.insert("ignore".into(), ignore.into());
            }
            if let Some(n) = max_in_flight {
                g.insert("max_in_flight".into(), n.into());
            }
            if let Some(n) = samples {
                g.insert("samples".into(), n.into());
            }
            let mut doc = store.policy(&service).await?;
            doc.insert("ghost".into(), g.into());
            store.put_policy(&service, &doc).await?;
            println!("{service}: ghost {version} at {fraction}");
            Ok(())
        }
        Command::Policy { service } => {
            let doc = store.policy(&service).await?;
            println!("{}", serde_json::Value::Object(doc));
            Ok(())
        }
    }
}

fn show(w: &[(String, u32)]) -> String {
    w.iter()
        .map(|(v, w)| format!("{v}={w}"))
        .collect::<Vec<_>>()
        .join(" ")
}

async fn status(
    store: &mut Store,
    admins: &[String],
    only: Option<&str>,
    window: Duration,
) -> Result<(), String> {
    let regs = store.registrations().await?;
    let by = discovery::watcher::by_service(
        &regs
            .into_iter()
            .map(|r| (r.key(), r))
            .collect::<discovery::Snapshot>(),
    );
    for (service, mut regs) in by {
        if only.is_some_and(|o| o != service) {
            continue;
        }
        regs.sort_by(|a, b| (&a.version, &a.bus).cmp(&(&b.version, &b.bus)));
        let doc = store.policy(&service).await?;
        let weights = Store::weights(&doc);
        println!("{service}");
        if !doc.is_empty() {
            println!("  policy  {}", serde_json::Value::Object(doc.clone()));
        }
        let mut versions: Vec<String> = regs.iter().map(|r| r.version.clone()).collect();
        versions.dedup();
        let callers = &store.callers(admins, &service).await?;
        let mut before = Vec::new();
        for v in &versions {
            before.push(fleet::sample(callers, &service, v).await);
        }
        tokio::time::sleep(window).await;
        println!(
            "  {:<12} {:>7} {:>9} {:>9} {:>7} {:>9}",
            "VERSION", "WEIGHT", "INSTANCES", "REQ/S", "ERR%", "P99 ms"
        );
        for (v, b) in versions.iter().zip(before) {
            let n = regs.iter().filter(|r| &r.version == v).count();
            let weight = if weights.is_empty() {
                "-".to_string()
            } else {
                weights
                    .iter()
                    .find(|(x, _)| x == v)
                    .map_or("0".into(), |(_, w)| w.to_string())
            };
            let (rate, err, p99) = match (b, fleet::sample(callers, &service, v).await) {
                (Ok(b), Ok(a)) => {
                    let w = fleet::Window::between(&b, &a);
                    (
                        format!("{:.1}", w.requests as f64 / window.as_secs_f64()),
                        format!("{:.2}", w.error_rate() * 100.0),
                        w.p99_ms.map_or("-".into(), |p| format!("{p:.1}")),
                    )
                }
                (Err(e), _) | (_, Err(e)) => {
                    eprintln!("sbctl: {e}");
                    ("?".into(), "?".into(), "?".into())
                }
            };
            println!("  {v:<12} {weight:>7} {n:>9} {rate:>9} {err:>7} {p99:>9}");
        }
        for r in &regs {
            println!(
                "    {:<12} {}  admin {}  instance {}",
                r.version, r.bus, r.admin, r.instance
            );
        }
        // Every caller mirrors its own calls: terminators and services.
        if doc.contains_key("ghost") {
            match fleet::ghost_totals(callers, &service).await {
                Ok(t) => {
                    for ((route, version), c) in &t.sums {
                        let shown: Vec<String> = traffic::ghost::VERDICTS
                            .iter()
                            .zip(c)
                            .map(|(k, n)| format!("{k} {n}"))
                            .collect();
                        println!("  ghost {version} on {route}: {}", shown.join(", "));
                    }
                }
                Err(e) => eprintln!("sbctl: {e}"),
            }
        }
    }
    Ok(())
}
