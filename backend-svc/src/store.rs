//! The durable store: fjall (an LSM tree) with one writer thread doing group
//! commit.
//!
//! fjall was chosen over redb by measurement (docs/storage.md): 0.56× the
//! latency of a lone durable put and 0.26× per put in groups of 64, with the
//! same point-read cost.
//!
//! ```text
//!  handlers ── Write{op, deadline, ack} ──► bounded queue ──► writer thread
//!                                                               │ take all queued (≤ MAX_GROUP)
//!                                                               │ drop expired ones (no work)
//!                                                               │ one batch, one fsync
//!                                                               │ publish kv.changed per key
//!  handlers ◄──────────── ack (Ok / Err) ◄──────────────────────┘
//! ```
//!
//! A write is acknowledged only after its batch is fsynced (`SyncAll`), so
//! an acknowledged write survives `kill -9` and power loss. Concurrent
//! writers share an fsync instead of queueing one fsync each. Reads go
//! straight to fjall from the calling thread: they take no lock that the
//! writer holds during fsync.

use bytes::Bytes;
use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use tokio::sync::oneshot;
use tokio::time::Instant;

/// Writes queued for the writer before new ones are refused with 503.
pub const DEFAULT_WRITE_QUEUE: usize = 4096;
/// Most writes in one batch (one fsync).
pub const MAX_GROUP: usize = 512;

pub enum Op {
    Put(Bytes, Bytes),
    Delete(Bytes),
}

impl Op {
    fn key(&self) -> &Bytes {
        match self {
            Op::Put(k, _) | Op::Delete(k) => k,
        }
    }
}

/// How a write ended.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WriteError {
    #[error("write queue full")]
    QueueFull,
    #[error("deadline passed before the write started")]
    Expired,
    #[error("store failure: {0}")]
    Store(String),
    #[error("store closed")]
    Closed,
}

struct Write {
    op: Op,
    deadline: Instant,
    ack: oneshot::Sender<Result<(), WriteError>>,
}

/// Counters an operator reads on `/stats`.
#[derive(Default, Debug)]
pub struct StoreStats {
    pub writes: AtomicU64,
    pub batches: AtomicU64,
    pub expired_writes: AtomicU64,
    pub failed_writes: AtomicU64,
}

/// Called with each durably written key, on the writer thread.
pub type OnChanged = Box<dyn FnMut(&Bytes) + Send>;

pub struct Store {
    keyspace: Keyspace,
    queue: mpsc::SyncSender<Write>,
    stats: Arc<StoreStats>,
    writer: Option<std::thread::JoinHandle<()>>,
}

impl Store {
    /// Opens (creating if needed) the store under `dir`. Fails with a clear
    /// error if the directory cannot be created or is in use by another
    /// process.
    pub fn open(dir: &Path, queue: usize, on_changed: OnChanged) -> Result<Store, StoreError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| StoreError::Open(dir.display().to_string(), e.to_string()))?;
        let db = Database::builder(dir)
            .open()
            .map_err(|e| StoreError::Open(dir.display().to_string(), e.to_string()))?;
        let keyspace = db
            .keyspace("kv", KeyspaceCreateOptions::default)
            .map_err(|e| StoreError::Open(dir.display().to_string(), e.to_string()))?;
        let (tx, rx) = mpsc::sync_channel(queue.max(1));
        let stats = Arc::new(StoreStats::default());
        let w = Writer {
            db,
            keyspace: keyspace.clone(),
            rx,
            stats: stats.clone(),
            on_changed,
        };
        let writer = std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || w.run())
            .map_err(|e| StoreError::Open(dir.display().to_string(), e.to_string()))?;
        Ok(Store {
            keyspace,
            queue: tx,
            stats,
            writer: Some(writer),
        })
    }

    pub fn get(&self, key: &[u8]) -> Result<Option<Bytes>, StoreError> {
        self.keyspace
            .get(key)
            .map(|v| v.map(Bytes::from))
            .map_err(|e| StoreError::Read(e.to_string()))
    }

    /// Queues a write and waits until it is durable (or refused).
    pub async fn write(&self, op: Op, deadline: Instant) -> Result<(), WriteError> {
        let (ack, done) = oneshot::channel();
        match self.queue.try_send(Write { op, deadline, ack }) {
            Ok(()) => {}
            Err(mpsc::TrySendError::Full(_)) => return Err(WriteError::QueueFull),
            Err(mpsc::TrySendError::Disconnected(_)) => return Err(WriteError::Closed),
        }
        done.await.unwrap_or(Err(WriteError::Closed))
    }

    pub fn stats(&self) -> &StoreStats {
        &self.stats
    }

    /// Stops the writer after it has finished what is queued.
    pub fn close(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        // Replacing the sender disconnects the writer's queue once drained.
        let (dead, _) = mpsc::sync_channel(1);
        drop(std::mem::replace(&mut self.queue, dead));
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        self.shutdown();
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the store in {0}: {1}")]
    Open(String, String),
    #[error("read failed: {0}")]
    Read(String),
}

struct Writer {
    db: Database,
    keyspace: Keyspace,
    rx: mpsc::Receiver<Write>,
    stats: Arc<StoreStats>,
    on_changed: OnChanged,
}

impl Writer {
    fn run(mut self) {
        let mut group: Vec<Write> = Vec::with_capacity(MAX_GROUP);
        while let Ok(first) = self.rx.recv() {
            group.push(first);
            while group.len() < MAX_GROUP {
                match self.rx.try_recv() {
                    Ok(w) => group.push(w),
                    Err(_) => break,
                }
            }
            self.commit(&mut group);
        }
        let _ = self.db.persist(PersistMode::SyncAll);
    }

    fn commit(&mut self, group: &mut Vec<Write>) {
        let now = Instant::now();
        let mut batch = self.db.batch().durability(Some(PersistMode::SyncAll));
        let mut live = Vec::with_capacity(group.len());
        for w in group.drain(..) {
            if now >= w.deadline {
                self.stats.expired_writes.fetch_add(1, Ordering::Relaxed);
                let _ = w.ack.send(Err(WriteError::Expired));
                continue;
            }
            match &w.op {
                Op::Put(k, v) => batch.insert(&self.keyspace, k.clone(), v.clone()),
                Op::Delete(k) => batch.remove(&self.keyspace, k.clone()),
            }
            live.push(w);
        }
        if live.is_empty() {
            return;
        }
        match batch.commit() {
            Ok(()) => {
                self.stats.batches.fetch_add(1, Ordering::Relaxed);
                self.stats
                    .writes
                    .fetch_add(live.len() as u64, Ordering::Relaxed);
                for w in live {
                    // Published before the ack so that the event is on its
                    // way before the writer's caller can observe success.
                    (self.on_changed)(w.op.key());
                    let _ = w.ack.send(Ok(()));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, writes = live.len(), "store batch failed");
                self.stats
                    .failed_writes
                    .fetch_add(live.len() as u64, Ordering::Relaxed);
                let msg = e.to_string();
                for w in live {
                    let _ = w.ack.send(Err(WriteError::Store(msg.clone())));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[tokio::test]
    async fn writes_are_readable_published_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s2 = seen.clone();
        let store = Store::open(
            dir.path(),
            16,
            Box::new(move |k| s2.lock().unwrap().push(k.clone())),
        )
        .unwrap();
        let far = Instant::now() + std::time::Duration::from_secs(5);
        store
            .write(
                Op::Put(Bytes::from_static(b"a"), Bytes::from_static(b"1")),
                far,
            )
            .await
            .unwrap();
        store
            .write(
                Op::Put(Bytes::from_static(b"b"), Bytes::from_static(b"2")),
                far,
            )
            .await
            .unwrap();
        store
            .write(Op::Delete(Bytes::from_static(b"b")), far)
            .await
            .unwrap();
        assert_eq!(store.get(b"a").unwrap().as_deref(), Some(&b"1"[..]));
        assert_eq!(store.get(b"b").unwrap(), None);
        assert_eq!(seen.lock().unwrap().len(), 3);
        // An expired write does nothing.
        let past = Instant::now();
        assert_eq!(
            store
                .write(
                    Op::Put(Bytes::from_static(b"c"), Bytes::from_static(b"3")),
                    past
                )
                .await,
            Err(WriteError::Expired)
        );
        assert_eq!(store.get(b"c").unwrap(), None);
        assert_eq!(store.stats().expired_writes.load(Ordering::Relaxed), 1);
        store.close();
        let store = Store::open(dir.path(), 16, Box::new(|_| {})).unwrap();
        assert_eq!(store.get(b"a").unwrap().as_deref(), Some(&b"1"[..]));
    }

    #[test]
    fn a_second_process_on_the_same_directory_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let _first = Store::open(dir.path(), 16, Box::new(|_| {})).unwrap();
        match Store::open(dir.path(), 16, Box::new(|_| {})) {
            Err(StoreError::Open(..)) => {}
            Err(e) => panic!("unexpected error {e}"),
            Ok(_) => panic!("second open succeeded"),
        }
    }
}
