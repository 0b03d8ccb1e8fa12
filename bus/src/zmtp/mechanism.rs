//! Security mechanisms: what runs between the greeting and the first
//! message (RFC 23 §Security, RFC 26 for CURVE).
//!
//! This is the seam for CURVE. A mechanism (1) names itself in the
//! greeting, (2) runs its handshake commands over the raw stream and returns
//! the peer's metadata, and (3), for CURVE, would also seal and open every
//! frame after the handshake (MESSAGE commands): that last step is where a
//! `Session` value would wrap the reader and the outbox. NULL does nothing
//! in (3), so the connection code calls no per-frame hook today.

use super::frame::{self, Command, Metadata};
use super::stream::{ReadHalf, WriteHalf};
use super::ZmtpError;
use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The mechanism a socket uses; both sides must use the same one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Mechanism {
    /// No security: a READY command each way carrying the metadata.
    #[default]
    Null,
}

impl Mechanism {
    /// The name in the greeting.
    pub fn name(&self) -> &'static str {
        match self {
            Mechanism::Null => "NULL",
        }
    }

    /// Sends our metadata and returns the peer's. `buf` holds whatever
    /// followed the greeting and keeps what follows the handshake.
    pub(crate) async fn handshake(
        &self,
        r: &mut ReadHalf,
        w: &mut WriteHalf,
        buf: &mut BytesMut,
        ours: Metadata,
        max: usize,
    ) -> Result<Metadata, ZmtpError> {
        match self {
            Mechanism::Null => {
                let mut out = Vec::new();
                Command::Ready(ours).put(&mut out);
                w.write_all(&out).await?;
                // A READY is small; the handshake does not need the
                // message limit, and a stranger gets no 16 MiB buffer.
                let limit = max.min(64 * 1024);
                loop {
                    if let Some(f) = frame::parse(buf, limit)? {
                        if !f.is_command() {
                            return Err(ZmtpError::Handshake("a message before READY"));
                        }
                        return match Command::parse(f.body)? {
                            Command::Ready(m) => Ok(m),
                            Command::Error(reason) => Err(ZmtpError::PeerError(
                                String::from_utf8_lossy(&reason).into_owned(),
                            )),
                            _ => Err(ZmtpError::Handshake("expected READY")),
                        };
                    }
                    buf.reserve(512);
                    if r.read_buf(buf).await? == 0 {
                        return Err(ZmtpError::Closed);
                    }
                }
            }
        }
    }
}
