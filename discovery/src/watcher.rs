//! Follows every registration under a prefix and hands the whole current
//! set to a callback after each change.
//!
//! ```text
//!  list (get --prefix) at revision R ─► callback(set)
//!  watch from R+1 ─► put/delete events ─► callback(set)
//!  stream error / etcd gone ─► keep the last set (callers keep working),
//!                              reconnect with back-off, resume from the
//!                              last revision seen
//!  compacted or cancelled ─► list again, then watch again
//! ```
//!
//! Registrations that do not parse are skipped with a warning: one bad
//! writer must not blank out a service.
//!
//! # Removal grace
//!
//! A key can vanish while its instance is fine: etcd stalled or was cut off
//! for longer than the TTL, the lease expired, and the registrar has not
//! put the key back yet. Dropping such an instance would leave a service
//! with none for a moment (503 `no_instance`). So, as Envoy does with hosts
//! that discovery removed but health checks still pass, a removed
//! registration whose caller-side connection is healthy (the `live` check
//! given to [`Watcher::start_with_liveness`]) stays in the set:
//!
//! ```text
//!  key deleted (or missing from a re-list)
//!    marked draining (deliberate deregistration) ─► removed at once
//!    live(registration) false                     ─► removed at once
//!    live(registration) true                      ─► kept, checked every 100 ms:
//!       the key is put again                      ─► listed again (no change seen)
//!       live(registration) turns false            ─► removed
//!       EtcdOptions::removal_grace passes         ─► removed
//! ```

use crate::{connect, next_backoff, EtcdOptions, Registration};
use etcd_client::{EventType, GetOptions, WatchOptions};
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// How often registrations kept for the removal grace are checked.
const KEPT_CHECK: Duration = Duration::from_millis(100);

/// The current registrations: etcd key → registration.
pub type Snapshot = BTreeMap<String, Registration>;

pub struct Watcher {
    task: JoinHandle<()>,
    state: Arc<State>,
}

#[derive(Default)]
struct State {
    synced: AtomicBool,
    relists: AtomicU64,
    restarts: AtomicU64,
    kept: AtomicU64,
}

impl Watcher {
    /// Watches `prefix` (give it with its trailing `/`). `on_change` runs on
    /// the watcher's task; keep it short. A removed key is removed from the
    /// set at once: no removal grace without a liveness check.
    pub fn start<F>(opts: EtcdOptions, prefix: String, on_change: F) -> Watcher
    where
        F: FnMut(&Snapshot) + Send + 'static,
    {
        Watcher::start_with_liveness(opts, prefix, |_| false, on_change)
    }

    /// Like [`start`](Watcher::start), with the removal grace: a removed
    /// registration for which `live` says true (its connection is healthy)
    /// stays in the set until it is put again, `live` turns false, or
    /// `opts.removal_grace` passes. `live` runs on the watcher's task, at
    /// each removal and every 100 ms while a registration is kept.
    pub fn start_with_liveness<F, L>(
        opts: EtcdOptions,
        prefix: String,
        live: L,
        on_change: F,
    ) -> Watcher
    where
        F: FnMut(&Snapshot) + Send + 'static,
        L: FnMut(&Registration) -> bool + Send + 'static,
    {
        let state = Arc::new(State::default());
        let set = Set {
            grace: opts.removal_grace,
            prefix: prefix.clone(),
            etcd: Snapshot::new(),
            kept: BTreeMap::new(),
            next_check: Instant::now(),
            shown: None,
            live,
            on_change,
            state: state.clone(),
        };
        let task = tokio::spawn(run(opts, prefix, set, state.clone()));
        Watcher { task, state }
    }

    /// Follows every key under `prefix` as raw bytes (the traffic policies
    /// under `/switchboard/policy/`), with the same listing, resuming and
    /// reconnection as the registrations; `on_change` gets the whole set
    /// after each change, on the watcher's task.
    pub fn start_documents<F>(opts: EtcdOptions, prefix: String, on_change: F) -> Watcher
    where
        F: FnMut(&BTreeMap<String, Vec<u8>>) + Send + 'static,
    {
        let state = Arc::new(State::default());
        let docs = Documents {
            now: BTreeMap::new(),
            shown: None,
            on_change,
        };
        let task = tokio::spawn(run(opts, prefix, docs, state.clone()));
        Watcher { task, state }
    }

    /// Registrations kept for the removal grace right now.
    pub fn kept(&self) -> usize {
        self.state.kept.load(Ordering::Relaxed) as usize
    }

    /// Whether the watch is live now (listed and streaming).
    pub fn synced(&self) -> bool {
        self.state.synced.load(Ordering::Relaxed)
    }

    /// Full re-lists done so far (the first one included).
    pub fn relists(&self) -> u64 {
        self.state.relists.load(Ordering::Relaxed)
    }

    /// Times a live watch ended and had to be set up again (etcd restarted
    /// or unreachable, the stream closed by the server). Stays 0 while one
    /// watch stream lasts.
    pub fn restarts(&self) -> u64 {
        self.state.restarts.load(Ordering::Relaxed)
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

enum End {
    /// Connection trouble: reconnect and resume from the last revision.
    Lost(String),
    /// History is gone (compaction) or the server cancelled: list again.
    Relist(String),
}

/// The set as etcd has it, the registrations kept for the grace, and what
/// the callback was last given.
struct Set<F, L> {
    grace: Duration,
    prefix: String,
    /// etcd's view: key → registration, as of the last event.
    etcd: Snapshot,
    /// Gone from etcd, connection healthy: key → (registration, until).
    kept: BTreeMap<String, (Registration, Instant)>,
    /// When the kept registrations are checked next.
    next_check: Instant,
    /// The set the callback saw last (None: not called yet).
    shown: Option<Snapshot>,
    live: L,
    on_change: F,
    state: Arc<State>,
}

/// What a watch feeds: the keys under its prefix as etcd changes them.
/// [`Set`] keeps registrations (with the removal grace); [`Documents`]
/// keeps raw values. The list/watch/reconnect loop is the same for both.
trait Sink {
    /// A key was put (or listed) with `value`.
    fn put_raw(&mut self, key: String, value: &[u8]);
    fn delete(&mut self, key: &str);
    /// A whole new list: what is missing was removed.
    fn relist_raw(&mut self, fresh: Vec<(String, Vec<u8>)>);
    /// Hands the set on if it changed.
    fn publish(&mut self);
    /// When [`check`](Sink::check) is due next, if ever.
    fn due(&self) -> Option<Instant>;
    fn check(&mut self);
    /// Keys held now (for the log).
    fn len(&self) -> usize;
}

impl<F: FnMut(&Snapshot), L: FnMut(&Registration) -> bool> Sink for Set<F, L> {
    fn put_raw(&mut self, key: String, value: &[u8]) {
        match parse(&key, value) {
            Some(r) => self.put(key, r),
            None => Set::delete(self, &key),
        }
    }

    fn delete(&mut self, key: &str) {
        Set::delete(self, key)
    }

    fn relist_raw(&mut self, fresh: Vec<(String, Vec<u8>)>) {
        let fresh = fresh
            .into_iter()
            .filter_map(|(k, v)| parse(&k, &v).map(|r| (k, r)))
            .collect();
        self.relist(fresh)
    }

    fn publish(&mut self) {
        Set::publish(self)
    }

    fn due(&self) -> Option<Instant> {
        Set::due(self)
    }

    fn check(&mut self) {
        Set::check(self)
    }

    fn len(&self) -> usize {
        self.etcd.len()
    }
}

/// Raw values under a prefix, handed to a callback after each change.
struct Documents<F> {
    now: BTreeMap<String, Vec<u8>>,
    shown: Option<BTreeMap<String, Vec<u8>>>,
    on_change: F,
}

impl<F: FnMut(&BTreeMap<String, Vec<u8>>)> Sink for Documents<F> {
    fn put_raw(&mut self, key: String, value: &[u8]) {
        self.now.insert(key, value.to_vec());
    }

    fn delete(&mut self, key: &str) {
        self.now.remove(key);
    }

    fn relist_raw(&mut self, fresh: Vec<(String, Vec<u8>)>) {
        self.now = fresh.into_iter().collect();
    }

    fn publish(&mut self) {
        if self.shown.as_ref() != Some(&self.now) {
            (self.on_change)(&self.now);
            self.shown = Some(self.now.clone());
        }
    }

    fn due(&self) -> Option<Instant> {
        None
    }

    fn check(&mut self) {}

    fn len(&self) -> usize {
        self.now.len()
    }
}

impl<F: FnMut(&Snapshot), L: FnMut(&Registration) -> bool> Set<F, L> {
    fn put(&mut self, key: String, reg: Registration) {
        self.kept.remove(&key);
        if !reg.draining {
            // The same endpoint under a new key (restarted): that one now.
            self.kept.retain(|_, (r, _)| r.bus != reg.bus);
        }
        self.etcd.insert(key, reg);
    }

    fn delete(&mut self, key: &str) {
        if let Some(reg) = self.etcd.remove(key) {
            self.gone(key.to_string(), reg);
        }
    }

    /// A whole new list (after a compaction): what is missing was removed.
    fn relist(&mut self, fresh: Snapshot) {
        let old = std::mem::take(&mut self.etcd);
        for (k, r) in old {
            if !fresh.contains_key(&k) {
                self.gone(k, r);
            }
        }
        for (k, r) in fresh {
            self.put(k, r);
        }
    }

    /// `reg` left etcd: keep it for the grace if its connection is healthy
    /// and it did not leave on purpose.
    fn gone(&mut self, key: String, reg: Registration) {
        if reg.draining || self.grace.is_zero() || !(self.live)(&reg) {
            return;
        }
        tracing::warn!(
            prefix = %self.prefix, %key, grace = ?self.grace,
            "registration gone from etcd but its connection is healthy; kept until it registers again"
        );
        if self.kept.is_empty() {
            self.next_check = Instant::now() + KEPT_CHECK;
        }
        self.kept.insert(key, (reg, Instant::now() + self.grace));
    }

    /// Drops kept registrations whose grace ran out or whose connection
    /// went down, then publishes.
    fn check(&mut self) {
        let now = Instant::now();
        let (live, prefix) = (&mut self.live, &self.prefix);
        self.kept.retain(|key, (reg, until)| {
            if now >= *until {
                tracing::warn!(%prefix, %key, "registration not back within the removal grace; removed");
                false
            } else if !live(reg) {
                tracing::info!(%prefix, %key, "kept registration's connection is down; removed");
                false
            } else {
                true
            }
        });
        self.next_check = now + KEPT_CHECK;
        self.publish();
    }

    /// When `check` is due; None while nothing is kept.
    fn due(&self) -> Option<Instant> {
        (!self.kept.is_empty()).then_some(self.next_check)
    }

    /// Hands the set to the callback if it changed (or was never handed).
    fn publish(&mut self) {
        let mut set: Snapshot = self
            .etcd
            .iter()
            .filter(|(_, r)| !r.draining)
            .map(|(k, r)| (k.clone(), r.clone()))
            .collect();
        for (k, (r, _)) in &self.kept {
            set.entry(k.clone()).or_insert_with(|| r.clone());
        }
        self.state
            .kept
            .store(self.kept.len() as u64, Ordering::Relaxed);
        if self.shown.as_ref() != Some(&set) {
            (self.on_change)(&set);
            self.shown = Some(set);
        }
    }
}

/// Runs `fut`, checking the kept registrations whenever due meanwhile.
async fn checking<T, S: Sink>(set: &mut S, fut: impl Future<Output = T>) -> T {
    tokio::pin!(fut);
    loop {
        let due = set.due();
        tokio::select! {
            v = &mut fut => return v,
            _ = async { tokio::time::sleep_until(due.unwrap_or_else(Instant::now)).await }, if due.is_some() => set.check(),
        }
    }
}

async fn run<S: Sink>(opts: EtcdOptions, prefix: String, mut set: S, state: Arc<State>) {
    // 0: nothing listed yet.
    let mut revision: i64 = 0;
    let mut backoff = Duration::ZERO;
    let mut outage_reported = false;
    loop {
        let end = session(&opts, &prefix, &mut set, &mut revision, &state).await;
        let was_synced = state.synced.swap(false, Ordering::Relaxed);
        if was_synced {
            state.restarts.fetch_add(1, Ordering::Relaxed);
            outage_reported = false;
            backoff = Duration::ZERO;
        }
        match end {
            End::Relist(why) => {
                tracing::warn!(%prefix, reason = %why, "etcd watch must re-list");
                revision = 0;
                continue;
            }
            End::Lost(why) if !outage_reported => {
                tracing::warn!(%prefix, error = %why, "etcd watch lost; keeping the last known set and retrying");
                outage_reported = true;
            }
            End::Lost(why) => tracing::debug!(%prefix, error = %why, "etcd watch retry failed"),
        }
        backoff = next_backoff(backoff);
        checking(&mut set, tokio::time::sleep(backoff)).await;
    }
}

async fn session<S: Sink>(
    opts: &EtcdOptions,
    prefix: &str,
    set: &mut S,
    revision: &mut i64,
    state: &State,
) -> End {
    let mut client = match checking(set, connect(opts)).await {
        Ok(c) => c,
        Err(e) => return End::Lost(format!("connect: {e}")),
    };
    if *revision == 0 {
        let list = client.get(prefix, Some(GetOptions::new().with_prefix()));
        let resp = match checking(set, list).await {
            Ok(r) => r,
            Err(e) => return End::Lost(format!("list: {e}")),
        };
        let fresh = resp
            .kvs()
            .iter()
            .map(|kv| {
                (
                    String::from_utf8_lossy(kv.key()).into_owned(),
                    kv.value().to_vec(),
                )
            })
            .collect();
        *revision = resp.header().map_or(0, |h| h.revision());
        state.relists.fetch_add(1, Ordering::Relaxed);
        set.relist_raw(fresh);
        set.publish();
    }
    let opts_w = WatchOptions::new()
        .with_prefix()
        .with_start_revision(*revision + 1);
    let mut stream = match checking(set, client.watch(prefix, Some(opts_w))).await {
        Ok(s) => s,
        Err(e) => return End::Lost(format!("watch: {e}")),
    };
    state.synced.store(true, Ordering::Relaxed);
    tracing::info!(%prefix, revision = *revision, keys = set.len(), "etcd watch live");
    loop {
        let msg = checking(set, stream.message()).await;
        let msg = match msg {
            Ok(Some(m)) => m,
            Ok(None) => return End::Lost("watch stream ended".into()),
            Err(e) => return End::Lost(format!("watch stream: {e}")),
        };
        if msg.compact_revision() > 0 {
            return End::Relist(format!(
                "revision {} was compacted (oldest kept {})",
                *revision + 1,
                msg.compact_revision()
            ));
        }
        if msg.canceled() {
            return End::Relist(format!("watch cancelled: {}", msg.cancel_reason()));
        }
        for ev in msg.events() {
            let Some(kv) = ev.kv() else { continue };
            // Resume from the last event seen, never from the header's
            // revision: a watcher catching up gets headers ahead of its
            // events, and resuming there would skip some.
            *revision = (*revision).max(kv.mod_revision());
            let key = String::from_utf8_lossy(kv.key()).into_owned();
            match ev.event_type() {
                EventType::Put => set.put_raw(key, kv.value()),
                EventType::Delete => set.delete(&key),
            }
        }
        set.publish();
    }
}

fn parse(key: &str, value: &[u8]) -> Option<Registration> {
    match serde_json::from_slice::<Registration>(value) {
        Ok(r) => Some(r),
        Err(e) => {
            tracing::warn!(%key, error = %e, "registration does not parse; ignored");
            None
        }
    }
}

/// Groups a snapshot by service name.
pub fn by_service(s: &Snapshot) -> BTreeMap<String, Vec<Registration>> {
    let mut m: BTreeMap<String, Vec<Registration>> = BTreeMap::new();
    for r in s.values() {
        m.entry(r.service.clone()).or_default().push(r.clone());
    }
    m
}
