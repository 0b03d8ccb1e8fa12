//! ZMTP 3.1 (RFC 23, RFC 37), spoken natively on tokio: what the bus puts
//! on the wire under its own v1 header and body frames.
//!
//! Every connection is driven by tasks on the runtime's own workers (a
//! writer task per connection, the reader inside its owner's task): no
//! socket thread, no eventfd, no hand-off to another thread on the request
//! path. libzmq 4.3 (pyzmq) is the reference peer in the integration tests.
//!
//! # Layout
//!
//! - [`greeting`]: the 64-byte greeting, parsed a prefix at a time.
//! - [`frame`]: frames and commands (READY, ERROR, PING/PONG, SUBSCRIBE,
//!   CANCEL), check-then-parse with a size limit before allocation.
//! - [`mechanism`]: the security seam: NULL or CURVE.
//! - [`curve`]: CurveZMQ's handshake commands and MESSAGE boxes (RFC 25,
//!   RFC 26), pure functions the mechanism drives.
//! - `stream`: endpoints and TCP / Unix-socket streams.
//! - `outbox`: the batched write side of a connection.
//! - `connection`: handshake, the message reader, heartbeats.

pub mod curve;
pub mod frame;
pub mod greeting;
pub mod mechanism;

pub(crate) mod connection;
pub(crate) mod outbox;
pub(crate) mod stream;

pub use stream::Endpoint;

/// The socket types the bus speaks, and the ones it recognises in a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SocketType {
    Dealer,
    Router,
    Pub,
    Sub,
    XPub,
    XSub,
    Req,
    Rep,
    Other,
}

impl SocketType {
    pub fn name(self) -> &'static str {
        match self {
            SocketType::Dealer => "DEALER",
            SocketType::Router => "ROUTER",
            SocketType::Pub => "PUB",
            SocketType::Sub => "SUB",
            SocketType::XPub => "XPUB",
            SocketType::XSub => "XSUB",
            SocketType::Req => "REQ",
            SocketType::Rep => "REP",
            SocketType::Other => "OTHER",
        }
    }

    pub fn parse(b: &[u8]) -> Option<SocketType> {
        Some(match b {
            b"DEALER" => SocketType::Dealer,
            b"ROUTER" => SocketType::Router,
            b"PUB" => SocketType::Pub,
            b"SUB" => SocketType::Sub,
            b"XPUB" => SocketType::XPub,
            b"XSUB" => SocketType::XSub,
            b"REQ" => SocketType::Req,
            b"REP" => SocketType::Rep,
            b"PAIR" | b"PUSH" | b"PULL" => SocketType::Other,
            _ => return None,
        })
    }

    /// Whether a peer of type `peer` may connect to us (RFC 28, 29). REQ
    /// and REP are refused: they add or expect a delimiter frame that the
    /// bus format has not got (docs/protocol.md §1).
    pub fn accepts(self, peer: SocketType) -> bool {
        use SocketType::*;
        matches!(
            (self, peer),
            (Dealer, Router | Dealer)
                | (Router, Dealer | Router)
                | (Pub | XPub, Sub | XSub)
                | (Sub | XSub, Pub | XPub)
        )
    }
}

impl std::fmt::Display for SocketType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a connection was refused or ended.
#[derive(Debug, thiserror::Error)]
pub enum ZmtpError {
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    #[error("greeting: {0}")]
    Greeting(#[from] greeting::GreetingError),
    #[error("frame: {0}")]
    Frame(#[from] frame::FrameError),
    #[error("mechanism mismatch: ours {ours}, peer {peer}")]
    Mechanism { ours: &'static str, peer: String },
    #[error("socket type {peer} cannot talk to {ours}")]
    SocketType { ours: SocketType, peer: SocketType },
    #[error("handshake: {0}")]
    Handshake(&'static str),
    #[error("curve: {0}")]
    Curve(#[from] curve::CurveError),
    #[error("handshake did not finish in time")]
    HandshakeTimeout,
    #[error("peer sent ERROR: {0}")]
    PeerError(String),
    #[error("nothing heard for {0:?} (heartbeat timeout)")]
    HeartbeatTimeout(std::time::Duration),
    #[error("message over the {0}-byte limit")]
    MessageTooLarge(usize),
    #[error("message with more than {} frames", connection::MAX_FRAMES)]
    TooManyFrames,
    #[error("connection closed")]
    Closed,
}
