//! The ZMTP 3.x greeting: the first 64 bytes each side sends.
//!
//! ```text
//! offset size  field
//! 0      1     0xFF                 signature (with byte 9, a ZMTP 1.0 peer
//! 1      8     padding (any)         reads it as a long frame it can skip)
//! 9      1     0x7F
//! 10     1     major version = 3
//! 11     1     minor version = 1    (a 3.0 peer has no PING/PONG)
//! 12     20    mechanism            ASCII, NUL-padded: "NULL", "CURVE", ...
//! 32     1     as-server            0 or 1 (used by CURVE and PLAIN)
//! 33     31    filler = 0
//! ```
//!
//! Both sides send the whole greeting at once and read the peer's; libzmq
//! sends its first 10 bytes, waits for ours, then sends the rest, which
//! this order also satisfies. [`check_signature`] refuses a stranger (an
//! HTTP client, a scanner) after its first byte rather than after 64.

pub const GREETING_LEN: usize = 64;
pub const MAJOR: u8 = 3;
pub const MINOR: u8 = 1;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GreetingError {
    #[error("not a ZMTP peer (bad signature)")]
    Signature,
    #[error("ZMTP {0}.x is not supported (3.0 or later needed)")]
    Version(u8),
    #[error("mechanism field is not NUL-padded ASCII")]
    Mechanism,
    #[error("as-server flag must be 0 or 1, got {0}")]
    AsServer(u8),
}

/// The peer's greeting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Greeting {
    pub major: u8,
    pub minor: u8,
    /// The mechanism name without padding, e.g. `NULL`.
    pub mechanism: String,
    pub as_server: bool,
}

/// Our greeting.
pub fn encode(mechanism: &str, as_server: bool) -> [u8; GREETING_LEN] {
    let mut g = [0u8; GREETING_LEN];
    g[0] = 0xFF;
    g[9] = 0x7F;
    g[10] = MAJOR;
    g[11] = MINOR;
    let m = mechanism.as_bytes();
    let n = m.len().min(20);
    g[12..12 + n].copy_from_slice(&m[..n]);
    g[32] = as_server as u8;
    g
}

/// Checks as much of the signature as has arrived (any prefix of it).
pub fn check_signature(buf: &[u8]) -> Result<(), GreetingError> {
    if buf.first().is_some_and(|&b| b != 0xFF) || buf.get(9).is_some_and(|&b| b & 1 != 1) {
        return Err(GreetingError::Signature);
    }
    if let Some(&major) = buf.get(10) {
        if major < MAJOR {
            return Err(GreetingError::Version(major));
        }
    }
    Ok(())
}

/// Parses a complete greeting (the first 64 bytes of `buf`); `Ok(None)` if
/// fewer have arrived.
pub fn parse(buf: &[u8]) -> Result<Option<Greeting>, GreetingError> {
    check_signature(buf)?;
    let Some(g) = buf.get(..GREETING_LEN) else {
        return Ok(None);
    };
    let raw = &g[12..32];
    let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
    if raw[end..].iter().any(|&b| b != 0)
        || !raw[..end]
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.+".contains(b))
    {
        return Err(GreetingError::Mechanism);
    }
    if g[32] > 1 {
        return Err(GreetingError::AsServer(g[32]));
    }
    Ok(Some(Greeting {
        major: g[10],
        minor: g[11],
        mechanism: String::from_utf8_lossy(&raw[..end]).into_owned(),
        as_server: g[32] == 1,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let g = encode("NULL", true);
        assert_eq!(
            parse(&g).unwrap().unwrap(),
            Greeting {
                major: 3,
                minor: 1,
                mechanism: "NULL".into(),
                as_server: true
            }
        );
    }

    #[test]
    fn libzmq_greeting_parses() {
        // libzmq 4.3 as a client: padding is zeros, version 3.1, NULL.
        let mut g = [0u8; 64];
        g[0] = 0xFF;
        g[9] = 0x7F;
        g[10] = 3;
        g[11] = 1;
        g[12..16].copy_from_slice(b"NULL");
        let p = parse(&g).unwrap().unwrap();
        assert_eq!((p.major, p.minor, p.as_server), (3, 1, false));
    }

    #[test]
    fn strangers_are_refused_early() {
        assert_eq!(check_signature(b"G"), Err(GreetingError::Signature));
        assert_eq!(parse(b"GET / HTTP/1.1\r\n"), Err(GreetingError::Signature));
        let mut old = encode("NULL", false);
        old[10] = 2;
        assert_eq!(parse(&old[..11]), Err(GreetingError::Version(2)));
        assert_eq!(parse(&encode("NULL", false)[..40]), Ok(None));
        let mut bad = encode("NULL", false);
        bad[14] = 0;
        bad[15] = b'x';
        assert_eq!(parse(&bad), Err(GreetingError::Mechanism));
    }
}
