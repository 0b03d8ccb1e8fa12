//! Keeps one registration in etcd for as long as the process wants it.
//!
//! ```text
//!  loop:
//!    connect ─► grant lease(TTL) ─► put key (with lease) ─► keepalive every TTL/3
//!      keepalive answer with TTL 0   ─► lease lost (expired while we were away): new session
//!      stream ends, errors, or no answer within TTL/3 ─► new session
//!      etcd unreachable ─► warn once, retry with back-off (≤ 2 s)
//!  deregister: mark the key draining, then revoke the lease (the key goes
//!              with it), bounded in time
//! ```
//!
//! The draining mark tells watchers the removal is deliberate: they drop
//! the instance at once rather than keep it for the removal grace they give
//! a key that vanished while its connection is healthy (a lease that
//! expired because etcd, not the instance, was away).

use crate::{connect, next_backoff, EtcdOptions, Registration};
use etcd_client::{Client, PutOptions};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::task::JoinHandle;

pub struct Registrar {
    task: JoinHandle<()>,
    shared: Arc<Shared>,
    key: String,
    /// The registration with `draining` set, as JSON.
    draining: String,
}

#[derive(Default)]
struct Shared {
    /// The live session's client and lease, for revoking on shutdown.
    lease: Mutex<Option<(Client, i64)>>,
    registered: AtomicBool,
}

impl Registrar {
    /// Starts keeping `reg` registered. Returns at once; etcd being down is
    /// not an error (the task keeps trying).
    pub fn start(opts: EtcdOptions, reg: Registration) -> Registrar {
        let key = reg.key();
        Self::start_at(opts, key, reg)
    }

    /// [`Registrar::start`] under `key` rather than the service's
    /// (terminators: [`crate::TERMINATORS`]).
    pub fn start_at(opts: EtcdOptions, key: String, reg: Registration) -> Registrar {
        let shared = Arc::new(Shared::default());
        let draining = serde_json::to_string(&Registration {
            draining: true,
            ..reg.clone()
        })
        .unwrap_or_default();
        let task = tokio::spawn(run(opts, key.clone(), reg, shared.clone()));
        Registrar {
            task,
            shared,
            key,
            draining,
        }
    }

    /// Whether the key is in etcd now, as far as this process knows.
    pub fn registered(&self) -> bool {
        self.shared.registered.load(Ordering::Relaxed)
    }

    pub fn key(&self) -> &str {
        &self.key
    }

    /// Removes the registration (marks it draining, then revokes the lease)
    /// and stops. Called before draining, so that callers stop sending while
    /// in-flight work finishes. Bounded: if etcd does not answer within
    /// `bound`, the lease simply expires after its TTL.
    pub async fn deregister(mut self, bound: Duration) {
        self.task.abort();
        let _ = (&mut self.task).await;
        let lease = self.shared.lease.lock().ok().and_then(|mut l| l.take());
        if let Some((mut client, id)) = lease {
            let (key, value) = (self.key.clone(), self.draining.clone());
            let leave = async move {
                // Still under the lease: if the revoke is lost, the mark
                // expires with it.
                let put = PutOptions::new().with_lease(id);
                if let Err(e) = client.put(key, value, Some(put)).await {
                    tracing::debug!(error = %e, "draining mark not written");
                }
                client.lease_revoke(id).await
            };
            match tokio::time::timeout(bound, leave).await {
                Ok(Ok(_)) => tracing::info!(key = %self.key, "deregistered"),
                Ok(Err(e)) => {
                    tracing::warn!(key = %self.key, error = %e, "deregister failed; the key expires with its lease")
                }
                Err(_) => {
                    tracing::warn!(key = %self.key, "deregister timed out; the key expires with its lease")
                }
            }
        }
        self.shared.registered.store(false, Ordering::Relaxed);
    }
}

impl Drop for Registrar {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn run(opts: EtcdOptions, key: String, reg: Registration, shared: Arc<Shared>) {
    let value = match serde_json::to_string(&reg) {
        Ok(v) => v,
        Err(e) => {
            tracing::error!(error = %e, "registration cannot be encoded");
            return;
        }
    };
    let mut backoff = Duration::ZERO;
    let mut outage_reported = false;
    loop {
        let err = session(&opts, &key, &value, &shared).await;
        let was_registered = shared.registered.swap(false, Ordering::Relaxed);
        if let Ok(mut l) = shared.lease.lock() {
            *l = None;
        }
        if was_registered {
            // A new outage: say so once, and retry quickly.
            outage_reported = false;
            backoff = Duration::ZERO;
        }
        if !outage_reported {
            tracing::warn!(%key, error = %err, "etcd registration lost or unavailable; retrying");
            outage_reported = true;
        } else {
            tracing::debug!(%key, error = %err, "etcd registration retry failed");
        }
        backoff = next_backoff(backoff);
        tokio::time::sleep(backoff).await;
    }
}

/// One connection's life; returns why it ended.
async fn session(opts: &EtcdOptions, key: &str, value: &str, shared: &Shared) -> String {
    let mut client = match connect(opts).await {
        Ok(c) => c,
        Err(e) => return format!("connect: {e}"),
    };
    let ttl = opts.ttl.as_secs().max(2) as i64;
    let lease = match client.lease_grant(ttl, None).await {
        Ok(l) => l.id(),
        Err(e) => return format!("lease grant: {e}"),
    };
    if let Err(e) = client
        .put(key, value, Some(PutOptions::new().with_lease(lease)))
        .await
    {
        return format!("put: {e}");
    }
    if let Ok(mut l) = shared.lease.lock() {
        *l = Some((client.clone(), lease));
    }
    shared.registered.store(true, Ordering::Relaxed);
    tracing::info!(%key, lease, ttl, "registered in etcd");
    let (mut keeper, mut stream) = match client.lease_keep_alive(lease).await {
        Ok(k) => k,
        Err(e) => return format!("keepalive stream: {e}"),
    };
    loop {
        if let Err(e) = keeper.keep_alive().await {
            return format!("keepalive send: {e}");
        }
        match tokio::time::timeout(opts.keepalive, stream.message()).await {
            Ok(Ok(Some(r))) if r.ttl() > 0 => {}
            Ok(Ok(Some(_))) => return "lease expired (etcd forgot it); registering again".into(),
            Ok(Ok(None)) => return "keepalive stream ended".into(),
            Ok(Err(e)) => return format!("keepalive stream: {e}"),
            Err(_) => return "no keepalive answer in time".into(),
        }
        tokio::time::sleep(opts.keepalive).await;
    }
}
