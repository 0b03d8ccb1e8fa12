//! The `backend` service's methods as they travel on the bus: what callers
//! (the aggregator, or any `bus` client) and the service agree on. A crate
//! of its own so that a caller needs neither backend-svc nor its store.
//!
//! # Layout
//!
//! One module: method names, [`check_key`], and the `kv.multi_get` codecs.
//!
//! | method | request | reply |
//! |---|---|---|
//! | `kv.get` | `path` = key | 200 + value, 404 |
//! | `kv.put` | `path` = key, body = value | 204 once durable |
//! | `kv.delete` | `path` = key | 204 (also when absent) |
//! | `kv.multi_get` | body = keys joined by `\n` | 200 + values (below) |
//!
//! Errors: 400 bad key or key list, 413 value too large, 503 write queue
//! full or draining, 500 store failure; bus-level errors as in
//! docs/protocol.md §7.
//!
//! `kv.multi_get` reply body, one entry per requested key, in order:
//!
//! ```text
//! +------+-----------+----------------+
//! | u8   | u32 LE    | len bytes      |   tag 1: present
//! | tag  | len       | value          |   tag 0: absent (len and value omitted)
//! +------+-----------+----------------+
//! ```
//!
//! Every write publishes `kv.changed` with body `{"key":"…"}` on the
//! service's events endpoint after it is durable.

use bytes::{BufMut, Bytes, BytesMut};

pub const SERVICE: &str = "backend";
/// Where backend-svc listens by convention (bus, and events for
/// `kv.changed`).
pub const DEFAULT_BUS: &str = "tcp://127.0.0.1:8200";
pub const DEFAULT_EVENTS: &str = "tcp://127.0.0.1:8202";
pub const GET: &str = "kv.get";
pub const PUT: &str = "kv.put";
pub const DELETE: &str = "kv.delete";
pub const MULTI_GET: &str = "kv.multi_get";
pub const CHANGED_TOPIC: &str = "kv.changed";

/// Longest key, in bytes.
pub const MAX_KEY_LEN: usize = 250;
/// Most keys one `kv.multi_get` (and one `GET /kv?keys=`) may ask for.
pub const MAX_MULTI_KEYS: usize = 1000;
/// Bytes allowed in a key besides ASCII letters and digits: URL-safe in a
/// path segment without escaping, and none of `/ , % ? # " \`, which split
/// paths and key lists or need quoting.
pub const KEY_PUNCTUATION: &str = "-._~:@!$&'()*+;=";

/// Why a key or key list was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("key is empty")]
    Empty,
    #[error("key is {0} bytes; the limit is {MAX_KEY_LEN}")]
    TooLong(usize),
    #[error("key holds {}; keys are ASCII letters, digits and {KEY_PUNCTUATION}", shown_byte(*.0))]
    BadByte(u8),
    #[error("{0} keys asked for; the limit is {MAX_MULTI_KEYS}")]
    TooMany(usize),
}

/// `a space (byte 0x20)`, `"/" (byte 0x2f)`, `byte 0xc3`: what the user
/// typed, where it is printable.
fn shown_byte(b: u8) -> String {
    match b {
        b' ' => "a space (byte 0x20)".into(),
        0x21..=0x7e => format!("{:?} (byte 0x{b:02x})", b as char),
        _ => format!("byte 0x{b:02x}"),
    }
}

pub fn check_key(k: &[u8]) -> Result<(), KeyError> {
    if k.is_empty() {
        return Err(KeyError::Empty);
    }
    if k.len() > MAX_KEY_LEN {
        return Err(KeyError::TooLong(k.len()));
    }
    match k
        .iter()
        .find(|b| !(b.is_ascii_alphanumeric() || KEY_PUNCTUATION.as_bytes().contains(b)))
    {
        Some(&b) => Err(KeyError::BadByte(b)),
        None => Ok(()),
    }
}

/// `kv.multi_get` request body.
pub fn encode_keys<S: AsRef<str>>(keys: &[S]) -> Bytes {
    let mut b = BytesMut::with_capacity(keys.iter().map(|k| k.as_ref().len() + 1).sum());
    for (i, k) in keys.iter().enumerate() {
        if i > 0 {
            b.put_u8(b'\n');
        }
        b.put_slice(k.as_ref().as_bytes());
    }
    b.freeze()
}

/// Splits and checks a `kv.multi_get` request body.
pub fn decode_keys(body: &[u8]) -> Result<Vec<&[u8]>, KeyError> {
    let keys: Vec<&[u8]> = body.split(|&b| b == b'\n').collect();
    if keys.len() > MAX_MULTI_KEYS {
        return Err(KeyError::TooMany(keys.len()));
    }
    for k in &keys {
        check_key(k)?;
    }
    Ok(keys)
}

/// `kv.multi_get` reply body.
pub fn encode_values(values: &[Option<Bytes>]) -> Bytes {
    let len = values
        .iter()
        .map(|v| 1 + v.as_ref().map_or(0, |v| 4 + v.len()))
        .sum();
    let mut b = BytesMut::with_capacity(len);
    for v in values {
        match v {
            None => b.put_u8(0),
            Some(v) => {
                b.put_u8(1);
                b.put_u32_le(v.len() as u32);
                b.put_slice(v);
            }
        }
    }
    b.freeze()
}

/// Decodes a `kv.multi_get` reply that must hold exactly `n` entries. The
/// values are slices of `body`, not copies.
pub fn decode_values(body: &Bytes, n: usize) -> Result<Vec<Option<Bytes>>, &'static str> {
    let mut out = Vec::with_capacity(n);
    let mut at = 0usize;
    while at < body.len() {
        match body[at] {
            0 => {
                out.push(None);
                at += 1;
            }
            1 => {
                let len_end = at + 5;
                if len_end > body.len() {
                    return Err("truncated length");
                }
                let mut len = [0u8; 4];
                len.copy_from_slice(&body[at + 1..len_end]);
                let end = len_end
                    .checked_add(u32::from_le_bytes(len) as usize)
                    .filter(|&e| e <= body.len())
                    .ok_or("truncated value")?;
                out.push(Some(body.slice(len_end..end)));
                at = end;
            }
            _ => return Err("bad tag"),
        }
        if out.len() > n {
            return Err("more values than keys");
        }
    }
    if out.len() != n {
        return Err("fewer values than keys");
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys() {
        for ok in ["a", "user:42", "A-Z_0.9~x", &"k".repeat(MAX_KEY_LEN)] {
            assert_eq!(check_key(ok.as_bytes()), Ok(()), "{ok}");
        }
        assert_eq!(check_key(b""), Err(KeyError::Empty));
        assert_eq!(
            check_key("k".repeat(251).as_bytes()),
            Err(KeyError::TooLong(251))
        );
        for (bad, b) in [
            ("a/b", b'/'),
            ("a,b", b','),
            ("a b", b' '),
            ("%41", b'%'),
            ("é", 0xc3),
        ] {
            assert_eq!(
                check_key(bad.as_bytes()),
                Err(KeyError::BadByte(b)),
                "{bad}"
            );
        }
    }

    #[test]
    fn key_lists() {
        let body = encode_keys(&["a", "b", "c"]);
        assert_eq!(&body[..], b"a\nb\nc");
        assert_eq!(decode_keys(&body).unwrap(), vec![&b"a"[..], b"b", b"c"]);
        assert_eq!(decode_keys(b"a\n\nb"), Err(KeyError::Empty));
        let many = vec!["k"; MAX_MULTI_KEYS + 1];
        assert_eq!(
            decode_keys(&encode_keys(&many)),
            Err(KeyError::TooMany(1001))
        );
    }

    #[test]
    fn values_round_trip_and_bad_input_is_an_error() {
        let vals = vec![Some(Bytes::from_static(b"one")), None, Some(Bytes::new())];
        let body = encode_values(&vals);
        assert_eq!(&body[..], b"\x01\x03\0\0\0one\x00\x01\0\0\0\0");
        assert_eq!(decode_values(&body, 3).unwrap(), vals);
        assert!(decode_values(&body, 2).is_err());
        assert!(decode_values(&body, 4).is_err());
        assert!(decode_values(&body.slice(..6), 1).is_err());
        assert!(decode_values(&Bytes::from_static(b"\x02"), 1).is_err());
        assert!(decode_values(&Bytes::from_static(b"\x01\xff\xff\xff\xff"), 1).is_err());
    }
}
