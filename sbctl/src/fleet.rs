//! What the terminators measured per version, read from their admin
//! ports: `version.<service>.<version>.requests` and `.errors` from
//! `/stats`, the latency histogram from `/stats/histograms` (merged
//! exactly across terminators, never averaged).

use hdrhistogram::Histogram;
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(3);

/// One version's totals at one moment, summed over every terminator.
#[derive(Debug, Clone, Default)]
pub struct Sample {
    pub requests: u64,
    pub errors: u64,
    pub latency: Option<Histogram<u64>>,
}

/// What happened between two samples.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Window {
    pub requests: u64,
    pub errors: u64,
    /// Milliseconds; None without requests.
    pub p99_ms: Option<f64>,
}

impl Window {
    pub fn between(before: &Sample, after: &Sample) -> Window {
        let requests = after.requests.saturating_sub(before.requests);
        let errors = after.errors.saturating_sub(before.errors);
        let p99_ms = after.latency.as_ref().and_then(|a| {
            let mut d = a.clone();
            if let Some(b) = &before.latency {
                // A terminator restarted in between: use what is there.
                if d.subtract(b).is_err() {
                    d = a.clone();
                }
            }
            (!d.is_empty()).then(|| d.value_at_quantile(0.99) as f64 / 1000.0)
        });
        Window {
            requests,
            errors,
            p99_ms,
        }
    }

    /// Errors per request, 0 to 1.
    pub fn error_rate(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            self.errors as f64 / self.requests as f64
        }
    }
}

fn metric(service: &str, version: &str) -> String {
    format!(
        "version.{}.{}",
        telemetry::sanitize(service),
        telemetry::sanitize(version)
    )
}

/// Sums `version` of `service` over every terminator admin URL. A
/// terminator that does not answer is an error: a ramp must not judge a
/// version on half the fleet.
pub async fn sample(admins: &[String], service: &str, version: &str) -> Result<Sample, String> {
    let name = metric(service, version);
    let mut s = Sample::default();
    for admin in admins {
        let admin = admin.trim_end_matches('/');
        let body = tokio::time::timeout(
            TIMEOUT,
            loadtest::server_stats::fetch(&format!("{admin}/stats")),
        )
        .await
        .map_err(|_| format!("{admin}/stats: timed out"))?
        .map_err(|e| format!("{admin}/stats: {e}"))?;
        let v: serde_json::Value =
            serde_json::from_slice(&body).map_err(|e| format!("{admin}/stats: {e}"))?;
        let counter = |k: &str| v["counters"][k].as_u64().unwrap_or(0);
        s.requests += counter(&format!("{name}.requests"));
        s.errors += counter(&format!("{name}.errors"));
        let url = format!("{admin}/stats/histograms?name={name}.latency");
        let body = tokio::time::timeout(TIMEOUT, loadtest::server_stats::fetch(&url))
            .await
            .map_err(|_| format!("{url}: timed out"))?
            .map_err(|e| format!("{url}: {e}"))?;
        // No histogram yet: the version has had no calls on this one.
        if let Ok(h) = loadtest::server_stats::decode(&body) {
            match &mut s.latency {
                None => s.latency = Some(h),
                Some(m) => m.add(&h).map_err(|e| format!("merging {url}: {e:?}"))?,
            }
        }
    }
    Ok(s)
}

/// A service's ghost verdicts, summed over its callers.
pub struct GhostTotals {
    /// (route, ghost version) → counts in [`traffic::ghost::VERDICTS`] order.
    pub sums: std::collections::BTreeMap<(String, String), [u64; 6]>,
    /// The mismatch samples of those routes, newest first.
    pub mismatches: Vec<serde_json::Value>,
}

/// Reads every caller's `/ghost`; one that does not answer is an error,
/// as for [`sample`]. A process without the page (404: it calls no other
/// service, like backend-svc) has nothing to add.
pub async fn ghost_totals(admins: &[String], service: &str) -> Result<GhostTotals, String> {
    let mut sums: std::collections::BTreeMap<(String, String), [u64; 6]> = Default::default();
    let mut mismatches = Vec::new();
    for admin in admins {
        let url = format!("{}/ghost", admin.trim_end_matches('/'));
        let body = match tokio::time::timeout(TIMEOUT, loadtest::server_stats::fetch(&url))
            .await
            .map_err(|_| format!("{url}: timed out"))?
        {
            Ok(b) => b,
            Err(e) if e.starts_with(loadtest::server_stats::NOT_FOUND) => continue,
            Err(e) => return Err(format!("{url}: {e}")),
        };
        let v: serde_json::Value =
            serde_json::from_slice(&body).map_err(|e| format!("{url}: {e}"))?;
        let mut routes = Vec::new();
        for r in v["routes"].as_array().into_iter().flatten() {
            if r["service"] != service {
                continue;
            }
            let key = (
                r["route"].as_str().unwrap_or("").to_string(),
                r["version"].as_str().unwrap_or("").to_string(),
            );
            routes.push(key.0.clone());
            let sum = sums.entry(key).or_default();
            for (i, k) in traffic::ghost::VERDICTS.iter().enumerate() {
                sum[i] += r[*k].as_u64().unwrap_or(0);
            }
        }
        mismatches.extend(
            v["mismatches"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|m| routes.iter().any(|r| m["route"] == r.as_str()))
                .cloned(),
        );
    }
    mismatches.sort_by_key(|m| std::cmp::Reverse(m["at_unix_ms"].as_u64().unwrap_or(0)));
    Ok(GhostTotals { sums, mismatches })
}

/// `sbctl ghost SERVICE`: each route and ghost version's verdicts summed
/// over the callers' `/ghost` pages, then the newest mismatches.
pub async fn ghost_report(admins: &[String], service: &str) -> Result<(), String> {
    let GhostTotals { sums, mismatches } = ghost_totals(admins, service).await?;
    if sums.is_empty() {
        println!("{service}: no ghost copies seen");
        return Ok(());
    }
    println!(
        "{:<16} {:<10} {:>9} {:>10} {:>7} {:>8} {:>8} {:>8}",
        "ROUTE", "GHOST", "MATCHED", "MISMATCHED", "FAILED", "TIMEOUTS", "SKIPPED", "UNPAIRED"
    );
    for ((route, version), c) in &sums {
        println!(
            "{route:<16} {version:<10} {:>9} {:>10} {:>7} {:>8} {:>8} {:>8}",
            c[0], c[1], c[2], c[3], c[4], c[5]
        );
    }
    if !mismatches.is_empty() {
        println!("last mismatches:");
    }
    for m in mismatches.iter().take(10) {
        println!(
            "  {} {} {} (request {}): {}: primary {} {} {:?}, ghost {} {} {:?}",
            m["version"].as_str().unwrap_or(""),
            m["method"].as_str().unwrap_or(""),
            m["path"].as_str().unwrap_or(""),
            m["request_id"].as_str().unwrap_or(""),
            m["differs"]
                .as_array()
                .map(|d| d
                    .iter()
                    .filter_map(|x| x.as_str())
                    .collect::<Vec<_>>()
                    .join(", "))
                .unwrap_or_default(),
            m["primary"]["status"],
            m["primary"]["body_hash"].as_str().unwrap_or(""),
            m["primary"]["head"].as_str().unwrap_or(""),
            m["ghost"]["status"],
            m["ghost"]["body_hash"].as_str().unwrap_or(""),
            m["ghost"]["head"].as_str().unwrap_or(""),
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_subtracts_counts_and_latency() {
        let mut a = Histogram::<u64>::new(3).unwrap();
        a.record(1_000).unwrap();
        let before = Sample {
            requests: 10,
            errors: 1,
            latency: Some(a.clone()),
        };
        for _ in 0..99 {
            a.record(2_000).unwrap();
        }
        a.record(40_000).unwrap();
        let after = Sample {
            requests: 110,
            errors: 6,
            latency: Some(a),
        };
        let w = Window::between(&before, &after);
        assert_eq!((w.requests, w.errors), (100, 5));
        assert_eq!(w.error_rate(), 0.05);
        assert!((w.p99_ms.unwrap() - 2.0).abs() < 0.01, "{w:?}");
        assert_eq!(metric("kv.store", "1.2.0"), "version.kv_store.1_2_0");
    }
}
