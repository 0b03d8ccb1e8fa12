//! One caller's connection to a service: requests in, replies out.

use super::{Conns, Counters, Shared};
use crate::wire::{self, ErrorReply, Kind, Message, Reply, Request, Text};
use crate::zmtp::connection::{self, Incoming, Settings};
use crate::zmtp::curve::CurveError;
use crate::zmtp::outbox::{Outbox, PushError};
use crate::zmtp::stream::Stream;
use crate::zmtp::{SocketType, ZmtpError};
use bytes::Bytes;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

pub(super) struct Ctx<F> {
    pub shared: Arc<Shared>,
    pub handler: F,
    pub max_in_flight: usize,
    pub settings: Settings,
    pub conns: Conns,
}

/// Unregisters the connection however its task ends.
struct Registered<'a> {
    conns: &'a Conns,
    id: u64,
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        if let Some(e) = self.conns.lock().remove(&self.id) {
            if let Some(ob) = e.outbox {
                ob.close();
            }
        }
    }
}

pub(super) async fn serve<F, Fut>(stream: Stream, ctx: Arc<Ctx<F>>, id: u64)
where
    F: Fn(Request, Instant) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Reply> + Send + 'static,
{
    let _registered = Registered {
        conns: &ctx.conns,
        id,
    };
    let conn = match connection::establish(stream, SocketType::Router, true, &ctx.settings).await {
        Ok(c) => c,
        Err(e) => return refused(&ctx.shared, &e),
    };
    let outbox = conn.outbox;
    ctx.shared
        .counters
        .connections
        .fetch_add(1, Ordering::Relaxed);
    match ctx.conns.lock().get_mut(&id) {
        Some(e) => e.outbox = Some(outbox.clone()),
        // Stopped while we shook hands.
        None => return,
    }
    if ctx.shared.draining.load(Ordering::Relaxed) {
        outbox.close();
    }
    let (mut reader, mut writer) = (conn.reader, conn.writer);
    'conn: loop {
        let mut m = tokio::select! {
            biased;
            m = reader.next() => m,
            _ = &mut writer => break,
        };
        // Everything this read brought, with no select! per message.
        loop {
            match m {
                Ok(Some(Incoming::Message(frames))) => request(&ctx, frames, &outbox),
                Ok(Some(_)) => {}
                Ok(None) => break 'conn,
                Err(e) => {
                    if !matches!(e, ZmtpError::Io(_) | ZmtpError::Closed) {
                        refused(&ctx.shared, &e);
                    }
                    break 'conn;
                }
            }
            m = match reader.try_next() {
                Ok(None) => break,
                other => other,
            };
        }
        // A caller that sends faster than it reads its replies is read no
        // further until they drain.
        if !outbox.has_room() {
            outbox.wait_room().await;
        }
    }
    // Let the writer flush what handlers already answered; it shuts the
    // socket down after.
    outbox.close();
}

fn refused(shared: &Shared, e: &ZmtpError) {
    if matches!(e, ZmtpError::Io(_) | ZmtpError::Closed) {
        return;
    }
    shared
        .counters
        .refused_peers
        .fetch_add(1, Ordering::Relaxed);
    if let ZmtpError::Curve(CurveError::Unauthorized(key)) = e {
        // Once per key at warn: a caller whose key was left out retries
        // every second and would otherwise fill the log.
        if shared.note_refused_key(key) {
            tracing::warn!(service = %shared.name, client_key = %key, "bus peer refused: CURVE key not authorised (logged once per key)");
        } else {
            tracing::debug!(service = %shared.name, client_key = %key, "bus peer refused: CURVE key not authorised");
        }
        return;
    }
    tracing::warn!(service = %shared.name, error = %e, "bus peer refused");
}

fn error_reply(shared: &Shared, outbox: &Outbox, id: u64, status: u16, msg: &'static str) {
    let header = wire::encode_error(&ErrorReply {
        correlation_id: id,
        status,
        message: Text::from_static(msg),
    });
    send(shared, outbox, &header, &Bytes::new());
}

fn send(shared: &Shared, outbox: &Outbox, header: &[u8], body: &Bytes) {
    let c = &shared.counters;
    match outbox.push_unbounded(&[header], body) {
        Ok(()) => c.replied.fetch_add(1, Ordering::Relaxed),
        // The caller's connection is gone: nobody can take this reply.
        Err(PushError::Closed | PushError::Full) => c.undeliverable.fetch_add(1, Ordering::Relaxed),
    };
}

fn request<F, Fut>(ctx: &Arc<Ctx<F>>, mut frames: Vec<Bytes>, outbox: &Arc<Outbox>)
where
    F: Fn(Request, Instant) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Reply> + Send + 'static,
{
    let shared = &ctx.shared;
    let c = &shared.counters;
    c.received.fetch_add(1, Ordering::Relaxed);
    let count = frames.len();
    let body = if count == 2 {
        frames.pop().unwrap_or_default()
    } else {
        Bytes::new()
    };
    let header = frames.swap_remove(0);
    let prefix = match wire::peek(&header) {
        Ok(p) if p.kind == Kind::Request && count == 2 => p,
        Ok(p) => {
            c.malformed.fetch_add(1, Ordering::Relaxed);
            if p.kind == Kind::Request {
                error_reply(shared, outbox, p.correlation_id, 400, "expected 2 frames");
            }
            return;
        }
        Err(_) => {
            c.malformed.fetch_add(1, Ordering::Relaxed);
            if header.len() >= 12 {
                let mut id = [0u8; 8];
                id.copy_from_slice(&header[4..12]);
                error_reply(shared, outbox, u64::from_le_bytes(id), 400, "bad header");
            }
            return;
        }
    };
    if prefix.budget_us == 0 {
        c.expired_on_arrival.fetch_add(1, Ordering::Relaxed);
        return;
    }
    if shared.draining.load(Ordering::Relaxed) {
        c.overloaded.fetch_add(1, Ordering::Relaxed);
        error_reply(shared, outbox, prefix.correlation_id, 503, "draining");
        return;
    }
    if shared.in_flight.load(Ordering::Acquire) >= ctx.max_in_flight {
        c.overloaded.fetch_add(1, Ordering::Relaxed);
        error_reply(shared, outbox, prefix.correlation_id, 503, "at capacity");
        return;
    }
    shared.in_flight.fetch_add(1, Ordering::AcqRel);
    let received = Instant::now();
    let deadline = received + Duration::from_micros(prefix.budget_us as u64);
    let mut guard = ReplyGuard {
        outbox: Some(outbox.clone()),
        id: prefix.correlation_id,
        shared: shared.clone(),
    };
    let ctx = ctx.clone();
    let task = async move {
        let req = match wire::decode(header, body) {
            Ok(Message::Request(r)) => r,
            _ => {
                guard.count(|c| &c.malformed);
                guard.error(400, "malformed request");
                return;
            }
        };
        // The budget may have run out while decoding a large request (or,
        // for a 1 µs budget, at all): do no work.
        if Instant::now() >= deadline {
            guard.count(|c| &c.expired_on_arrival);
            guard.finish(None);
            return;
        }
        let id = req.correlation_id;
        let hist = guard.shared.methods.get(&req.method);
        let mut reply = (ctx.handler)(req, deadline).await;
        hist.record_duration(received.elapsed());
        if Instant::now() > deadline {
            guard.count(|c| &c.expired_in_handler);
            guard.finish(None);
            return;
        }
        reply.correlation_id = id;
        match wire::encode_reply(&reply) {
            Ok(h) => guard.finish(Some((h, reply.body))),
            Err(_) => guard.error(500, "reply could not be encoded"),
        }
    };
    run_inline_or_spawn(task);
}

/// Polls a handler's task once right here, on the connection's reader: a
/// handler that finishes without waiting (most do: echo, cache hits,
/// validation errors) is answered with no task spawned. Anything that waits
/// is spawned and finishes on tokio. A panic is caught; dropping the task
/// then answers 500 through its guard.
fn run_inline_or_spawn(task: impl Future<Output = ()> + Send + 'static) {
    let mut task = Box::pin(task);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    let polled =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| task.as_mut().poll(&mut cx)));
    match polled {
        Ok(std::task::Poll::Ready(())) => {}
        Ok(std::task::Poll::Pending) => {
            tokio::spawn(task);
        }
        Err(_) => drop(task),
    }
}

/// Sends exactly one reply for one request: the handler's, an error, or,
/// if dropped unfinished (the handler panicked), a 500.
struct ReplyGuard {
    outbox: Option<Arc<Outbox>>,
    id: u64,
    shared: Arc<Shared>,
}

impl ReplyGuard {
    fn count(&self, which: impl Fn(&Counters) -> &AtomicU64) {
        which(&self.shared.counters).fetch_add(1, Ordering::Relaxed);
    }

    /// `None`: nothing to send (expired), but the slot must still be freed.
    fn finish(&mut self, reply: Option<(Vec<u8>, Bytes)>) {
        if let Some(outbox) = self.outbox.take() {
            if let Some((h, b)) = reply {
                send(&self.shared, &outbox, &h, &b);
            }
            self.shared.in_flight.fetch_sub(1, Ordering::AcqRel);
        }
    }

    fn error(&mut self, status: u16, message: &'static str) {
        let h = wire::encode_error(&ErrorReply {
            correlation_id: self.id,
            status,
            message: Text::from_static(message),
        });
        self.finish(Some((h, Bytes::new())));
    }
}

impl Drop for ReplyGuard {
    fn drop(&mut self) {
        if self.outbox.is_some() {
            self.count(|c| &c.handler_failures);
            self.error(500, "handler failed");
        }
    }
}
