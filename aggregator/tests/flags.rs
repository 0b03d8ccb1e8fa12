//! The binary reports every bad flag value before it exits with code 2.

use std::process::Command;

#[test]
fn two_bad_values_are_both_reported_with_exit_code_2() {
    let out = Command::new(env!("CARGO_BIN_EXE_aggregator"))
        .args(["--admin", "nope", "--cache-ttl", "5 parsecs"])
        .env_remove("SWITCHBOARD_ADMIN")
        .env_remove("SWITCHBOARD_CACHE_TTL")
        .output()
        .expect("run aggregator");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("aggregator: --admin: `nope`"), "{err}");
    assert!(
        err.contains("aggregator: --cache-ttl: `5 parsecs`"),
        "{err}"
    );
}
