//! CurveZMQ (RFC 26) as ZMTP carries it (RFC 25): the handshake commands
//! and the MESSAGE boxes after it, byte for byte what libzmq 4.x sends.
//!
//! ```text
//! C, S    long-term public keys (client, server); c, s their secrets
//! C', S'  transient (per connection) keys; c', s' their secrets
//! Box[X](A->B)  crypto_box: curve25519-xsalsa20-poly1305, 16-byte MAC first
//!
//! HELLO    (200) "\x05HELLO" 1 0 | 72 zeros | C' | n8 | Box[64 zeros](C'->S)
//!                nonce "CurveZMQHELLO---" n8
//! WELCOME  (168) "\x07WELCOME" | n16 | Box[S' cookie](S->C')     "WELCOME-" n16
//!          cookie (96) = n16 | secretbox[C' s'](cookie key)       "COOKIE--" n16
//! INITIATE (257+) "\x08INITIATE" | cookie | n8 |
//!                Box[C | vn16 | Box[C' S](C->S') "VOUCH---" vn16 | metadata](C'->S')
//!                nonce "CurveZMQINITIATE" n8
//! READY    (30+) "\x05READY" | n8 | Box[metadata](S'->C')  "CurveZMQREADY---" n8
//! MESSAGE  (33+) "\x07MESSAGE" | n8 | Box[flags | frame body](C'->S' or S'->C')
//!                "CurveZMQMESSAGEC" n8 from the client, "...MESSAGES" n8 from the server
//!                flags: 0x01 more, 0x02 command (PING, SUBSCRIBE, ... are boxed too)
//! ```
//!
//! Short nonces (`n8`, big-endian u64) count per connection and direction
//! from 1, as libzmq's do (the client's HELLO is 1, INITIATE 2, its first
//! MESSAGE 3; the server's READY is 1); a MESSAGE whose nonce is not above
//! the last one seen is refused (replayed or reordered). Long nonces (`n16`)
//! and the cookie key are random per connection. The sealed frame goes out
//! as a plain ZMTP frame with no flags, as libzmq sends it: what it carries
//! is inside the box.
//!
//! Everything here is pure (no I/O), so the fuzz target drives it directly;
//! every function is total: malformed input is an error, never a panic.

use super::frame;
use crate::curve::{KeyPair, PublicKey};
use bytes::Bytes;
use crypto_box::aead::consts::U24;
use crypto_box::aead::generic_array::GenericArray;
use crypto_box::aead::rand_core::RngCore;
use crypto_box::aead::{AeadInPlace, KeyInit, OsRng};
use crypto_box::{PublicKey as BoxPublic, SalsaBox, SecretKey as BoxSecret};
use crypto_secretbox::XSalsa20Poly1305;
use std::sync::Arc;

pub const HELLO_LEN: usize = 200;
pub const WELCOME_LEN: usize = 168;
pub const INITIATE_MIN: usize = 257;
pub const READY_MIN: usize = 30;
/// MESSAGE name, nonce, MAC and flags: what CURVE adds to each frame.
pub const MESSAGE_OVERHEAD: usize = 8 + 8 + MAC + 1;
const MAC: usize = 16;

/// Why a CURVE handshake or MESSAGE was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CurveError {
    #[error("malformed {0}")]
    Malformed(&'static str),
    #[error("{0} does not open (wrong key or corrupted)")]
    Crypto(&'static str),
    #[error("unsupported CURVE version {0}.{1}")]
    Version(u8, u8),
    #[error("cookie does not match this connection")]
    Cookie,
    #[error("vouch does not match the transient and server keys")]
    Vouch,
    #[error("MESSAGE nonce {got} is not after {last} (replayed or reordered)")]
    Replay { got: u64, last: u64 },
    #[error("short nonces exhausted")]
    NoncesExhausted,
    #[error("client key {0} is not authorised")]
    Unauthorized(PublicKey),
}

type Nonce = GenericArray<u8, U24>;

fn nonce(prefix: &[u8], tail: &[u8]) -> Nonce {
    let mut n = [0u8; 24];
    n[..prefix.len()].copy_from_slice(prefix);
    n[prefix.len()..].copy_from_slice(tail);
    n.into()
}

fn random<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    OsRng.fill_bytes(&mut b);
    b
}

fn key32(b: &[u8]) -> [u8; 32] {
    let mut k = [0u8; 32];
    k.copy_from_slice(&b[..32]);
    k
}

fn u64_at(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_be_bytes(a)
}

/// Appends MAC || ciphertext of `plain` (NaCl's box layout).
fn seal<A: AeadInPlace<NonceSize = U24>>(
    a: &A,
    n: &Nonce,
    plain: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), CurveError> {
    let start = out.len();
    out.extend_from_slice(&[0u8; MAC]);
    out.extend_from_slice(plain);
    let tag = a
        .encrypt_in_place_detached(n, b"", &mut out[start + MAC..])
        .map_err(|_| CurveError::Crypto("seal"))?;
    out[start..start + MAC].copy_from_slice(&tag);
    Ok(())
}

/// Opens MAC || ciphertext.
fn open<A: AeadInPlace<NonceSize = U24>>(
    a: &A,
    n: &Nonce,
    sealed: &[u8],
    what: &'static str,
) -> Result<Vec<u8>, CurveError> {
    if sealed.len() < MAC {
        return Err(CurveError::Malformed(what));
    }
    let mut v = sealed[MAC..].to_vec();
    a.decrypt_in_place_detached(n, b"", &mut v, GenericArray::from_slice(&sealed[..MAC]))
        .map_err(|_| CurveError::Crypto(what))?;
    Ok(v)
}

fn transient() -> (BoxSecret, [u8; 32]) {
    let s = BoxSecret::generate(&mut OsRng);
    let p = *s.public_key().as_bytes();
    (s, p)
}

/// The client's side: HELLO, then INITIATE on WELCOME, then READY.
pub struct ClientHandshake {
    long: KeyPair,
    server: [u8; 32],
    eph: BoxSecret,
    eph_pub: [u8; 32],
    precom: Option<SalsaBox>,
    next: u64,
}

impl ClientHandshake {
    pub fn new(long: &KeyPair, server: PublicKey) -> ClientHandshake {
        let (eph, eph_pub) = transient();
        ClientHandshake {
            long: long.clone(),
            server: server.0,
            eph,
            eph_pub,
            precom: None,
            next: 1,
        }
    }

    fn next_nonce(&mut self) -> [u8; 8] {
        let n = self.next;
        self.next += 1;
        n.to_be_bytes()
    }

    /// The HELLO command body (200 bytes).
    pub fn hello(&mut self) -> Result<Vec<u8>, CurveError> {
        let mut out = Vec::with_capacity(HELLO_LEN);
        out.extend_from_slice(b"\x05HELLO\x01\x00");
        out.extend_from_slice(&[0u8; 72]);
        out.extend_from_slice(&self.eph_pub);
        let n = self.next_nonce();
        out.extend_from_slice(&n);
        let b = SalsaBox::new(&BoxPublic::from(self.server), &self.eph);
        seal(&b, &nonce(b"CurveZMQHELLO---", &n), &[0u8; 64], &mut out)?;
        Ok(out)
    }

    /// Reads WELCOME; returns the INITIATE command body carrying `metadata`.
    pub fn welcome(&mut self, body: &[u8], metadata: &[u8]) -> Result<Vec<u8>, CurveError> {
        if body.len() != WELCOME_LEN || !body.starts_with(b"\x07WELCOME") {
            return Err(CurveError::Malformed("WELCOME"));
        }
        let b = SalsaBox::new(&BoxPublic::from(self.server), &self.eph);
        let plain = open(
            &b,
            &nonce(b"WELCOME-", &body[8..24]),
            &body[24..],
            "WELCOME",
        )?;
        if plain.len() != 128 {
            return Err(CurveError::Malformed("WELCOME"));
        }
        let server_eph = BoxPublic::from(key32(&plain[..32]));
        let cookie = &plain[32..128];
        let mut vouch_plain = [0u8; 64];
        vouch_plain[..32].copy_from_slice(&self.eph_pub);
        vouch_plain[32..].copy_from_slice(&self.server);
        let vn: [u8; 16] = random();
        let mut inner = Vec::with_capacity(128 + metadata.len() + MAC);
        inner.extend_from_slice(&self.long.public.0);
        inner.extend_from_slice(&vn);
        let vb = SalsaBox::new(&server_eph, &self.long.secret.0);
        seal(&vb, &nonce(b"VOUCH---", &vn), &vouch_plain, &mut inner)?;
        inner.extend_from_slice(metadata);
        let precom = SalsaBox::new(&server_eph, &self.eph);
        let n = self.next_nonce();
        let mut out = Vec::with_capacity(INITIATE_MIN + metadata.len());
        out.extend_from_slice(b"\x08INITIATE");
        out.extend_from_slice(cookie);
        out.extend_from_slice(&n);
        seal(&precom, &nonce(b"CurveZMQINITIATE", &n), &inner, &mut out)?;
        self.precom = Some(precom);
        Ok(out)
    }

    /// Reads READY: the server's metadata and the session.
    pub fn ready(self, body: &[u8]) -> Result<(Vec<u8>, Session), CurveError> {
        if body.len() < READY_MIN || !body.starts_with(b"\x05READY") {
            return Err(CurveError::Malformed("READY"));
        }
        let precom = Arc::new(
            self.precom
                .ok_or(CurveError::Malformed("READY before WELCOME"))?,
        );
        let meta = open(
            &*precom,
            &nonce(b"CurveZMQREADY---", &body[6..14]),
            &body[14..],
            "READY",
        )?;
        let session = Session {
            sealer: Sealer {
                b: precom.clone(),
                prefix: b"CurveZMQMESSAGEC",
                next: self.next,
            },
            opener: Opener {
                b: precom,
                prefix: b"CurveZMQMESSAGES",
                last: u64_at(&body[6..14]),
            },
        };
        Ok((meta, session))
    }
}

/// The server's side: WELCOME on HELLO, then READY on INITIATE.
pub struct ServerHandshake {
    long: KeyPair,
    eph: BoxSecret,
    eph_pub: [u8; 32],
    cookie_key: crypto_secretbox::Key,
    client_eph: Option<[u8; 32]>,
    precom: Option<SalsaBox>,
    peer_nonce: u64,
}

/// What INITIATE told the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Initiated {
    /// The client's long-term key: who it is.
    pub client: PublicKey,
    pub metadata: Vec<u8>,
}

impl ServerHandshake {
    pub fn new(long: &KeyPair) -> ServerHandshake {
        let (eph, eph_pub) = transient();
        ServerHandshake {
            long: long.clone(),
            eph,
            eph_pub,
            cookie_key: random::<32>().into(),
            client_eph: None,
            precom: None,
            peer_nonce: 0,
        }
    }

    /// Reads HELLO; returns the WELCOME command body.
    pub fn hello(&mut self, body: &[u8]) -> Result<Vec<u8>, CurveError> {
        if body.len() != HELLO_LEN || !body.starts_with(b"\x05HELLO") {
            return Err(CurveError::Malformed("HELLO"));
        }
        if body[6..8] != [1, 0] {
            return Err(CurveError::Version(body[6], body[7]));
        }
        if self.client_eph.is_some() {
            return Err(CurveError::Malformed("second HELLO"));
        }
        let client_eph = key32(&body[80..112]);
        let b = SalsaBox::new(&BoxPublic::from(client_eph), &self.long.secret.0);
        let zeros = open(
            &b,
            &nonce(b"CurveZMQHELLO---", &body[112..120]),
            &body[120..],
            "HELLO",
        )?;
        if zeros != [0u8; 64] {
            return Err(CurveError::Malformed("HELLO"));
        }
        self.client_eph = Some(client_eph);
        self.peer_nonce = u64_at(&body[112..120]);
        let mut cookie_plain = [0u8; 64];
        cookie_plain[..32].copy_from_slice(&client_eph);
        cookie_plain[32..].copy_from_slice(&self.eph.to_bytes());
        let cn: [u8; 16] = random();
        let mut plain = Vec::with_capacity(128 + MAC);
        plain.extend_from_slice(&self.eph_pub);
        plain.extend_from_slice(&cn);
        let cb = XSalsa20Poly1305::new(&self.cookie_key);
        seal(&cb, &nonce(b"COOKIE--", &cn), &cookie_plain, &mut plain)?;
        let wn: [u8; 16] = random();
        let mut out = Vec::with_capacity(WELCOME_LEN);
        out.extend_from_slice(b"\x07WELCOME");
        out.extend_from_slice(&wn);
        seal(&b, &nonce(b"WELCOME-", &wn), &plain, &mut out)?;
        Ok(out)
    }

    /// Reads INITIATE: the client's long-term key and metadata, once its
    /// cookie and vouch check out. Whether the key may join is the
    /// caller's decision (see [`Mechanism`](super::mechanism::Mechanism)).
    pub fn initiate(&mut self, body: &[u8]) -> Result<Initiated, CurveError> {
        if body.len() < INITIATE_MIN || !body.starts_with(b"\x08INITIATE") {
            return Err(CurveError::Malformed("INITIATE"));
        }
        let client_eph = self
            .client_eph
            .ok_or(CurveError::Malformed("INITIATE before HELLO"))?;
        let cb = XSalsa20Poly1305::new(&self.cookie_key);
        let cookie = open(
            &cb,
            &nonce(b"COOKIE--", &body[9..25]),
            &body[25..105],
            "cookie",
        )?;
        if cookie[..32] != client_eph || cookie[32..] != self.eph.to_bytes() {
            return Err(CurveError::Cookie);
        }
        let precom = SalsaBox::new(&BoxPublic::from(client_eph), &self.eph);
        let n = u64_at(&body[105..113]);
        if n <= self.peer_nonce {
            return Err(CurveError::Replay {
                got: n,
                last: self.peer_nonce,
            });
        }
        let plain = open(
            &precom,
            &nonce(b"CurveZMQINITIATE", &body[105..113]),
            &body[113..],
            "INITIATE",
        )?;
        if plain.len() < 128 {
            return Err(CurveError::Malformed("INITIATE"));
        }
        let client = PublicKey(key32(&plain[..32]));
        let vb = SalsaBox::new(&BoxPublic::from(client.0), &self.eph);
        let vouch = open(
            &vb,
            &nonce(b"VOUCH---", &plain[32..48]),
            &plain[48..128],
            "vouch",
        )?;
        if vouch.len() != 64 || vouch[..32] != client_eph || vouch[32..] != self.long.public.0 {
            return Err(CurveError::Vouch);
        }
        self.precom = Some(precom);
        self.peer_nonce = n;
        Ok(Initiated {
            client,
            metadata: plain[128..].to_vec(),
        })
    }

    /// The READY command body carrying `metadata`, and the session.
    pub fn ready(self, metadata: &[u8]) -> Result<(Vec<u8>, Session), CurveError> {
        let precom = Arc::new(
            self.precom
                .ok_or(CurveError::Malformed("READY before INITIATE"))?,
        );
        let n = 1u64.to_be_bytes();
        let mut out = Vec::with_capacity(READY_MIN + metadata.len());
        out.extend_from_slice(b"\x05READY");
        out.extend_from_slice(&n);
        seal(
            &*precom,
            &nonce(b"CurveZMQREADY---", &n),
            metadata,
            &mut out,
        )?;
        let session = Session {
            sealer: Sealer {
                b: precom.clone(),
                prefix: b"CurveZMQMESSAGES",
                next: 2,
            },
            opener: Opener {
                b: precom,
                prefix: b"CurveZMQMESSAGEC",
                last: self.peer_nonce,
            },
        };
        Ok((out, session))
    }
}

/// Both directions of an established connection.
pub struct Session {
    pub sealer: Sealer,
    pub opener: Opener,
}

/// Boxes outgoing frames; owned by the connection's writer task, so nonces
/// go out in the order they are counted.
pub struct Sealer {
    b: Arc<SalsaBox>,
    prefix: &'static [u8; 16],
    next: u64,
}

impl Sealer {
    /// Appends one frame as a MESSAGE in a ZMTP frame of its own.
    pub fn seal_frame(
        &mut self,
        more: bool,
        command: bool,
        body: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), CurveError> {
        let n = self.next;
        self.next = n.checked_add(1).ok_or(CurveError::NoncesExhausted)?;
        let n = n.to_be_bytes();
        frame::put_head(out, false, false, MESSAGE_OVERHEAD + body.len());
        out.extend_from_slice(b"\x07MESSAGE");
        out.extend_from_slice(&n);
        let start = out.len();
        out.extend_from_slice(&[0u8; MAC]);
        out.push(u8::from(more) | (u8::from(command) << 1));
        out.extend_from_slice(body);
        let tag = self
            .b
            .encrypt_in_place_detached(&nonce(self.prefix, &n), b"", &mut out[start + MAC..])
            .map_err(|_| CurveError::Crypto("seal"))?;
        out[start..start + MAC].copy_from_slice(&tag);
        Ok(())
    }

    /// Seals every frame of `plain` (ZMTP frames as the outbox encodes
    /// them) into `out`.
    pub fn seal_all(&mut self, mut plain: &[u8], out: &mut Vec<u8>) -> Result<(), CurveError> {
        while !plain.is_empty() {
            let (head, size) = frame::check(plain, usize::MAX)
                .map_err(|_| CurveError::Malformed("outgoing frame"))?;
            let flags = plain[0];
            self.seal_frame(
                flags & frame::MORE != 0,
                flags & frame::COMMAND != 0,
                &plain[head..head + size],
                out,
            )?;
            plain = &plain[head + size..];
        }
        Ok(())
    }
}

/// Opens incoming MESSAGE boxes, refusing any nonce not above the last.
pub struct Opener {
    b: Arc<SalsaBox>,
    prefix: &'static [u8; 16],
    last: u64,
}

impl Opener {
    /// A MESSAGE frame's body to the ZMTP flags (MORE, COMMAND) and body of
    /// the frame it carries.
    pub fn open(&mut self, body: &[u8]) -> Result<(u8, Bytes), CurveError> {
        if body.len() < MESSAGE_OVERHEAD || !body.starts_with(b"\x07MESSAGE") {
            return Err(CurveError::Malformed("MESSAGE"));
        }
        let n = u64_at(&body[8..16]);
        if n <= self.last {
            return Err(CurveError::Replay {
                got: n,
                last: self.last,
            });
        }
        let plain = open(
            &*self.b,
            &nonce(self.prefix, &body[8..16]),
            &body[16..],
            "MESSAGE",
        )?;
        self.last = n;
        let inner = plain[0];
        let flags = if inner & 1 != 0 { frame::MORE } else { 0 }
            | if inner & 2 != 0 { frame::COMMAND } else { 0 };
        Ok((flags, Bytes::from(plain).slice(1..)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (KeyPair, KeyPair) {
        (KeyPair::generate(), KeyPair::generate())
    }

    fn handshake(c: &KeyPair, s: &KeyPair) -> (Session, Session, Initiated) {
        let mut client = ClientHandshake::new(c, s.public);
        let mut server = ServerHandshake::new(s);
        let hello = client.hello().unwrap();
        assert_eq!(hello.len(), HELLO_LEN);
        let welcome = server.hello(&hello).unwrap();
        assert_eq!(welcome.len(), WELCOME_LEN);
        let initiate = client.welcome(&welcome, b"\x01a\x00\x00\x00\x01b").unwrap();
        assert_eq!(initiate.len(), INITIATE_MIN + 7);
        let init = server.initiate(&initiate).unwrap();
        let (ready, ss) = server.ready(b"").unwrap();
        assert_eq!(ready.len(), READY_MIN);
        let (meta, cs) = client.ready(&ready).unwrap();
        assert!(meta.is_empty());
        (cs, ss, init)
    }

    #[test]
    fn both_sides_agree_and_messages_round_trip() {
        let (c, s) = pair();
        let (mut cs, mut ss, init) = handshake(&c, &s);
        assert_eq!(init.client, c.public);
        assert_eq!(init.metadata, b"\x01a\x00\x00\x00\x01b");
        let mut wire = Vec::new();
        cs.sealer
            .seal_frame(true, false, b"head", &mut wire)
            .unwrap();
        cs.sealer
            .seal_frame(false, true, b"\x04PING\x00\x01", &mut wire)
            .unwrap();
        let mut buf = bytes::BytesMut::from(&wire[..]);
        let f1 = frame::parse(&mut buf, 1000).unwrap().unwrap();
        assert_eq!(f1.flags, 0, "the outer frame is plain, as libzmq's");
        assert_eq!(u64_at(&f1.body[8..16]), 3, "HELLO 1, INITIATE 2, then 3");
        let (fl, b) = ss.opener.open(&f1.body).unwrap();
        assert_eq!((fl, &b[..]), (frame::MORE, &b"head"[..]));
        let f2 = frame::parse(&mut buf, 1000).unwrap().unwrap();
        let (fl, b) = ss.opener.open(&f2.body).unwrap();
        assert_eq!((fl, &b[..]), (frame::COMMAND, &b"\x04PING\x00\x01"[..]));
        // Replayed or reordered: refused.
        assert!(matches!(
            ss.opener.open(&f2.body),
            Err(CurveError::Replay { got: 4, last: 4 })
        ));
        assert!(matches!(
            ss.opener.open(&f1.body),
            Err(CurveError::Replay { .. })
        ));
        // The other way, with the server's prefix.
        let mut wire = Vec::new();
        ss.sealer.seal_all(&[0, 2, b'o', b'k'], &mut wire).unwrap();
        let f = frame::parse(&mut bytes::BytesMut::from(&wire[..]), 1000)
            .unwrap()
            .unwrap();
        assert_eq!(u64_at(&f.body[8..16]), 2, "READY was 1");
        assert_eq!(&cs.opener.open(&f.body).unwrap().1[..], b"ok");
        // A box sealed for the other direction does not open here.
        let mut wire = Vec::new();
        cs.sealer.seal_frame(false, false, b"x", &mut wire).unwrap();
        let f = frame::parse(&mut bytes::BytesMut::from(&wire[..]), 1000)
            .unwrap()
            .unwrap();
        assert!(matches!(
            cs.opener.open(&f.body),
            Err(CurveError::Crypto(_))
        ));
    }

    #[test]
    fn a_client_of_another_server_key_is_refused_at_hello() {
        let (c, s) = pair();
        let mut client = ClientHandshake::new(&c, KeyPair::generate().public);
        let mut server = ServerHandshake::new(&s);
        assert_eq!(
            server.hello(&client.hello().unwrap()),
            Err(CurveError::Crypto("HELLO"))
        );
    }

    #[test]
    fn every_corrupted_byte_is_refused() {
        let (c, s) = pair();
        let mut client = ClientHandshake::new(&c, s.public);
        let hello = client.hello().unwrap();
        for i in 0..HELLO_LEN {
            if (8..80).contains(&i) {
                continue; // padding: libzmq does not read it either
            }
            let mut bad = hello.clone();
            bad[i] ^= 0x20;
            assert!(ServerHandshake::new(&s).hello(&bad).is_err(), "byte {i}");
        }
        let mut server = ServerHandshake::new(&s);
        let welcome = server.hello(&hello).unwrap();
        let initiate = client.welcome(&welcome, b"").unwrap();
        for i in 0..initiate.len() {
            let mut bad = initiate.clone();
            bad[i] ^= 0x01;
            let mut again = ServerHandshake::new(&s);
            again.client_eph = server.client_eph;
            again.eph = server.eph.clone();
            again.cookie_key = server.cookie_key;
            assert!(again.initiate(&bad).is_err(), "byte {i}");
        }
        for n in [0, 9, 200, INITIATE_MIN - 1] {
            assert_eq!(
                server.initiate(&initiate[..n]),
                Err(CurveError::Malformed("INITIATE")),
                "truncated to {n}"
            );
        }
        assert!(server.initiate(&initiate).is_ok());
    }
}
