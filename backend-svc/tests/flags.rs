//! The binary reports every bad flag value before it exits with code 2.

use std::process::Command;

#[test]
fn two_bad_values_are_both_reported_with_exit_code_2() {
    let out = Command::new(env!("CARGO_BIN_EXE_backend-svc"))
        .args(["--max-value", "1MiB", "--grace", "forever"])
        .env_remove("SWITCHBOARD_MAX_VALUE")
        .env_remove("SWITCHBOARD_GRACE")
        .output()
        .expect("run backend-svc");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("backend-svc: --max-value: `1MiB`"), "{err}");
    assert!(err.contains("backend-svc: --grace: `forever`"), "{err}");
}
