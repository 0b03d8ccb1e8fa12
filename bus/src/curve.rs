//! CURVE keys (RFC 26): long-term key pairs, the set of keys a service lets
//! in, and key files in Z85 text (RFC 32), as libzmq's `curve_keygen` and
//! czmq's certificates write them.
//!
//! A key file holds one of:
//!
//! ```text
//! public-key = "Yne@$w-vo<fVvi]a<NY6T1ed:M$fCG*[IaLV{hID"     czmq certificate
//! secret-key = "D:)Q[IlAW!ahhC2ac:9*A}h:p?([4%wOTJ%JR%cs"     (either or both)
//!
//! == CURVE PUBLIC KEY ==                                       curve_keygen's
//! Yne@$w-vo<fVvi]a<NY6T1ed:M$fCG*[IaLV{hID                     output
//! == CURVE SECRET KEY ==
//! D:)Q[IlAW!ahhC2ac:9*A}h:p?([4%wOTJ%JR%cs
//!
//! Yne@$w-vo<fVvi]a<NY6T1ed:M$fCG*[IaLV{hID                     a bare key
//! ```
//!
//! Lines starting with `#` are comments. `bus-keygen` writes the czmq form:
//! `NAME.key` (public) and `NAME.key_secret` (both keys, mode 0600).

use std::collections::HashSet;
use std::fmt;
use std::path::Path;
use std::sync::Arc;

/// A Z85-encoded 32-byte key is this long.
pub const Z85_KEY_LEN: usize = 40;

/// A long-term or transient public key (X25519).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PublicKey(pub [u8; 32]);

impl PublicKey {
    /// Parses a 40-character Z85 key.
    pub fn from_z85(s: &str) -> Result<PublicKey, KeyError> {
        decode_key(s).map(PublicKey)
    }

    pub fn to_z85(&self) -> String {
        encode_key(&self.0)
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_z85())
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.to_z85())
    }
}

impl std::str::FromStr for PublicKey {
    type Err = KeyError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        PublicKey::from_z85(s)
    }
}

/// A long-term secret key. Never printed; wiped when dropped (the inner
/// `crypto_box` key zeroizes itself).
#[derive(Clone)]
pub struct SecretKey(pub(crate) crypto_box::SecretKey);

impl SecretKey {
    pub fn from_bytes(b: [u8; 32]) -> SecretKey {
        SecretKey(crypto_box::SecretKey::from(b))
    }

    pub fn from_z85(s: &str) -> Result<SecretKey, KeyError> {
        decode_key(s).map(SecretKey::from_bytes)
    }

    pub fn to_z85(&self) -> String {
        encode_key(&self.0.to_bytes())
    }

    pub fn public_key(&self) -> PublicKey {
        PublicKey(*self.0.public_key().as_bytes())
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretKey(..)")
    }
}

/// A long-term key pair: a service's or a caller's identity.
#[derive(Clone, Debug)]
pub struct KeyPair {
    pub public: PublicKey,
    pub secret: SecretKey,
}

impl KeyPair {
    /// A fresh pair from the operating system's random source.
    pub fn generate() -> KeyPair {
        KeyPair::from_secret(SecretKey(crypto_box::SecretKey::generate(
            &mut crypto_box::aead::OsRng,
        )))
    }

    /// The pair whose public key derives from `secret`.
    pub fn from_secret(secret: SecretKey) -> KeyPair {
        KeyPair {
            public: secret.public_key(),
            secret,
        }
    }

    /// Reads a secret key file (any form above); a `public-key` line in it,
    /// if any, must match the key derived from the secret.
    pub fn read_file(path: &Path) -> Result<KeyPair, KeyError> {
        let text = read_text(path)?;
        let at = |e: KeyError| e.at(path);
        let secret = SecretKey::from_z85(find_key(&text, "secret").map_err(at)?).map_err(at)?;
        let pair = KeyPair::from_secret(secret);
        if let Some(p) = field(&text, "public-key") {
            if PublicKey::from_z85(p).map_err(at)? != pair.public {
                return Err(at(KeyError::Mismatch));
            }
        }
        Ok(pair)
    }

    /// Writes `DIR/NAME.key` (the public key, mode 0644) and
    /// `DIR/NAME.key_secret` (both, mode 0600) in czmq's certificate form.
    /// Refuses to overwrite either.
    pub fn write_files(&self, dir: &Path, name: &str) -> Result<(), KeyError> {
        let public = dir.join(format!("{name}.key"));
        let secret = dir.join(format!("{name}.key_secret"));
        let head = |what: &str| {
            format!(
                "#   ZeroMQ CURVE {what} Certificate (Switchboard bus-keygen)\n\
                 #   Z85 (RFC 32); the public key may be shared freely.\n\n\
                 metadata\ncurve\n"
            )
        };
        let p = format!(
            "{}    public-key = \"{}\"\n",
            head("Public"),
            self.public.to_z85()
        );
        let s = format!(
            "{}    public-key = \"{}\"\n    secret-key = \"{}\"\n",
            head("**Secret**"),
            self.public.to_z85(),
            self.secret.to_z85()
        );
        write_new(&secret, &s, 0o600)?;
        write_new(&public, &p, 0o644)
    }
}

/// Public keys allowed to connect to a service. [`replace`](Self::replace)
/// swaps the whole set at once (a reload of `--curve-authorized`): new
/// handshakes see the new set, connections already made stay, as with
/// libzmq's ZAP, which is asked once per handshake.
#[derive(Debug, Default)]
pub struct KeySet(arc_swap::ArcSwap<HashSet<PublicKey>>);

impl KeySet {
    pub fn new(keys: impl IntoIterator<Item = PublicKey>) -> KeySet {
        KeySet(arc_swap::ArcSwap::from_pointee(keys.into_iter().collect()))
    }

    pub fn contains(&self, k: &PublicKey) -> bool {
        self.0.load().contains(k)
    }

    pub fn len(&self) -> usize {
        self.0.load().len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.load().is_empty()
    }

    /// Takes `other`'s keys in place of these.
    pub fn replace(&self, other: KeySet) {
        self.0.store(other.0.into_inner());
    }

    /// Every public key in `dir`, one per file (files whose names start
    /// with `.` and `*.key_secret` files are skipped). Every file that does
    /// not hold a key is reported, not just the first.
    pub fn read_dir(dir: &Path) -> Result<KeySet, Vec<KeyError>> {
        let entries = std::fs::read_dir(dir).map_err(|e| {
            vec![KeyError::Io {
                path: dir.display().to_string(),
                error: e.to_string(),
            }]
        })?;
        let mut keys = HashSet::new();
        let mut problems = Vec::new();
        let mut paths: Vec<_> = entries.filter_map(|e| e.ok()).map(|e| e.path()).collect();
        paths.sort();
        for p in paths {
            let name = p.file_name().map(|n| n.to_string_lossy().into_owned());
            let name = name.unwrap_or_default();
            if name.starts_with('.') || name.ends_with(".key_secret") || !p.is_file() {
                continue;
            }
            match read_public(&p) {
                Ok(k) => {
                    keys.insert(k);
                }
                Err(e) => problems.push(e),
            }
        }
        if problems.is_empty() {
            Ok(KeySet::new(keys))
        } else {
            Err(problems)
        }
    }
}

/// A public key from `arg`: a 40-character Z85 key, or a file holding one.
pub fn public_key_arg(arg: &str) -> Result<PublicKey, KeyError> {
    if arg.len() == Z85_KEY_LEN && !Path::new(arg).exists() {
        return PublicKey::from_z85(arg);
    }
    read_public(Path::new(arg))
}

/// Reads a public key file (any form above; a secret key file's
/// `public-key` line also serves).
pub fn read_public(path: &Path) -> Result<PublicKey, KeyError> {
    let text = read_text(path)?;
    let at = |e: KeyError| e.at(path);
    PublicKey::from_z85(find_key(&text, "public").map_err(at)?).map_err(at)
}

/// Why a key or key file was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("a Z85 key is 40 characters, got {0}")]
    Length(usize),
    #[error("not Z85 text")]
    NotZ85,
    #[error("no {0} key found (expected `{0}-key = \"...\"` or a bare 40-character Z85 line)")]
    NotFound(&'static str),
    #[error("several bare keys and no `== CURVE ... KEY ==` header to tell them apart")]
    Ambiguous,
    #[error("the public-key line does not match the secret key")]
    Mismatch,
    #[error("{path}: {error}")]
    Io { path: String, error: String },
    #[error("{path}: {error}")]
    In { path: String, error: Box<KeyError> },
}

impl KeyError {
    fn at(self, path: &Path) -> KeyError {
        KeyError::In {
            path: path.display().to_string(),
            error: Box::new(self),
        }
    }
}

fn read_text(path: &Path) -> Result<String, KeyError> {
    std::fs::read_to_string(path).map_err(|e| KeyError::Io {
        path: path.display().to_string(),
        error: e.to_string(),
    })
}

fn write_new(path: &Path, text: &str, mode: u32) -> Result<(), KeyError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let io = |e: std::io::Error| KeyError::Io {
        path: path.display().to_string(),
        error: e.to_string(),
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(io)?;
    f.write_all(text.as_bytes()).map_err(io)
}

/// The value of a `NAME = "VALUE"` line.
fn field<'a>(text: &'a str, name: &str) -> Option<&'a str> {
    text.lines().find_map(|l| {
        let (k, v) = l.trim().split_once('=')?;
        (k.trim() == name).then(|| v.trim().trim_matches('"'))
    })
}

/// The `which` ("public" or "secret") key in any of the accepted forms.
fn find_key<'a>(text: &'a str, which: &'static str) -> Result<&'a str, KeyError> {
    let name = if which == "public" {
        "public-key"
    } else {
        "secret-key"
    };
    if let Some(v) = field(text, name) {
        return Ok(v);
    }
    // curve_keygen's output: a bare key under a "== CURVE <WHICH> KEY ==".
    let header = format!("== CURVE {} KEY ==", which.to_uppercase());
    let mut lines = text.lines().map(str::trim);
    if lines.any(|l| l == header) {
        let mut rest = text.lines().map(str::trim).skip_while(|l| *l != header);
        return rest.nth(1).ok_or(KeyError::NotFound(which));
    }
    // A bare key: 40 characters, no spaces or quotes (Z85 has neither;
    // comments and headers have spaces; `#` may start a key).
    let bare: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| l.len() == Z85_KEY_LEN && !l.contains([' ', '\t', '"']))
        .collect();
    match bare[..] {
        [k] => Ok(k),
        [] => Err(KeyError::NotFound(which)),
        _ => Err(KeyError::Ambiguous),
    }
}

fn decode_key(s: &str) -> Result<[u8; 32], KeyError> {
    let s = s.trim();
    if s.len() != Z85_KEY_LEN {
        return Err(KeyError::Length(s.len()));
    }
    let v = z85::decode(s).map_err(|_| KeyError::NotZ85)?;
    v.try_into().map_err(|_| KeyError::NotZ85)
}

fn encode_key(k: &[u8; 32]) -> String {
    z85::encode(k)
}

/// Shorthand for a server-side authorised set.
pub fn authorized(keys: impl IntoIterator<Item = PublicKey>) -> Option<Arc<KeySet>> {
    Some(Arc::new(KeySet::new(keys)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn z85_matches_rfc_32_test_vector() {
        // RFC 32: 8 bytes 86 4F D2 6F B5 59 F7 5B encode as "HelloWorld".
        let v = [0x86, 0x4F, 0xD2, 0x6F, 0xB5, 0x59, 0xF7, 0x5B];
        assert_eq!(z85::encode(v), "HelloWorld");
        assert_eq!(z85::decode("HelloWorld").unwrap(), v);
    }

    #[test]
    fn libzmq_test_keys_agree() {
        // The key pair libzmq's own tests use (tests/testutil_security.cpp):
        // the public key derives from the secret one.
        let s = SecretKey::from_z85("D:)Q[IlAW!ahhC2ac:9*A}h:p?([4%wOTJ%JR%cs").unwrap();
        assert_eq!(
            s.public_key().to_z85(),
            "Yne@$w-vo<fVvi]a<NY6T1ed:M$fCG*[IaLV{hID"
        );
    }

    #[test]
    fn key_file_forms_parse() {
        let pair = KeyPair::generate();
        let (p, s) = (pair.public.to_z85(), pair.secret.to_z85());
        let dir = tempdir();
        let keygen = format!("== CURVE PUBLIC KEY ==\n{p}\n== CURVE SECRET KEY ==\n{s}\n");
        let czmq =
            format!("# c\nmetadata\ncurve\n    public-key = \"{p}\"\n    secret-key = \"{s}\"\n");
        for (i, text) in [keygen, czmq, format!("{s}\n")].iter().enumerate() {
            let f = dir.join(format!("s{i}"));
            std::fs::write(&f, text).unwrap();
            assert_eq!(
                KeyPair::read_file(&f).unwrap().public,
                pair.public,
                "{text}"
            );
            if i < 2 {
                assert_eq!(read_public(&f).unwrap(), pair.public);
            }
        }
        let f = dir.join("bare.pub");
        std::fs::write(&f, format!("{p}\n")).unwrap();
        assert_eq!(public_key_arg(f.to_str().unwrap()).unwrap(), pair.public);
        assert_eq!(public_key_arg(&p).unwrap(), pair.public);
        // A public-key line that is not the secret's own is refused.
        let other = KeyPair::generate().public.to_z85();
        let f = dir.join("mismatch");
        std::fs::write(
            &f,
            format!("public-key = \"{other}\"\nsecret-key = \"{s}\"\n"),
        )
        .unwrap();
        assert!(KeyPair::read_file(&f).is_err());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn written_files_read_back_and_dirs_collect_keys() {
        let dir = tempdir();
        let a = KeyPair::generate();
        let b = KeyPair::generate();
        a.write_files(&dir, "a").unwrap();
        b.write_files(&dir, "b").unwrap();
        assert!(a.write_files(&dir, "a").is_err(), "never overwrites");
        let back = KeyPair::read_file(&dir.join("a.key_secret")).unwrap();
        assert_eq!(back.public, a.public);
        assert_eq!(back.secret.to_z85(), a.secret.to_z85());
        let set = KeySet::read_dir(&dir).unwrap();
        assert_eq!(set.len(), 2);
        assert!(set.contains(&a.public) && set.contains(&b.public));
        std::fs::write(dir.join("junk"), "not a key\n").unwrap();
        std::fs::write(dir.join("short"), "abc\n").unwrap();
        assert_eq!(KeySet::read_dir(&dir).unwrap_err().len(), 2);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn bad_keys_are_errors() {
        assert_eq!(PublicKey::from_z85("abc"), Err(KeyError::Length(3)));
        assert!(PublicKey::from_z85(&"\"".repeat(40)).is_err());
    }

    fn tempdir() -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!(
            "bus-curve-{}-{}",
            std::process::id(),
            fastrand::u64(..)
        ));
        std::fs::create_dir_all(&d).unwrap();
        d
    }
}
