//! The write side of a connection: callers append whole messages to a
//! shared buffer, one writer task sends everything queued in one `write`
//! (or `writev` when large bodies ride along uncopied).
//!
//! ```text
//!  callers (any task)                 writer task (one per connection)
//!  push(frames) ─► lock, encode ─►    swap the buffer out (lock held for a swap)
//!     wake the writer if it idles     write_all / writev ─► socket
//!                                     idle: await a push, or the next PING
//! ```
//!
//! Under load many callers' messages coalesce into one syscall, and the
//! writer is woken once per batch, not once per message. The queue is
//! bounded in messages and bytes (what libzmq called the high-water mark):
//! a push over either bound is `Full`, and the caller answers `Overloaded`.

use super::curve::Sealer;
use super::frame::{self, Command};
use super::stream::WriteHalf;
use bytes::Bytes;
use parking_lot::Mutex;
use std::io::{self, IoSlice};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::sync::Notify;

/// Bodies this large are queued by reference and sent with `writev`; below
/// it a copy into the batch buffer is cheaper than another iovec.
const ZERO_COPY_MIN: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PushError {
    /// Over the message or byte bound.
    Full,
    /// The connection is gone (or going).
    Closed,
}

pub(crate) struct Outbox {
    state: Mutex<State>,
    notify: Notify,
    /// Woken each time the writer takes a batch.
    taken: Notify,
    max_msgs: usize,
    max_bytes: usize,
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Outbox")
    }
}

#[derive(Default)]
struct State {
    /// Encoded frames after the last segment.
    buf: Vec<u8>,
    /// Earlier bytes, in order, when a large body was queued uncopied.
    segs: Vec<Bytes>,
    msgs: usize,
    bytes: usize,
    closed: bool,
    /// The writer is (about to be) waiting for a push.
    idle: bool,
}

impl Outbox {
    pub(crate) fn new(max_msgs: usize, max_bytes: usize) -> Arc<Outbox> {
        Arc::new(Outbox {
            state: Mutex::new(State::default()),
            notify: Notify::new(),
            taken: Notify::new(),
            max_msgs: max_msgs.max(1),
            max_bytes: max_bytes.max(1),
        })
    }

    /// Queues one message: `small` frames (copied) then `body` as the last.
    pub(crate) fn push(&self, small: &[&[u8]], body: &Bytes) -> Result<(), PushError> {
        self.push_inner(small, body, true)
    }

    /// As [`push`](Self::push), past the bounds: for replies, whose number
    /// the service already bounds (`max_in_flight`) and which must not be
    /// lost for a queue the service itself filled. The service stops
    /// reading requests instead ([`wait_room`](Self::wait_room)).
    pub(crate) fn push_unbounded(&self, small: &[&[u8]], body: &Bytes) -> Result<(), PushError> {
        self.push_inner(small, body, false)
    }

    fn push_inner(&self, small: &[&[u8]], body: &Bytes, bounded: bool) -> Result<(), PushError> {
        let mut s = self.state.lock();
        if s.closed {
            return Err(PushError::Closed);
        }
        if bounded && (s.msgs >= self.max_msgs || s.bytes >= self.max_bytes) {
            return Err(PushError::Full);
        }
        let mut n = body.len();
        for f in small {
            frame::put_frame(&mut s.buf, true, f);
            n += f.len();
        }
        if body.len() >= ZERO_COPY_MIN {
            frame::put_head(&mut s.buf, false, false, body.len());
            let head = Bytes::from(std::mem::take(&mut s.buf));
            s.segs.push(head);
            s.segs.push(body.clone());
        } else {
            frame::put_frame(&mut s.buf, false, body);
        }
        s.msgs += 1;
        s.bytes += n;
        self.wake(s);
        Ok(())
    }

    /// Queues a command (PING, PONG, SUBSCRIBE); not bounded: they are tiny
    /// and each answers something the peer sent or a timer.
    pub(crate) fn push_command(&self, cmd: &Command) -> Result<(), PushError> {
        let mut s = self.state.lock();
        if s.closed {
            return Err(PushError::Closed);
        }
        cmd.put(&mut s.buf);
        self.wake(s);
        Ok(())
    }

    fn wake(&self, mut s: parking_lot::MutexGuard<'_, State>) {
        let idle = std::mem::replace(&mut s.idle, false);
        drop(s);
        if idle {
            self.notify.notify_one();
        }
    }

    /// Waits while the queue is over its bounds (the writer is blocked on a
    /// peer that reads slowly): backpressure for whoever produces into it.
    pub(crate) async fn wait_room(&self) {
        loop {
            let taken = self.taken.notified();
            {
                let s = self.state.lock();
                if s.closed || (s.msgs < self.max_msgs && s.bytes < self.max_bytes) {
                    return;
                }
            }
            taken.await;
        }
    }

    pub(crate) fn has_room(&self) -> bool {
        let s = self.state.lock();
        s.msgs < self.max_msgs && s.bytes < self.max_bytes
    }

    /// No more pushes; the writer sends what is queued, then shuts the
    /// write side down.
    pub(crate) fn close(&self) {
        self.state.lock().closed = true;
        self.notify.notify_one();
        self.taken.notify_waiters();
    }
}

/// What the writer sends on its own: a PING every `every` while idle, with
/// `ttl` for the peer (RFC 37). `None` for 3.0 peers and when turned off.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Pinger {
    pub every: Duration,
    pub ttl_ds: u16,
}

/// The writer task's body. Returns when the outbox is closed and drained
/// (Ok) or the socket fails.
pub(crate) async fn write_loop(
    ob: Arc<Outbox>,
    mut w: WriteHalf,
    pinger: Option<Pinger>,
    mut sealer: Option<Sealer>,
) -> io::Result<()> {
    let mut mine: Vec<u8> = Vec::with_capacity(64 * 1024);
    // CURVE: the batch's frames, each boxed (a copy is unavoidable).
    let mut sealed: Vec<u8> = Vec::new();
    let mut segs: Vec<Bytes> = Vec::new();
    let every = pinger.map_or(Duration::from_secs(3600), |p| p.every);
    let ping = tokio::time::sleep(every);
    tokio::pin!(ping);
    loop {
        let closed = {
            let mut s = ob.state.lock();
            if s.buf.is_empty() && s.segs.is_empty() {
                s.idle = !s.closed;
            } else {
                std::mem::swap(&mut mine, &mut s.buf);
                std::mem::swap(&mut segs, &mut s.segs);
                s.msgs = 0;
                s.bytes = 0;
            }
            s.closed
        };
        if !mine.is_empty() || !segs.is_empty() {
            ob.taken.notify_waiters();
        }
        if mine.is_empty() && segs.is_empty() {
            if closed {
                let _ = w.shutdown().await;
                return Ok(());
            }
            tokio::select! {
                _ = ob.notify.notified() => {
                    // Woken by the first push of a new batch: let the other
                    // tasks that are ready now (HTTP connections whose
                    // requests arrived in the same poll) push theirs before
                    // the write, so they share one syscall. Measured: without
                    // it the terminator wrote ~0.8 times per request, with
                    // it a fraction of that (docs/benchmarks.md).
                    tokio::task::yield_now().await;
                }
                _ = &mut ping, if pinger.is_some() => {
                    if let Some(p) = pinger {
                        let _ = ob.push_command(&Command::Ping { ttl_ds: p.ttl_ds, context: Bytes::new() });
                    }
                    ping.as_mut().reset(tokio::time::Instant::now() + every);
                }
            }
            continue;
        }
        if let Some(sealer) = &mut sealer {
            if !segs.is_empty() {
                let mut all: Vec<u8> = segs.iter().flat_map(|b| b.iter().copied()).collect();
                all.extend_from_slice(&mine);
                mine = all;
                segs.clear();
            }
            sealed.clear();
            sealer
                .seal_all(&mine, &mut sealed)
                .map_err(io::Error::other)?;
            w.write_all(&sealed).await?;
            if sealed.capacity() > 4 << 20 {
                sealed = Vec::new();
            }
        } else if segs.is_empty() {
            w.write_all(&mine).await?;
        } else {
            let mut parts: Vec<&[u8]> = segs.iter().map(|b| &b[..]).collect();
            parts.push(&mine);
            write_all_slices(&mut w, &parts).await?;
            segs.clear();
        }
        mine.clear();
        if mine.capacity() > 4 << 20 {
            // One burst of large messages should not pin megabytes forever.
            mine = Vec::with_capacity(64 * 1024);
        }
    }
}

async fn write_all_slices(w: &mut WriteHalf, parts: &[&[u8]]) -> io::Result<()> {
    let (mut i, mut off) = (0usize, 0usize);
    while i < parts.len() {
        let mut iov = Vec::with_capacity((parts.len() - i).min(64));
        iov.push(IoSlice::new(&parts[i][off..]));
        for p in parts.iter().skip(i + 1).take(63) {
            iov.push(IoSlice::new(p));
        }
        let mut n = w.write_vectored(&iov).await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        while n > 0 && i < parts.len() {
            let left = parts[i].len() - off;
            if n >= left {
                n -= left;
                i += 1;
                off = 0;
            } else {
                off += n;
                n = 0;
            }
        }
        while i < parts.len() && parts[i].len() == off {
            i += 1;
            off = 0;
        }
    }
    Ok(())
}
