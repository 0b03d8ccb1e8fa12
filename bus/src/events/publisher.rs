//! The PUB side: a bound endpoint, one connection per subscriber, each with
//! its own subscriptions and a bounded outbox that drops when full.

use super::HEARTBEAT_TOPIC;
use crate::error::SetupError;
use crate::tuning::{self, Tuning};
use crate::wire::{self, EncodeError, Event};
use crate::zmtp::connection::{self, Incoming, Settings};
use crate::zmtp::outbox::{Outbox, PushError};
use crate::zmtp::stream::{Listener, Stream};
use crate::zmtp::{SocketType, ZmtpError};
use bytes::Bytes;
use parking_lot::{Mutex, RwLock};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;

/// Subscriptions one subscriber may hold; more closes its connection (a
/// subscriber is a peer we do not control).
const MAX_SUBSCRIPTIONS: usize = 1024;

/// A bound PUB endpoint. `publish` never blocks: a subscriber whose queue is
/// full misses the message rather than stall the publisher.
pub struct Publisher {
    inner: Arc<Inner>,
    endpoint: String,
    tasks: Vec<JoinHandle<()>>,
}

struct Sub {
    outbox: Arc<Outbox>,
    topics: RwLock<Vec<Bytes>>,
}

struct Inner {
    subs: Mutex<HashMap<u64, Arc<Sub>>>,
    published: AtomicU64,
    dropped: AtomicU64,
    refused: AtomicU64,
    settings: Settings,
}

impl Publisher {
    /// Binds `endpoint` (port 0 picks a free one) and starts the heartbeat
    /// (`None` turns it off). Must be called inside a tokio runtime.
    pub fn bind(endpoint: &str, heartbeat: Option<Duration>) -> Result<Publisher, SetupError> {
        Publisher::bind_with(endpoint, heartbeat, &Tuning::default())
    }

    /// As [`bind`](Self::bind), with connection settings (the mechanism:
    /// under CURVE a subscriber whose key is not authorised gets nothing).
    pub fn bind_with(
        endpoint: &str,
        heartbeat: Option<Duration>,
        tuning: &Tuning,
    ) -> Result<Publisher, SetupError> {
        let (runtime, listener, bound) = tuning::listen(endpoint)?;
        let inner = Arc::new(Inner {
            subs: Mutex::new(HashMap::new()),
            published: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            settings: tuning.settings(),
        });
        let mut tasks = vec![runtime.spawn(accept_loop(listener, inner.clone()))];
        if let Some(every) = heartbeat {
            let inner = inner.clone();
            tasks.push(runtime.spawn(async move {
                let mut tick = tokio::time::interval(every);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    let _ = inner.send(HEARTBEAT_TOPIC, Bytes::new());
                }
            }));
        }
        tracing::info!(endpoint = %bound, "events publisher bound");
        Ok(Publisher {
            inner,
            endpoint: bound,
            tasks,
        })
    }

    /// The endpoint actually bound (the real port when bound to port 0).
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Publishes one event. Errors only for a topic too long to encode; a
    /// subscriber that is away simply misses it.
    pub fn publish(&self, topic: &str, body: Bytes) -> Result<(), PublishError> {
        self.inner.send(topic, body)
    }

    /// Events published so far (heartbeats included).
    pub fn published(&self) -> u64 {
        self.inner.published.load(Ordering::Relaxed)
    }

    /// Copies not sent because a subscriber's queue was full.
    pub fn dropped(&self) -> u64 {
        self.inner.dropped.load(Ordering::Relaxed)
    }

    /// Subscribers refused during the handshake (a bad greeting, another
    /// mechanism, a CURVE key not authorised, ...).
    pub fn refused(&self) -> u64 {
        self.inner.refused.load(Ordering::Relaxed)
    }

    /// Subscribers connected now.
    pub fn subscribers(&self) -> usize {
        self.inner.subs.lock().len()
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        for (_, s) in self.inner.subs.lock().drain() {
            s.outbox.close();
        }
    }
}

impl Inner {
    fn send(&self, topic: &str, body: Bytes) -> Result<(), PublishError> {
        let header = wire::encode_event(&Event {
            topic: topic.to_string().into(),
            body: Bytes::new(),
        })?;
        // Pushing only takes each subscriber's outbox lock, never this one:
        // no copy of the list per event.
        for s in self.subs.lock().values() {
            let wanted = s
                .topics
                .read()
                .iter()
                .any(|t| topic.as_bytes().starts_with(t));
            if wanted {
                if let Err(PushError::Full) = s.outbox.push(&[topic.as_bytes(), &header], &body) {
                    self.dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        self.published.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

async fn accept_loop(listener: Listener, inner: Arc<Inner>) {
    let mut next = 0u64;
    loop {
        let stream = listener.next("events").await;
        next += 1;
        tokio::spawn(serve(stream, inner.clone(), next));
    }
}

async fn serve(stream: Stream, inner: Arc<Inner>, id: u64) {
    let conn = match connection::establish(stream, SocketType::Pub, true, &inner.settings).await {
        Ok(c) => c,
        Err(e) => {
            if !matches!(e, ZmtpError::Io(_) | ZmtpError::Closed) {
                inner.refused.fetch_add(1, Ordering::Relaxed);
            }
            tracing::debug!(error = %e, "events: subscriber refused");
            return;
        }
    };
    let sub = Arc::new(Sub {
        outbox: conn.outbox.clone(),
        topics: RwLock::new(Vec::new()),
    });
    inner.subs.lock().insert(id, sub.clone());
    let (mut reader, mut writer) = (conn.reader, conn.writer);
    loop {
        let m = tokio::select! {
            m = reader.next() => m,
            _ = &mut writer => break,
        };
        let (on, topic) = match m {
            Ok(Some(Incoming::Subscribe(t))) => (true, t),
            Ok(Some(Incoming::Cancel(t))) => (false, t),
            // ZMTP 3.0 style: a one-frame message, first byte 1 or 0.
            Ok(Some(Incoming::Message(f)))
                if f.len() == 1 && matches!(f[0].first(), Some(0 | 1)) =>
            {
                (f[0][0] == 1, f[0].slice(1..))
            }
            Ok(Some(Incoming::Message(_))) => continue,
            Ok(None) | Err(_) => break,
        };
        let mut topics = sub.topics.write();
        if on {
            if topics.len() >= MAX_SUBSCRIPTIONS {
                break;
            }
            topics.push(topic);
        } else if let Some(i) = topics.iter().position(|t| *t == topic) {
            topics.swap_remove(i);
        }
    }
    inner.subs.lock().remove(&id);
    sub.outbox.close();
}

/// Why an event could not be published.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("event cannot be encoded: {0}")]
    Encode(#[from] EncodeError),
}
