//! A policy document comes from a file or from etcd, written by anyone:
//! whatever it holds, checking it answers with the policy or with
//! reasons, and never panics.

use proptest::prelude::*;
use serde_json::{json, Value};

/// Any JSON value, a few levels deep.
fn value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| json!(f)),
        "[ -~]{0,12}".prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            proptest::collection::btree_map("[a-z_]{1,8}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A document shaped like a policy, with any values in its fields.
fn policy_like() -> impl Strategy<Value = Value> {
    (
        value(),
        value(),
        value(),
        value(),
        value(),
        value(),
        value(),
    )
        .prop_map(|(weights, pin, version, fraction, methods, ignore, cap)| {
            json!({
                "weights": weights,
                "pin": pin,
                "ghost": {"version": version, "fraction": fraction, "methods": methods,
                          "ignore": ignore, "max_in_flight": cap},
            })
        })
}

proptest! {
    #[test]
    fn any_bytes_are_checked_without_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let _ = traffic::policy::parse_one("svc", &bytes);
        let _ = traffic::policy::parse(&String::from_utf8_lossy(&bytes));
    }

    #[test]
    fn any_policy_shaped_document_is_checked_without_panic(doc in policy_like()) {
        let text = doc.to_string();
        match traffic::policy::parse_one("svc", text.as_bytes()) {
            Ok(_) => {}
            Err(reasons) => prop_assert!(!reasons.is_empty()),
        }
        let whole = json!({"svc": doc}).to_string();
        let _ = traffic::policy::parse(&whole);
    }

    #[test]
    fn ghost_strings_of_any_kind_are_checked_without_panic(
        version in "\\PC{0,70}", ignore in proptest::collection::vec("\\PC{0,12}", 0..4),
        headers in proptest::collection::vec("\\PC{0,12}", 0..3), fraction in any::<f64>(),
    ) {
        let doc = json!({"ghost": {"version": version, "fraction": if fraction.is_finite() { json!(fraction) } else { json!(0.5) },
                                   "ignore": ignore, "compare_headers": headers}});
        let _ = traffic::policy::parse_one("svc", doc.to_string().as_bytes());
    }
}
