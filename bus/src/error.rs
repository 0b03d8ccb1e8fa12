//! What a bus call can end in, besides a reply.
//!
//! Each variant maps to exactly one HTTP status and error code in
//! [`Problem::from_call`](crate::problem::Problem::from_call).

use crate::wire::{DecodeError, EncodeError};

/// Why a call produced no [`Reply`](crate::Reply).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    /// The deadline passed before a reply arrived (HTTP 504).
    #[error("deadline passed before the reply arrived")]
    Timeout,
    /// No instance of the service is connected (HTTP 503, at once).
    #[error("no live instance of service `{0}`")]
    NoInstance(String),
    /// A bounded queue is full: the client's pending table or send queue, a
    /// socket's high-water mark, or the service's concurrency limit (HTTP 503
    /// with Retry-After).
    #[error("overloaded: {0}")]
    Overloaded(&'static str),
    /// The instance the call went to disconnected or was removed before it
    /// replied, or the client was shut down (HTTP 502 upstream failure).
    #[error("instance disconnected before replying")]
    Disconnected,
    /// The request could not be encoded or the reply could not be decoded
    /// (HTTP 502 for replies; requests are validated before they get here).
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The service answered with a bus-level error of this status.
    #[error("remote error {status}: {message}")]
    Remote { status: u16, message: String },
}

impl From<DecodeError> for CallError {
    fn from(e: DecodeError) -> Self {
        CallError::Protocol(e.to_string())
    }
}

impl From<EncodeError> for CallError {
    fn from(e: EncodeError) -> Self {
        CallError::Protocol(e.to_string())
    }
}

/// Why a [`Client`](crate::Client) or [`Service`](crate::Service) could not
/// be set up.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("cannot bind `{endpoint}`: {source}")]
    Bind {
        endpoint: String,
        source: std::io::Error,
    },
    #[error("invalid endpoint `{0}`: expected tcp://HOST:PORT or ipc://PATH")]
    BadEndpoint(String),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    #[error("must be called from within a tokio runtime")]
    NoRuntime,
}
