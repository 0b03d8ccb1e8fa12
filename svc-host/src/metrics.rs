//! The metrics flags every process shares (`#[command(flatten)]`), and
//! starting the statsd flush from them.
//!
//! Values stay strings until [`MetricsArgs::settings`], so every bad value
//! is reported with the process's other problems.

use std::time::Duration;
use telemetry::statsd::{self, StatsdOptions};

#[derive(clap::Args, Debug, Clone, Default)]
pub struct MetricsArgs {
    /// statsd address HOST:PORT, or `off` [default: 127.0.0.1:8125]
    #[arg(long, env = "SWITCHBOARD_STATSD")]
    pub statsd: Option<String>,
    /// How often counts and percentiles go to statsd [default: 10s]
    #[arg(long = "statsd-flush", env = "SWITCHBOARD_STATSD_FLUSH")]
    pub statsd_flush: Option<String>,
    /// Fraction of requests also sent as statsd timers (`|ms`), 0 to 1 [default: 0]
    #[arg(long = "statsd-timer-rate", env = "SWITCHBOARD_STATSD_TIMER_RATE")]
    pub statsd_timer_rate: Option<String>,
    /// Record metrics at all: `on` or `off` (off: /stats is empty, nothing
    /// goes to statsd; for measuring their cost) [default: on]
    #[arg(long, env = "SWITCHBOARD_METRICS")]
    pub metrics: Option<String>,
}

#[derive(Debug, Clone)]
pub struct MetricsSettings {
    pub enabled: bool,
    /// None: no statsd.
    pub statsd: Option<String>,
    pub flush: Duration,
    pub timer_rate: f64,
}

impl MetricsArgs {
    pub fn settings(&self) -> Result<MetricsSettings, Vec<String>> {
        let mut p = Vec::new();
        let enabled = match self.metrics.as_deref() {
            None | Some("on") => true,
            Some("off") => false,
            Some(v) => {
                p.push(format!("--metrics: {v:?} is not on or off"));
                true
            }
        };
        let statsd = match self.statsd.as_deref() {
            Some("off") | Some("") => None,
            None => Some(statsd::DEFAULT_ADDR.to_string()),
            Some(a) => {
                let ok = a.rsplit_once(':').is_some_and(|(h, port)| {
                    !h.is_empty() && port.parse::<u16>().is_ok_and(|n| n > 0)
                });
                if !ok {
                    p.push(format!("--statsd: {a:?} is not HOST:PORT (or off)"));
                }
                Some(a.to_string())
            }
        };
        let flush = match self.statsd_flush.as_deref().map(crate::parse_duration) {
            None => statsd::DEFAULT_FLUSH,
            Some(Ok(d)) if d >= Duration::from_millis(100) => d,
            Some(Ok(_)) => {
                p.push("--statsd-flush: at least 100ms".into());
                statsd::DEFAULT_FLUSH
            }
            Some(Err(e)) => {
                p.push(format!("--statsd-flush: {e}"));
                statsd::DEFAULT_FLUSH
            }
        };
        let timer_rate = match self.statsd_timer_rate.as_deref() {
            None => 0.0,
            Some(v) => match v.parse::<f64>() {
                Ok(r) if (0.0..=1.0).contains(&r) => r,
                _ => {
                    p.push(format!(
                        "--statsd-timer-rate: {v:?} is not a number from 0 to 1"
                    ));
                    0.0
                }
            },
        };
        if p.is_empty() {
            Ok(MetricsSettings {
                enabled,
                statsd,
                flush,
                timer_rate,
            })
        } else {
            Err(p)
        }
    }
}

impl MetricsSettings {
    /// Applies the on/off switch and starts the statsd flush (keep the
    /// returned value alive: dropping it flushes once more and stops). A
    /// statsd address that does not resolve is a warning, not a failure.
    pub fn start(&self, process: &str) -> Option<statsd::Flusher> {
        telemetry::set_enabled(self.enabled);
        let addr = self.statsd.clone().filter(|_| self.enabled)?;
        match statsd::start(StatsdOptions {
            addr: addr.clone(),
            flush: self.flush,
            process: process.into(),
            timer_rate: self.timer_rate,
        }) {
            Ok(f) => Some(f),
            Err(e) => {
                tracing::warn!(statsd = %addr, error = %e, "statsd unavailable; metrics stay on the admin port");
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_every_bad_value() {
        let s = MetricsArgs::default().settings().unwrap();
        assert!(s.enabled);
        assert_eq!(s.statsd.as_deref(), Some("127.0.0.1:8125"));
        assert_eq!(s.flush, Duration::from_secs(10));
        let bad = MetricsArgs {
            statsd: Some("nope".into()),
            statsd_flush: Some("1x".into()),
            statsd_timer_rate: Some("2".into()),
            metrics: Some("maybe".into()),
        };
        assert_eq!(bad.settings().unwrap_err().len(), 4);
        let off = MetricsArgs {
            statsd: Some("off".into()),
            ..MetricsArgs::default()
        };
        assert!(off.settings().unwrap().statsd.is_none());
    }
}
