//! The end-of-run report: the human summary, the `--json` object, and the
//! rate check that makes an open-loop run fail when it fell short.

use std::fmt::Write as _;

use serde_json::{json, Map, Value};

use crate::histo::Percentiles;
use crate::run::RunOutput;
use crate::server_stats::ServerView;

/// What the run was asked to do, for the report's header.
pub struct Setup<'a> {
    pub url: &'a str,
    pub connections: u32,
    pub threads: u32,
    pub h2: bool,
    pub streams: u32,
    pub target_rps: Option<f64>,
}

/// Responses per second of the window.
pub fn achieved(out: &RunOutput) -> f64 {
    out.stats.responses() as f64 / out.window.as_secs_f64()
}

/// `Some(message)` when an open-loop run missed its target by more than
/// `tolerance_pct`: the generator (or the server) could not keep up, and the
/// latency figures describe a lighter load than the one asked for.
pub fn rate_shortfall(out: &RunOutput, target: Option<f64>, tolerance_pct: f64) -> Option<String> {
    let target = target?;
    let got = achieved(out);
    let short = (1.0 - got / target) * 100.0;
    if short <= tolerance_pct {
        return None;
    }
    Some(format!(
        "target rate missed: achieved {got:.1} req/s of {target:.1} req/s ({short:.1}% short, \
         tolerance {tolerance_pct}%); {} requests were due but never sent, schedule lag p99 {:.3} ms. \
         The generator or the server could not keep up: add connections (-c) or threads (-t), \
         or lower --rate.",
        out.stats.unsent,
        Percentiles::quantile(&out.stats.lag, 0.99)
    ))
}

pub fn human(setup: &Setup, out: &RunOutput, server: &[ServerView]) -> String {
    let s = &out.stats;
    let mut o = String::new();
    let mode = match setup.target_rps {
        Some(_) => "open loop",
        None => "closed loop",
    };
    let proto = if setup.h2 {
        format!("h2c, {} streams/connection", setup.streams)
    } else {
        "HTTP/1.1".to_string()
    };
    let _ = writeln!(
        o,
        "{} — {mode}, {proto}, {} connections, {} threads, {:.1}s",
        setup.url,
        setup.connections,
        setup.threads,
        out.window.as_secs_f64()
    );
    let got = achieved(out);
    match setup.target_rps {
        Some(t) => {
            let _ = writeln!(
                o,
                "  rate      target {t:.1} req/s, achieved {got:.1} req/s ({} responses, {} unsent)",
                s.responses(),
                s.unsent
            );
        }
        None => {
            let _ = writeln!(
                o,
                "  rate      {got:.1} req/s ({} responses)",
                s.responses()
            );
        }
    }
    let _ = writeln!(
        o,
        "  latency ms            p50       p90       p99     p99.9       max"
    );
    let row = |o: &mut String, name: &str, p: Percentiles| {
        let _ = writeln!(
            o,
            "  {name:<16} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>9.3}",
            p.p50, p.p90, p.p99, p.p999, p.max
        );
    };
    if setup.target_rps.is_some() {
        row(&mut o, "corrected", Percentiles::of(&s.corrected));
        row(&mut o, "raw (from send)", Percentiles::of(&s.raw));
        row(&mut o, "schedule lag", Percentiles::of(&s.lag));
    } else {
        row(&mut o, "latency", Percentiles::of(&s.corrected));
    }
    for v in server {
        match &v.result {
            Ok(p) => {
                let _ =
                    writeln!(
                    o,
                    "  server p99 {:.3} ms (p50 {:.3}, {} requests) vs client p99 {:.3} ms — {}{}",
                    p.p99,
                    p.p50,
                    v.count,
                    Percentiles::quantile(&s.corrected, 0.99),
                    v.url,
                    if v.subtracted { "" } else { " (after snapshot only)" }
                );
            }
            Err(e) => {
                let _ = writeln!(o, "  server stats {}: {e}", v.url);
            }
        }
    }
    let statuses: Vec<String> = s.statuses().map(|(c, n)| format!("{c}: {n}")).collect();
    let _ = writeln!(
        o,
        "  status    {}",
        if statuses.is_empty() {
            "none".into()
        } else {
            statuses.join(", ")
        }
    );
    let errors: Vec<String> = s
        .errors()
        .iter()
        .map(|(k, n)| format!("{k}: {n}"))
        .collect();
    let _ = writeln!(
        o,
        "  errors    {}",
        if errors.is_empty() {
            "none".into()
        } else {
            errors.join(", ")
        }
    );
    o
}

pub fn json(setup: &Setup, out: &RunOutput, server: &[ServerView], tolerance_pct: f64) -> Value {
    let s = &out.stats;
    let status: Map<String, Value> = s
        .statuses()
        .map(|(c, n)| (c.to_string(), json!(n)))
        .collect();
    let errors: Map<String, Value> = s
        .errors()
        .into_iter()
        .map(|(k, n)| (k.to_string(), json!(n)))
        .collect();
    let server: Vec<Value> = server
        .iter()
        .map(|v| match &v.result {
            Ok(p) => json!({"url": v.url, "requests": v.count, "subtracted": v.subtracted, "latency_ms": p.to_json()}),
            Err(e) => json!({"url": v.url, "error": e}),
        })
        .collect();
    let by_class: Map<String, Value> = s
        .by_class
        .iter()
        .enumerate()
        .filter(|(_, h)| !h.is_empty())
        .map(|(i, h)| (format!("{}xx", i + 1), Percentiles::of(h).to_json()))
        .collect();
    let r3 = |v: f64| (v * 1000.0).round() / 1000.0;
    json!({
        "url": setup.url,
        "mode": if setup.target_rps.is_some() { "open" } else { "closed" },
        "protocol": if setup.h2 { "h2c" } else { "http/1.1" },
        "connections": setup.connections,
        "streams": setup.streams,
        "threads": setup.threads,
        "rps": r3(achieved(out)),
        "target_rps": setup.target_rps,
        "met_target": setup.target_rps.map(|_| rate_shortfall(out, setup.target_rps, tolerance_pct).is_none()),
        "requests": s.responses(),
        "unsent": s.unsent,
        "duration_s": out.window.as_secs_f64(),
        "latency_ms": Percentiles::of(&s.corrected).to_json(),
        "raw_latency_ms": Percentiles::of(&s.raw).to_json(),
        "schedule_lag_ms": Percentiles::of(&s.lag).to_json(),
        "latency_by_class_ms": by_class,
        "status": status,
        "errors": errors,
        "error_count": s.error_count(),
        "server": server,
    })
}
