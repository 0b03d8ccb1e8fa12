//! The life of one instance's connection: connect, handshake, read replies
//! into the correlation table, reconnect with back-off when it drops.
//!
//! ```text
//!  loop:
//!    connect + handshake ──fail──► sleep (100 ms doubling to 1 s, jittered)
//!    live: instance.outbox = Some, connected = true, wake first-call waiters
//!      reader: [header, body] ─► peek id ─► table.complete
//!      ends on EOF, error, heartbeat silence, writer failure,
//!      or retired with nothing outstanding
//!    down: outbox closed (pushes fail), connected = false,
//!          calls still pending on it fail with Disconnected at once
//! ```
//!
//! The reader decodes everything the socket delivered before the close, so
//! the last replies of a service that drained and closed are never lost.

use super::pick::Instance;
use super::Counters;
use crate::curve::PublicKey;
use crate::error::CallError;
use crate::table::{RawReply, Table};
use crate::tuning::{self, Tuning};
use crate::wire::{self, Kind};
use crate::zmtp::connection::{self, Conn, Incoming};
use crate::zmtp::outbox::Outbox;
use crate::zmtp::stream::Stream;
use crate::zmtp::{Endpoint, SocketType, ZmtpError};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;
use tokio::sync::Notify;

/// A retired connection stays at least this long, so a call that picked
/// the instance just before its removal still finds it.
const RETIRE_MIN: Duration = Duration::from_millis(50);

/// What every link of one client shares.
pub(crate) struct LinkCtx {
    pub table: Arc<Table>,
    pub counters: Arc<Counters>,
    pub tuning: Tuning,
    pub service: String,
    /// Woken whenever any instance completes a handshake.
    pub connected: Notify,
    /// CURVE keys from the instances' registrations, by endpoint.
    pub registered_keys: parking_lot::RwLock<HashMap<String, PublicKey>>,
}

/// Every link in the process to one endpoint. When one connects, the
/// others waiting out a back-off try again at once: a per-core terminator
/// has a link per shard to every instance, and a service that comes up
/// must be usable from all of them, not from one now and the rest up to a
/// back-off later.
struct Peers {
    woken: Notify,
    /// Successful connects so far: a link whose attempt failed while
    /// another's succeeded retries at once instead of sleeping.
    connects: AtomicU64,
}

fn peers(endpoint: &str) -> Arc<Peers> {
    static ALL: OnceLock<Mutex<HashMap<String, Weak<Peers>>>> = OnceLock::new();
    let mut all = ALL.get_or_init(Default::default).lock();
    if let Some(p) = all.get(endpoint).and_then(Weak::upgrade) {
        return p;
    }
    all.retain(|_, w| w.strong_count() > 0);
    let p = Arc::new(Peers {
        woken: Notify::new(),
        connects: AtomicU64::new(0),
    });
    all.insert(endpoint.to_string(), Arc::downgrade(&p));
    p
}

pub(crate) async fn run(inst: Arc<Instance>, ctx: Arc<LinkCtx>) {
    let Some(ep) = Endpoint::parse(&inst.endpoint) else {
        return;
    };
    let peers = peers(&inst.endpoint);
    let mut delay = ctx.tuning.reconnect_ivl;
    let mut failures = 0u32;
    while !inst.retiring.load(Ordering::Relaxed) {
        let connects_before = peers.connects.load(Ordering::Acquire);
        let mut connected = false;
        let registered = ctx.registered_keys.read().get(&inst.endpoint).copied();
        let settings = match ctx.tuning.settings_for(registered) {
            Ok(s) => s,
            Err(e) => {
                failures += 1;
                if failures == 1 {
                    tracing::warn!(service = %ctx.service, endpoint = %inst.endpoint, error = %e, "not connecting");
                }
                tokio::select! {
                    _ = tuning::jittered_sleep(ctx.tuning.reconnect_ivl_max) => {}
                    _ = inst.retire.notified() => {}
                }
                continue;
            }
        };
        let attempt = async {
            let stream = Stream::connect(&ep).await?;
            connection::establish(stream, SocketType::Dealer, false, &settings).await
        };
        match attempt.await {
            Ok(conn) => {
                failures = 0;
                delay = ctx.tuning.reconnect_ivl;
                connected = true;
                peers.connects.fetch_add(1, Ordering::AcqRel);
                peers.woken.notify_waiters();
                live(&inst, &ctx, conn).await;
                if inst.retiring.load(Ordering::Relaxed) {
                    break;
                }
            }
            Err(e) => {
                failures += 1;
                // Once per outage at debug; a dead instance should be visible
                // but not fill the log at ten lines a second.
                if failures == 1 {
                    if let ZmtpError::Curve(_)
                    | ZmtpError::PeerError(_)
                    | ZmtpError::Mechanism { .. } = e
                    {
                        // Not an outage: keys or settings disagree.
                        tracing::warn!(service = %ctx.service, endpoint = %inst.endpoint, error = %e, "handshake refused; retrying");
                    } else {
                        tracing::debug!(service = %ctx.service, endpoint = %inst.endpoint, error = %e, "cannot connect; retrying");
                    }
                }
            }
        }
        let woken = peers.woken.notified();
        if !connected && peers.connects.load(Ordering::Acquire) != connects_before {
            // Another link reached this endpoint while our attempt failed:
            // try again now. (Never after our own connection ended: a
            // peer that accepts and drops would make that a busy loop.)
            continue;
        }
        tokio::select! {
            _ = tuning::jittered_sleep(delay) => {}
            _ = inst.retire.notified() => {}
            // Only after a failed attempt: links whose connections a peer
            // keeps dropping must not wake each other into a busy loop.
            _ = woken, if !connected => {}
        }
        delay = ctx.tuning.backoff(delay);
    }
}

/// Marks the instance down and fails what was pending on the connection,
/// however `live` ends (also when the client drops and aborts the task).
struct Down<'a> {
    inst: &'a Instance,
    ctx: &'a LinkCtx,
    outbox: Arc<Outbox>,
    writer: tokio::task::AbortHandle,
}

impl Drop for Down<'_> {
    fn drop(&mut self) {
        // Close first: a call that pushes after this fails at once, and one
        // that pushed before is in the table and fails just below.
        self.outbox.close();
        self.inst.outbox.store(None);
        let was = self.inst.connected.swap(false, Ordering::Relaxed);
        let n = self
            .ctx
            .table
            .fail_endpoint(self.inst.id, CallError::Disconnected);
        self.writer.abort();
        if was || n > 0 {
            tracing::warn!(service = %self.ctx.service, endpoint = %self.inst.endpoint, failed = n, "instance disconnected");
        }
    }
}

async fn live(inst: &Instance, ctx: &LinkCtx, conn: Conn) {
    let Conn {
        mut reader,
        outbox,
        mut writer,
        ..
    } = conn;
    let _down = Down {
        inst,
        ctx,
        outbox: outbox.clone(),
        writer: writer.abort_handle(),
    };
    inst.outbox.store(Some(outbox));
    if !inst.retiring.load(Ordering::Relaxed) {
        inst.connected.store(true, Ordering::Relaxed);
        inst.ever_connected.store(true, Ordering::Relaxed);
    }
    ctx.connected.notify_waiters();
    tracing::debug!(service = %ctx.service, endpoint = %inst.endpoint, "instance connected");
    // Removed from the set: wait until the calls already sent are answered
    // (or given up), then close. One future for the connection's life, so a
    // read costs no timer or Notify registration.
    let retired = async {
        inst.retire.notified().await;
        let at = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(Duration::from_millis(5)).await;
            if inst.outstanding() == 0 && at.elapsed() >= RETIRE_MIN {
                return;
            }
        }
    };
    tokio::pin!(retired);
    loop {
        tokio::select! {
            biased;
            m = reader.next() => {
                let mut m = m;
                // Everything this read brought, with no select! per message.
                loop {
                    match m {
                        Ok(Some(Incoming::Message(frames))) => deliver(ctx, frames),
                        Ok(Some(_)) => {}
                        Ok(None) => return,
                        Err(e) => {
                            tracing::debug!(service = %ctx.service, endpoint = %inst.endpoint, error = %e, "connection ended");
                            return;
                        }
                    }
                    m = match reader.try_next() {
                        Ok(None) => break,
                        other => other,
                    };
                }
            }
            _ = &mut writer => return,
            _ = &mut retired => return,
        }
    }
}

/// A reply or error to its caller; anything else is counted and dropped.
fn deliver(ctx: &LinkCtx, mut frames: Vec<bytes::Bytes>) {
    if frames.len() != 2 {
        ctx.counters
            .malformed_frames
            .fetch_add(1, Ordering::Relaxed);
        return;
    }
    let body = frames.pop().unwrap_or_default();
    let header = frames.pop().unwrap_or_default();
    match wire::peek(&header) {
        Ok(p) if matches!(p.kind, Kind::Reply | Kind::Error) => {
            ctx.table
                .complete(p.correlation_id, Ok(RawReply { header, body }));
        }
        _ => {
            ctx.counters
                .malformed_frames
                .fetch_add(1, Ordering::Relaxed);
        }
    }
}
