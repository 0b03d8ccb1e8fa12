//! The ghost comparison on arbitrary replies: it never panics, a reply
//! always matches itself, JSON bodies that differ only in member order,
//! whitespace or ignored members match, and any other byte change in a
//! non-JSON body is a mismatch.

use bytes::Bytes;
use proptest::prelude::*;
use traffic::ghost::{compare, Answer, Ghost, Verdict};

fn ghost(ignore: &[&str]) -> Ghost {
    Ghost::new("v2", 1.0, ignore)
}

fn reply(status: u16, ct: &'static str, body: Vec<u8>) -> Answer {
    Answer::Reply {
        status,
        headers: vec![("content-type".into(), Bytes::from_static(ct.as_bytes()))],
        body: Bytes::from(body),
    }
}

proptest! {
    #[test]
    fn any_reply_matches_itself(status in 100u16..600, body in proptest::collection::vec(any::<u8>(), 0..512),
                                ignore in proptest::collection::vec("/[a-z*]{0,3}(/[a-z0-9*]{0,3}){0,2}", 0..3)) {
        let ignore: Vec<&str> = ignore.iter().map(String::as_str).collect();
        let a = reply(status, "application/json", body);
        prop_assert_eq!(compare::compare(&a, &a.clone(), &ghost(&ignore)), Verdict::Match);
    }

    #[test]
    fn json_order_whitespace_and_ignored_members_do_not_count(
        members in proptest::collection::btree_map("[a-z]{1,6}", any::<i64>(), 1..8),
        noise_a in any::<u64>(), noise_b in any::<u64>(),
    ) {
        let forward: Vec<String> = members.iter().map(|(k, v)| format!("\"{k}\": {v}")).collect();
        let backward: Vec<String> = members.iter().rev().map(|(k, v)| format!("\"{k}\":{v}")).collect();
        let a = format!("{{{}, \"noise\": {noise_a}}}", forward.join(", "));
        let b = format!("{{ \"noise\": {noise_b},{} }}", backward.join(","));
        let g = ghost(&["/noise"]);
        prop_assert_eq!(
            compare::compare(&reply(200, "text/plain", a.into_bytes()), &reply(200, "text/plain", b.into_bytes()), &g),
            Verdict::Match
        );
    }

    #[test]
    fn a_changed_byte_in_a_plain_body_is_a_mismatch(body in proptest::collection::vec(any::<u8>(), 1..256), at in any::<usize>(), flip in 1u8..=255) {
        // Not JSON: start with a byte that no JSON value starts with.
        let mut a = body.clone();
        a[0] = b'#';
        let mut b = a.clone();
        let i = at % b.len();
        b[i] ^= flip;
        let g = ghost(&[]);
        let v = compare::compare(&reply(200, "text/plain", a), &reply(200, "text/plain", b), &g);
        let is_mismatch = matches!(v, Verdict::Mismatch { .. });
        prop_assert!(is_mismatch);
    }
}
