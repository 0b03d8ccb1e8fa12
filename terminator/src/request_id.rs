//! `x-request-id`: accepted when sane, generated otherwise.

use http::HeaderValue;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

pub const MAX_LEN: usize = 128;

/// A client's id is kept if it is 1–128 visible ASCII characters from a
/// conservative set, so it is safe in logs and headers everywhere.
pub fn accept(v: &HeaderValue) -> bool {
    let b = v.as_bytes();
    !b.is_empty()
        && b.len() <= MAX_LEN
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || b"-_.:/+=@".contains(c))
}

/// A new id: a random per-process prefix plus a counter, 24 hex digits.
pub fn generate() -> HeaderValue {
    static PREFIX: OnceLock<u64> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let p = *PREFIX.get_or_init(|| fastrand::u64(..) & 0xffff_ffff);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    // On the stack: one allocation (the header value's), not two.
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut buf = [0u8; 24];
    for (i, b) in buf.iter_mut().enumerate() {
        let nibble = if i < 8 {
            (p >> (4 * (7 - i))) & 0xf
        } else {
            (n >> (4 * (23 - i))) & 0xf
        };
        *b = HEX[nibble as usize];
    }
    HeaderValue::from_bytes(&buf).expect("hex is a valid header value")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sane_ids_kept_others_replaced() {
        assert!(accept(&HeaderValue::from_static("abc-123_x")));
        assert!(!accept(&HeaderValue::from_static("")));
        assert!(!accept(&HeaderValue::from_static("has space")));
        assert!(!accept(&HeaderValue::from_str(&"a".repeat(129)).unwrap()));
        assert_ne!(generate(), generate());
        let g = generate();
        assert_eq!(g.len(), 24);
        assert!(accept(&g), "{g:?}");
        assert!(g.as_bytes().iter().all(u8::is_ascii_hexdigit));
    }
}
