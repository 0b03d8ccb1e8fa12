//! `Args`: every bad value reported, defaults, `--help`.

use super::*;
use clap::CommandFactory;

#[test]
fn defaults_are_the_convention() {
    let a = Args::parse_from(["aggregator"]);
    assert!(a.problems().is_empty(), "{:#?}", a.problems());
    assert_eq!(a.bus, DEFAULT_BUS);
    assert_eq!(a.admin.to_string(), DEFAULT_ADMIN);
    assert_eq!(a.backend, vec![DEFAULT_BACKEND]);
    assert_eq!(a.backend_events, vec![DEFAULT_BACKEND_EVENTS]);
    assert_eq!(a.max_in_flight, bus::service::DEFAULT_MAX_IN_FLIGHT);
    assert_eq!(a.cache_ttl, cache::DEFAULT_TTL);
    assert_eq!(a.cache_entries, cache::DEFAULT_MAX_ENTRIES);
    assert_eq!(a.multi_chunk, kv::DEFAULT_CHUNK);
    assert_eq!(a.grace, DEFAULT_GRACE);
}

#[test]
fn every_bad_value_is_reported() {
    let a = Args::parse_from([
        "aggregator",
        "--bus=udp://x",
        "--admin=nope",
        "--max-in-flight=0",
        "--backend=tcp://127.0.0.1:1,nope",
        "--cache-ttl=5 parsecs",
        "--cache-entries=-1",
        "--multi-chunk=x",
        "--grace=0s",
        "--threads=0",
        "--statsd=nope",
        "--etcd-ttl=1x",
    ]);
    let p = a.problems();
    assert_eq!(p.len(), 11, "{p:#?}");
    for flag in [
        "--bus",
        "--admin",
        "--max-in-flight",
        "--backend",
        "--cache-ttl",
        "--cache-entries",
        "--multi-chunk",
        "--grace",
        "--threads",
        "--statsd",
        "--etcd-ttl",
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
        DEFAULT_ADMIN.to_string(),
        DEFAULT_BACKEND.to_string(),
        DEFAULT_BACKEND_EVENTS.to_string(),
        bus::service::DEFAULT_MAX_IN_FLIGHT.to_string(),
        format!("{}s", cache::DEFAULT_TTL.as_secs()),
        cache::DEFAULT_MAX_ENTRIES.to_string(),
        kv::DEFAULT_CHUNK.to_string(),
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
