//! Properties of the ZMTP decoders (the same ones the fuzz targets in
//! bus/fuzz check, here on every test run): any bytes, split at any read
//! boundary, give frames or an error, never a panic and never more buffered
//! than the size limit allows; and whatever we encode decodes back.

use bus::zmtp::frame::{self, Command};
use bus::zmtp::greeting;
use bytes::BytesMut;
use proptest::prelude::*;

const MAX: usize = 1024;

/// Feeds `data` in `step`-sized reads; returns the frames or the error.
fn feed(data: &[u8], step: usize) -> Result<Vec<frame::RawFrame>, frame::FrameError> {
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    for chunk in data.chunks(step.max(1)) {
        buf.extend_from_slice(chunk);
        while let Some(f) = frame::parse(&mut buf, MAX)? {
            assert!(f.body.len() <= MAX);
            if f.is_command() {
                let _ = Command::parse(f.body.clone());
            }
            out.push(f);
        }
        assert!(buf.len() < 9 + MAX + step.max(1), "buffered {}", buf.len());
    }
    Ok(out)
}

proptest! {
    #[test]
    fn any_bytes_any_reads_never_panic(data in proptest::collection::vec(any::<u8>(), 0..4096), step in 1usize..300) {
        let _ = feed(&data, step);
    }

    #[test]
    fn encoded_frames_decode_back_at_any_read_size(
        frames in proptest::collection::vec((any::<bool>(), proptest::collection::vec(any::<u8>(), 0..600)), 1..20),
        step in 1usize..700,
    ) {
        let mut wire = Vec::new();
        for (more, body) in &frames {
            frame::put_frame(&mut wire, *more, body);
        }
        let got = feed(&wire, step).expect("our own frames decode");
        prop_assert_eq!(got.len(), frames.len());
        for (g, (more, body)) in got.iter().zip(&frames) {
            prop_assert_eq!(g.more(), *more);
            prop_assert_eq!(&g.body[..], &body[..]);
        }
    }

    #[test]
    fn greeting_prefixes_never_panic_and_refusal_is_final(data in proptest::collection::vec(any::<u8>(), 0..80)) {
        let mut refused = false;
        for n in 0..=data.len() {
            match greeting::parse(&data[..n]) {
                Ok(Some(_)) => prop_assert!(n >= greeting::GREETING_LEN && !refused),
                Ok(None) => prop_assert!(n < greeting::GREETING_LEN && !refused),
                Err(_) => refused = true,
            }
        }
    }
}
