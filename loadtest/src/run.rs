//! One measured window: start the workers, release them together, merge
//! what they hand over (per-second lines on stderr, a progress bar when
//! stderr is a terminal), and return the totals.

use std::collections::BTreeMap;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

use crate::histo::Percentiles;
use crate::stats::Stats;
use crate::worker::{run_worker, Msg, Plan};

/// How much a run says while it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chatter {
    Quiet,
    /// Per-second lines on stderr.
    Lines,
    /// Lines printed above a progress bar (stderr is a terminal).
    Bar,
}

pub struct RunOutput {
    pub stats: Stats,
    /// The measured window (the denominator of the achieved rate).
    pub window: Duration,
}

pub fn run(plan: Arc<Plan>, chatter: Chatter) -> Result<RunOutput, String> {
    let (tx, rx) = mpsc::channel();
    let mut starts = Vec::new();
    let mut handles = Vec::new();
    for idx in 0..plan.threads {
        let (stx, srx) = mpsc::channel();
        starts.push(stx);
        let (plan, tx) = (plan.clone(), tx.clone());
        let h = std::thread::Builder::new()
            .name(format!("loadtest-w{idx}"))
            .spawn(move || run_worker(idx, plan, tx, srx))
            .map_err(|e| format!("cannot start a worker thread: {e}"))?;
        handles.push(h);
    }
    drop(tx);
    let threads = plan.threads as usize;

    let worker_died = || "a worker thread stopped unexpectedly".to_string();
    for _ in 0..threads {
        match rx.recv() {
            Ok((_, Msg::Ready)) => {}
            _ => return Err(worker_died()),
        }
    }
    let start = Instant::now();
    for s in &starts {
        let _ = s.send(start);
    }

    let bar = (chatter == Chatter::Bar).then(|| {
        let b = ProgressBar::new(plan.window.as_millis() as u64);
        b.set_style(
            ProgressStyle::with_template("{bar:40} {elapsed}/{duration} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        b
    });
    let mut total = Stats::default();
    let mut pending: BTreeMap<u64, (usize, Stats)> = BTreeMap::new();
    let mut finished = 0;
    while finished < threads {
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok((_, Msg::Tick(tick, s))) => {
                total.merge(&s);
                let e = pending.entry(tick).or_insert_with(|| (0, Stats::default()));
                e.0 += 1;
                e.1.merge(&s);
            }
            Ok((_, Msg::Done(s))) => {
                total.merge(&s);
                finished += 1;
            }
            Ok((_, Msg::Ready)) => {}
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => return Err(worker_died()),
        }
        // A second is complete once every live worker has reported it.
        while let Some(e) = pending.first_entry() {
            if e.get().0 + finished < threads {
                break;
            }
            let (tick, (_, s)) = e.remove_entry();
            if chatter != Chatter::Quiet {
                let line = interval_line(tick, &s, plan.rate.is_some());
                match &bar {
                    Some(b) => b.println(line),
                    None => eprintln!("{line}"),
                }
            }
        }
        if let Some(b) = &bar {
            b.set_position(
                (start.elapsed().as_millis() as u64).min(plan.window.as_millis() as u64),
            );
            b.set_message(format!("{} requests", total.responses()));
        }
    }
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    for h in handles {
        let _ = h.join();
    }
    Ok(RunOutput {
        stats: total,
        window: plan.window,
    })
}

/// `[  3s]   1000 req/s  p50 0.412  p99 1.203  max 5.101 ms  lag p99 0.9 ms  errors 0`
fn interval_line(tick: u64, s: &Stats, open: bool) -> String {
    let p = Percentiles::of(&s.corrected);
    let mut line = format!(
        "[{tick:>4}s] {:>8} req/s  p50 {:.3}  p99 {:.3}  max {:.3} ms",
        s.responses(),
        p.p50,
        p.p99,
        p.max
    );
    if open {
        line.push_str(&format!(
            "  lag p99 {:.3} ms",
            Percentiles::quantile(&s.lag, 0.99)
        ));
    }
    line.push_str(&format!("  errors {}", s.error_count()));
    line
}
