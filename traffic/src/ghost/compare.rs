//! Comparing a ghost's answer with the primary's.
//!
//! Two answers match when they have the same status, the same values for
//! each of `compare_headers` (all of them, in order), and the same body
//! after normalising:
//!
//! - a body that parses as JSON, and either says so in its `content-type`
//!   or starts with `{` or `[` (stored values are often JSON served as
//!   octet-stream), is compared as JSON: every `ignore` pointer removed
//!   (an object member is dropped, an array element becomes `null` so the
//!   others keep their place), then written with its keys sorted, so
//!   member order and whitespace never count;
//! - any other body byte for byte.
//!
//! Bodies are compared by a 64-bit hash of that form; the hashes and the
//! first bytes of both sides are what a mismatch sample shows.
//!
//! A side with no answer at all (a timeout, no instance up, a dropped
//! connection) is not compared: the ghost's is counted as a failure, the
//! primary's as unpaired.

use bytes::Bytes;
use http::HeaderName;
use serde_json::Value;
use std::hash::{Hash, Hasher};

/// What one side answered, as the client sees it.
#[derive(Debug, Clone)]
pub enum Answer {
    Reply {
        status: u16,
        headers: bus::Headers,
        body: Bytes,
    },
    /// No answer: why, in one word (`timeout`, `no_instance`, ...).
    Failed(&'static str),
}

impl Answer {
    /// A call's outcome. A bus error reply (`Remote`) is an answer: its
    /// status and message are what the client would get.
    pub fn of(r: &Result<bus::Reply, bus::CallError>) -> Answer {
        match r {
            Ok(r) => Answer::Reply {
                status: r.status,
                headers: r.headers.clone(),
                body: r.body.clone(),
            },
            Err(bus::CallError::Remote { status, message }) => Answer::Reply {
                status: *status,
                headers: Vec::new(),
                body: Bytes::from(message.clone()),
            },
            Err(e) => Answer::Failed(failure_kind(e)),
        }
    }
}

pub fn failure_kind(e: &bus::CallError) -> &'static str {
    match e {
        bus::CallError::Timeout => "timeout",
        bus::CallError::NoInstance(_) => "no_instance",
        bus::CallError::Overloaded(_) => "overloaded",
        bus::CallError::Disconnected => "disconnected",
        bus::CallError::Protocol(_) => "protocol",
        bus::CallError::Remote { .. } => "remote",
    }
}

/// One side of a mismatch, as shown on the admin port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Side {
    pub status: u16,
    /// The normalised body's hash, 16 hex digits.
    pub body_hash: String,
    /// The first bytes of the body as sent (lossy UTF-8).
    pub head: String,
}

/// How a pair came out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Match,
    /// What differs (`status`, `header content-type`, `body`), and both sides.
    Mismatch {
        differs: Vec<String>,
        primary: Side,
        ghost: Side,
    },
    GhostFailed(&'static str),
    /// The primary had no answer (it timed out, or the client went away):
    /// nothing to compare with.
    Unpaired,
}

/// Bytes of each body kept in a mismatch sample.
pub const HEAD_BYTES: usize = 128;

pub fn compare(primary: &Answer, ghost: &Answer, g: &super::Ghost) -> Verdict {
    let (p, gh) = match (primary, ghost) {
        (Answer::Failed(_), _) => return Verdict::Unpaired,
        (_, Answer::Failed(why)) => return Verdict::GhostFailed(why),
        (Answer::Reply { .. }, Answer::Reply { .. }) => (primary, ghost),
    };
    let (
        Answer::Reply {
            status: ps,
            headers: ph,
            body: pb,
        },
        Answer::Reply {
            status: gs,
            headers: gh,
            body: gb,
        },
    ) = (p, gh)
    else {
        return Verdict::Unpaired;
    };
    let mut differs = Vec::new();
    if ps != gs {
        differs.push("status".to_string());
    }
    for h in &g.compare_headers {
        if values(ph, h).ne(values(gh, h)) {
            differs.push(format!("header {h}"));
        }
    }
    let (phash, ghash) = (body_hash(ph, pb, &g.ignore), body_hash(gh, gb, &g.ignore));
    if phash != ghash {
        differs.push("body".to_string());
    }
    if differs.is_empty() {
        return Verdict::Match;
    }
    let side = |status: u16, hash: u64, body: &Bytes| Side {
        status,
        body_hash: format!("{hash:016x}"),
        head: String::from_utf8_lossy(&body[..body.len().min(HEAD_BYTES)]).into_owned(),
    };
    Verdict::Mismatch {
        differs,
        primary: side(*ps, phash, pb),
        ghost: side(*gs, ghash, gb),
    }
}

fn values<'a>(headers: &'a bus::Headers, name: &'a HeaderName) -> impl Iterator<Item = &'a [u8]> {
    headers
        .iter()
        .filter(move |(n, _)| n.as_str().eq_ignore_ascii_case(name.as_str()))
        .map(|(_, v)| v.as_ref())
}

fn is_json(headers: &bus::Headers) -> bool {
    values(headers, &http::header::CONTENT_TYPE).any(|v| {
        let v = String::from_utf8_lossy(v).to_ascii_lowercase();
        let essence = v.split(';').next().unwrap_or("").trim().to_string();
        essence == "application/json" || essence.ends_with("+json")
    })
}

/// The hash of the body in its compared form (module docs).
pub fn body_hash(headers: &bus::Headers, body: &Bytes, ignore: &[Vec<String>]) -> u64 {
    // DefaultHasher::new() is the same function for every call in one
    // process, which is all a comparison needs.
    let mut h = std::collections::hash_map::DefaultHasher::new();
    let looks = matches!(
        body.iter().find(|b| !b.is_ascii_whitespace()),
        Some(b'{' | b'[')
    );
    match (looks || is_json(headers))
        .then(|| serde_json::from_slice::<Value>(body).ok())
        .flatten()
    {
        Some(mut v) => {
            for p in ignore {
                remove(&mut v, p);
            }
            v.sort_all_objects();
            // Writing a Value to a Vec cannot fail.
            serde_json::to_vec(&v).unwrap_or_default().hash(&mut h);
        }
        None => body.as_ref().hash(&mut h),
    }
    h.finish()
}

/// RFC 6901: "" is the whole document, which `ignore` refuses (it would
/// make every pair match); "/a/b" is member b of member a; `~1` is `/`
/// and `~0` is `~` within a segment.
pub fn parse_pointer(p: &str) -> Option<Vec<String>> {
    let rest = p.strip_prefix('/')?;
    let mut out = Vec::new();
    for seg in rest.split('/') {
        let mut s = String::with_capacity(seg.len());
        let mut chars = seg.chars();
        while let Some(c) = chars.next() {
            if c == '~' {
                match chars.next() {
                    Some('0') => s.push('~'),
                    Some('1') => s.push('/'),
                    _ => return None,
                }
            } else {
                s.push(c);
            }
        }
        out.push(s);
    }
    Some(out)
}

pub fn pointer_text(segs: &[String]) -> String {
    segs.iter()
        .map(|s| format!("/{}", s.replace('~', "~0").replace('/', "~1")))
        .collect()
}

fn remove(v: &mut Value, segs: &[String]) {
    let Some((first, rest)) = segs.split_first() else {
        return;
    };
    let any = first == "*";
    match v {
        Value::Object(m) if rest.is_empty() => {
            if any {
                m.clear();
            } else {
                m.remove(first);
            }
        }
        Value::Object(m) => {
            if any {
                m.values_mut().for_each(|c| remove(c, rest));
            } else if let Some(c) = m.get_mut(first) {
                remove(c, rest);
            }
        }
        Value::Array(a) => {
            let picked: Vec<&mut Value> = if any {
                a.iter_mut().collect()
            } else {
                first
                    .parse::<usize>()
                    .ok()
                    .and_then(|i| a.get_mut(i))
                    .into_iter()
                    .collect()
            };
            for c in picked {
                if rest.is_empty() {
                    *c = Value::Null;
                } else {
                    remove(c, rest);
                }
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ghost::Ghost;

    fn ghost(ignore: &[&str]) -> Ghost {
        Ghost::new("v2", 1.0, ignore)
    }

    fn json(status: u16, body: &str) -> Answer {
        Answer::Reply {
            status,
            headers: vec![(
                "content-type".into(),
                Bytes::from_static(b"application/json; charset=utf-8"),
            )],
            body: Bytes::from(body.to_string()),
        }
    }

    #[test]
    fn noise_named_in_ignore_is_not_a_difference() {
        let g = ghost(&["/at", "/items/*/id", "/a~1b"]);
        let a = json(
            200,
            r#"{"v": 1, "at": 5, "items": [{"id": 1, "n": "x"}], "a/b": 1}"#,
        );
        let b = json(
            200,
            r#"{"items": [{"n": "x", "id": 9}], "at": 6, "v": 1, "a/b": 2}"#,
        );
        assert_eq!(compare(&a, &b, &g), Verdict::Match);
        // The same noise with no ignore list: a body mismatch.
        let Verdict::Mismatch {
            differs,
            primary,
            ghost: gs,
        } = compare(&a, &b, &ghost(&[]))
        else {
            panic!("expected a mismatch")
        };
        assert_eq!(differs, ["body"]);
        assert_ne!(primary.body_hash, gs.body_hash);
        assert!(primary.head.starts_with(r#"{"v": 1"#));
        // A real difference outside the ignored fields still shows.
        let c = json(
            200,
            r#"{"v": 2, "at": 7, "items": [{"id": 1, "n": "x"}], "a/b": 1}"#,
        );
        assert!(matches!(compare(&a, &c, &g), Verdict::Mismatch { .. }));
    }

    #[test]
    fn status_headers_and_failures() {
        let g = ghost(&[]);
        let a = json(200, "{}");
        let Verdict::Mismatch { differs, .. } = compare(&a, &json(404, "{}"), &g) else {
            panic!()
        };
        assert_eq!(differs, ["status"]);
        let text = Answer::Reply {
            status: 200,
            headers: vec![("content-type".into(), Bytes::from_static(b"text/plain"))],
            body: Bytes::from_static(b"{}"),
        };
        let Verdict::Mismatch { differs, .. } = compare(&a, &text, &g) else {
            panic!()
        };
        assert_eq!(
            differs,
            ["header content-type"],
            "JSON `{{}}` and text `{{}}` hash alike"
        );
        assert_eq!(
            compare(&a, &Answer::Failed("timeout"), &g),
            Verdict::GhostFailed("timeout")
        );
        assert_eq!(
            compare(&Answer::Failed("timeout"), &a, &g),
            Verdict::Unpaired
        );
        // Not JSON: byte for byte.
        let plain = |b: &'static [u8]| Answer::Reply {
            status: 200,
            headers: vec![("content-type".into(), Bytes::from_static(b"text/plain"))],
            body: Bytes::from_static(b),
        };
        assert!(matches!(
            compare(&plain(b"a b"), &plain(b"a  b"), &ghost(&["/x"])),
            Verdict::Mismatch { .. }
        ));
        // JSON served as anything else is still JSON: whitespace, member
        // order and ignored members do not count.
        assert_eq!(
            compare(
                &plain(br#"{"a":1,"t":2}"#),
                &plain(br#"{ "t": 3, "a": 1 }"#),
                &ghost(&["/t"])
            ),
            Verdict::Match
        );
    }

    #[test]
    fn pointers() {
        assert_eq!(
            parse_pointer("/a~1b/~0c/*"),
            Some(vec!["a/b".into(), "~c".into(), "*".into()])
        );
        assert_eq!(parse_pointer(""), None);
        assert_eq!(parse_pointer("a"), None);
        assert_eq!(parse_pointer("/a~2"), None);
        assert_eq!(
            pointer_text(&parse_pointer("/a~1b/~0c").unwrap()),
            "/a~1b/~0c"
        );
        let mut v: Value = serde_json::from_str(r#"{"l": [1, 2, 3]}"#).unwrap();
        remove(&mut v, &parse_pointer("/l/1").unwrap());
        assert_eq!(v, serde_json::json!({"l": [1, null, 3]}));
    }
}
