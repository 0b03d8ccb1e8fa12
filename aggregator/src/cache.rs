//! The optional read cache (off by default), invalidated by the backend's
//! `kv.changed` events.
//!
//! Three rules keep it from serving a value older than a write it could
//! know about:
//!
//! 1. **Invalidate on event.** Each `kv.changed {key}` removes the key.
//! 2. **Fill only across a quiet window.** A read takes its key's generation
//!    number before asking the backend and fills the cache only if no
//!    invalidation of that key (or its stripe) arrived meanwhile; otherwise a reply read before a write could land
//!    after the write's event and stay.
//! 3. **Trust only a live stream.** PUB/SUB drops events silently while a
//!    subscriber is disconnected. The backend beats on the event socket
//!    every 200 ms; when nothing has been heard for [`STALE_AFTER`], the
//!    cache is bypassed, and when the stream comes back it is emptied,
//!    since events may have been missed.
//!
//! What is left: invalidation is asynchronous. A reader on another
//! aggregator may see the old value until the event arrives (one loopback
//! hop, well under a millisecond, and it leaves the backend before the
//! write's acknowledgement does). A gap shorter than [`STALE_AFTER`] that
//! loses an event leaves a stale entry for at most the TTL.
//!
//! The cache is bounded by entry count: when full, expired entries are
//! swept, and if none are, new values are not cached.

use bus::Subscriber;
use bytes::Bytes;
use dashmap::DashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

pub const DEFAULT_TTL: Duration = Duration::from_secs(10);
pub const DEFAULT_MAX_ENTRIES: usize = 100_000;
/// Silence on the event stream after which the cache is not trusted: a few
/// heartbeats missed.
pub const STALE_AFTER: Duration = Duration::from_millis(800);

struct Entry {
    value: Bytes,
    expires: Instant,
}

/// Generation stripes: a write to one key only spoils in-flight fills of
/// keys in its stripe, not all of them.
const STRIPES: usize = 256;

fn stripe(key: &[u8]) -> usize {
    // FNV-1a: keys are short and this needs no seed or allocation.
    let mut h: u32 = 0x811c9dc5;
    for &b in key {
        h = (h ^ b as u32).wrapping_mul(0x0100_0193);
    }
    h as usize % STRIPES
}

struct Inner {
    map: DashMap<Bytes, Entry>,
    generations: [AtomicU64; STRIPES],
    /// Set while the stream is not trusted; the first live read clears
    /// the map.
    was_dead: AtomicBool,
    hits: AtomicU64,
    misses: AtomicU64,
    invalidations: AtomicU64,
}

impl Inner {
    fn invalidate(&self, key: &[u8]) {
        self.generations[stripe(key)].fetch_add(1, Ordering::AcqRel);
        self.map.remove(key);
        self.invalidations.fetch_add(1, Ordering::Relaxed);
    }

    fn clear(&self) {
        for g in &self.generations {
            g.fetch_add(1, Ordering::AcqRel);
        }
        self.map.clear();
    }
}

pub struct Cache {
    inner: Arc<Inner>,
    events: Subscriber,
    ttl: Duration,
    max_entries: usize,
}

/// Taken before a backend read; see rule 2.
#[derive(Clone, Copy)]
pub struct Ticket(u64);

impl Cache {
    /// Subscribes to `kv.changed` on the backend's event endpoints.
    pub fn new(
        event_endpoints: &[String],
        tuning: &bus::Tuning,
        ttl: Duration,
        max_entries: usize,
    ) -> Result<Cache, bus::SetupError> {
        let inner = Arc::new(Inner {
            map: DashMap::new(),
            generations: std::array::from_fn(|_| AtomicU64::new(0)),
            was_dead: AtomicBool::new(true),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            invalidations: AtomicU64::new(0),
        });
        let i = inner.clone();
        let topics = [kv_proto::CHANGED_TOPIC];
        let events = Subscriber::connect_with(event_endpoints, &topics, tuning, move |ev| {
            match serde_json::from_slice::<serde_json::Value>(&ev.body)
                .ok()
                .and_then(|v| v.get("key")?.as_str().map(str::to_owned))
            {
                Some(key) => i.invalidate(key.as_bytes()),
                // Cannot tell which key changed: forget everything.
                None => i.clear(),
            }
        })?;
        Ok(Cache {
            inner,
            events,
            ttl,
            max_entries,
        })
    }

    /// Whether the event stream is live; clears the cache on recovery.
    pub fn live(&self) -> bool {
        let live = self.events.silent_for().is_some_and(|d| d < STALE_AFTER);
        if !live {
            self.inner.was_dead.store(true, Ordering::Release);
        } else if self.inner.was_dead.swap(false, Ordering::AcqRel) {
            self.inner.clear();
        }
        live
    }

    pub fn get(&self, key: &[u8]) -> Option<Bytes> {
        let hit = self.live().then(|| self.lookup(key)).flatten();
        let counter = if hit.is_some() {
            &self.inner.hits
        } else {
            &self.inner.misses
        };
        counter.fetch_add(1, Ordering::Relaxed);
        hit
    }

    fn lookup(&self, key: &[u8]) -> Option<Bytes> {
        let e = self.inner.map.get(key)?;
        (e.expires > Instant::now()).then(|| e.value.clone())
    }

    pub fn ticket(&self, key: &[u8]) -> Ticket {
        Ticket(self.inner.generations[stripe(key)].load(Ordering::Acquire))
    }

    /// Caches `value` if nothing was invalidated since `ticket` was taken.
    pub fn fill(&self, ticket: Ticket, key: Bytes, value: Bytes) {
        if !self.live() {
            return;
        }
        let now = Instant::now();
        if self.inner.map.len() >= self.max_entries {
            self.inner.map.retain(|_, e| e.expires > now);
            if self.inner.map.len() >= self.max_entries {
                return;
            }
        }
        let entry = Entry {
            value,
            expires: now + self.ttl,
        };
        self.inner.map.insert(key.clone(), entry);
        // An invalidation may have raced the insert: undo if so.
        if self.inner.generations[stripe(&key)].load(Ordering::Acquire) != ticket.0 {
            self.inner.map.remove(&key);
        }
    }

    /// A write through this aggregator: drop the key now rather than wait
    /// for its event.
    pub fn forget(&self, key: &[u8]) {
        self.inner.invalidate(key);
    }

    pub fn stats(&self) -> serde_json::Value {
        let (events, malformed) = self.events.counts();
        serde_json::json!({
            "entries": self.inner.map.len(),
            "hits": self.inner.hits.load(Ordering::Relaxed),
            "misses": self.inner.misses.load(Ordering::Relaxed),
            "invalidations": self.inner.invalidations.load(Ordering::Relaxed),
            "events": events,
            "malformed_events": malformed,
            "live": self.live(),
        })
    }

    /// The publishers, each with its registered CURVE key if any.
    pub fn set_event_endpoints(
        &self,
        eps: &[(String, Option<bus::curve::PublicKey>)],
    ) -> Result<(), bus::SetupError> {
        self.events.set_endpoints_with_keys(eps)
    }
}
