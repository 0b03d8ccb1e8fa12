//! A counter sharded per thread: an increment touches a cache line no
//! other request thread writes, so counting costs the same on 2 cores and
//! on 64. Reading sums the shards (readers are rare).

use crate::hist::SLOTS;
use crate::slot_index;
use crossbeam_utils::CachePadded;
use std::sync::atomic::{AtomicU64, Ordering};

pub struct Counter {
    shards: Box<[CachePadded<AtomicU64>]>,
}

impl Default for Counter {
    fn default() -> Self {
        Counter::new()
    }
}

impl Counter {
    pub fn new() -> Counter {
        Counter {
            shards: (0..SLOTS)
                .map(|_| CachePadded::new(AtomicU64::new(0)))
                .collect(),
        }
    }

    #[inline]
    pub fn add(&self, n: u64) {
        if !crate::enabled() {
            return;
        }
        self.shards[slot_index()].fetch_add(n, Ordering::Relaxed);
    }

    #[inline]
    pub fn inc(&self) {
        self.add(1);
    }

    pub fn get(&self) -> u64 {
        self.shards.iter().map(|s| s.load(Ordering::Relaxed)).sum()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn counts_from_many_threads() {
        let c = std::sync::Arc::new(super::Counter::new());
        let ts: Vec<_> = (0..40)
            .map(|_| {
                let c = c.clone();
                std::thread::spawn(move || (0..1000).for_each(|_| c.inc()))
            })
            .collect();
        ts.into_iter().for_each(|t| t.join().unwrap());
        assert_eq!(c.get(), 40_000);
    }
}
