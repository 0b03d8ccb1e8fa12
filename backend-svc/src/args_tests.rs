//! `Args`: every bad value reported, defaults, `--help`.

use super::*;
use clap::CommandFactory;

#[test]
fn defaults_are_the_convention() {
    let a = Args::parse_from(["backend-svc"]);
    assert!(a.problems().is_empty(), "{:#?}", a.problems());
    assert_eq!(
        (a.bus.as_str(), a.events.as_str()),
        (DEFAULT_BUS, DEFAULT_EVENTS)
    );
    assert_eq!(a.admin.to_string(), DEFAULT_ADMIN);
    assert_eq!(a.data_dir, PathBuf::from(DEFAULT_DATA_DIR));
    assert_eq!(a.max_value, DEFAULT_MAX_VALUE);
    assert_eq!(a.write_queue, store::DEFAULT_WRITE_QUEUE);
    assert_eq!(a.max_in_flight, bus::service::DEFAULT_MAX_IN_FLIGHT);
    assert_eq!(a.grace, DEFAULT_GRACE);
}

#[test]
fn every_bad_value_is_reported() {
    let a = Args::parse_from([
        "backend-svc",
        "--bus=nope",
        "--events=tcp://127.0.0.1",
        "--admin=127.0.0.1",
        "--max-value=1MiB",
        "--write-queue=0",
        "--max-in-flight=-5",
        "--grace=forever",
        "--threads=x",
        "--metrics=maybe",
    ]);
    let p = a.problems();
    assert_eq!(p.len(), 9, "{p:#?}");
    for flag in [
        "--bus",
        "--events",
        "--admin",
        "--max-value",
        "--write-queue",
        "--max-in-flight",
        "--grace",
        "--threads",
        "--metrics",
    ] {
        assert!(
            p.iter().any(|m| m.starts_with(&format!("{flag}: "))),
            "{flag}: {p:#?}"
        );
    }
}

#[test]
fn help_gives_the_defaults_in_the_text_like_the_terminator() {
    let help = Flags::command().render_long_help().to_string();
    for d in [
        DEFAULT_BUS.to_string(),
        DEFAULT_EVENTS.to_string(),
        DEFAULT_ADMIN.to_string(),
        DEFAULT_DATA_DIR.to_string(),
        DEFAULT_MAX_VALUE.to_string(),
        store::DEFAULT_WRITE_QUEUE.to_string(),
        bus::service::DEFAULT_MAX_IN_FLIGHT.to_string(),
        format!("{}s", DEFAULT_GRACE.as_secs()),
    ] {
        assert!(
            help.contains(&format!("[default: {d}]")),
            "{d} missing:\n{help}"
        );
    }
    assert!(help.contains("/stats/histograms"), "{help}");
    // No clap-made default after the env (`[env: X=] [default: Y]`).
    assert!(!help.contains("=] [default:"), "{help}");
}
