//! Feeds arbitrary bytes to the wire decoder: it must return, never panic.
//! Run: `cd bus && RUSTC_BOOTSTRAP=1 cargo fuzz run decode -- -max_total_time=60`
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // First byte picks the split between header and body frames.
    let (split, rest) = match data.split_first() {
        Some((s, r)) => (*s as usize % (r.len() + 1), r),
        None => (0, data),
    };
    let (h, b) = rest.split_at(split);
    if let Ok(m) = bus::wire::decode(Bytes::copy_from_slice(h), Bytes::copy_from_slice(b)) {
        // Whatever decodes must encode back to the same fields. Flags are
        // reserved (ignored on read, written as 0) and only requests carry a
        // budget, so compare version, kind and everything after the prefix.
        let (eh, _) = bus::wire::encode(&m).expect("decoded message re-encodes");
        assert_eq!(&eh[..2], &h[..2]);
        assert_eq!(&eh[16..], &h[16..]);
    }
});
