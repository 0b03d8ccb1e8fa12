//! What one instance publishes, as JSON under
//! `/switchboard/services/<service>/<instance-id>`.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registration {
    pub service: String,
    pub instance: String,
    /// Bus endpoint callers connect their DEALER to.
    pub bus: String,
    /// Events (PUB) endpoint, if the instance publishes any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub events: Option<String>,
    /// Admin base URL (`/healthz`, `/readyz`, `/stats`).
    pub admin: String,
    /// HTTP path prefixes the terminator should route to this service.
    #[serde(default)]
    pub routes: Vec<String>,
    pub version: String,
    /// Unix seconds.
    pub started_at: u64,
    /// Written just before a deliberate deregistration: callers drop the
    /// instance at once instead of keeping it for the removal grace (see
    /// [`Watcher`](crate::Watcher)). Absent from a live registration.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub draining: bool,
    /// Under CURVE, the instance's public key (Z85, 40 characters): callers
    /// with no configured key for the service use it, and callers with one
    /// refuse an instance whose registered key differs. Absent under NULL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub curve_key: Option<String>,
}

impl Registration {
    /// `/switchboard/services/<service>/<instance>`.
    pub fn key(&self) -> String {
        format!("{}{}/{}", crate::PREFIX, self.service, self.instance)
    }

    /// The prefix holding every instance of `service`, with its trailing `/`
    /// (without it, `backend` would also match `backend-v2`).
    pub fn service_prefix(service: &str) -> String {
        format!("{}{service}/", crate::PREFIX)
    }
}

/// A unique, readable instance id: `<hostname>-<pid>-<random>`.
pub fn instance_id() -> String {
    let host = hostname();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    static SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!(
        "{host}-{}-{:08x}",
        std::process::id(),
        nanos.rotate_left(seq * 7) ^ seq
    )
}

/// This machine's host name, reduced to characters safe in a key and a URL.
pub fn hostname() -> String {
    let mut buf = [0u8; 64];
    // SAFETY: gethostname writes at most buf.len() bytes into our buffer.
    let host =
        if unsafe { libc::gethostname(buf.as_mut_ptr() as *mut libc::c_char, buf.len()) } == 0 {
            let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
            String::from_utf8_lossy(&buf[..end])
                .chars()
                .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '.')
                .collect()
        } else {
            String::from("host")
        };
    host
}

pub fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_layout_and_json() {
        let r = Registration {
            service: "backend".into(),
            instance: "h-1-ab".into(),
            bus: "tcp://127.0.0.1:8200".into(),
            events: Some("tcp://127.0.0.1:8202".into()),
            admin: "http://127.0.0.1:8201".into(),
            routes: vec![],
            version: "0.1.0".into(),
            started_at: 1,
            draining: false,
            curve_key: None,
        };
        assert!(!serde_json::to_string(&r).unwrap().contains("draining"));
        assert!(!serde_json::to_string(&r).unwrap().contains("curve_key"));
        assert_eq!(r.key(), "/switchboard/services/backend/h-1-ab");
        assert_eq!(
            Registration::service_prefix("backend"),
            "/switchboard/services/backend/"
        );
        let back: Registration = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        assert_eq!(back, r);
    }

    #[test]
    fn hostname_is_the_host_and_instance_id_adds_pid_and_random() {
        let kernel: String = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .unwrap()
            .trim()
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '.')
            .collect();
        assert_eq!(hostname(), kernel);
        let id = instance_id();
        let rest = id.strip_prefix(&format!("{kernel}-{}-", std::process::id()));
        let rest = rest.unwrap_or_else(|| panic!("{id}"));
        assert!(
            rest.len() == 8 && rest.chars().all(|c| c.is_ascii_hexdigit()),
            "{id}"
        );
        assert_ne!(instance_id(), id, "two ids in one process differ");
    }
}
