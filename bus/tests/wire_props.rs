//! Property tests: encode → decode is the identity, and no input panics.

use bus::wire::{self, Message, Reply, Request, Text};
use bytes::Bytes;
use proptest::prelude::*;
use std::time::{Duration, Instant};

fn text(max: usize) -> impl Strategy<Value = Text> {
    proptest::string::string_regex(&format!(".{{0,{max}}}"))
        .unwrap()
        .prop_filter("fits", move |s| s.len() <= max)
        .prop_map(Text::from)
}

fn headers() -> impl Strategy<Value = Vec<(Text, Bytes)>> {
    proptest::collection::vec(
        (
            text(40),
            proptest::collection::vec(any::<u8>(), 0..300).prop_map(Bytes::from),
        ),
        0..12,
    )
}

fn body() -> impl Strategy<Value = Bytes> {
    proptest::collection::vec(any::<u8>(), 0..2048).prop_map(Bytes::from)
}

proptest! {
    #[test]
    fn request_round_trips(
        correlation_id in any::<u64>(), budget_us in any::<u32>(),
        service in text(60), method in text(60), http_method in text(10),
        path in text(2000), request_id in text(64), headers in headers(), body in body(),
        ghost in any::<bool>(),
    ) {
        let r = Request { correlation_id, budget_us, service, method, http_method, path,
                          request_id, headers, body, ghost };
        let h = wire::encode_request(&r).unwrap();
        prop_assert_eq!(wire::decode(Bytes::from(h), r.body.clone()).unwrap(), Message::Request(r));
    }

    #[test]
    fn reply_round_trips(correlation_id in any::<u64>(), status in any::<u16>(),
                         headers in headers(), body in body()) {
        let r = Reply { correlation_id, status, headers, body };
        let h = wire::encode_reply(&r).unwrap();
        prop_assert_eq!(wire::decode(Bytes::from(h), r.body.clone()).unwrap(), Message::Reply(r));
    }

    #[test]
    fn event_and_error_round_trip(topic in text(200), status in any::<u16>(),
                                  message in text(3000), body in body()) {
        let e = wire::Event { topic, body };
        let h = wire::encode_event(&e).unwrap();
        prop_assert_eq!(wire::decode(Bytes::from(h), e.body.clone()).unwrap(), Message::Event(e));
        let e = wire::ErrorReply { correlation_id: 9, status, message };
        let h = wire::encode_error(&e);
        prop_assert_eq!(wire::decode(Bytes::from(h), Bytes::new()).unwrap(), Message::Error(e));
    }

    #[test]
    fn arbitrary_bytes_never_panic(h in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = wire::decode(Bytes::from(h), Bytes::new());
    }
}

/// Random bytes for a bounded time, biased towards valid prefixes so the
/// decoder gets past the version and kind checks.
#[test]
fn random_frames_for_two_seconds_never_panic() {
    let mut rng = fastrand::Rng::with_seed(0x5eed);
    let end = Instant::now() + Duration::from_secs(2);
    let mut n = 0u64;
    let mut accepted = 0u64;
    while Instant::now() < end {
        let len = rng.usize(0..256);
        let mut h: Vec<u8> = (0..len).map(|_| rng.u8(..)).collect();
        if len >= 2 && rng.bool() {
            h[0] = wire::VERSION;
            h[1] = rng.u8(1..=4);
        }
        if len > 16 && rng.bool() {
            // small length fields make deep parses likely
            for b in &mut h[16..] {
                *b %= 8;
            }
        }
        if wire::decode(Bytes::from(h), Bytes::new()).is_ok() {
            accepted += 1;
        }
        n += 1;
    }
    assert!(n > 10_000, "only {n} inputs in 2 s");
    assert!(
        accepted > 0,
        "no random input was ever valid: the bias is broken"
    );
}
