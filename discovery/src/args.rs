//! The discovery flags every process shares (`#[command(flatten)]`), and
//! the advertised form of a bound address.
//!
//! Values stay strings until [`EtcdArgs::options`], so that every bad value
//! is reported together with the process's other problems.

use crate::EtcdOptions;
use std::net::SocketAddr;
use std::time::Duration;

#[derive(clap::Args, Debug, Clone, Default)]
pub struct EtcdArgs {
    /// etcd endpoints, comma-separated (http://HOST:PORT); discovery is off
    /// without them and static config / conventions apply
    #[arg(long, env = "SWITCHBOARD_ETCD", value_delimiter = ',')]
    pub etcd: Vec<String>,
    /// Lease time to live: how long a crashed instance stays listed [default: 10s]
    #[arg(long = "etcd-ttl", env = "SWITCHBOARD_ETCD_TTL")]
    pub etcd_ttl: Option<String>,
    /// Lease keepalive period [default: TTL/3]
    #[arg(long = "etcd-keepalive", env = "SWITCHBOARD_ETCD_KEEPALIVE")]
    pub etcd_keepalive: Option<String>,
    /// How long an instance whose key vanished stays routed while its bus
    /// connection is healthy (a lease that expired while etcd was away); 0s
    /// removes at once [default: 30s]
    #[arg(long = "etcd-removal-grace", env = "SWITCHBOARD_ETCD_REMOVAL_GRACE")]
    pub etcd_removal_grace: Option<String>,
    /// Host written into registered endpoints [default: the bind address;
    /// the hostname when binding 0.0.0.0 or ::]
    #[arg(long, env = "SWITCHBOARD_ADVERTISE")]
    pub advertise: Option<String>,
}

impl EtcdArgs {
    /// The etcd settings (None: discovery off), or every problem found.
    pub fn options(&self) -> Result<Option<EtcdOptions>, Vec<String>> {
        let mut problems = Vec::new();
        let dur = |flag: &str, v: &Option<String>, problems: &mut Vec<String>| {
            v.as_deref()
                .and_then(|s| match svc_host::parse_duration(s) {
                    Ok(d) => Some(d),
                    Err(e) => {
                        problems.push(format!("{flag}: {e}"));
                        None
                    }
                })
        };
        let ttl = dur("--etcd-ttl", &self.etcd_ttl, &mut problems);
        let keepalive = dur("--etcd-keepalive", &self.etcd_keepalive, &mut problems);
        let grace = dur(
            "--etcd-removal-grace",
            &self.etcd_removal_grace,
            &mut problems,
        );
        if let Some(h) = &self.advertise {
            if h.is_empty() || h.contains(['/', ' ']) || h.contains("://") {
                problems.push(format!("--advertise: {h:?} is not a host name or address"));
            }
        }
        let etcd: Vec<String> = self
            .etcd
            .iter()
            .filter(|e| !e.is_empty())
            .cloned()
            .collect();
        if etcd.is_empty() {
            let tuned = self.etcd_ttl.is_some()
                || self.etcd_keepalive.is_some()
                || self.etcd_removal_grace.is_some();
            if tuned && problems.is_empty() {
                tracing::warn!(
                    "--etcd-ttl/--etcd-keepalive/--etcd-removal-grace given without --etcd; ignored"
                );
            }
            return if problems.is_empty() {
                Ok(None)
            } else {
                Err(problems)
            };
        }
        let mut o = EtcdOptions::new(etcd);
        if let Some(t) = ttl {
            o.ttl = t;
            o.keepalive = t / 3;
        }
        if let Some(k) = keepalive {
            o.keepalive = k;
        }
        if let Some(g) = grace {
            o.removal_grace = g;
        }
        problems.extend(o.problems());
        if problems.is_empty() {
            Ok(Some(o))
        } else {
            Err(problems)
        }
    }

    /// The host others should use to reach an address bound here.
    pub fn advertised_host(&self, bound_host: &str) -> String {
        if let Some(h) = &self.advertise {
            return h.clone();
        }
        match bound_host {
            "0.0.0.0" | "*" | "::" | "[::]" => crate::registration::hostname(),
            h => h.to_string(),
        }
    }

    /// `tcp://HOST:PORT` as bound → as others should dial it.
    pub fn advertised_endpoint(&self, bound: &str) -> String {
        let Some(rest) = bound.strip_prefix("tcp://") else {
            return bound.to_string();
        };
        match rest.rsplit_once(':') {
            Some((host, port)) => format!("tcp://{}:{port}", self.advertised_host(host)),
            None => bound.to_string(),
        }
    }

    /// An admin listener's address as a base URL others can use.
    pub fn advertised_url(&self, bound: SocketAddr) -> String {
        let host = self.advertised_host(&bound.ip().to_string());
        if host.contains(':') {
            format!("http://[{host}]:{}", bound.port())
        } else {
            format!("http://{host}:{}", bound.port())
        }
    }
}

/// After deregistering, an instance keeps serving this long before it
/// refuses new work: the time watchers need to see the delete and stop
/// sending. Loopback and a LAN take milliseconds; this leaves room.
pub const DEREGISTER_SETTLE: Duration = Duration::from_millis(500);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_values_are_all_reported() {
        let a = EtcdArgs {
            etcd: vec!["nohostport".into()],
            etcd_ttl: Some("ten".into()),
            etcd_keepalive: Some("1s".into()),
            etcd_removal_grace: Some("soon".into()),
            advertise: Some("tcp://x".into()),
        };
        let p = a.options().unwrap_err();
        assert_eq!(p.len(), 4, "{p:#?}");
        let a = EtcdArgs {
            etcd: vec!["http://127.0.0.1:2379".into()],
            etcd_ttl: Some("3s".into()),
            etcd_keepalive: Some("5s".into()),
            etcd_removal_grace: None,
            advertise: None,
        };
        assert_eq!(a.options().unwrap_err().len(), 1, "keepalive above TTL");
    }

    #[test]
    fn off_without_endpoints_and_keepalive_follows_ttl() {
        assert!(EtcdArgs::default().options().unwrap().is_none());
        let a = EtcdArgs {
            etcd: vec!["127.0.0.1:2379".into()],
            etcd_ttl: Some("6s".into()),
            ..EtcdArgs::default()
        };
        let o = a.options().unwrap().unwrap();
        assert_eq!(
            (o.ttl, o.keepalive, o.removal_grace),
            (
                Duration::from_secs(6),
                Duration::from_secs(2),
                crate::DEFAULT_REMOVAL_GRACE
            )
        );
        let a = EtcdArgs {
            etcd_removal_grace: Some("0s".into()),
            ..a
        };
        assert!(a.options().unwrap().unwrap().removal_grace.is_zero());
    }

    #[test]
    fn advertised_addresses() {
        let a = EtcdArgs::default();
        assert_eq!(
            a.advertised_endpoint("tcp://127.0.0.1:4567"),
            "tcp://127.0.0.1:4567"
        );
        let any = a.advertised_endpoint("tcp://0.0.0.0:4567");
        assert!(!any.contains("0.0.0.0") && any.ends_with(":4567"), "{any}");
        let a = EtcdArgs {
            advertise: Some("agg-1.internal".into()),
            ..EtcdArgs::default()
        };
        assert_eq!(
            a.advertised_endpoint("tcp://0.0.0.0:8100"),
            "tcp://agg-1.internal:8100"
        );
        assert_eq!(
            a.advertised_url("0.0.0.0:8101".parse().unwrap()),
            "http://agg-1.internal:8101"
        );
    }
}

/// `--service-version`, on every service process (`#[command(flatten)]`).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct VersionArgs {
    /// The version this instance registers (letters, digits, `.`, `-`, `_`,
    /// `+`; at most 64): callers' traffic policies weigh, pin and mirror by
    /// it, and the access log names it [default: the binary's version]
    #[arg(
        long = "service-version",
        value_name = "LABEL",
        env = "SWITCHBOARD_SERVICE_VERSION"
    )]
    pub service_version: Option<String>,
}

impl VersionArgs {
    /// The label, `default` without the flag, or the problem.
    pub fn version(&self, default: &str) -> Result<String, String> {
        let Some(v) = &self.service_version else {
            return Ok(default.to_string());
        };
        let ok = !v.is_empty()
            && v.len() <= 64
            && v.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-+".contains(&b));
        if ok {
            Ok(v.clone())
        } else {
            Err(format!(
                "--service-version: {v:?} must be 1-64 letters, digits, `.`, `-`, `_` or `+`"
            ))
        }
    }
}

#[cfg(test)]
mod version_tests {
    use super::*;

    #[test]
    fn labels() {
        let v = |s: Option<&str>| {
            VersionArgs {
                service_version: s.map(Into::into),
            }
            .version("0.1.0")
        };
        assert_eq!(v(None), Ok("0.1.0".into()));
        assert_eq!(v(Some("v2.1-rc1+build.7")), Ok("v2.1-rc1+build.7".into()));
        for bad in ["", "has space", "slash/no", &"x".repeat(65)] {
            assert!(
                v(Some(bad)).unwrap_err().contains("--service-version"),
                "{bad:?}"
            );
        }
    }
}
