//! Security mechanisms: what runs between the greeting and the first
//! message (RFC 23 §Security, RFC 25/26 for CURVE).
//!
//! A mechanism (1) names itself in the greeting, (2) runs its handshake
//! commands over the raw stream and returns the peer's metadata, and (3)
//! for CURVE, seals and opens every frame after the handshake: the
//! handshake returns a [`Session`] whose sealer the writer task owns and
//! whose opener the reader owns. NULL has no session.

use super::curve::{ClientHandshake, CurveError, ServerHandshake, Session};
use super::frame::{self, Command, Metadata};
use super::stream::{ReadHalf, WriteHalf};
use super::ZmtpError;
use crate::curve::{KeyPair, KeySet, PublicKey};
use bytes::{Bytes, BytesMut};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The mechanism a socket uses; both sides must use the same one.
#[derive(Debug, Clone, Default)]
pub enum Mechanism {
    /// No security: a READY command each way carrying the metadata.
    #[default]
    Null,
    /// CurveZMQ: every connection encrypted and authenticated both ways.
    Curve(Curve),
}

/// CURVE settings of one socket.
#[derive(Debug, Clone)]
pub struct Curve {
    /// This process's long-term key pair.
    pub keys: KeyPair,
    /// As a server (services, publishers): the client keys let in; `None`
    /// lets any client in that knows our public key (libzmq's default with
    /// no ZAP handler).
    pub authorized: Option<Arc<KeySet>>,
    /// As a client (callers, subscribers): the server's public key.
    pub server_key: Option<PublicKey>,
}

impl Curve {
    /// A server's settings.
    pub fn server(keys: KeyPair, authorized: Option<Arc<KeySet>>) -> Curve {
        Curve {
            keys,
            authorized,
            server_key: None,
        }
    }

    /// A client's settings.
    pub fn client(keys: KeyPair, server_key: Option<PublicKey>) -> Curve {
        Curve {
            keys,
            authorized: None,
            server_key,
        }
    }
}

/// The handshake's limit on one command: a READY or INITIATE carries
/// metadata of a few dozen bytes; a stranger gets no large buffer.
const HANDSHAKE_MAX: usize = 64 * 1024;

impl Mechanism {
    /// The name in the greeting.
    pub fn name(&self) -> &'static str {
        match self {
            Mechanism::Null => "NULL",
            Mechanism::Curve(_) => "CURVE",
        }
    }

    /// Bytes each frame grows by on the wire.
    pub(crate) fn overhead(&self) -> usize {
        match self {
            Mechanism::Null => 0,
            Mechanism::Curve(_) => super::curve::MESSAGE_OVERHEAD,
        }
    }

    /// Sends our metadata and returns the peer's, and for CURVE the
    /// session. `buf` holds whatever followed the greeting and keeps what
    /// follows the handshake.
    pub(crate) async fn handshake(
        &self,
        r: &mut ReadHalf,
        w: &mut WriteHalf,
        buf: &mut BytesMut,
        ours: Metadata,
        as_server: bool,
    ) -> Result<(Metadata, Option<Session>), ZmtpError> {
        match self {
            Mechanism::Null => {
                let mut out = Vec::new();
                Command::Ready(ours).put(&mut out);
                w.write_all(&out).await?;
                let f = read_command(r, buf).await?;
                match Command::parse(f)? {
                    Command::Ready(m) => Ok((m, None)),
                    _ => Err(ZmtpError::Handshake("expected READY")),
                }
            }
            Mechanism::Curve(c) if as_server => {
                let mut hs = ServerHandshake::new(&c.keys);
                let welcome = hs.hello(&read_command(r, buf).await?)?;
                send(w, welcome).await?;
                let init = hs.initiate(&read_command(r, buf).await?)?;
                if let Some(set) = &c.authorized {
                    if !set.contains(&init.client) {
                        // RFC 25: ERROR in place of READY, then close.
                        let mut out = Vec::new();
                        Command::Error(Bytes::from_static(b"client key not authorised"))
                            .put(&mut out);
                        let _ = w.write_all(&out).await;
                        return Err(CurveError::Unauthorized(init.client).into());
                    }
                }
                let theirs = Metadata::parse(Bytes::from(init.metadata))?;
                let mut meta = Vec::new();
                ours.put(&mut meta);
                let (ready, session) = hs.ready(&meta)?;
                send(w, ready).await?;
                Ok((theirs, Some(session)))
            }
            Mechanism::Curve(c) => {
                let server = c
                    .server_key
                    .ok_or(ZmtpError::Handshake("no CURVE server key for this peer"))?;
                let mut hs = ClientHandshake::new(&c.keys, server);
                send(w, hs.hello()?).await?;
                let mut meta = Vec::new();
                ours.put(&mut meta);
                let initiate = hs.welcome(&read_command(r, buf).await?, &meta)?;
                send(w, initiate).await?;
                let (theirs, session) = hs.ready(&read_command(r, buf).await?)?;
                Ok((Metadata::parse(Bytes::from(theirs))?, Some(session)))
            }
        }
    }
}

/// Writes one command frame whose body (name included) is `body`.
async fn send(w: &mut WriteHalf, body: Vec<u8>) -> Result<(), ZmtpError> {
    let mut out = Vec::with_capacity(body.len() + 9);
    frame::put_head(&mut out, false, true, body.len());
    out.extend_from_slice(&body);
    w.write_all(&out).await?;
    Ok(())
}

/// The next handshake command's body; a peer's ERROR is its reason.
async fn read_command(r: &mut ReadHalf, buf: &mut BytesMut) -> Result<Bytes, ZmtpError> {
    loop {
        if let Some(f) = frame::parse(buf, HANDSHAKE_MAX)? {
            if !f.is_command() {
                return Err(ZmtpError::Handshake("a message before the handshake ended"));
            }
            if let Ok(Command::Error(reason)) = Command::parse(f.body.clone()) {
                return Err(ZmtpError::PeerError(
                    String::from_utf8_lossy(&reason).into_owned(),
                ));
            }
            return Ok(f.body);
        }
        buf.reserve(512);
        if r.read_buf(buf).await? == 0 {
            return Err(ZmtpError::Closed);
        }
    }
}
