//! The flush thread: every interval, one [`Snapshot`] of the window goes to
//! statsd through cadence, as plain UDP datagrams (buffered into 1432-byte
//! packets). Nothing here runs on a request thread.
//!
//! Per flush, for every metric (names under `switchboard.<process>.`):
//!
//! ```text
//!  counter    NAME:<delta since last flush>|c
//!  gauge      NAME:<value>|g
//!  histogram  NAME.count:<n>|c  NAME.p50 / .p90 / .p99 / .p999 / .max:<ms>|g
//!             (percentiles of this window only; windows with no sample send none)
//!  sampled    NAME:<ms>|ms|@rate   (optional, see `sample_timer`)
//! ```
//!
//! Sending to nobody is harmless: UDP to a closed port fails silently.

use crate::registry::{Snapshot, Window};
use cadence::prelude::*;
use cadence::{BufferedUdpMetricSink, StatsdClient};
use std::collections::BTreeMap;
use std::net::UdpSocket;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

pub const DEFAULT_ADDR: &str = "127.0.0.1:8125";
pub const DEFAULT_FLUSH: Duration = Duration::from_secs(10);
/// Sampled timer values waiting for the flush thread; beyond it, samples
/// are dropped (and counted), never waited for.
const TIMER_QUEUE: usize = 8192;

#[derive(Debug, Clone)]
pub struct StatsdOptions {
    /// `HOST:PORT`
    pub addr: String,
    pub flush: Duration,
    /// `terminator`, `aggregator`, `backend-svc`: the second name level.
    pub process: String,
    /// Fraction of requests also sent as `|ms` timers (0: none).
    pub timer_rate: f64,
}

struct Timers {
    rate: f64,
    tx: SyncSender<u32>,
}

fn timers() -> &'static OnceLock<Timers> {
    static T: OnceLock<Timers> = OnceLock::new();
    &T
}

/// On the request path: offers one request latency to the sampled timer
/// (`request_time|ms`). One random draw; a sampled value is queued as a
/// number for the flush thread to format. No-op when sampling is off.
#[inline]
pub fn sample_timer(us: u64) {
    if let Some(t) = timers().get() {
        if fastrand_f64() < t.rate {
            if let Err(TrySendError::Full(_)) = t.tx.try_send(us.min(u32::MAX as u64) as u32) {
                DROPPED.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

static DROPPED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

fn fastrand_f64() -> f64 {
    use std::cell::Cell;
    thread_local!(static X: Cell<u64> = const { Cell::new(0) });
    X.with(|x| {
        let mut v = x.get();
        if v == 0 {
            v = (crate::slot_index() as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        }
        // xorshift64*: plenty for sampling.
        v ^= v >> 12;
        v ^= v << 25;
        v ^= v >> 27;
        x.set(v);
        (v.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
    })
}

/// The running flush thread; dropping it flushes once more and stops.
pub struct Flusher {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Flusher {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}

/// Starts the flush thread. Fails only if no UDP socket can be opened or
/// the address does not resolve.
pub fn start(opts: StatsdOptions) -> std::io::Result<Flusher> {
    let socket = UdpSocket::bind("0.0.0.0:0")?;
    socket.set_nonblocking(true)?;
    let sink = BufferedUdpMetricSink::with_capacity(opts.addr.as_str(), socket, 1432)
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    let prefix = format!("switchboard.{}", crate::sanitize(&opts.process));
    let client = StatsdClient::from_sink(&prefix, sink);
    let rx = if opts.timer_rate > 0.0 {
        let (tx, rx) = mpsc::sync_channel(TIMER_QUEUE);
        let _ = timers().set(Timers {
            rate: opts.timer_rate.min(1.0),
            tx,
        });
        Some(rx)
    } else {
        None
    };
    let stop = Arc::new(AtomicBool::new(false));
    let st = stop.clone();
    let thread = std::thread::Builder::new()
        .name("statsd-flush".into())
        .spawn(move || flush_loop(client, opts, rx, st))?;
    Ok(Flusher {
        stop,
        thread: Some(thread),
    })
}

fn flush_loop(
    client: StatsdClient,
    opts: StatsdOptions,
    rx: Option<Receiver<u32>>,
    stop: Arc<AtomicBool>,
) {
    let mut last: BTreeMap<String, u64> = BTreeMap::new();
    let mut next = std::time::Instant::now() + opts.flush;
    loop {
        let now = std::time::Instant::now();
        if now < next && !stop.load(Ordering::Relaxed) {
            std::thread::park_timeout(next - now);
            continue;
        }
        next += opts.flush;
        flush(&client, &mut last, rx.as_ref(), opts.timer_rate);
        if stop.load(Ordering::Relaxed) {
            return;
        }
    }
}

/// One flush: what `start`'s thread does each interval.
fn flush(
    client: &StatsdClient,
    last: &mut BTreeMap<String, u64>,
    rx: Option<&Receiver<u32>>,
    rate: f64,
) {
    let s = Snapshot::take(Window::Interval);
    for (name, total) in &s.counters {
        let prev = last.insert(name.clone(), *total).unwrap_or(0);
        // A source that went away lowers the sum: report nothing, not a
        // negative count.
        let delta = total.saturating_sub(prev);
        if delta > 0 {
            let _ = client.count(name, delta as i64);
        }
    }
    for (name, v) in &s.gauges {
        let _ = client.gauge(name, (*v).max(0) as u64);
    }
    for (name, h) in &s.histograms {
        if h.is_empty() {
            continue;
        }
        let _ = client.count(&format!("{name}.count"), h.len() as i64);
        for (suffix, q) in crate::export::QUANTILES {
            let ms = h.value_at_quantile(q) as f64 / 1000.0;
            let _ = client.gauge(&format!("{name}.{suffix}"), ms);
        }
        let _ = client.gauge(&format!("{name}.max"), h.max() as f64 / 1000.0);
    }
    if let Some(rx) = rx {
        while let Ok(us) = rx.try_recv() {
            let ms = (us as u64).div_ceil(1000);
            let _ = client
                .time_with_tags("request_time", ms)
                .with_sampling_rate(rate)
                .try_send();
        }
        let dropped = DROPPED.swap(0, Ordering::Relaxed);
        if dropped > 0 {
            let _ = client.count("telemetry.timer_samples_dropped", dropped as i64);
        }
    }
    let _ = client.flush();
}

#[cfg(test)]
mod tests {
    #[test]
    fn sampling_draws_are_uniform_enough() {
        let n = 100_000;
        let hits = (0..n).filter(|_| super::fastrand_f64() < 0.1).count();
        assert!((8_000..12_000).contains(&hits), "{hits}");
    }
}
