//! Feeds arbitrary bytes to the ZMTP frame decoder and command parser, in
//! arbitrary read sizes: they must return, never panic, and never hold more
//! than the size limit allows.
//! Run: `cd bus && RUSTC_BOOTSTRAP=1 cargo fuzz run zmtp_frames -- -max_total_time=60`
#![no_main]

use bus::zmtp::frame::{self, Command};
use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;

const MAX: usize = 4096;

fuzz_target!(|data: &[u8]| {
    // First byte: the read size, so frames split at every boundary.
    let (step, rest) = match data.split_first() {
        Some((s, r)) => ((*s as usize).max(1), r),
        None => return,
    };
    let mut buf = BytesMut::new();
    for chunk in rest.chunks(step) {
        buf.extend_from_slice(chunk);
        loop {
            match frame::parse(&mut buf, MAX) {
                Ok(Some(f)) => {
                    assert!(f.body.len() <= MAX);
                    if f.is_command() {
                        if let Ok(c) = Command::parse(f.body.clone()) {
                            // Whatever parses re-encodes as a valid frame.
                            let mut out = Vec::new();
                            c.put(&mut out);
                            assert!(frame::check(&out, usize::MAX).is_ok());
                        }
                    }
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
        // An incomplete frame never holds more than its head + MAX bytes.
        assert!(buf.len() <= 9 + MAX + step);
    }
});
