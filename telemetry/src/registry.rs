//! The process-wide list of metric sources, and one reading of them all.
//!
//! A component registers itself once (`register(Arc<impl Source>)`); the
//! registry keeps a `Weak`, so a dropped component simply stops reporting.
//! Readers call [`Snapshot::take`], which visits every live source.

use crate::Hist;
use hdrhistogram::Histogram;
use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock, Weak};

/// Something that owns metrics and can name them.
pub trait Source: Send + Sync {
    fn visit(&self, v: &mut dyn Visitor);
}

/// What a source reports, by name relative to `switchboard.<process>.`.
pub trait Visitor {
    /// A monotonic total since the source started.
    fn counter(&mut self, name: &str, total: u64);
    fn gauge(&mut self, name: &str, value: i64);
    fn histogram(&mut self, name: &str, h: &Hist);
}

fn sources() -> &'static Mutex<Vec<Weak<dyn Source>>> {
    static S: OnceLock<Mutex<Vec<Weak<dyn Source>>>> = OnceLock::new();
    S.get_or_init(|| Mutex::new(Vec::new()))
}

/// Adds a source; it reports until it is dropped.
pub fn register<S: Source + 'static>(s: &Arc<S>) {
    let w: Weak<dyn Source> = Arc::downgrade(s) as Weak<dyn Source>;
    let mut l = sources().lock();
    l.retain(|x| x.strong_count() > 0);
    l.push(w);
}

fn live() -> Vec<Arc<dyn Source>> {
    sources()
        .lock()
        .iter()
        .filter_map(|w| w.upgrade())
        .collect()
}

/// How a snapshot reads histograms.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Window {
    /// Since the process started (`/stats`).
    Total,
    /// Since the previous interval read (the statsd flush).
    Interval,
}

/// Every metric of every live source, summed/merged by name.
#[derive(Default)]
pub struct Snapshot {
    pub counters: BTreeMap<String, u64>,
    pub gauges: BTreeMap<String, i64>,
    pub histograms: BTreeMap<String, Histogram<u64>>,
}

impl Snapshot {
    pub fn take(window: Window) -> Snapshot {
        struct V<'a>(&'a mut Snapshot, Window);
        impl Visitor for V<'_> {
            fn counter(&mut self, name: &str, total: u64) {
                *self.0.counters.entry(name.to_string()).or_default() += total;
            }
            fn gauge(&mut self, name: &str, value: i64) {
                *self.0.gauges.entry(name.to_string()).or_default() += value;
            }
            fn histogram(&mut self, name: &str, h: &Hist) {
                let read = match self.1 {
                    Window::Total => h.total(),
                    Window::Interval => h.take_interval(),
                };
                match self.0.histograms.get_mut(name) {
                    Some(m) => {
                        let _ = m.add(&read);
                    }
                    None => {
                        self.0.histograms.insert(name.to_string(), read);
                    }
                }
            }
        }
        let mut s = Snapshot::default();
        for src in live() {
            src.visit(&mut V(&mut s, window));
        }
        s
    }
}
