//! Longest-prefix route table, matched on whole path segments.

use crate::config::Route;
use bus::Client;
use std::time::Duration;

pub struct Target {
    pub prefix: String,
    pub service: bus::Text,
    pub client: Client,
    pub timeout: Duration,
}

pub struct Routes {
    /// Longest prefix first, so the first match wins.
    targets: Vec<Target>,
}

impl Routes {
    /// One bus client per route. Routes naming the same service share its
    /// instances' sockets only if given the same client; each route gets its
    /// own here, which keeps per-route endpoint lists independent.
    pub fn build(routes: &[Route], default_timeout: Duration) -> Result<Routes, bus::SetupError> {
        let mut targets = Vec::with_capacity(routes.len());
        for r in routes {
            let mut o = bus::ClientOptions::new(r.service.clone());
            o.endpoints = r.endpoints.clone();
            targets.push(Target {
                prefix: r.prefix.trim_end_matches('/').to_string(),
                service: r.service.clone().into(),
                client: Client::connect(o)?,
                timeout: r.timeout.unwrap_or(default_timeout),
            });
        }
        targets.sort_by_key(|t| std::cmp::Reverse(t.prefix.len()));
        Ok(Routes { targets })
    }

    pub fn find(&self, path: &str) -> Option<&Target> {
        self.targets.iter().find(|t| matches(&t.prefix, path))
    }

    pub fn targets(&self) -> &[Target] {
        &self.targets
    }
}

/// `prefix` is stored without a trailing `/`; `""` is the root route.
fn matches(prefix: &str, path: &str) -> bool {
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/') || prefix.is_empty(),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::matches;

    #[test]
    fn segment_prefixes() {
        assert!(matches("", "/anything"));
        assert!(matches("/api", "/api"));
        assert!(matches("/api", "/api/x"));
        assert!(!matches("/api", "/apix"));
        assert!(!matches("/api", "/"));
    }
}
