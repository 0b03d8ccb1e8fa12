//! The bus security flags every process shares (`#[command(flatten)]`):
//! NULL (off) or CURVE, this process's key pair, who may connect, and the
//! key a caller expects of the services it calls.
//!
//! Values stay strings until [`SecurityArgs::settings`], so every bad value
//! is reported with the process's other problems. Key files are Z85 text
//! as `bus-keygen`, libzmq's `curve_keygen` or czmq write them (see
//! [`bus::curve`]).

use bus::curve::{self, KeyPair, KeySet, PublicKey};
use bus::{Curve, Mechanism};
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(clap::Args, Debug, Clone, Default)]
pub struct SecurityArgs {
    /// Bus security: `off` (NULL: plain text) or `curve` (CurveZMQ: every
    /// connection encrypted, callers authenticated by key) [default: off]
    #[arg(long = "bus-security", env = "SWITCHBOARD_BUS_SECURITY")]
    pub bus_security: Option<String>,
    /// CURVE: this process's secret key file (`bus-keygen` writes
    /// NAME.key_secret); the public key is derived from it
    #[arg(long = "curve-secret", env = "SWITCHBOARD_CURVE_SECRET")]
    pub curve_secret: Option<String>,
    /// CURVE, services: a directory of caller public keys allowed to
    /// connect, one per file [default: any caller that knows our key]
    #[arg(long = "curve-authorized", env = "SWITCHBOARD_CURVE_AUTHORIZED")]
    pub curve_authorized: Option<String>,
    /// CURVE, callers: the called service's public key (40 Z85 characters
    /// or a key file), when discovery does not carry it; a registered key
    /// that differs is refused
    #[arg(long = "curve-server-key", env = "SWITCHBOARD_CURVE_SERVER_KEY")]
    pub curve_server_key: Option<String>,
}

/// What the flags ask for.
#[derive(Debug, Clone, Default)]
pub enum BusSecurity {
    #[default]
    Off,
    Curve {
        keys: KeyPair,
        /// `None`: any caller that knows our public key.
        authorized: Option<Arc<KeySet>>,
        /// Where `authorized` was read from, for [`BusSecurity::watch`].
        authorized_dir: Option<PathBuf>,
        server_key: Option<PublicKey>,
    },
}

impl SecurityArgs {
    pub fn settings(&self) -> Result<BusSecurity, Vec<String>> {
        let mut p = Vec::new();
        let curve = match self.bus_security.as_deref() {
            None | Some("off") => false,
            Some("curve") => true,
            Some(v) => {
                p.push(format!("--bus-security: {v:?} is not off or curve"));
                false
            }
        };
        if !curve {
            for (flag, v) in [
                ("--curve-secret", &self.curve_secret),
                ("--curve-authorized", &self.curve_authorized),
                ("--curve-server-key", &self.curve_server_key),
            ] {
                if v.is_some() {
                    p.push(format!("{flag}: only with --bus-security curve"));
                }
            }
            return if p.is_empty() {
                Ok(BusSecurity::Off)
            } else {
                Err(p)
            };
        }
        let keys = match self.curve_secret.as_deref() {
            None => {
                p.push("--curve-secret: required with --bus-security curve".into());
                None
            }
            Some(f) => KeyPair::read_file(Path::new(f))
                .map_err(|e| p.push(format!("--curve-secret: {e}")))
                .ok(),
        };
        let authorized = match self.curve_authorized.as_deref() {
            None => None,
            Some(d) => read_authorized(Path::new(d))
                .map_err(|es| p.extend(es.into_iter().map(|e| format!("--curve-authorized: {e}"))))
                .ok()
                .map(Arc::new),
        };
        let server_key = match self.curve_server_key.as_deref() {
            None => None,
            Some(k) => curve::public_key_arg(k)
                .map_err(|e| p.push(format!("--curve-server-key: {e}")))
                .ok(),
        };
        match keys {
            Some(keys) if p.is_empty() => Ok(BusSecurity::Curve {
                keys,
                authorized,
                authorized_dir: self.curve_authorized.as_deref().map(PathBuf::from),
                server_key,
            }),
            _ => Err(p),
        }
    }
}

/// Every key in `dir`, refusing a directory with none (a service nobody
/// may call is a mistake, not a policy).
fn read_authorized(dir: &Path) -> Result<KeySet, Vec<String>> {
    match KeySet::read_dir(dir) {
        Ok(set) if set.is_empty() => Err(vec![format!("no key files in {}", dir.display())]),
        Ok(set) => Ok(set),
        Err(es) => Err(es.into_iter().map(|e| e.to_string()).collect()),
    }
}

impl BusSecurity {
    /// Re-reads `--curve-authorized` when a file in it changes and on
    /// SIGHUP ([`crate::reload`]): rotating a caller's key is adding the
    /// new key file, moving the caller over, then removing the old file,
    /// with no restart. Connections already made stay; a directory that no
    /// longer reads (a bad file, no keys) keeps the previous set.
    pub fn watch(&self) -> std::io::Result<()> {
        let BusSecurity::Curve {
            authorized: Some(set),
            authorized_dir: Some(dir),
            ..
        } = self
        else {
            return Ok(());
        };
        let (set, dir, d2) = (set.clone(), dir.clone(), dir.clone());
        crate::reload::watch(
            "CURVE authorised keys",
            move || crate::reload::dir_stamps(&d2),
            move || {
                let new = read_authorized(&dir)?;
                let n = new.len();
                set.replace(new);
                Ok(format!("{n} key(s) from {}", dir.display()))
            },
        )
    }

    /// For what this process serves: its service and events publisher.
    pub fn server(&self) -> Mechanism {
        match self {
            BusSecurity::Off => Mechanism::Null,
            BusSecurity::Curve {
                keys, authorized, ..
            } => Mechanism::Curve(Curve::server(keys.clone(), authorized.clone())),
        }
    }

    /// For what this process calls or subscribes to.
    pub fn client(&self) -> Mechanism {
        match self {
            BusSecurity::Off => Mechanism::Null,
            BusSecurity::Curve {
                keys, server_key, ..
            } => Mechanism::Curve(Curve::client(keys.clone(), *server_key)),
        }
    }

    /// The public key to register in discovery (Z85), under CURVE.
    pub fn public_key(&self) -> Option<String> {
        match self {
            BusSecurity::Off => None,
            BusSecurity::Curve { keys, .. } => Some(keys.public.to_z85()),
        }
    }

    /// One startup line saying what the bus runs with; `serves`: the
    /// process binds a service (callers only have nothing to authorise).
    pub fn log(&self, process: &str, serves: bool) {
        match self {
            BusSecurity::Off => {}
            BusSecurity::Curve { keys, .. } if !serves => {
                tracing::info!(process, public_key = %keys.public, "bus security: CURVE")
            }
            BusSecurity::Curve {
                keys, authorized, ..
            } => match authorized {
                Some(set) => {
                    tracing::info!(process, public_key = %keys.public, authorized = set.len(), "bus security: CURVE")
                }
                None => {
                    tracing::warn!(process, public_key = %keys.public, "bus security: CURVE with no --curve-authorized: any caller that knows our public key may connect")
                }
            },
        }
    }
}

/// Registered keys in Z85 to keys; one that does not parse is dropped
/// with a warning (the instance is then reached only with a configured
/// key).
pub fn registered_key(endpoint: &str, z85: Option<&str>) -> Option<PublicKey> {
    let k = z85?;
    match PublicKey::from_z85(k) {
        Ok(k) => Some(k),
        Err(e) => {
            tracing::warn!(%endpoint, error = %e, "registered CURVE key unusable; ignored");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(
        sec: &str,
        secret: Option<&str>,
        auth: Option<&str>,
        server: Option<&str>,
    ) -> SecurityArgs {
        SecurityArgs {
            bus_security: Some(sec.into()),
            curve_secret: secret.map(Into::into),
            curve_authorized: auth.map(Into::into),
            curve_server_key: server.map(Into::into),
        }
    }

    #[test]
    fn off_is_the_default_and_curve_flags_need_curve() {
        assert!(matches!(
            SecurityArgs::default().settings(),
            Ok(BusSecurity::Off)
        ));
        let e = args("off", Some("x"), None, Some("y"))
            .settings()
            .unwrap_err();
        assert_eq!(e.len(), 2, "{e:?}");
        let e = args("tls", None, None, None).settings().unwrap_err();
        assert!(e[0].contains("not off or curve"), "{e:?}");
    }

    #[test]
    fn every_curve_problem_is_reported() {
        let e = args("curve", None, Some("/nonexistent"), Some("short"))
            .settings()
            .unwrap_err();
        assert_eq!(e.len(), 3, "{e:#?}");
        assert!(e[0].starts_with("--curve-secret: required"));
        assert!(e[1].starts_with("--curve-authorized: /nonexistent"));
        assert!(e[2].starts_with("--curve-server-key:"));
    }

    #[test]
    fn keys_from_files_and_dirs() {
        let dir = std::env::temp_dir().join(format!("svc-host-sec-{}", std::process::id()));
        let auth = dir.join("authorized");
        std::fs::create_dir_all(&auth).unwrap();
        let me = KeyPair::generate();
        let caller = KeyPair::generate();
        me.write_files(&dir, "me").unwrap();
        caller.write_files(&auth, "caller").unwrap();
        let secret = dir.join("me.key_secret");
        let server = me.public.to_z85();
        let s = args("curve", secret.to_str(), auth.to_str(), Some(&server))
            .settings()
            .unwrap();
        let BusSecurity::Curve {
            keys,
            authorized,
            server_key,
            ..
        } = &s
        else {
            panic!("{s:?}")
        };
        assert_eq!(keys.public, me.public);
        let set = authorized.clone().unwrap();
        assert!(set.contains(&caller.public));
        assert_eq!(*server_key, Some(me.public));
        assert_eq!(s.public_key(), Some(server));
        assert!(matches!(s.server(), Mechanism::Curve(_)));

        // Rotation without a restart: the new key is added, then the old
        // one removed, and the running set follows the directory.
        s.watch().unwrap();
        let next = KeyPair::generate();
        next.write_files(&auth, "caller-next").unwrap();
        let until = |what: &str, f: &dyn Fn() -> bool| {
            let end = std::time::Instant::now() + std::time::Duration::from_secs(10);
            while !f() {
                assert!(std::time::Instant::now() < end, "{what}");
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        };
        until("the added key is authorised", &|| {
            set.contains(&next.public)
        });
        assert!(set.contains(&caller.public), "both keys during the change");
        std::fs::remove_file(auth.join("caller.key")).unwrap();
        std::fs::remove_file(auth.join("caller.key_secret")).unwrap();
        until("the removed key is refused", &|| {
            !set.contains(&caller.public)
        });
        assert!(set.contains(&next.public));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
