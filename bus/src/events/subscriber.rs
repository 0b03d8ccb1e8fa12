//! The SUB side: one link per publisher endpoint (reconnecting with
//! back-off), subscriptions sent after each handshake, events handed to a
//! callback.

use super::HEARTBEAT_TOPIC;
use crate::curve::PublicKey;
use crate::error::SetupError;
use crate::tuning::{self, Tuning};
use crate::wire::{self, Event, Message};
use crate::zmtp::connection::{self, Incoming};
use crate::zmtp::stream::Stream;
use crate::zmtp::{Endpoint, SocketType};
use bytes::Bytes;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;

type Callback = Box<dyn FnMut(Event) + Send>;

/// Connected to any number of publishers; hands each decoded event to a
/// callback (keep it short: it runs on the connection's task).
pub struct Subscriber {
    shared: Arc<SubShared>,
    links: Mutex<HashMap<String, JoinHandle<()>>>,
    runtime: tokio::runtime::Handle,
}

struct SubShared {
    /// Milliseconds since `epoch` of the last message heard; 0 = never.
    last_heard_ms: AtomicU64,
    epoch: Instant,
    received: AtomicU64,
    malformed: AtomicU64,
    topics: Vec<Bytes>,
    tuning: Tuning,
    on_event: Mutex<Callback>,
    /// CURVE keys from the publishers' registrations, by endpoint.
    registered_keys: parking_lot::RwLock<HashMap<String, PublicKey>>,
}

impl Subscriber {
    /// Connects to `endpoints`, subscribed to `topics` (prefix match) and
    /// always to the heartbeat. `on_event` sees every event but heartbeats.
    /// Must be called inside a tokio runtime.
    pub fn connect<F>(
        endpoints: &[String],
        topics: &[&str],
        on_event: F,
    ) -> Result<Subscriber, SetupError>
    where
        F: FnMut(Event) + Send + 'static,
    {
        Subscriber::connect_with(endpoints, topics, &Tuning::default(), on_event)
    }

    /// As [`connect`](Self::connect), with connection settings (under
    /// CURVE, `server_key` is the publisher's key).
    pub fn connect_with<F>(
        endpoints: &[String],
        topics: &[&str],
        tuning: &Tuning,
        on_event: F,
    ) -> Result<Subscriber, SetupError>
    where
        F: FnMut(Event) + Send + 'static,
    {
        for ep in endpoints {
            tuning::check_endpoint(ep)?;
        }
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| SetupError::NoRuntime)?;
        let mut subs = vec![Bytes::from_static(HEARTBEAT_TOPIC.as_bytes())];
        subs.extend(topics.iter().map(|t| Bytes::copy_from_slice(t.as_bytes())));
        let s = Subscriber {
            shared: Arc::new(SubShared {
                last_heard_ms: AtomicU64::new(0),
                epoch: Instant::now(),
                received: AtomicU64::new(0),
                malformed: AtomicU64::new(0),
                topics: subs,
                tuning: tuning.clone(),
                on_event: Mutex::new(Box::new(on_event)),
                registered_keys: Default::default(),
            }),
            links: Mutex::new(HashMap::new()),
            runtime,
        };
        s.set_endpoints(endpoints)?;
        Ok(s)
    }

    /// Replaces the set of publishers (discovery calls this on changes).
    pub fn set_endpoints(&self, endpoints: &[String]) -> Result<(), SetupError> {
        let mut parsed = Vec::with_capacity(endpoints.len());
        for ep in endpoints {
            parsed.push((ep.clone(), tuning::parse_endpoint(ep)?));
        }
        let mut links = self.links.lock();
        links.retain(|ep, task| {
            let keep = endpoints.contains(ep);
            if !keep {
                task.abort();
            }
            keep
        });
        for (name, ep) in parsed {
            links.entry(name).or_insert_with_key(|name| {
                self.runtime
                    .spawn(link(name.clone(), ep, self.shared.clone()))
            });
        }
        Ok(())
    }

    /// As [`set_endpoints`](Self::set_endpoints), with each publisher's
    /// registered CURVE key (`None`: not registered); see
    /// [`Client::set_endpoints_with_keys`](crate::Client::set_endpoints_with_keys).
    pub fn set_endpoints_with_keys(
        &self,
        endpoints: &[(String, Option<PublicKey>)],
    ) -> Result<(), SetupError> {
        {
            let mut keys = self.shared.registered_keys.write();
            keys.clear();
            keys.extend(
                endpoints
                    .iter()
                    .filter_map(|(e, k)| Some((e.clone(), (*k)?))),
            );
        }
        let eps: Vec<String> = endpoints.iter().map(|(e, _)| e.clone()).collect();
        self.set_endpoints(&eps)
    }

    /// Time since anything (event or heartbeat) was heard; `None` if never.
    pub fn silent_for(&self) -> Option<Duration> {
        let ms = self.shared.last_heard_ms.load(Ordering::Acquire);
        if ms == 0 {
            return None;
        }
        let now = self.shared.epoch.elapsed().as_millis() as u64;
        Some(Duration::from_millis(now.saturating_sub(ms)))
    }

    /// Events received (heartbeats excluded) and malformed messages dropped.
    pub fn counts(&self) -> (u64, u64) {
        (
            self.shared.received.load(Ordering::Relaxed),
            self.shared.malformed.load(Ordering::Relaxed),
        )
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        for (_, t) in self.links.lock().drain() {
            t.abort();
        }
    }
}

async fn link(name: String, ep: Endpoint, sh: Arc<SubShared>) {
    let mut delay = sh.tuning.reconnect_ivl;
    loop {
        let attempt = async {
            let registered = sh.registered_keys.read().get(&name).copied();
            let settings = sh.tuning.settings_for(registered).map_err(|e| {
                std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string())
            })?;
            let stream = Stream::connect(&ep).await?;
            connection::establish(stream, SocketType::Sub, false, &settings).await
        };
        match attempt.await {
            Ok(conn) => {
                delay = sh.tuning.reconnect_ivl;
                let (mut reader, outbox, mut writer) = (conn.reader, conn.outbox, conn.writer);
                // The ZMTP 3.0 form (`\x01` + prefix): every libzmq 4.x PUB
                // accepts it, whatever version it greets with.
                for t in &sh.topics {
                    let mut m = Vec::with_capacity(1 + t.len());
                    m.push(1u8);
                    m.extend_from_slice(t);
                    let _ = outbox.push(&[], &Bytes::from(m));
                }
                loop {
                    let m = tokio::select! {
                        m = reader.next() => m,
                        _ = &mut writer => break,
                    };
                    match m {
                        Ok(Some(Incoming::Message(frames))) => sh.on_message(frames),
                        Ok(Some(_)) => {}
                        Ok(None) => break,
                        Err(e) => {
                            tracing::debug!(endpoint = %ep, error = %e, "events: connection ended");
                            break;
                        }
                    }
                }
                outbox.close();
                writer.abort();
            }
            Err(e) => {
                tracing::debug!(endpoint = %ep, error = %e, "events: cannot connect; retrying")
            }
        }
        tuning::jittered_sleep(delay).await;
        delay = sh.tuning.backoff(delay);
    }
}

impl SubShared {
    fn on_message(&self, frames: Vec<Bytes>) {
        let now = self.epoch.elapsed().as_millis() as u64;
        self.last_heard_ms.store(now.max(1), Ordering::Release);
        let [topic, header, body]: [Bytes; 3] = match frames.try_into() {
            Ok(f) => f,
            Err(_) => {
                self.malformed.fetch_add(1, Ordering::Relaxed);
                return;
            }
        };
        if topic == HEARTBEAT_TOPIC.as_bytes() {
            return;
        }
        match wire::decode(header, body) {
            Ok(Message::Event(e)) if e.topic.as_bytes()[..] == topic[..] => {
                self.received.fetch_add(1, Ordering::Relaxed);
                (self.on_event.lock())(e);
            }
            _ => {
                self.malformed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}
