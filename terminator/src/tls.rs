//! TLS at the edge: rustls (on ring), TLS 1.2 and 1.3 with rustls' default
//! cipher suites, ALPN `h2` and `http/1.1`.
//!
//! - **Certificates**: one or more PEM pairs (`--tls-cert`/`--tls-key`,
//!   repeatable, paired in order; a chain may follow the leaf). The client's
//!   SNI name picks the first pair whose certificate is valid for it (its
//!   DNS names, wildcards included); no SNI, or no match, gets the first.
//! - **Rotation**: the files are checked every second (modification time
//!   and inode, so both rewriting in place and renaming over work) and
//!   re-read on SIGHUP. New connections get the new certificates; open ones
//!   keep theirs. A set that does not load (a key that no longer matches,
//!   a half-written file) is logged and the old one kept: rotating the
//!   certificate and then the key is safe.
//! - **Errors at start**: every pair that does not load is reported with
//!   the file it is about (exit 2, like any bad flag).

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use std::path::PathBuf;
use std::sync::Arc;

/// One certificate chain and its private key, as PEM files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads one pair: the chain, the key, and that the key is the one the
/// leaf certificate was issued for. The error names the file at fault.
pub fn load_pair(files: &CertFiles, provider: &CryptoProvider) -> Result<CertifiedKey, String> {
    let (cert, key) = (files.cert.display(), files.key.display());
    let chain = CertificateDer::pem_file_iter(&files.cert)
        .map_err(|e| format!("certificate {cert}: {}", pem_error(&e)))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("certificate {cert}: {}", pem_error(&e)))?;
    let Some(leaf) = chain.first() else {
        return Err(format!(
            "certificate {cert}: no PEM `CERTIFICATE` block in the file"
        ));
    };
    webpki::EndEntityCert::try_from(leaf)
        .map_err(|e| format!("certificate {cert}: not a valid X.509 certificate ({e})"))?;
    let der = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => format!(
            "key {key}: no PEM private key in the file (PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY)"
        ),
        e => format!("key {key}: {}", pem_error(&e)),
    })?;
    let signer = provider
        .key_provider
        .load_private_key(der)
        .map_err(|e| format!("key {key}: not a usable private key ({e})"))?;
    let ck = CertifiedKey::new(chain, signer);
    match ck.keys_match() {
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => Ok(ck),
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => Err(
            format!("key {key} does not match certificate {cert} (a key from another pair?)"),
        ),
        Err(e) => Err(format!("certificate {cert} with key {key}: {e}")),
    }
}

fn pem_error(e: &rustls::pki_types::pem::Error) -> String {
    match e {
        rustls::pki_types::pem::Error::Io(io) => io.to_string(),
        rustls::pki_types::pem::Error::NoItemsFound => "no PEM block of the right kind".into(),
        other => format!("not valid PEM ({other})"),
    }
}

/// Every pair, or every problem (not just the first).
pub fn load_all(files: &[CertFiles]) -> Result<Vec<Arc<CertifiedKey>>, Vec<String>> {
    let provider = provider();
    let mut keys = Vec::new();
    let mut errors = Vec::new();
    for f in files {
        match load_pair(f, &provider) {
            Ok(k) => keys.push(Arc::new(k)),
            Err(e) => errors.push(e),
        }
    }
    if errors.is_empty() {
        Ok(keys)
    } else {
        Err(errors)
    }
}

/// The certificates being served, swapped whole on reload.
#[derive(Debug)]
pub struct Certs {
    keys: ArcSwap<Vec<Arc<CertifiedKey>>>,
}

impl Certs {
    /// The pair for a client asking for `sni`: the first whose leaf
    /// certificate is valid for the name, else the first.
    fn pick(&self, sni: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let keys = self.keys.load();
        if keys.len() > 1 {
            if let Some(name) = sni.and_then(|n| ServerName::try_from(n).ok()) {
                let fits = |k: &&Arc<CertifiedKey>| {
                    k.cert.first().is_some_and(|leaf| {
                        webpki::EndEntityCert::try_from(leaf)
                            .is_ok_and(|c| c.verify_is_valid_for_subject_name(&name).is_ok())
                    })
                };
                if let Some(k) = keys.iter().find(fits) {
                    return Some(k.clone());
                }
            }
        }
        keys.first().cloned()
    }
}

impl ResolvesServerCert for Certs {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.pick(hello.server_name())
    }
}

/// The TLS side of the edge: the rustls configuration every shard's
/// acceptor shares, and what reloading it needs.
pub struct Tls {
    pub config: Arc<ServerConfig>,
    certs: Arc<Certs>,
    files: Vec<CertFiles>,
}

impl Tls {
    /// Loads every pair (all problems at once, each naming its file).
    pub fn load(files: &[CertFiles]) -> Result<Tls, Vec<String>> {
        let keys = load_all(files)?;
        let certs = Arc::new(Certs {
            keys: ArcSwap::from_pointee(keys),
        });
        let mut config = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| vec![format!("tls: {e}")])?
            .with_no_client_auth()
            .with_cert_resolver(certs.clone());
        // Browsers get HTTP/2; hyper's auto builder also tells the two
        // apart by the preface, so a client without ALPN works as well.
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Tls {
            config: Arc::new(config),
            certs,
            files: files.to_vec(),
        })
    }

    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.config.clone())
    }

    /// Reads the files again; on success new handshakes get the new
    /// certificates, on failure the old ones stay.
    pub fn reload(&self) -> Result<(), Vec<String>> {
        let keys = load_all(&self.files)?;
        self.certs.keys.store(Arc::new(keys));
        Ok(())
    }

    /// Reloads on SIGHUP and when a file changes ([`svc_host::reload`]).
    pub fn watch(self: Arc<Self>) -> std::io::Result<()> {
        let files: Vec<PathBuf> = self
            .files
            .iter()
            .flat_map(|f| [f.cert.clone(), f.key.clone()])
            .collect();
        svc_host::reload::watch(
            "tls certificates",
            move || files.iter().map(|p| svc_host::reload::stamp(p)).collect(),
            move || {
                self.reload()?;
                Ok(format!("{} certificate(s)", self.files.len()))
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn pair(dir: &Path, name: &str, sans: &[&str]) -> CertFiles {
        let c = rcgen::generate_simple_self_signed(
            sans.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
        )
        .unwrap();
        let files = CertFiles {
            cert: dir.join(format!("{name}.crt")),
            key: dir.join(format!("{name}.key")),
        };
        std::fs::write(&files.cert, c.cert.pem()).unwrap();
        std::fs::write(&files.key, c.key_pair.serialize_pem()).unwrap();
        files
    }

    fn tmp() -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "sb-tls-{}-{}",
            std::process::id(),
            fastrand::u64(..)
        ));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn sni_picks_by_dns_name_and_defaults_to_the_first() {
        let d = tmp();
        let a = pair(&d, "a", &["a.example", "localhost"]);
        let b = pair(&d, "b", &["*.b.example"]);
        let tls = Tls::load(&[a, b]).unwrap();
        let keys = tls.certs.keys.load();
        let is = |k: Option<Arc<CertifiedKey>>, i: usize| Arc::ptr_eq(&k.unwrap(), &keys[i]);
        assert!(is(tls.certs.pick(Some("x.b.example")), 1));
        assert!(is(tls.certs.pick(Some("a.example")), 0));
        assert!(is(tls.certs.pick(Some("other.example")), 0));
        assert!(is(tls.certs.pick(None), 0));
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn a_mismatched_or_missing_key_names_its_file() {
        let d = tmp();
        let a = pair(&d, "a", &["localhost"]);
        let b = pair(&d, "b", &["localhost"]);
        let crossed = CertFiles {
            cert: a.cert.clone(),
            key: b.key.clone(),
        };
        let missing = CertFiles {
            cert: a.cert.clone(),
            key: d.join("nope.key"),
        };
        let errs = load_all(&[crossed, missing]).unwrap_err();
        assert_eq!(errs.len(), 2, "{errs:#?}");
        assert!(
            errs[0].contains("b.key") && errs[0].contains("does not match"),
            "{errs:#?}"
        );
        assert!(errs[1].contains("nope.key"), "{errs:#?}");
        std::fs::remove_dir_all(d).unwrap();
    }
}
