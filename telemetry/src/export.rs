//! What the admin endpoints serve.
//!
//! `/stats`: JSON with every counter, gauge and, per histogram, count and
//! percentiles in milliseconds since the process started.
//!
//! `/stats/histograms`: every histogram since start in HdrHistogram's V2
//! compressed format, base64: `{"unit": "us", "histograms": {NAME: B64}}`.
//! Percentiles cannot be averaged across instances, histograms can be
//! merged: decode each instance's (any HdrHistogram library reads V2),
//! add them, read percentiles of the sum. See docs/operations.md.

use crate::registry::{Snapshot, Window};
use base64::Engine;
use hdrhistogram::serialization::{Deserializer, Serializer, V2DeflateSerializer};
use hdrhistogram::Histogram;
use serde_json::{json, Map, Value};

/// Reported percentiles: (name suffix, quantile).
pub const QUANTILES: [(&str, f64); 4] =
    [("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("p999", 0.999)];

fn ms(us: u64) -> f64 {
    (us as f64) / 1000.0
}

/// `/stats` body.
pub fn stats_json() -> Value {
    let s = Snapshot::take(Window::Total);
    let mut lat = Map::new();
    for (name, h) in s.histograms.iter().filter(|(_, h)| !h.is_empty()) {
        let mut m = Map::new();
        m.insert("count".into(), json!(h.len()));
        for (suffix, q) in QUANTILES {
            m.insert(suffix.into(), json!(ms(h.value_at_quantile(q))));
        }
        m.insert("max".into(), json!(ms(h.max())));
        m.insert("mean".into(), json!((h.mean() / 10.0).round() / 100.0));
        lat.insert(name.clone(), Value::Object(m));
    }
    json!({
        "counters": s.counters,
        "gauges": s.gauges,
        "latency_ms": lat,
    })
}

/// `/stats/histograms` body: every histogram, or only `only`.
pub fn histograms_json(only: Option<&str>) -> Value {
    let s = Snapshot::take(Window::Total);
    let mut out = Map::new();
    let mut ser = V2DeflateSerializer::new();
    for (name, h) in s
        .histograms
        .iter()
        .filter(|(n, _)| only.is_none_or(|o| o == *n))
    {
        let mut buf = Vec::new();
        if ser.serialize(h, &mut buf).is_ok() {
            out.insert(
                name.clone(),
                json!(base64::engine::general_purpose::STANDARD.encode(&buf)),
            );
        }
    }
    json!({ "unit": "us", "format": "HdrHistogram V2 compressed (deflate), base64", "histograms": out })
}

/// Decodes one `/stats/histograms` entry.
pub fn decode(b64: &str) -> Result<Histogram<u64>, String> {
    let raw = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|e| format!("base64: {e}"))?;
    Deserializer::new()
        .deserialize(&mut raw.as_slice())
        .map_err(|e| format!("histogram: {e:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_round_trip_and_merge() {
        let mut a = crate::hist::new_histogram();
        let mut b = crate::hist::new_histogram();
        for v in 1..=1000 {
            a.record(v).unwrap();
            b.record(v * 10).unwrap();
        }
        let enc = |h: &Histogram<u64>| {
            let mut buf = Vec::new();
            V2DeflateSerializer::new().serialize(h, &mut buf).unwrap();
            base64::engine::general_purpose::STANDARD.encode(buf)
        };
        let mut m = decode(&enc(&a)).unwrap();
        m.add(decode(&enc(&b)).unwrap()).unwrap();
        assert_eq!(m.len(), 2000);
        assert!(m.max() >= 9_900);
    }
}
