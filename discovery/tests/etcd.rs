//! The registrar and the watcher against a real etcd (started per test on
//! free ports, killed on drop), outages and compactions included.

use discovery::{EtcdOptions, Registrar, Registration, Snapshot, Watcher, PREFIX};
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use testkit::{poll, wait_until, Etcd, Proxy};

fn reg(service: &str, instance: &str) -> Registration {
    Registration {
        service: service.into(),
        instance: instance.into(),
        bus: format!("tcp://127.0.0.1:1/{instance}"),
        events: None,
        admin: "http://127.0.0.1:2".into(),
        routes: vec!["/x".into()],
        version: "test".into(),
        started_at: 1,
        draining: false,
        curve_key: None,
    }
}

fn opts(url: String) -> EtcdOptions {
    let mut o = EtcdOptions::new(vec![url]);
    o.ttl = Duration::from_secs(2);
    o.keepalive = Duration::from_millis(500);
    o
}

/// Instance `a` of `svc`, registered (bounded wait).
fn register(rt: &tokio::runtime::Runtime, etcd: &Etcd) -> Registrar {
    let r = {
        let _g = rt.enter();
        Registrar::start(opts(etcd.url()), reg("svc", "a"))
    };
    wait_until(Duration::from_secs(10), "registered", || r.registered());
    r
}

/// A watcher whose latest snapshot the test can read.
fn watch(
    rt: &tokio::runtime::Runtime,
    o: EtcdOptions,
    prefix: &str,
) -> (Watcher, Arc<Mutex<Snapshot>>) {
    let seen = Arc::new(Mutex::new(Snapshot::new()));
    let s = seen.clone();
    let _g = rt.enter();
    let w = Watcher::start(o, prefix.into(), move |snap| {
        *s.lock().unwrap() = snap.clone()
    });
    (w, seen)
}

fn instances(seen: &Mutex<Snapshot>) -> Vec<String> {
    seen.lock()
        .unwrap()
        .values()
        .map(|r| r.instance.clone())
        .collect()
}

#[test]
fn registration_is_leased_and_revoked_on_deregister() {
    let etcd = Etcd::start();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let r = register(&rt, &etcd);
    let key = format!("{PREFIX}svc/a");
    assert_eq!(etcd.keys(PREFIX), vec![key.clone()]);
    // The value is the JSON the docs show, and it is attached to a lease.
    let json = etcd.ctl(&["get", &key, "--print-value-only"]);
    let back: Registration = serde_json::from_str(json.trim()).unwrap();
    assert_eq!(back, reg("svc", "a"));
    assert!(!etcd
        .ctl(&["lease", "list"])
        .lines()
        .skip(1)
        .all(|l| l.trim().is_empty()));
    rt.block_on(r.deregister(Duration::from_secs(2)));
    // Gone at once (revoked), not after the TTL.
    assert!(etcd.keys(PREFIX).is_empty());
}

#[test]
fn a_lost_lease_is_granted_again_and_the_key_put_again() {
    let etcd = Etcd::start();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let _registrar = register(&rt, &etcd); // kept alive: it re-registers
                                           // Revoke every lease behind the registrar's back: what etcd does when a
                                           // partition outlasted the TTL.
    let leases = etcd.ctl(&["lease", "list"]);
    for id in leases.lines().skip(1).filter(|l| !l.trim().is_empty()) {
        etcd.ctl(&["lease", "revoke", id.trim()]);
    }
    assert!(etcd.keys(PREFIX).is_empty());
    wait_until(Duration::from_secs(10), "key written again", || {
        etcd.keys(PREFIX) == vec![format!("{PREFIX}svc/a")]
    });
}

#[test]
fn registration_survives_an_etcd_outage() {
    let mut etcd = Etcd::start();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let r = register(&rt, &etcd);
    etcd.stop();
    wait_until(Duration::from_secs(10), "outage noticed", || {
        !r.registered()
    });
    // Longer than the TTL: the lease may expire while etcd is down.
    std::thread::sleep(Duration::from_secs(3));
    etcd.resume();
    wait_until(Duration::from_secs(15), "registered again", || {
        r.registered()
    });
    wait_until(Duration::from_secs(10), "key back", || {
        etcd.keys(PREFIX) == vec![format!("{PREFIX}svc/a")]
    });
}

#[test]
fn watcher_lists_then_follows_and_keeps_the_set_through_an_outage() {
    let mut etcd = Etcd::start();
    let rt = tokio::runtime::Runtime::new().unwrap();
    // Written before the watch: seen by the list.
    etcd.ctl(&[
        "put",
        &format!("{PREFIX}svc/a"),
        &serde_json::to_string(&reg("svc", "a")).unwrap(),
    ]);
    // Another service whose name starts the same: outside `svc/`.
    etcd.ctl(&[
        "put",
        &format!("{PREFIX}svc2/z"),
        &serde_json::to_string(&reg("svc2", "z")).unwrap(),
    ]);
    let (w, seen) = watch(&rt, opts(etcd.url()), &Registration::service_prefix("svc"));
    wait_until(Duration::from_secs(10), "listed", || w.synced());
    assert_eq!(instances(&seen), vec!["a"]);
    // Written after: seen by the watch.
    etcd.ctl(&[
        "put",
        &format!("{PREFIX}svc/b"),
        &serde_json::to_string(&reg("svc", "b")).unwrap(),
    ]);
    wait_until(Duration::from_secs(5), "b seen", || {
        instances(&seen) == ["a", "b"]
    });
    // A value that does not parse is ignored, and does not hide the others.
    etcd.ctl(&["put", &format!("{PREFIX}svc/bad"), "{not json"]);
    etcd.ctl(&["del", &format!("{PREFIX}svc/a")]);
    wait_until(Duration::from_secs(5), "a gone", || {
        instances(&seen) == ["b"]
    });

    etcd.stop();
    wait_until(Duration::from_secs(10), "outage noticed", || !w.synced());
    assert_eq!(instances(&seen), vec!["b"], "the last known set is kept");
    etcd.resume();
    wait_until(Duration::from_secs(15), "watch live again", || w.synced());
    etcd.ctl(&[
        "put",
        &format!("{PREFIX}svc/c"),
        &serde_json::to_string(&reg("svc", "c")).unwrap(),
    ]);
    wait_until(Duration::from_secs(5), "c seen", || {
        instances(&seen) == ["b", "c"]
    });
    // Resumed from its revision: no re-list was needed.
    assert_eq!(w.relists(), 1);
}

#[test]
fn watcher_recovers_from_a_compaction_it_missed() {
    let etcd = Etcd::start();
    let proxy = Proxy::start(etcd.url()[7..].parse().unwrap());
    let rt = tokio::runtime::Runtime::new().unwrap();
    let put = |i: &str| {
        etcd.ctl(&[
            "put",
            &format!("{PREFIX}svc/{i}"),
            &serde_json::to_string(&reg("svc", i)).unwrap(),
        ]);
    };
    put("a");
    put("b");
    let (w, seen) = watch(&rt, opts(proxy.url()), &Registration::service_prefix("svc"));
    wait_until(Duration::from_secs(10), "listed", || w.synced());
    assert_eq!(instances(&seen), ["a", "b"]);

    // Partition the watcher; meanwhile the set changes and history is
    // compacted past the watcher's revision.
    proxy.cut();
    wait_until(Duration::from_secs(10), "partition noticed", || !w.synced());
    etcd.ctl(&["del", &format!("{PREFIX}svc/a")]);
    put("c");
    put("d");
    etcd.ctl(&["del", &format!("{PREFIX}svc/d")]);
    let rev = etcd.revision();
    etcd.ctl(&["compact", &rev.to_string()]);
    proxy.heal();

    wait_until(
        Duration::from_secs(15),
        "re-listed after compaction",
        || w.relists() == 2,
    );
    wait_until(Duration::from_secs(5), "set correct", || {
        instances(&seen) == ["b", "c"]
    });
    // And it follows changes again.
    put("e");
    assert!(
        poll(Duration::from_secs(5), || instances(&seen)
            == ["b", "c", "e"]),
        "after recovery: {:?}",
        instances(&seen)
    );
}

/// etcd's default `--grpc-keepalive-min-time` is 5 s: a client that pings
/// more often gets GOAWAY `too_many_pings` after a few pings, and its idle
/// watch is rebuilt every few seconds. testkit's etcd runs with the default
/// keepalive settings, so this watch must simply last. (With 1 s pings the
/// stream was closed after about 4 s; 12 s covers three such cycles.)
#[test]
fn the_watch_lasts_against_an_etcd_with_default_keepalive_settings() {
    let etcd = Etcd::start();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (w, _seen) = watch(&rt, opts(etcd.url()), &Registration::service_prefix("svc"));
    wait_until(Duration::from_secs(10), "listed", || w.synced());
    let rebuilt = poll(Duration::from_secs(12), || w.restarts() > 0);
    assert!(
        !rebuilt && w.synced(),
        "the idle watch was rebuilt ({} restarts)",
        w.restarts()
    );
    assert_eq!(w.relists(), 1);
}

/// Instance names whose connections the test says are up.
type Up = Arc<Mutex<BTreeSet<String>>>;

fn up(names: &[&str]) -> Up {
    Arc::new(Mutex::new(names.iter().map(|s| s.to_string()).collect()))
}

/// A watcher with the removal grace, its `live` check answered from `up`.
fn watch_with_grace(
    rt: &tokio::runtime::Runtime,
    etcd: &Etcd,
    grace: Duration,
    up: &Up,
) -> (Watcher, Arc<Mutex<Snapshot>>) {
    let mut o = opts(etcd.url());
    o.removal_grace = grace;
    let seen = Arc::new(Mutex::new(Snapshot::new()));
    let (s, up) = (seen.clone(), up.clone());
    let _g = rt.enter();
    let w = Watcher::start_with_liveness(
        o,
        Registration::service_prefix("svc"),
        move |r| up.lock().unwrap().contains(&r.instance),
        move |snap| *s.lock().unwrap() = snap.clone(),
    );
    wait_until(Duration::from_secs(10), "listed", || w.synced());
    (w, seen)
}

fn put(etcd: &Etcd, r: &Registration) {
    etcd.ctl(&["put", &r.key(), &serde_json::to_string(r).unwrap()]);
}

fn del(etcd: &Etcd, instance: &str) {
    etcd.ctl(&["del", &reg("svc", instance).key()]);
}

#[test]
fn a_vanished_key_stays_listed_while_its_connection_is_up() {
    let etcd = Etcd::start();
    let rt = tokio::runtime::Runtime::new().unwrap();
    for i in ["a", "b", "c"] {
        put(&etcd, &reg("svc", i));
    }
    let up = up(&["a", "c"]);
    let (w, seen) = watch_with_grace(&rt, &etcd, Duration::from_secs(60), &up);
    assert_eq!(instances(&seen), ["a", "b", "c"]);

    // a's connection is up: kept. b's is down: removed at once.
    del(&etcd, "a");
    del(&etcd, "b");
    wait_until(Duration::from_secs(5), "b removed", || {
        instances(&seen) == ["a", "c"]
    });
    assert_eq!(w.kept(), 1);

    // a registers again: listed from etcd, no longer kept.
    put(&etcd, &reg("svc", "a"));
    wait_until(Duration::from_secs(5), "a back", || w.kept() == 0);
    assert_eq!(instances(&seen), ["a", "c"]);

    // Kept again, then its connection fails: removed within the check
    // period, long before the grace.
    del(&etcd, "a");
    wait_until(Duration::from_secs(5), "a kept", || w.kept() == 1);
    assert_eq!(instances(&seen), ["a", "c"]);
    up.lock().unwrap().remove("a");
    let t0 = Instant::now();
    wait_until(Duration::from_secs(5), "a removed", || {
        instances(&seen) == ["c"]
    });
    assert!(t0.elapsed() < Duration::from_secs(1), "{:?}", t0.elapsed());
    assert_eq!(w.kept(), 0);
}

#[test]
fn a_kept_registration_goes_when_the_grace_runs_out() {
    let etcd = Etcd::start();
    let rt = tokio::runtime::Runtime::new().unwrap();
    put(&etcd, &reg("svc", "a"));
    let (w, seen) = watch_with_grace(&rt, &etcd, Duration::from_secs(1), &up(&["a"]));
    assert_eq!(instances(&seen), ["a"]);
    del(&etcd, "a");
    wait_until(Duration::from_secs(5), "a kept", || w.kept() == 1);
    let t0 = Instant::now();
    wait_until(Duration::from_secs(5), "a removed", || {
        instances(&seen).is_empty()
    });
    // Kept for the grace (1 s, counted from the delete), not much longer.
    let took = t0.elapsed();
    assert!(took < Duration::from_millis(1500), "{took:?}");
    assert_eq!(w.kept(), 0);
}

#[test]
fn a_deliberate_deregistration_is_not_kept() {
    let etcd = Etcd::start();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let r = register(&rt, &etcd);
    // Its connection is up, as an instance's is while it drains.
    let (w, seen) = watch_with_grace(&rt, &etcd, Duration::from_secs(60), &up(&["a"]));
    assert_eq!(instances(&seen), ["a"]);
    rt.block_on(r.deregister(Duration::from_secs(2)));
    assert!(etcd.keys(PREFIX).is_empty());
    wait_until(Duration::from_secs(2), "a removed at once", || {
        instances(&seen).is_empty()
    });
    assert_eq!(w.kept(), 0);
}
