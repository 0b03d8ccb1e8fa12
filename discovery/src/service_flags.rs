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
