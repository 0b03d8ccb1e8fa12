//! The flags every bus service process takes beside its own
//! (`#[command(flatten)]`): etcd and the advertised address, the version
//! it registers, metrics, bus security, the runtime layout and the admin
//! token. One struct, so each service declares, parses and checks them
//! the same way.

use crate::{EtcdArgs, VersionArgs};

#[derive(clap::Args, Debug, Clone, Default)]
pub struct ServiceFlags {
    #[command(flatten)]
    pub discovery: EtcdArgs,

    #[command(flatten)]
    pub version: VersionArgs,

    #[command(flatten)]
    pub metrics: svc_host::metrics::MetricsArgs,

    #[command(flatten)]
    pub security: svc_host::security::SecurityArgs,

    #[command(flatten)]
    pub runtime: svc_host::RuntimeArgs,

    /// `--admin-token`: the admin pages but /healthz and /readyz need it.
    #[command(flatten)]
    pub admin_token: svc_host::admin::TokenArgs,
}

impl ServiceFlags {
    /// Every problem with these flags, not just the first;
    /// `crate_version` is what `--service-version` defaults to.
    pub fn problems(&self, crate_version: &str) -> Vec<String> {
        let mut p = Vec::new();
        if let Err(e) = self.runtime.threads() {
            p.push(e);
        }
        if let Err(e) = self.version.version(crate_version) {
            p.push(e);
        }
        if let Err(e) = self.discovery.options() {
            p.extend(e);
        }
        if let Err(e) = self.admin_token.token() {
            p.push(e);
        }
        if let Err(e) = self.metrics.settings() {
            p.extend(e);
        }
        if let Err(e) = self.security.settings() {
            p.extend(e);
        }
        p
    }

    /// The version this instance registers: `--service-version`, else
    /// `crate_version` (a bad label was refused by
    /// [`problems`](Self::problems) before the process started).
    pub fn registered_version(&self, crate_version: &str) -> String {
        self.version
            .version(crate_version)
            .unwrap_or_else(|_| crate_version.to_string())
    }
}

/// What a service instance publishes about itself, beside what the flags
/// say (its advertised addresses and version).
pub struct Published<'a> {
    pub service: &'a str,
    /// The bound bus endpoint (advertised through `--advertise`).
    pub bus: &'a str,
    /// The bound events endpoint, if the service publishes events.
    pub events: Option<&'a str>,
    /// The bound admin address.
    pub admin: Option<std::net::SocketAddr>,
    /// HTTP path prefixes the terminator routes to the service.
    pub routes: Vec<String>,
    /// Its CURVE public key (Z85), when the bus runs CURVE.
    pub curve_key: Option<String>,
    /// What `--service-version` defaults to: the binary's version.
    pub crate_version: &'a str,
}

impl ServiceFlags {
    /// With `--etcd`, registers the instance (leased, kept alive); `None`
    /// without etcd.
    pub fn register(&self, p: Published<'_>) -> Option<crate::Registrar> {
        let opts = self.discovery.options().ok().flatten()?;
        let d = &self.discovery;
        let reg = crate::Registration {
            service: p.service.into(),
            instance: crate::registration::instance_id(),
            bus: d.advertised_endpoint(p.bus),
            events: p.events.map(|e| d.advertised_endpoint(e)),
            admin: p.admin.map(|a| d.advertised_url(a)).unwrap_or_default(),
            routes: p.routes,
            version: self.registered_version(p.crate_version),
            started_at: crate::registration::now_unix(),
            draining: false,
            curve_key: p.curve_key,
        };
        Some(crate::Registrar::start(opts, reg))
    }
}

/// The first step of every service's stop: leave the registry (at most
/// 2 s), then keep serving for [`DEREGISTER_SETTLE`](crate::DEREGISTER_SETTLE)
/// while callers notice; only after this may the service refuse new work
/// and drain. Nothing to do without etcd.
pub async fn leave(registrar: Option<crate::Registrar>) {
    if let Some(r) = registrar {
        r.deregister(std::time::Duration::from_secs(2)).await;
        tokio::time::sleep(crate::DEREGISTER_SETTLE).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        f: ServiceFlags,
    }

    fn flags(args: &[&std::ffi::OsStr]) -> ServiceFlags {
        Cli::parse_from(std::iter::once("svc".as_ref()).chain(args.iter().copied())).f
    }

    #[test]
    fn every_bad_value_is_reported_and_good_ones_pass() {
        assert!(flags(&[]).problems("0.1.0").is_empty());
        let bad = [
            "--threads=0",
            "--statsd=nope",
            "--etcd-ttl=1x",
            "--service-version=has space",
            "--bus-security=rot13",
        ];
        let f = flags(&bad.map(std::ffi::OsStr::new));
        let p = f.problems("0.1.0");
        assert_eq!(p.len(), bad.len(), "{p:#?}");
        for flag in [
            "--threads",
            "--statsd",
            "--etcd-ttl",
            "--service-version",
            "--bus-security",
        ] {
            assert!(p.iter().any(|m| m.starts_with(flag)), "{flag}: {p:#?}");
        }
        assert_eq!(
            f.registered_version("0.1.0"),
            "0.1.0",
            "a refused label falls back"
        );
    }

    #[test]
    fn admin_token_file_is_read_and_a_missing_one_reported() {
        let missing = flags(&[
            "--admin-token".as_ref(),
            "/nonexistent/admin-token".as_ref(),
        ]);
        let p = missing.problems("0.1.0");
        assert!(
            p.iter()
                .any(|e| e.starts_with("--admin-token /nonexistent/admin-token")),
            "{p:#?}"
        );
        let f = std::env::temp_dir().join(format!("sb-service-flags-token-{}", std::process::id()));
        std::fs::write(&f, "tok\n").unwrap();
        let ok = flags(&["--admin-token".as_ref(), f.as_os_str()]);
        assert!(
            ok.problems("0.1.0").is_empty(),
            "{:#?}",
            ok.problems("0.1.0")
        );
        assert!(ok
            .admin_token
            .token()
            .unwrap()
            .unwrap()
            .allows(Some(b"Bearer tok")));
        std::fs::remove_file(&f).unwrap();
    }
}
