//! Connection settings shared by clients, services and events, each set on
//! purpose, and the endpoint check every setting path uses.

use crate::curve::PublicKey;
use crate::error::SetupError;
use crate::zmtp::connection::Settings;
use crate::zmtp::mechanism::Mechanism;
use crate::zmtp::stream::Listener;
use crate::zmtp::Endpoint;
use std::time::Duration;

/// Messages queued per connection and not yet written before a send fails
/// with `Overloaded` (what libzmq called the high-water mark).
pub const DEFAULT_HWM: usize = 10_000;
/// Bytes queued per connection and not yet written, likewise.
pub const DEFAULT_QUEUE_BYTES: usize = 256 * 1024 * 1024;
/// First reconnect attempt after a peer goes away.
pub const DEFAULT_RECONNECT_IVL: Duration = Duration::from_millis(100);
/// Reconnect back-off ceiling.
pub const DEFAULT_RECONNECT_IVL_MAX: Duration = Duration::from_secs(1);
/// ZMTP heartbeats find a silent peer (a partition, a frozen host) that TCP
/// alone would take minutes to notice.
pub const DEFAULT_HEARTBEAT_IVL: Duration = Duration::from_secs(1);
pub const DEFAULT_HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(3);
/// A peer that has not finished greeting and READY by then is dropped.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest message a connection accepts; a bigger one closes the connection
/// before its body is buffered (bad input never costs unbounded memory).
pub const DEFAULT_MAX_MESSAGE: usize = 16 * 1024 * 1024;

/// Connection tuning shared by clients and services.
#[derive(Debug, Clone)]
pub struct Tuning {
    pub hwm: usize,
    pub queue_bytes: usize,
    pub reconnect_ivl: Duration,
    pub reconnect_ivl_max: Duration,
    /// Zero turns heartbeats off.
    pub heartbeat_ivl: Duration,
    pub heartbeat_timeout: Duration,
    pub handshake_timeout: Duration,
    pub max_message: usize,
    pub mechanism: Mechanism,
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            hwm: DEFAULT_HWM,
            queue_bytes: DEFAULT_QUEUE_BYTES,
            reconnect_ivl: DEFAULT_RECONNECT_IVL,
            reconnect_ivl_max: DEFAULT_RECONNECT_IVL_MAX,
            heartbeat_ivl: DEFAULT_HEARTBEAT_IVL,
            heartbeat_timeout: DEFAULT_HEARTBEAT_TIMEOUT,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            max_message: DEFAULT_MAX_MESSAGE,
            mechanism: Mechanism::Null,
        }
    }
}

impl Tuning {
    pub(crate) fn settings(&self) -> Settings {
        Settings {
            mechanism: self.mechanism.clone(),
            max_message: self.max_message.max(64),
            heartbeat_ivl: self.heartbeat_ivl,
            heartbeat_timeout: self.heartbeat_timeout.max(Duration::from_millis(100)),
            handshake_timeout: self.handshake_timeout,
            queue_msgs: self.hwm,
            queue_bytes: self.queue_bytes,
        }
    }

    /// The settings for a connection to a server whose discovery
    /// registration carries `registered` as its CURVE key. Under CURVE a
    /// configured `server_key` wins, and a registered key that differs from
    /// it is refused (someone else's registration, or a stale one); with no
    /// configured key the registered one is used.
    pub(crate) fn settings_for(
        &self,
        registered: Option<PublicKey>,
    ) -> Result<Settings, ServerKeyError> {
        let mut s = self.settings();
        if let Mechanism::Curve(c) = &mut s.mechanism {
            c.server_key = match (c.server_key, registered) {
                (Some(k), Some(r)) if k != r => {
                    return Err(ServerKeyError::Mismatch {
                        configured: k,
                        registered: r,
                    })
                }
                (Some(k), _) => Some(k),
                (None, Some(r)) => Some(r),
                (None, None) => return Err(ServerKeyError::Missing),
            };
        }
        Ok(s)
    }

    /// The next reconnect delay after `current`.
    pub(crate) fn backoff(&self, current: Duration) -> Duration {
        (current * 2).min(self.reconnect_ivl_max.max(self.reconnect_ivl))
    }
}

/// Why a caller will not connect to a CURVE server.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ServerKeyError {
    #[error("no CURVE server key: none configured (--curve-server-key) and none registered")]
    Missing,
    #[error("registered CURVE key {registered} is not the configured {configured}: refused")]
    Mismatch {
        configured: PublicKey,
        registered: PublicKey,
    },
}

/// Accepts the transports the bus speaks (`tcp://HOST:PORT`, `ipc://PATH`);
/// anything else is refused up front with a message naming the forms.
pub fn check_endpoint(ep: &str) -> Result<(), SetupError> {
    parse_endpoint(ep).map(|_| ())
}

pub(crate) fn parse_endpoint(ep: &str) -> Result<Endpoint, SetupError> {
    Endpoint::parse(ep).ok_or_else(|| SetupError::BadEndpoint(ep.to_string()))
}

/// Binds `endpoint` on the current tokio runtime (services and publishers
/// alike); returns the runtime, the listener and the endpoint actually bound
/// (the real port when asked for port 0).
pub(crate) fn listen(
    endpoint: &str,
) -> Result<(tokio::runtime::Handle, Listener, String), SetupError> {
    let ep = parse_endpoint(endpoint)?;
    let runtime = tokio::runtime::Handle::try_current().map_err(|_| SetupError::NoRuntime)?;
    let _enter = runtime.enter();
    let bind_err = |source| SetupError::Bind {
        endpoint: endpoint.to_string(),
        source,
    };
    let listener = Listener::bind(&ep).map_err(bind_err)?;
    let bound = listener.local_endpoint().map_err(bind_err)?.to_string();
    Ok((runtime, listener, bound))
}

/// Waits `d`, give or take 25%, so many callers that lost the same peer do
/// not all knock again in the same millisecond.
pub(crate) async fn jittered_sleep(d: Duration) {
    let ms = d.as_millis() as u64;
    let j = if ms >= 4 { fastrand::u64(0..ms / 2) } else { 0 };
    tokio::time::sleep(Duration::from_millis(ms - ms / 4 + j)).await;
}
