//! Per-method latency histograms for clients and services, and how each
//! reports to the process's telemetry registry.
//!
//! The method map is read on every call with one `ArcSwap` load (no lock);
//! a method seen for the first time copies the map once. Methods arrive
//! from the network on the service side, so the map is capped: past
//! [`MAX_METHODS`] distinct names, calls count under `_other`.

use crate::Text;
use arc_swap::ArcSwap;
use std::collections::HashMap;
use std::sync::Arc;
use telemetry::Hist;

pub const MAX_METHODS: usize = 64;
const OTHER: Text = Text::from_static("_other");

#[derive(Default)]
pub(crate) struct MethodHists {
    map: ArcSwap<HashMap<Text, Arc<Hist>>>,
}

impl MethodHists {
    /// The histogram for `method`, created on first use.
    pub(crate) fn get(&self, method: &Text) -> Arc<Hist> {
        {
            let m = self.map.load();
            if let Some(h) = m.get(method) {
                return h.clone();
            }
            if m.len() > MAX_METHODS {
                if let Some(h) = m.get(&OTHER) {
                    return h.clone();
                }
            }
        }
        let mut out = None;
        self.map.rcu(|m| {
            if let Some(h) = m.get(method) {
                out = Some(h.clone());
                return m.clone();
            }
            let key = if m.len() >= MAX_METHODS {
                OTHER
            } else {
                method.clone()
            };
            let mut next = HashMap::clone(m);
            let h = next
                .entry(key)
                .or_insert_with(|| Arc::new(Hist::new()))
                .clone();
            out = Some(h);
            Arc::new(next)
        });
        out.unwrap_or_else(|| Arc::new(Hist::new()))
    }

    pub(crate) fn visit(&self, prefix: &str, v: &mut dyn telemetry::Visitor) {
        for (m, h) in self.map.load().iter() {
            v.histogram(
                &format!("{prefix}.{}.latency", telemetry::sanitize(m.as_str())),
                h,
            );
        }
    }
}

/// Named counters and one gauge as a JSON object: the `/stats` form of
/// `ClientStats` and `ServiceStats`.
pub(crate) fn counters_json(counters: &[(&str, u64)], gauge: (&str, usize)) -> serde_json::Value {
    let mut m: serde_json::Map<String, serde_json::Value> = counters
        .iter()
        .map(|(k, v)| (k.to_string(), (*v).into()))
        .collect();
    m.insert(gauge.0.into(), gauge.1.into());
    m.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_are_capped() {
        let m = MethodHists::default();
        for i in 0..200 {
            m.get(&Text::from(format!("m{i}"))).record(5);
        }
        let map = m.map.load();
        assert_eq!(map.len(), MAX_METHODS + 1);
        assert_eq!(
            map.get(&OTHER).unwrap().total().len(),
            200 - MAX_METHODS as u64
        );
    }
}
