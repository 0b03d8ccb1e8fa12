//! The correlation table against the obvious alternative, a `DashMap`.
//!
//! Both do what a call does: insert a oneshot sender, then either hand it a
//! reply (the socket thread) or remove it (the caller's drop guard). The
//! contended case runs the two halves on two threads, as in production.
//! Run: `cargo bench -p bus --bench table`.

use bus::table::{RawReply, Table};
use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use dashmap::DashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

type Tx = oneshot::Sender<Result<RawReply, bus::CallError>>;

fn raw() -> Result<RawReply, bus::CallError> {
    Ok(RawReply {
        header: Bytes::new(),
        body: Bytes::new(),
    })
}

struct Dash {
    map: DashMap<u64, (u64, Tx)>,
    next: AtomicU64,
}

impl Dash {
    fn insert(&self) -> (u64, oneshot::Receiver<Result<RawReply, bus::CallError>>) {
        let (tx, rx) = oneshot::channel();
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.map.insert(id, (1, tx));
        (id, rx)
    }
    fn complete(&self, id: u64) {
        if let Some((_, (_, tx))) = self.map.remove(&id) {
            let _ = tx.send(raw());
        }
    }
}

/// `threads` producers insert and wait; one consumer completes by id.
fn contended<I, C>(iters: u64, insert: I, complete: C) -> Duration
where
    I: Fn() -> (u64, oneshot::Receiver<Result<RawReply, bus::CallError>>) + Sync,
    C: Fn(u64) + Sync,
{
    let (id_tx, id_rx) = std::sync::mpsc::sync_channel::<u64>(1024);
    let start = Instant::now();
    std::thread::scope(|s| {
        s.spawn(|| {
            for id in id_rx {
                complete(id);
            }
        });
        let mut rxs = Vec::with_capacity(64);
        for i in 0..iters {
            let (id, rx) = insert();
            id_tx.send(id).unwrap();
            rxs.push(rx);
            if i % 64 == 63 {
                for mut rx in rxs.drain(..) {
                    while rx.try_recv().is_err() {
                        std::hint::spin_loop();
                    }
                }
            }
        }
        drop(id_tx);
    });
    start.elapsed()
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("correlation_table");
    let table = Table::new(1 << 20);
    g.bench_function("slab_mutex/insert_complete", |b| {
        b.iter(|| {
            let (guard, rx) = table.insert(1).unwrap();
            table.complete(guard.id(), raw());
            drop(guard);
            rx
        })
    });
    g.bench_function("slab_mutex/insert_drop", |b| {
        b.iter(|| table.insert(1).unwrap())
    });
    let dash = Dash {
        map: DashMap::new(),
        next: AtomicU64::new(1),
    };
    g.bench_function("dashmap/insert_complete", |b| {
        b.iter(|| {
            let (id, rx) = dash.insert();
            dash.complete(id);
            dash.map.remove(&id); // the drop guard's lookup
            rx
        })
    });
    g.bench_function("dashmap/insert_drop", |b| {
        b.iter(|| {
            let (id, rx) = dash.insert();
            dash.map.remove(&id);
            rx
        })
    });
    let table = Arc::new(table);
    g.bench_function("slab_mutex/contended_2_threads", |b| {
        b.iter_custom(|n| {
            contended(
                n,
                || {
                    let (guard, rx) = table.insert(1).unwrap();
                    let id = guard.id();
                    std::mem::forget(guard); // the consumer removes it
                    (id, rx)
                },
                |id| {
                    table.complete(id, raw());
                },
            )
        })
    });
    g.bench_function("dashmap/contended_2_threads", |b| {
        b.iter_custom(|n| contended(n, || dash.insert(), |id| dash.complete(id)))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
