//! Service discovery through etcd: instances register themselves under a
//! lease, callers watch the registrations and apply changes live.
//!
//! ```text
//! /switchboard/services/<service>/<instance-id> → Registration (JSON), leased
//! ```
//!
//! etcd is never required: every process starts on its static or convention
//! endpoints and joins etcd when it can (`--etcd` / `SWITCHBOARD_ETCD`). The
//! etcd-client streams never reconnect on their own, so both tasks here own
//! their reconnection: a dead keepalive or watch stream is noticed (gRPC
//! HTTP/2 keepalive or the stream ending), the session is rebuilt, a lost
//! lease is granted again and the key put again; the watcher resumes from
//! the last revision it saw and re-lists only after a compaction.
//!
//! # Layout
//!
//! - [`args`]: the `--etcd*` / `--advertise` flags every process shares,
//!   and `--service-version`.
//! - [`service_flags`]: [`ServiceFlags`], every flag a bus service takes
//!   beside its own, declared and checked once.
//! - [`registration`]: what an instance publishes, and the key layout.
//! - [`registrar`]: [`Registrar`], keep one registration alive.
//! - [`watcher`]: [`Watcher`], follow a prefix, with the current set handed
//!   to a callback after each change.

pub mod args;
pub mod registrar;
pub mod registration;
pub mod service_flags;
pub mod watcher;

pub use args::{EtcdArgs, VersionArgs, DEREGISTER_SETTLE};
pub use registrar::Registrar;
pub use registration::Registration;
pub use service_flags::ServiceFlags;
pub use watcher::{Snapshot, Watcher};

use std::time::Duration;

/// Every registration lives under this prefix.
pub const PREFIX: &str = "/switchboard/services/";
/// Traffic policies: `/switchboard/policy/<service>` → JSON (see the
/// terminator's `policy` module and docs/operations.md).
pub const POLICY_PREFIX: &str = "/switchboard/policy/";
/// Terminators register here (`terminator/<instance>`), apart from the
/// services so that no caller routes to them: only for their peers'
/// consoles, which merge the fleet's histograms.
pub const TERMINATORS: &str = "/switchboard/terminators/";
/// Lease time to live: how long a crashed instance stays listed.
pub const DEFAULT_TTL: Duration = Duration::from_secs(10);
/// How long a watcher keeps routing to an instance whose key vanished while
/// its bus connection is healthy: long enough for its registrar to notice a
/// lost lease and register again after etcd was away (stalled, partitioned,
/// restarted), bounded so a wedged instance does not linger for ever.
pub const DEFAULT_REMOVAL_GRACE: Duration = Duration::from_secs(30);

/// How to reach etcd and how to hold a lease.
#[derive(Debug, Clone)]
pub struct EtcdOptions {
    pub endpoints: Vec<String>,
    pub ttl: Duration,
    /// Keepalive period; TTL/3 unless set.
    pub keepalive: Duration,
    /// Watchers: how long an instance whose key vanished stays listed while
    /// its connection is healthy (0: removed at once). See [`Watcher`].
    pub removal_grace: Duration,
}

impl EtcdOptions {
    pub fn new(endpoints: Vec<String>) -> EtcdOptions {
        EtcdOptions {
            endpoints,
            ttl: DEFAULT_TTL,
            keepalive: DEFAULT_TTL / 3,
            removal_grace: DEFAULT_REMOVAL_GRACE,
        }
    }

    /// Problems with the settings, for the caller's all-at-once report.
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if self.endpoints.is_empty() {
            p.push("--etcd: give at least one endpoint".into());
        }
        for e in &self.endpoints {
            let rest = e
                .strip_prefix("http://")
                .or_else(|| e.strip_prefix("https://"))
                .unwrap_or(e);
            if !rest
                .rsplit_once(':')
                .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok())
            {
                p.push(format!(
                    "--etcd: {e:?} is not host:port (or http://host:port)"
                ));
            }
        }
        if self.ttl < Duration::from_secs(2) {
            p.push("--etcd-ttl: at least 2s (etcd leases count whole seconds)".into());
        }
        if self.keepalive.is_zero() || self.keepalive >= self.ttl {
            p.push("--etcd-keepalive: above 0 and below the TTL".into());
        }
        p
    }
}

/// HTTP/2 ping period on every etcd connection. etcd closes a connection
/// whose client pings more often than its `--grpc-keepalive-min-time`
/// (default 5 s) allows: GOAWAY `too_many_pings` on the third early ping,
/// which ends every stream on it. 10 s is gRPC's own floor for clients.
pub const GRPC_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
/// How long a ping may go unanswered before the connection counts as dead.
pub const GRPC_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(5);
/// etcd's default `--grpc-keepalive-min-time`.
const ETCD_DEFAULT_KEEPALIVE_MIN_TIME: Duration = Duration::from_secs(5);
// Twice the minimum, so that timer jitter never makes a ping early.
const _: () =
    assert!(GRPC_KEEPALIVE_INTERVAL.as_secs() >= 2 * ETCD_DEFAULT_KEEPALIVE_MIN_TIME.as_secs());

/// A client for `opts.endpoints` with the keepalive every Switchboard
/// process uses.
pub async fn connect(opts: &EtcdOptions) -> Result<etcd_client::Client, etcd_client::Error> {
    let co = etcd_client::ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(2))
        .with_timeout(Duration::from_secs(5))
        // HTTP/2 pings notice a dead or partitioned etcd under an idle
        // watch stream, which would otherwise wait forever. Only while a
        // stream is open: etcd also counts pings on a connection without
        // streams as abuse (it does not permit them without a stream).
        .with_keep_alive(GRPC_KEEPALIVE_INTERVAL, GRPC_KEEPALIVE_TIMEOUT)
        .with_keep_alive_while_idle(false);
    etcd_client::Client::connect(&opts.endpoints, Some(co)).await
}

/// Back-off between reconnection attempts: quick at first, at most 2 s, so
/// a returning etcd is rejoined within a couple of seconds.
pub(crate) fn next_backoff(d: Duration) -> Duration {
    (d * 2).clamp(Duration::from_millis(100), Duration::from_secs(2))
}
