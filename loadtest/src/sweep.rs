//! `--sweep FROM:TO:STEP` and `--find-max`: one open-loop window per rate
//! (each after its own warm-up), judged against the SLO, written as a table,
//! CSV and SVG.
//!
//! A step passes when it achieved its rate (within `--tolerance`), kept
//! errors under `--max-errors`, and held the SLO on the *corrected* latency.
//! All three matter: a server that sheds load with fast 503s, or a
//! generator that quietly sent less than asked, has not met the SLO at that
//! rate.

use std::fmt::Write as _;

use crate::args::Slo;
use crate::histo::Percentiles;
use crate::report::achieved;
use crate::run::RunOutput;

/// One rate's result.
#[derive(Debug, Clone)]
pub struct Step {
    pub rate: f64,
    pub achieved: f64,
    pub requests: u64,
    pub latency: Percentiles,
    pub raw_p99: f64,
    pub lag_p99: f64,
    /// Errors per request sent (responses + failures), 0..1.
    pub error_rate: f64,
    pub unsent: u64,
    pub pass: bool,
    /// Why it failed, for the step line.
    pub verdict: String,
}

/// What a step is judged by.
pub struct Criteria {
    pub slo: Option<Slo>,
    pub tolerance_pct: f64,
    pub max_errors_pct: f64,
}

impl Step {
    pub fn judge(rate: f64, out: &RunOutput, c: &Criteria) -> Step {
        let s = &out.stats;
        let got = achieved(out);
        let errors = s.error_count();
        let attempts = s.responses() + s.connect_errors + s.read_errors + s.io_errors + s.timeouts;
        let error_rate = if attempts == 0 {
            1.0
        } else {
            errors as f64 / attempts as f64
        };
        let mut why = Vec::new();
        let short = (1.0 - got / rate) * 100.0;
        if short > c.tolerance_pct {
            why.push(format!("rate {short:.1}% short"));
        }
        if error_rate * 100.0 > c.max_errors_pct {
            why.push(format!("errors {:.2}%", error_rate * 100.0));
        }
        if let Some(slo) = c.slo {
            let v = Percentiles::quantile(&s.corrected, slo.quantile);
            if v > slo.limit.as_secs_f64() * 1000.0 || s.responses() == 0 {
                why.push(format!("{} {v:.3} ms", slo.label));
            }
        }
        Step {
            rate,
            achieved: got,
            requests: s.responses(),
            latency: Percentiles::of(&s.corrected),
            raw_p99: Percentiles::quantile(&s.raw, 0.99),
            lag_p99: Percentiles::quantile(&s.lag, 0.99),
            error_rate,
            unsent: s.unsent,
            pass: why.is_empty(),
            verdict: if why.is_empty() {
                "pass".into()
            } else {
                format!("fail: {}", why.join(", "))
            },
        }
    }

    pub fn line(&self) -> String {
        format!(
            "rate {:>9.1} req/s: achieved {:>9.1}  p50 {:.3}  p99 {:.3}  p99.9 {:.3} ms  errors {:.2}%  {}",
            self.rate,
            self.achieved,
            self.latency.p50,
            self.latency.p99,
            self.latency.p999,
            self.error_rate * 100.0,
            self.verdict
        )
    }
}

/// The rates of `FROM:TO:STEP`, TO included when it falls on a step.
pub fn rates((from, to, step): (f64, f64, f64)) -> Vec<f64> {
    let n = ((to - from) / step + 1e-9).floor() as u64;
    (0..=n).map(|i| from + step * i as f64).collect()
}

/// Searches the highest passing rate: doubles from `start` until a step
/// fails (halves while the first ones fail), then bisects between the best
/// pass and the lowest failure until they are within 5% of each other.
/// `measure` runs one step.
pub fn find_max(
    start: f64,
    mut measure: impl FnMut(f64) -> Result<Step, String>,
) -> Result<Vec<Step>, String> {
    let mut steps = Vec::new();
    let (mut lo, mut hi): (Option<f64>, Option<f64>) = (None, None);
    let mut rate = start;
    for _ in 0..24 {
        let step = measure(rate)?;
        let pass = step.pass;
        steps.push(step);
        if pass {
            lo = Some(rate);
        } else {
            hi = Some(rate);
        }
        rate = match (lo, hi) {
            (Some(l), None) => l * 2.0,
            (None, Some(h)) => h / 2.0,
            (Some(l), Some(h)) => {
                if (h - l) / l <= 0.05 {
                    break;
                }
                ((l + h) / 2.0).round()
            }
            (None, None) => unreachable!("a step was just judged"),
        };
        if rate < 1.0 {
            break; // nothing passes even at 1 req/s
        }
    }
    Ok(steps)
}

/// The highest passing rate.
pub fn best(steps: &[Step]) -> Option<f64> {
    steps
        .iter()
        .filter(|s| s.pass)
        .map(|s| s.rate)
        .reduce(f64::max)
}

pub fn csv(steps: &[Step]) -> String {
    let mut o = String::from(
        "target_rps,achieved_rps,requests,p50_ms,p90_ms,p99_ms,p999_ms,max_ms,raw_p99_ms,lag_p99_ms,error_rate,unsent,pass\n",
    );
    for s in steps {
        let _ = writeln!(
            o,
            "{:.1},{:.1},{},{:.3},{:.3},{:.3},{:.3},{:.3},{:.3},{:.3},{:.5},{},{}",
            s.rate,
            s.achieved,
            s.requests,
            s.latency.p50,
            s.latency.p90,
            s.latency.p99,
            s.latency.p999,
            s.latency.max,
            s.raw_p99,
            s.lag_p99,
            s.error_rate,
            s.unsent,
            s.pass
        );
    }
    o
}

pub fn to_json(steps: &[Step], slo: Option<Slo>) -> serde_json::Value {
    let steps: Vec<_> = steps
        .iter()
        .map(|s| {
            serde_json::json!({
                "target_rps": s.rate, "rps": (s.achieved * 1000.0).round() / 1000.0,
                "requests": s.requests, "latency_ms": s.latency.to_json(),
                "raw_p99_ms": s.raw_p99, "schedule_lag_p99_ms": s.lag_p99,
                "error_rate": s.error_rate, "unsent": s.unsent, "pass": s.pass, "verdict": s.verdict,
            })
        })
        .collect();
    serde_json::json!({
        "slo": slo.map(|s| serde_json::json!({"percentile": s.label, "limit_ms": s.limit.as_secs_f64() * 1000.0})),
        "max_rate": best_of_json(&steps),
        "steps": steps,
    })
}

fn best_of_json(steps: &[serde_json::Value]) -> Option<f64> {
    steps
        .iter()
        .filter(|s| s["pass"] == true)
        .filter_map(|s| s["target_rps"].as_f64())
        .reduce(f64::max)
}

/// `max rate with p99 <= 25 ms: 12000 req/s`
pub fn conclusion(steps: &[Step], slo: Option<Slo>) -> String {
    let what = match slo {
        Some(s) => format!("{} <= {} ms", s.label, s.limit.as_secs_f64() * 1000.0),
        None => "the target rate met without errors".to_string(),
    };
    match best(steps) {
        Some(r) => format!("max rate with {what}: {r:.0} req/s"),
        None => format!(
            "no rate tried met {what} (lowest tried: {:.0} req/s)",
            steps.iter().map(|s| s.rate).fold(f64::INFINITY, f64::min)
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(rate: f64, pass: bool) -> Step {
        Step {
            rate,
            achieved: rate,
            requests: 1,
            latency: Percentiles::default(),
            raw_p99: 0.0,
            lag_p99: 0.0,
            error_rate: 0.0,
            unsent: 0,
            pass,
            verdict: String::new(),
        }
    }

    #[test]
    fn sweep_rates() {
        assert_eq!(
            rates((100.0, 500.0, 100.0)),
            [100.0, 200.0, 300.0, 400.0, 500.0]
        );
        assert_eq!(rates((100.0, 450.0, 100.0)), [100.0, 200.0, 300.0, 400.0]);
        assert_eq!(rates((5.0, 5.0, 1.0)), [5.0]);
    }

    #[test]
    fn find_max_doubles_then_bisects_to_the_limit() {
        // Everything up to 3000 req/s passes.
        let steps = find_max(500.0, |r| Ok(step(r, r <= 3000.0))).unwrap();
        let best = best(&steps).unwrap();
        assert!((2850.0..=3000.0).contains(&best), "{best}");
        let tried: Vec<f64> = steps.iter().map(|s| s.rate).collect();
        assert_eq!(&tried[..4], [500.0, 1000.0, 2000.0, 4000.0]);
        assert!(steps.len() < 12);
        // Nothing passes: halves down, then gives up.
        let steps = find_max(8.0, |r| Ok(step(r, false))).unwrap();
        assert!(super::best(&steps).is_none());
    }
}
