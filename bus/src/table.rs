//! The correlation table: calls waiting for their reply.
//!
//! A slab behind one mutex. The correlation id encodes the slot and a
//! sequence number, `seq << SLOT_BITS | slot`, so a lookup is an index and a
//! compare (no hashing), a stale id can never hit a reused slot, and a reply
//! whose id was issued but is no longer pending is told apart (late) from one
//! this table never issued (unknown).
//!
//! Entries leave the table in exactly four ways, so none can leak (the
//! async-nats bug): a reply ([`Table::complete`]), the caller's future being
//! dropped, which covers its deadline too ([`PendingGuard`]), the instance
//! going away ([`Table::fail_endpoint`]) and client shutdown
//! ([`Table::fail_all`]).
//!
//! Chosen by measurement against `DashMap<u64, Sender>` (`cargo bench -p bus
//! --bench table`; figures in `docs/benchmarks.md`).

use crate::error::CallError;
use bytes::Bytes;
use parking_lot::Mutex;
use slab::Slab;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::sync::oneshot;

/// Slot bits in a correlation id: the table never holds more than 2^20
/// calls, whatever the configuration says.
pub const SLOT_BITS: u32 = 20;
pub const MAX_CAPACITY: usize = 1 << SLOT_BITS;
const SLOT_MASK: u64 = (1 << SLOT_BITS) - 1;

/// What the socket thread hands to a waiting caller: the raw frames, so that
/// decoding happens on the caller's task rather than on the socket thread.
#[derive(Debug)]
pub struct RawReply {
    pub header: Bytes,
    pub body: Bytes,
}

pub(crate) type Outcome = Result<RawReply, CallError>;

struct Entry {
    id: u64,
    endpoint: u64,
    tx: oneshot::Sender<Outcome>,
}

struct Inner {
    slab: Slab<Entry>,
    next_seq: u64,
}

/// Counters about replies that found no caller.
#[derive(Debug, Default)]
pub struct TableStats {
    /// Replies whose call had already ended (deadline, caller gone).
    pub late: AtomicU64,
    /// Replies carrying an id this table never issued.
    pub unknown: AtomicU64,
}

/// How a reply was matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    Delivered,
    Late,
    Unknown,
}

pub struct Table {
    inner: Mutex<Inner>,
    capacity: usize,
    len: AtomicUsize,
    pub stats: TableStats,
}

impl Table {
    pub fn new(capacity: usize) -> Arc<Table> {
        let capacity = capacity.clamp(1, MAX_CAPACITY);
        Arc::new(Table {
            inner: Mutex::new(Inner {
                slab: Slab::with_capacity(capacity.min(4096)),
                next_seq: 1,
            }),
            capacity,
            len: AtomicUsize::new(0),
            stats: TableStats::default(),
        })
    }

    /// Calls waiting for a reply right now.
    pub fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Registers a call bound for `endpoint`. `None` when the table is full.
    pub fn insert(
        self: &Arc<Self>,
        endpoint: u64,
    ) -> Option<(PendingGuard, oneshot::Receiver<Outcome>)> {
        let (tx, rx) = oneshot::channel();
        let mut g = self.inner.lock();
        if g.slab.len() >= self.capacity {
            return None;
        }
        let seq = g.next_seq;
        g.next_seq += 1;
        let entry = g.slab.vacant_entry();
        let id = (seq << SLOT_BITS) | entry.key() as u64;
        entry.insert(Entry { id, endpoint, tx });
        self.len.store(g.slab.len(), Ordering::Relaxed);
        drop(g);
        Some((
            PendingGuard {
                table: self.clone(),
                id,
            },
            rx,
        ))
    }

    fn take(&self, id: u64) -> Result<Entry, Delivery> {
        let slot = (id & SLOT_MASK) as usize;
        let mut g = self.inner.lock();
        match g.slab.get(slot) {
            Some(e) if e.id == id => {
                let e = g.slab.remove(slot);
                self.len.store(g.slab.len(), Ordering::Relaxed);
                Ok(e)
            }
            _ if (id >> SLOT_BITS) < g.next_seq && id >> SLOT_BITS != 0 => Err(Delivery::Late),
            _ => Err(Delivery::Unknown),
        }
    }

    /// Hands a reply to its caller, or counts it as late or unknown.
    pub fn complete(&self, id: u64, outcome: Outcome) -> Delivery {
        match self.take(id) {
            Ok(e) => {
                // The caller may have given up between our lookup and now;
                // its guard found nothing to remove, so this is the last word.
                if e.tx.send(outcome).is_err() {
                    self.stats.late.fetch_add(1, Ordering::Relaxed);
                    return Delivery::Late;
                }
                Delivery::Delivered
            }
            Err(d) => {
                match d {
                    Delivery::Late => &self.stats.late,
                    _ => &self.stats.unknown,
                }
                .fetch_add(1, Ordering::Relaxed);
                d
            }
        }
    }

    /// Fails every call bound for `endpoint` (it left or disconnected).
    pub fn fail_endpoint(&self, endpoint: u64, err: CallError) -> usize {
        self.fail_where(|e| e.endpoint == endpoint, err)
    }

    /// Fails every pending call (shutdown).
    pub fn fail_all(&self, err: CallError) -> usize {
        self.fail_where(|_| true, err)
    }

    fn fail_where(&self, pred: impl Fn(&Entry) -> bool, err: CallError) -> usize {
        let mut g = self.inner.lock();
        let keys: Vec<usize> = g
            .slab
            .iter()
            .filter(|(_, e)| pred(e))
            .map(|(k, _)| k)
            .collect();
        let entries: Vec<Entry> = keys.into_iter().map(|k| g.slab.remove(k)).collect();
        self.len.store(g.slab.len(), Ordering::Relaxed);
        drop(g);
        let n = entries.len();
        for e in entries {
            let _ = e.tx.send(Err(err.clone()));
        }
        n
    }
}

/// Removes its call from the table when dropped: on reply (already gone, a
/// no-op), on deadline, or when the caller's future is dropped mid-call.
pub struct PendingGuard {
    table: Arc<Table>,
    id: u64,
}

impl PendingGuard {
    pub fn id(&self) -> u64 {
        self.id
    }
}

impl Drop for PendingGuard {
    fn drop(&mut self) {
        let _ = self.table.take(self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw() -> Outcome {
        Ok(RawReply {
            header: Bytes::new(),
            body: Bytes::new(),
        })
    }

    #[test]
    fn reply_reaches_caller_and_leaves_table() {
        let t = Table::new(8);
        let (g, mut rx) = t.insert(1).unwrap();
        assert_eq!(t.len(), 1);
        assert_eq!(t.complete(g.id(), raw()), Delivery::Delivered);
        assert_eq!(t.len(), 0);
        assert!(rx.try_recv().unwrap().is_ok());
    }

    #[test]
    fn dropped_guard_removes_and_reply_is_late() {
        let t = Table::new(8);
        let (g, _rx) = t.insert(1).unwrap();
        let id = g.id();
        drop(g);
        assert_eq!(t.len(), 0);
        assert_eq!(t.complete(id, raw()), Delivery::Late);
        assert_eq!(t.stats.late.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn reused_slot_never_matches_old_id() {
        let t = Table::new(8);
        let (g1, _r1) = t.insert(1).unwrap();
        let old = g1.id();
        drop(g1);
        let (g2, mut r2) = t.insert(1).unwrap();
        assert_eq!(old & SLOT_MASK, g2.id() & SLOT_MASK, "slot reused");
        assert_eq!(t.complete(old, raw()), Delivery::Late);
        assert!(r2.try_recv().is_err(), "new call got the old reply");
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn never_issued_ids_are_unknown() {
        let t = Table::new(8);
        assert_eq!(t.complete(0, raw()), Delivery::Unknown);
        assert_eq!(t.complete(999 << SLOT_BITS, raw()), Delivery::Unknown);
        assert_eq!(t.stats.unknown.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn full_table_refuses() {
        let t = Table::new(2);
        let _a = t.insert(1).unwrap();
        let _b = t.insert(1).unwrap();
        assert!(t.insert(1).is_none());
    }

    #[test]
    fn fail_endpoint_only_fails_its_calls() {
        let t = Table::new(8);
        let (_a, mut ra) = t.insert(1).unwrap();
        let (_b, mut rb) = t.insert(2).unwrap();
        assert_eq!(t.fail_endpoint(1, CallError::Disconnected), 1);
        assert_eq!(ra.try_recv().unwrap().unwrap_err(), CallError::Disconnected);
        assert!(rb.try_recv().is_err());
        assert_eq!(t.len(), 1);
    }
}
