//! ZeroMQ socket settings, set on purpose rather than left to libzmq's
//! defaults, and the conversions between `zmq::Message` and `Bytes`.

use crate::error::SetupError;
use bytes::Bytes;
use std::sync::OnceLock;
use std::time::Duration;

/// Messages queued per peer before a send fails with `Overloaded`
/// (libzmq's default is 1000; a busy terminator holds more in flight).
pub const DEFAULT_HWM: i32 = 10_000;
/// First reconnect attempt after a peer goes away.
pub const DEFAULT_RECONNECT_IVL: Duration = Duration::from_millis(100);
/// Reconnect back-off ceiling.
pub const DEFAULT_RECONNECT_IVL_MAX: Duration = Duration::from_secs(1);
/// ZMTP heartbeats find a silent peer (a partition, a frozen host) that TCP
/// alone would take minutes to notice.
pub const DEFAULT_HEARTBEAT_IVL: Duration = Duration::from_secs(1);
pub const DEFAULT_HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(3);
/// Largest message a socket accepts; bigger ones drop the connection instead
/// of being buffered (bad input never costs unbounded memory).
pub const DEFAULT_MAX_MESSAGE: i64 = 16 * 1024 * 1024;

/// Socket tuning shared by clients and services.
#[derive(Debug, Clone)]
pub struct Tuning {
    pub hwm: i32,
    pub reconnect_ivl: Duration,
    pub reconnect_ivl_max: Duration,
    pub heartbeat_ivl: Duration,
    pub heartbeat_timeout: Duration,
    pub max_message: i64,
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            hwm: DEFAULT_HWM,
            reconnect_ivl: DEFAULT_RECONNECT_IVL,
            reconnect_ivl_max: DEFAULT_RECONNECT_IVL_MAX,
            heartbeat_ivl: DEFAULT_HEARTBEAT_IVL,
            heartbeat_timeout: DEFAULT_HEARTBEAT_TIMEOUT,
            max_message: DEFAULT_MAX_MESSAGE,
        }
    }
}

fn ms(d: Duration) -> i32 {
    d.as_millis().min(i32::MAX as u128) as i32
}

/// The process-wide ZeroMQ context (one libzmq I/O thread).
pub fn context() -> &'static zmq::Context {
    static CTX: OnceLock<zmq::Context> = OnceLock::new();
    CTX.get_or_init(zmq::Context::new)
}

pub(crate) fn zerr(op: &'static str, endpoint: &str) -> impl FnOnce(zmq::Error) -> SetupError {
    let endpoint = endpoint.to_string();
    move |source| SetupError::Zmq {
        op,
        endpoint,
        source,
    }
}

/// Accepts the transports libzmq speaks; anything else is refused up front
/// with a message naming the expected forms.
pub fn check_endpoint(ep: &str) -> Result<(), SetupError> {
    let ok = match ep.split_once("://") {
        Some(("tcp", rest)) => rest
            .rsplit_once(':')
            .is_some_and(|(h, p)| !h.is_empty() && (p == "*" || p.parse::<u16>().is_ok())),
        Some(("ipc" | "inproc", rest)) => !rest.is_empty(),
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(SetupError::BadEndpoint(ep.to_string()))
    }
}

fn common(s: &zmq::Socket, t: &Tuning, ep: &str) -> Result<(), SetupError> {
    let e = |op| zerr(op, ep);
    s.set_sndhwm(t.hwm).map_err(e("set SNDHWM"))?;
    s.set_rcvhwm(t.hwm).map_err(e("set RCVHWM"))?;
    // Pending messages die with the socket: a closed client has failed its
    // calls already, and a stopped service has drained.
    s.set_linger(0).map_err(e("set LINGER"))?;
    s.set_maxmsgsize(t.max_message)
        .map_err(e("set MAXMSGSIZE"))?;
    s.set_heartbeat_ivl(ms(t.heartbeat_ivl))
        .map_err(e("set HEARTBEAT_IVL"))?;
    s.set_heartbeat_timeout(ms(t.heartbeat_timeout))
        .map_err(e("set HEARTBEAT_TIMEOUT"))?;
    s.set_heartbeat_ttl(ms(t.heartbeat_timeout))
        .map_err(e("set HEARTBEAT_TTL"))?;
    s.set_tcp_keepalive(1).map_err(e("set TCP_KEEPALIVE"))?;
    Ok(())
}

/// A DEALER for one service instance. IMMEDIATE: messages are only queued on
/// a completed connection, so a send to a dead instance fails at once
/// instead of waiting in a queue for the deadline.
pub(crate) fn dealer(t: &Tuning, ep: &str) -> Result<zmq::Socket, SetupError> {
    let s = context()
        .socket(zmq::DEALER)
        .map_err(zerr("create DEALER", ep))?;
    common(&s, t, ep)?;
    s.set_immediate(true).map_err(zerr("set IMMEDIATE", ep))?;
    s.set_reconnect_ivl(ms(t.reconnect_ivl))
        .map_err(zerr("set RECONNECT_IVL", ep))?;
    s.set_reconnect_ivl_max(ms(t.reconnect_ivl_max))
        .map_err(zerr("set RECONNECT_IVL_MAX", ep))?;
    Ok(s)
}

/// A ROUTER for a service. ROUTER_MANDATORY: a reply to a caller that has
/// gone is an error we count, not a silent drop.
pub(crate) fn router(t: &Tuning, ep: &str) -> Result<zmq::Socket, SetupError> {
    let s = context()
        .socket(zmq::ROUTER)
        .map_err(zerr("create ROUTER", ep))?;
    common(&s, t, ep)?;
    s.set_router_mandatory(true)
        .map_err(zerr("set ROUTER_MANDATORY", ep))?;
    Ok(s)
}

/// Owns a received frame so `Bytes` can point into it without a copy.
struct Frame(zmq::Message);

impl AsRef<[u8]> for Frame {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

/// A received frame as `Bytes`, without copying it.
pub(crate) fn to_bytes(m: zmq::Message) -> Bytes {
    if m.is_empty() {
        Bytes::new()
    } else {
        Bytes::from_owner(Frame(m))
    }
}

/// Below this size a copy is cheaper than handing ownership to libzmq, which
/// would allocate its own refcount block for a zero-copy message anyway.
const ZERO_COPY_MIN: usize = 4096;

/// `Bytes` as a frame to send: large uniquely-owned buffers are handed to
/// libzmq without a copy.
pub(crate) fn to_message(b: Bytes) -> zmq::Message {
    if b.is_empty() {
        zmq::Message::new()
    } else if b.len() < ZERO_COPY_MIN {
        zmq::Message::from(&b[..])
    } else {
        // Reuses the allocation when `b` is the only owner of a Vec-backed
        // buffer; copies otherwise.
        zmq::Message::from(Vec::<u8>::from(b))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints() {
        for ok in [
            "tcp://127.0.0.1:8100",
            "tcp://127.0.0.1:0",
            "tcp://*:8100",
            "ipc:///tmp/x",
            "inproc://a",
        ] {
            assert!(check_endpoint(ok).is_ok(), "{ok}");
        }
        for bad in [
            "127.0.0.1:8100",
            "tcp://host",
            "tcp://:1",
            "udp://x:1",
            "tcp://h:99999",
        ] {
            assert!(check_endpoint(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn frames_convert_both_ways() {
        let big = Bytes::from(vec![7u8; 10_000]);
        let m = to_message(big.clone());
        assert_eq!(&m[..], &big[..]);
        let b = to_bytes(m);
        assert_eq!(b, big);
        assert_eq!(to_bytes(to_message(Bytes::new())), Bytes::new());
        assert_eq!(&to_message(Bytes::from_static(b"ab"))[..], b"ab");
    }
}
