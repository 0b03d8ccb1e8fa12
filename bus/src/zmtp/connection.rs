//! One ZMTP connection: the handshake, then a [`Reader`] that yields whole
//! messages and an [`Outbox`] that any task may push messages into, drained
//! by a writer task.
//!
//! ```text
//!  establish(stream, our socket type)
//!    greeting ─► mechanism handshake (READY + metadata; CURVE: HELLO,
//!      WELCOME, INITIATE, READY) ─► socket types agree?
//!    spawn writer task (outbox ─► [CURVE: seal each frame] ─► socket,
//!      PING every heartbeat interval)
//!  Reader::next ─► every complete frame in the buffer [CURVE: opened,
//!    nonce above the last], then one read
//!    PING ─► PONG into the outbox; SUBSCRIBE/CANCEL ─► returned;
//!    silence past the heartbeat timeout ─► error
//! ```

use super::curve::Opener;
use super::frame::{self, Command, Metadata};
use super::greeting;
use super::mechanism::Mechanism;
use super::outbox::{self, Outbox, Pinger};
use super::stream::{ReadHalf, Stream};
use super::{SocketType, ZmtpError};
use bytes::{Bytes, BytesMut};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinHandle;
use tokio::time::{Instant, Sleep};

/// Frames in one message, at most (ours have 2 or 3); with the byte limit
/// this bounds what a peer can make us hold before a message completes.
pub const MAX_FRAMES: usize = 64;

/// How a connection behaves; see [`crate::Tuning`] for the defaults.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub mechanism: Mechanism,
    pub max_message: usize,
    pub heartbeat_ivl: Duration,
    pub heartbeat_timeout: Duration,
    pub handshake_timeout: Duration,
    pub queue_msgs: usize,
    pub queue_bytes: usize,
}

pub(crate) struct Conn {
    pub reader: Reader,
    pub outbox: Arc<Outbox>,
    pub writer: JoinHandle<std::io::Result<()>>,
}

/// What a reader hands up.
#[derive(Debug)]
pub(crate) enum Incoming {
    Message(Vec<Bytes>),
    Subscribe(Bytes),
    Cancel(Bytes),
}

/// Runs the handshake on `stream` within `s.handshake_timeout`.
pub(crate) async fn establish(
    stream: Stream,
    me: SocketType,
    as_server: bool,
    s: &Settings,
) -> Result<Conn, ZmtpError> {
    match tokio::time::timeout(s.handshake_timeout, handshake(stream, me, as_server, s)).await {
        Ok(r) => r,
        Err(_) => Err(ZmtpError::HandshakeTimeout),
    }
}

async fn handshake(
    stream: Stream,
    me: SocketType,
    as_server: bool,
    s: &Settings,
) -> Result<Conn, ZmtpError> {
    let (mut r, mut w) = stream.into_split();
    w.write_all(&greeting::encode(s.mechanism.name(), as_server))
        .await?;
    let mut buf = BytesMut::with_capacity(1024);
    let g = loop {
        if let Some(g) = greeting::parse(&buf)? {
            break g;
        }
        if r.read_buf(&mut buf).await? == 0 {
            return Err(ZmtpError::Closed);
        }
    };
    bytes::Buf::advance(&mut buf, greeting::GREETING_LEN);
    if g.mechanism != s.mechanism.name() {
        return Err(ZmtpError::Mechanism {
            ours: s.mechanism.name(),
            peer: g.mechanism,
        });
    }
    // The peer's as-server flag is not checked: libzmq 4.3 sends 0 even
    // from a CURVE server. Roles follow the socket (services and
    // publishers serve), and two clients simply fail at HELLO.
    let ours = Metadata(vec![
        (
            Bytes::from_static(b"Socket-Type"),
            Bytes::from_static(me.name().as_bytes()),
        ),
        (Bytes::from_static(b"Identity"), Bytes::new()),
    ]);
    let (theirs, session) = s
        .mechanism
        .handshake(&mut r, &mut w, &mut buf, ours, as_server)
        .await?;
    let (mut sealer, opener) = match session {
        Some(s) => (Some(s.sealer), Some(s.opener)),
        None => (None, None),
    };
    let peer_type = theirs
        .get("Socket-Type")
        .and_then(|t| SocketType::parse(t))
        .ok_or(ZmtpError::Handshake("missing or unknown Socket-Type"))?;
    if !me.accepts(peer_type) {
        let mut out = Vec::new();
        Command::Error(Bytes::from_static(b"Invalid socket type")).put(&mut out);
        if let Some(sealer) = &mut sealer {
            let plain = std::mem::take(&mut out);
            let _ = sealer.seal_all(&plain, &mut out);
        }
        let _ = w.write_all(&out).await;
        return Err(ZmtpError::SocketType {
            ours: me,
            peer: peer_type,
        });
    }
    // ZMTP 3.0 has no PING; heartbeats need both sides on 3.1. (The peer's
    // Identity property is not kept: a connection is its own identity.)
    let beats = g.minor >= 1 && !s.heartbeat_ivl.is_zero();
    let pinger = beats.then(|| Pinger {
        every: s.heartbeat_ivl,
        ttl_ds: (s.heartbeat_timeout.as_millis() / 100).min(u16::MAX as u128) as u16,
    });
    let outbox = Outbox::new(s.queue_msgs, s.queue_bytes);
    let writer = tokio::spawn(outbox::write_loop(outbox.clone(), w, pinger, sealer));
    let timeout = beats.then_some(s.heartbeat_timeout);
    Ok(Conn {
        reader: Reader {
            r,
            buf,
            max: s.max_message,
            wire_max: s.max_message + s.mechanism.overhead(),
            opener,
            frames: Vec::new(),
            msg_bytes: 0,
            outbox: outbox.clone(),
            silence: timeout.map(|t| (Box::pin(tokio::time::sleep(t)), t)),
            last_heard: Instant::now(),
        },
        outbox,
        writer,
    })
}

/// The read side: whole messages out of the byte stream.
pub(crate) struct Reader {
    r: ReadHalf,
    buf: BytesMut,
    max: usize,
    /// The largest frame on the wire: `max` plus what CURVE adds.
    wire_max: usize,
    /// CURVE: opens each frame, refusing replayed or reordered nonces.
    opener: Option<Opener>,
    /// Frames of a message still arriving.
    frames: Vec<Bytes>,
    msg_bytes: usize,
    outbox: Arc<Outbox>,
    /// Fires when the peer may have gone silent; re-armed lazily from
    /// `last_heard`, so reading costs no timer work.
    silence: Option<(Pin<Box<Sleep>>, Duration)>,
    last_heard: Instant,
}

impl Reader {
    /// The next message or subscription; `Ok(None)` when the peer closed
    /// cleanly between messages. Cancel-safe: partial state lives in `self`.
    pub(crate) async fn next(&mut self) -> Result<Option<Incoming>, ZmtpError> {
        loop {
            if let Some(m) = self.decode()? {
                return Ok(Some(m));
            }
            let want = match frame::check(&self.buf, self.wire_max) {
                Err(frame::FrameError::Incomplete) => needed(&self.buf),
                _ => 0,
            };
            self.buf.reserve(want.max(16 * 1024));
            let n = match &mut self.silence {
                None => self.r.read_buf(&mut self.buf).await?,
                Some((sleep, timeout)) => {
                    tokio::select! {
                        biased;
                        n = self.r.read_buf(&mut self.buf) => n?,
                        _ = sleep.as_mut() => {
                            let due = self.last_heard + *timeout;
                            if Instant::now() >= due {
                                return Err(ZmtpError::HeartbeatTimeout(*timeout));
                            }
                            sleep.as_mut().reset(due);
                            continue;
                        }
                    }
                }
            };
            if n == 0 {
                return if self.buf.is_empty() && self.frames.is_empty() {
                    Ok(None)
                } else {
                    Err(ZmtpError::Closed)
                };
            }
            if self.silence.is_some() {
                self.last_heard = Instant::now();
            }
        }
    }

    /// The next message already in the buffer, without reading: after
    /// [`next`](Self::next) returns, the rest of that read's messages come
    /// from here with no `select!` around each.
    pub(crate) fn try_next(&mut self) -> Result<Option<Incoming>, ZmtpError> {
        self.decode()
    }

    /// Decodes from the buffer only; `None` when it needs more bytes.
    fn decode(&mut self) -> Result<Option<Incoming>, ZmtpError> {
        while let Some(f) = frame::parse(&mut self.buf, self.wire_max)? {
            let f = match &mut self.opener {
                None => f,
                Some(o) => {
                    let (flags, body) = o.open(&f.body)?;
                    if flags & frame::COMMAND != 0 && flags & frame::MORE != 0 {
                        return Err(frame::FrameError::CommandWithMore.into());
                    }
                    frame::RawFrame { flags, body }
                }
            };
            if f.is_command() {
                match Command::parse(f.body)? {
                    Command::Ping { ttl_ds, context } => {
                        if ttl_ds > 0 {
                            let ttl = Duration::from_millis(ttl_ds as u64 * 100);
                            match &mut self.silence {
                                Some((_, t)) => *t = (*t).min(ttl),
                                None => {
                                    self.silence = Some((Box::pin(tokio::time::sleep(ttl)), ttl))
                                }
                            }
                        }
                        let _ = self.outbox.push_command(&Command::Pong(context));
                    }
                    Command::Subscribe(t) => return Ok(Some(Incoming::Subscribe(t))),
                    Command::Cancel(t) => return Ok(Some(Incoming::Cancel(t))),
                    Command::Error(reason) => {
                        return Err(ZmtpError::PeerError(
                            String::from_utf8_lossy(&reason).into_owned(),
                        ))
                    }
                    Command::Ready(_) => return Err(ZmtpError::Handshake("READY after handshake")),
                    // PONG only proves liveness (any byte does); unknown
                    // commands are ignored, as RFC 23 asks.
                    Command::Pong(_) | Command::Other { .. } => {}
                }
                continue;
            }
            self.msg_bytes += f.body.len();
            if self.msg_bytes > self.max {
                return Err(ZmtpError::MessageTooLarge(self.max));
            }
            if self.frames.len() >= MAX_FRAMES {
                return Err(ZmtpError::TooManyFrames);
            }
            let more = f.more();
            self.frames.push(f.body);
            if !more {
                self.msg_bytes = 0;
                let frames = std::mem::replace(&mut self.frames, Vec::with_capacity(3));
                return Ok(Some(Incoming::Message(frames)));
            }
        }
        Ok(None)
    }
}

/// Bytes still missing for the frame at the front of `buf` (its head known).
fn needed(buf: &[u8]) -> usize {
    let total = match buf.first() {
        Some(f) if f & frame::LONG != 0 && buf.len() >= 9 => {
            let mut a = [0u8; 8];
            a.copy_from_slice(&buf[1..9]);
            9 + u64::from_be_bytes(a) as usize
        }
        Some(f) if f & frame::LONG == 0 && buf.len() >= 2 => 2 + buf[1] as usize,
        _ => 9,
    };
    total.saturating_sub(buf.len())
}
