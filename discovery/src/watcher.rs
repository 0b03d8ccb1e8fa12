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

use crate::{connect, next_backoff, EtcdOptions, Registration};
use etcd_client::{EventType, GetOptions, WatchOptions};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;

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
}

impl Watcher {
    /// Watches `prefix` (give it with its trailing `/`). `on_change` runs on
    /// the watcher's task; keep it short.
    pub fn start<F>(opts: EtcdOptions, prefix: String, on_change: F) -> Watcher
    where
        F: FnMut(&Snapshot) + Send + 'static,
    {
        let state = Arc::new(State::default());
        let task = tokio::spawn(run(opts, prefix, on_change, state.clone()));
        Watcher { task, state }
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

async fn run<F: FnMut(&Snapshot)>(
    opts: EtcdOptions,
    prefix: String,
    mut on_change: F,
    state: Arc<State>,
) {
    let mut snapshot = Snapshot::new();
    // 0: nothing listed yet.
    let mut revision: i64 = 0;
    let mut backoff = Duration::ZERO;
    let mut outage_reported = false;
    loop {
        let end = session(
            &opts,
            &prefix,
            &mut snapshot,
            &mut revision,
            &mut on_change,
            &state,
        )
        .await;
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
        tokio::time::sleep(backoff).await;
    }
}

async fn session<F: FnMut(&Snapshot)>(
    opts: &EtcdOptions,
    prefix: &str,
    snapshot: &mut Snapshot,
    revision: &mut i64,
    on_change: &mut F,
    state: &State,
) -> End {
    let mut client = match connect(opts).await {
        Ok(c) => c,
        Err(e) => return End::Lost(format!("connect: {e}")),
    };
    if *revision == 0 {
        let resp = match client
            .get(prefix, Some(GetOptions::new().with_prefix()))
            .await
        {
            Ok(r) => r,
            Err(e) => return End::Lost(format!("list: {e}")),
        };
        let mut fresh = Snapshot::new();
        for kv in resp.kvs() {
            if let Some((k, r)) = parse(kv.key(), kv.value()) {
                fresh.insert(k, r);
            }
        }
        *revision = resp.header().map_or(0, |h| h.revision());
        state.relists.fetch_add(1, Ordering::Relaxed);
        *snapshot = fresh;
        on_change(snapshot);
    }
    let opts_w = WatchOptions::new()
        .with_prefix()
        .with_start_revision(*revision + 1);
    let mut stream = match client.watch(prefix, Some(opts_w)).await {
        Ok(s) => s,
        Err(e) => return End::Lost(format!("watch: {e}")),
    };
    state.synced.store(true, Ordering::Relaxed);
    tracing::info!(%prefix, revision = *revision, instances = snapshot.len(), "etcd watch live");
    loop {
        let msg = match stream.message().await {
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
        let mut changed = false;
        for ev in msg.events() {
            let Some(kv) = ev.kv() else { continue };
            // Resume from the last event seen, never from the header's
            // revision: a watcher catching up gets headers ahead of its
            // events, and resuming there would skip some.
            *revision = (*revision).max(kv.mod_revision());
            let key = String::from_utf8_lossy(kv.key()).into_owned();
            match ev.event_type() {
                EventType::Put => {
                    if let Some((k, r)) = parse(kv.key(), kv.value()) {
                        changed |= snapshot.insert(k, r.clone()).as_ref() != Some(&r);
                    } else {
                        changed |= snapshot.remove(&key).is_some();
                    }
                }
                EventType::Delete => changed |= snapshot.remove(&key).is_some(),
            }
        }
        if changed {
            on_change(snapshot);
        }
    }
}

fn parse(key: &[u8], value: &[u8]) -> Option<(String, Registration)> {
    let key = String::from_utf8_lossy(key).into_owned();
    match serde_json::from_slice::<Registration>(value) {
        Ok(r) => Some((key, r)),
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
