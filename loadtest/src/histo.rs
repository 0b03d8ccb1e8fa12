//! HDR histograms in microseconds (3 significant digits, constant memory),
//! their percentile summaries, and the `.hgrm` percentile-distribution text
//! that HdrHistogram's plotter reads.

use std::fmt::Write as _;

use hdrhistogram::Histogram;

/// Highest trackable value: 1000 s in µs. Larger values saturate (a request
/// cannot outlive its timeout by much anyway).
const HIGHEST_US: u64 = 1_000_000_000;
const SIGFIG: u8 = 3;

/// A fresh latency histogram (µs).
pub fn new() -> Histogram<u64> {
    Histogram::new_with_bounds(1, HIGHEST_US, SIGFIG).expect("static bounds are valid")
}

/// Records a duration in whole microseconds.
#[inline]
pub fn record(h: &mut Histogram<u64>, d: std::time::Duration) {
    h.saturating_record(d.as_micros().min(HIGHEST_US as u128) as u64);
}

/// Adds `src` into `dst`. Both come from [`new`], so they always fit; a
/// foreign histogram (server stats) may not, and then the error says why.
pub fn merge(dst: &mut Histogram<u64>, src: &Histogram<u64>) -> Result<(), String> {
    dst.add(src).map_err(|e| format!("{e:?}"))
}

/// The percentiles every report shows, in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Percentiles {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub mean: f64,
}

impl Percentiles {
    /// From a histogram in µs (zeros when it is empty).
    pub fn of(h: &Histogram<u64>) -> Percentiles {
        if h.is_empty() {
            return Percentiles::default();
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Percentiles {
            p50: ms(h.value_at_quantile(0.5)),
            p90: ms(h.value_at_quantile(0.9)),
            p99: ms(h.value_at_quantile(0.99)),
            p999: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
            mean: h.mean() / 1000.0,
        }
    }

    pub fn quantile(h: &Histogram<u64>, q: f64) -> f64 {
        if h.is_empty() {
            0.0
        } else {
            h.value_at_quantile(q) as f64 / 1000.0
        }
    }

    pub fn to_json(self) -> serde_json::Value {
        let r = |v: f64| (v * 1000.0).round() / 1000.0;
        serde_json::json!({
            "p50": r(self.p50), "p90": r(self.p90), "p99": r(self.p99),
            "p999": r(self.p999), "max": r(self.max), "mean": r(self.mean),
        })
    }
}

/// The percentile distribution as HdrHistogram's `outputPercentileDistribution`
/// prints it (5 ticks per half distance, values scaled from µs to ms), which
/// is what the HdrHistogram plotter and wrk2 use.
pub fn hgrm(h: &Histogram<u64>) -> String {
    const SCALE: f64 = 1000.0; // µs -> ms
    let mut out = String::new();
    let _ = write!(
        out,
        "{:>12} {:>14} {:>10} {:>14}\n\n",
        "Value", "Percentile", "TotalCount", "1/(1-Percentile)"
    );
    let mut total = 0u64;
    if !h.is_empty() {
        for v in h.iter_quantiles(5) {
            total += v.count_since_last_iteration();
            let value = v.value_iterated_to() as f64 / SCALE;
            let q = v.quantile_iterated_to();
            if q < 1.0 {
                let _ = writeln!(
                    out,
                    "{value:12.3} {q:2.12} {total:10} {:14.2}",
                    1.0 / (1.0 - q)
                );
            } else {
                let _ = writeln!(out, "{value:12.3} {q:2.12} {total:10}");
            }
        }
    }
    let (mean, stdev, max) = if h.is_empty() {
        (0.0, 0.0, 0.0)
    } else {
        (h.mean() / SCALE, h.stdev() / SCALE, h.max() as f64 / SCALE)
    };
    // Sub-buckets: the power of two that holds 2 * 10^sigfig values.
    let sub_buckets = (2 * 10u32.pow(h.sigfig() as u32)).next_power_of_two();
    let _ = writeln!(
        out,
        "#[Mean    = {mean:12.3}, StdDeviation   = {stdev:12.3}]"
    );
    let _ = writeln!(
        out,
        "#[Max     = {max:12.3}, Total count    = {:12}]",
        h.len()
    );
    let _ = writeln!(
        out,
        "#[Buckets = {:12}, SubBuckets     = {sub_buckets:12}]",
        h.buckets()
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hgrm_table_counts_every_value() {
        let mut h = new();
        for v in 1..=1000u64 {
            h.record(v * 10).unwrap(); // 10 µs .. 10 ms
        }
        let text = hgrm(&h);
        let rows: Vec<Vec<&str>> = text
            .lines()
            .skip(2)
            .take_while(|l| !l.starts_with('#'))
            .map(|l| l.split_whitespace().collect())
            .collect();
        let last = rows.last().unwrap();
        assert_eq!(last.len(), 3, "last row has no 1/(1-p) column");
        assert_eq!(last[1].parse::<f64>().unwrap(), 1.0);
        assert_eq!(last[2], "1000");
        assert!((last[0].parse::<f64>().unwrap() - 10.0).abs() < 0.02);
        assert!(
            text.contains("#[Max     =       10.007, Total count    =         1000]"),
            "{text}"
        );
        assert!(text.contains("SubBuckets     =         2048]"));
        let p = Percentiles::of(&h);
        assert!(
            (p.p50 - 5.0).abs() < 0.01 && (p.p99 - 9.9).abs() < 0.02,
            "{p:?}"
        );
    }
}
