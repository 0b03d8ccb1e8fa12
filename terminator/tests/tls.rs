//! HTTPS at the edge, with real clients against the real binary: curl
//! (HTTP/1.1 and HTTP/2 by ALPN), h2load, headless Chromium, a rustls
//! client (which certificate is served: SNI, rotation, SIGHUP) and raw
//! bytes (a TLS 1.0 hello, a silent or stalled handshake). Certificates
//! are made here with rcgen; the admin token is tested here too.
//!
//! h2load and Chromium come from `scripts/deps` (nghttp2-client,
//! chromium); a test that needs one fails, saying so, when it is missing.

mod common;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// A scratch directory, removed on drop.
struct Dir(PathBuf);

impl Dir {
    fn new(tag: &str) -> Dir {
        let d = std::env::temp_dir().join(format!(
            "switchboard-tls-{tag}-{}-{}",
            std::process::id(),
            fastrand::u64(..)
        ));
        std::fs::create_dir_all(&d).unwrap();
        Dir(d)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A fresh self-signed certificate for `names`, written to
/// `dir/NAME.crt` and `dir/NAME.key`; returns the paths and the DER.
fn cert(dir: &Path, name: &str, names: &[&str]) -> (PathBuf, PathBuf, Vec<u8>) {
    let (c, k) = (
        dir.join(format!("{name}.crt")),
        dir.join(format!("{name}.key")),
    );
    let der = write_cert(&c, &k, names);
    (c, k, der)
}

/// Writes a new certificate and key into these very files (in place).
fn write_cert(c: &Path, k: &Path, names: &[&str]) -> Vec<u8> {
    let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    let ck = rcgen::generate_simple_self_signed(names).unwrap();
    std::fs::write(k, ck.key_pair.serialize_pem()).unwrap();
    std::fs::write(c, ck.cert.pem()).unwrap();
    ck.cert.der().to_vec()
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

fn tls_terminator(
    ep: &str,
    pairs: &[(&Path, &Path)],
    extra: &[&str],
    env: &[(&str, &str)],
) -> testkit::Proc {
    let mut args: Vec<&str> = Vec::new();
    for (c, k) in pairs {
        args.extend(["--tls-cert", p(c), "--tls-key", p(k)]);
    }
    args.extend_from_slice(extra);
    common::terminator(ep, &args, env, None)
}

/// `https://HOST:PORT` → `HOST:PORT`.
fn hostport(url: &str) -> String {
    url.trim_start_matches("https://")
        .trim_start_matches("http://")
        .to_string()
}

/// curl over HTTPS trusting `ca`: (status, negotiated HTTP version, body).
fn curl_tls(url: &str, ca: &Path, version_flag: &str) -> (u16, String, String) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "20", version_flag, "--cacert", p(ca)])
        .args(["-w", "\n%{http_code} %{http_version}"])
        .arg(url)
        .output()
        .expect("curl is installed (scripts/deps)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, tail) = text.rsplit_once('\n').unwrap_or(("", &text));
    let mut w = tail.split_whitespace();
    let status = w.next().and_then(|s| s.parse().ok()).unwrap_or(0);
    let version = w.next().unwrap_or("").to_string();
    (status, version, body.to_string())
}

/// A tool the tests need, or a failure that says where it comes from.
fn need(tool: &str, package: &str) {
    let found = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        found,
        "{tool} is not installed: `scripts/deps` installs it (Debian package {package})"
    );
}

#[test]
fn curl_gets_http11_and_h2_by_alpn_and_h2load_gets_200_of_200() {
    let ep = common::aggregator();
    let dir = Dir::new("alpn");
    let (c, k, _) = cert(&dir.0, "a", &["localhost", "127.0.0.1"]);
    let t = tls_terminator(&ep, &[(&c, &k)], &[], &[]);
    let url = t.addr("http");
    assert!(url.starts_with("https://"), "listening line says {url}");
    let echo = format!("{url}/echo");
    let (status, version, body) = curl_tls(&echo, &c, "--http1.1");
    assert_eq!(
        (status, version.as_str(), body.as_str()),
        (200, "1.1", "echo\n")
    );
    let (status, version, body) = curl_tls(&echo, &c, "--http2");
    assert_eq!(
        (status, version.as_str(), body.as_str()),
        (200, "2", "echo\n")
    );
    // The name in the certificate works as well as the address.
    let port = hostport(&url).rsplit_once(':').unwrap().1.to_string();
    let (status, _, _) = curl_tls(&format!("https://localhost:{port}/echo"), &c, "--http2");
    assert_eq!(status, 200);

    need("h2load", "nghttp2-client");
    let out = Command::new("timeout")
        .args(["60", "h2load", "-n", "200", "-c", "4", &echo])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "h2load failed: {text}");
    assert!(text.contains("Application protocol: h2"), "{text}");
    assert!(
        text.contains("requests: 200 total, 200 started, 200 done, 200 succeeded, 0 failed"),
        "{text}"
    );
    assert!(text.contains("status codes: 200 2xx"), "{text}");
}

#[test]
fn https_beside_cleartext_http() {
    let ep = common::aggregator();
    let dir = Dir::new("both");
    let (c, k, _) = cert(&dir.0, "a", &["localhost", "127.0.0.1"]);
    let t = tls_terminator(&ep, &[(&c, &k)], &["--https", "127.0.0.1:0"], &[]);
    let (http, https) = (t.addr("http"), t.addr("https"));
    assert!(http.starts_with("http://") && https.starts_with("https://"));
    let plain = testkit::curl("GET", &format!("{http}/echo"), None);
    assert_eq!((plain.status, plain.text().as_str()), (200, "echo\n"));
    let (status, version, _) = curl_tls(&format!("{https}/echo"), &c, "--http2");
    assert_eq!((status, version.as_str()), (200, "2"));
}

/// Accepts any certificate: these tests look at which one is served.
#[derive(Debug)]
struct AnyCert(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The leaf certificate a new connection to `addr` is served when it
/// asks for `sni`.
fn served(addr: &str, sni: &str) -> Vec<u8> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCert(provider)))
        .with_no_client_auth();
    let name = ServerName::try_from(sni.to_string()).unwrap();
    let mut conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let mut sock = TcpStream::connect(addr).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    while conn.is_handshaking() {
        conn.complete_io(&mut sock).expect("handshake");
    }
    conn.peer_certificates().expect("a certificate")[0].to_vec()
}

/// Polls (bounded) until a new connection is served `want`.
fn wait_served(addr: &str, sni: &str, want: &[u8], what: &str) {
    let until = Instant::now() + Duration::from_secs(10);
    while served(addr, sni) != want {
        assert!(
            Instant::now() < until,
            "{what}: old certificate still served"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn sni_picks_the_certificate_for_the_name_and_the_first_otherwise() {
    let ep = common::aggregator();
    let dir = Dir::new("sni");
    let (ca, ka, a) = cert(&dir.0, "a", &["localhost"]);
    let (cb, kb, b) = cert(&dir.0, "b", &["api.example.test", "*.b.example.test"]);
    let t = tls_terminator(&ep, &[(&ca, &ka), (&cb, &kb)], &[], &[]);
    let addr = hostport(&t.addr("http"));
    assert_eq!(served(&addr, "api.example.test"), b);
    assert_eq!(served(&addr, "x.b.example.test"), b);
    assert_eq!(served(&addr, "localhost"), a);
    assert_eq!(served(&addr, "unknown.example.test"), a);
}

#[test]
fn a_rotated_certificate_is_served_without_a_restart_and_sighup_reloads() {
    let ep = common::aggregator();
    let dir = Dir::new("rotate");
    let (c, k, first) = cert(&dir.0, "live", &["localhost", "127.0.0.1"]);
    let t = tls_terminator(&ep, &[(&c, &k)], &[], &[("SWITCHBOARD_LOG", "info")]);
    let addr = hostport(&t.addr("http"));
    assert_eq!(served(&addr, "localhost"), first);

    // Rotation as tools do it: new files renamed over the old ones, the
    // key first (between the two renames the pair does not match: the
    // old certificate stays until both are in).
    let staged = Dir::new("rotate-new");
    let (nc, nk, second) = cert(&staged.0, "new", &["localhost", "127.0.0.1"]);
    std::fs::rename(&nk, &k).unwrap();
    std::fs::rename(&nc, &c).unwrap();
    wait_served(&addr, "localhost", &second, "after renaming new files in");
    // The server never stopped: the connection that saw the old
    // certificate and this one came from the same process.
    assert!(t.stderr().contains("files changed"), "{}", t.stderr());

    // Rewritten in place with the modification times put back: the file
    // check cannot see it, SIGHUP must.
    let mtimes = [&c, &k].map(|f| std::fs::metadata(f).unwrap().modified().unwrap());
    let third = write_cert(&c, &k, &["localhost", "127.0.0.1"]);
    for (f, m) in [&c, &k].into_iter().zip(mtimes) {
        set_mtime(f, m);
    }
    // SAFETY: kill(2) on our own child.
    unsafe {
        libc::kill(t.pid(), libc::SIGHUP);
    }
    wait_served(&addr, "localhost", &third, "after SIGHUP");
    assert!(
        t.stderr().contains("cause=\"SIGHUP\""),
        "no SIGHUP reload logged:\n{}",
        t.stderr()
    );
    // Still serving HTTP on the new certificate.
    let r = curl_tls(&format!("https://{addr}/echo"), &c, "--http2");
    assert_eq!(r.0, 200);
}

fn set_mtime(f: &Path, m: SystemTime) {
    std::fs::File::options()
        .write(true)
        .open(f)
        .unwrap()
        .set_modified(m)
        .unwrap();
}

/// A ClientHello record, built by hand: `version` in the record and the
/// hello, these cipher suites, SNI localhost, the usual extensions.
fn client_hello(version: u16, suites: &[u16]) -> Vec<u8> {
    let mut ext = Vec::new();
    let mut add = |kind: u16, data: &[u8]| {
        ext.extend(kind.to_be_bytes());
        ext.extend((data.len() as u16).to_be_bytes());
        ext.extend(data);
    };
    let name = b"localhost";
    let mut sni = Vec::new();
    sni.extend(((name.len() + 3) as u16).to_be_bytes());
    sni.push(0);
    sni.extend((name.len() as u16).to_be_bytes());
    sni.extend(name);
    add(0x0000, &sni);
    add(0x000a, &[0, 4, 0x00, 0x1d, 0x00, 0x17]); // x25519, secp256r1
    add(0x000b, &[1, 0]); // uncompressed points
    add(0x000d, &[0, 6, 0x04, 0x03, 0x08, 0x04, 0x04, 0x01]); // signature algorithms
    let mut body = version.to_be_bytes().to_vec();
    body.extend([7u8; 32]); // random
    body.push(0); // no session id
    body.extend(((suites.len() * 2) as u16).to_be_bytes());
    for s in suites {
        body.extend(s.to_be_bytes());
    }
    body.extend([1, 0]); // compression: null
    body.extend((ext.len() as u16).to_be_bytes());
    body.extend(ext);
    let mut hs = vec![0x01];
    hs.extend(&(body.len() as u32).to_be_bytes()[1..]);
    hs.extend(body);
    let mut rec = vec![0x16];
    rec.extend(version.to_be_bytes());
    rec.extend((hs.len() as u16).to_be_bytes());
    rec.extend(hs);
    rec
}

/// Sends `hello`, returns the first bytes the server answers (up to 7).
fn answer_to(addr: &str, hello: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(hello).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 7];
    while got.len() < 7 {
        match s.read(&mut buf[..7 - got.len()]) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => panic!("no answer to the hello within 5 s: {e}"),
        }
    }
    got
}

#[test]
fn a_client_offering_only_tls_1_0_is_refused() {
    let ep = common::aggregator();
    let dir = Dir::new("tls10");
    let (c, k, _) = cert(&dir.0, "a", &["localhost"]);
    let t = tls_terminator(&ep, &[(&c, &k)], &[], &[]);
    let addr = hostport(&t.addr("http"));
    // The same hello, as TLS 1.2 with ECDHE-ECDSA suites, gets a
    // ServerHello: the hand-made bytes are a well-formed hello.
    let ok = answer_to(&addr, &client_hello(0x0303, &[0xc02b, 0xc02c]));
    assert_eq!(ok.first(), Some(&0x16), "TLS 1.2 hello answered {ok:02x?}");
    // TLS 1.0 with the suites TLS 1.0 had: a fatal protocol_version alert.
    let no = answer_to(
        &addr,
        &client_hello(0x0301, &[0xc009, 0xc013, 0x002f, 0x0035]),
    );
    // (An alert record of 2 bytes; rustls writes it as a TLS 1.2 record.)
    assert!(
        no.len() == 7 && no[0] == 0x15 && no[3..] == [0x00, 0x02, 2, 70],
        "expected alert(fatal, protocol_version), got {no:02x?}"
    );
}

#[test]
fn a_silent_or_stalled_handshake_is_cut_at_the_idle_timeout_without_blocking_others() {
    let ep = common::aggregator();
    let dir = Dir::new("silent");
    let (c, k, _) = cert(&dir.0, "a", &["localhost", "127.0.0.1"]);
    // One thread: a handshake waited for in the accept loop would block
    // every other client.
    let t = tls_terminator(
        &ep,
        &[(&c, &k)],
        &["--idle-timeout", "500ms", "--threads", "1"],
        &[],
    );
    let url = t.addr("http");
    let addr = hostport(&url);
    let started = Instant::now();
    let mut silent = TcpStream::connect(&addr).unwrap();
    let mut stalled = TcpStream::connect(&addr).unwrap();
    // The first bytes of a hello, then nothing.
    stalled
        .write_all(&client_hello(0x0303, &[0xc02b])[..5])
        .unwrap();
    let (status, _, _) = curl_tls(&format!("{url}/echo"), &c, "--http2");
    assert_eq!(status, 200, "another client is served meanwhile");
    for (what, s) in [("silent", &mut silent), ("stalled", &mut stalled)] {
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut buf = [0u8; 64];
        match s.read(&mut buf) {
            Ok(0) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            other => panic!("{what} connection not closed: {other:?}"),
        }
    }
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(450) && took < Duration::from_secs(8),
        "{took:?}"
    );
}

#[test]
fn a_bad_or_mismatched_key_at_start_exits_2_naming_the_file() {
    let dir = Dir::new("badkey");
    let (ca, _ka, _) = cert(&dir.0, "a", &["localhost"]);
    let (_cb, kb, _) = cert(&dir.0, "b", &["localhost"]);
    let garbage = dir.0.join("garbage.key");
    std::fs::write(&garbage, "not a key\n").unwrap();
    let run = |key: &Path| {
        let out = Command::new(env!("CARGO_BIN_EXE_terminator"))
            .args(["--http", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
            .args(["--tls-cert", p(&ca), "--tls-key", p(key)])
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, err) = run(&kb);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains(p(&kb)) && err.contains("does not match") && err.contains(p(&ca)),
        "{err}"
    );
    let (code, err) = run(&garbage);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains(p(&garbage)) && err.contains("no PEM private key"),
        "{err}"
    );
}

#[test]
fn headless_chromium_loads_a_page_over_https() {
    need("chromium", "chromium");
    let ep = common::aggregator();
    let dir = Dir::new("chromium");
    let (c, k, _) = cert(&dir.0, "a", &["localhost", "127.0.0.1"]);
    let t = tls_terminator(&ep, &[(&c, &k)], &[], &[]);
    let url = format!("{}/echo?inspect", t.addr("http"));
    let profile = dir.0.join("profile");
    let out = Command::new("timeout")
        .args([
            "90",
            "chromium",
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
        ])
        .args(["--ignore-certificate-errors", "--no-first-run"])
        .arg(format!("--user-data-dir={}", p(&profile)))
        .args(["--dump-dom", &url])
        .env("HOME", &dir.0)
        .output()
        .unwrap();
    let dom = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "chromium failed ({:?}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    // The aggregator's JSON, as the browser rendered it.
    assert!(dom.contains("\"path\":\"/echo\""), "{dom}");
    assert!(dom.contains("\"query\":\"inspect\""), "{dom}");
    assert!(dom.contains("HeadlessChrome"), "{dom}");
}

#[test]
fn admin_token_guards_stats_but_not_health() {
    let ep = common::aggregator();
    let dir = Dir::new("token");
    let token = dir.0.join("admin-token");
    std::fs::write(&token, "t0ken-f0r-tests\n").unwrap();
    let t = common::terminator(&ep, &["--admin-token", p(&token)], &[], None);
    let admin = t.addr("admin");
    let stats = format!("{admin}/stats");
    let r = testkit::curl_with("GET", &stats, None, &["x-request-id: rid-1"]);
    assert_eq!(r.status, 401, "{}", r.text());
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(v["error"], "unauthorized");
    assert_eq!(v["status"], 401);
    assert!(
        v["message"].as_str().is_some_and(|m| m.contains("Bearer")),
        "{v}"
    );
    assert_eq!(v["request_id"], "rid-1");
    assert_eq!(v.as_object().unwrap().len(), 4, "the one shape: {v}");
    let wrong = testkit::curl_with("GET", &stats, None, &["authorization: Bearer nope"]);
    assert_eq!(wrong.status, 401);
    let hist = testkit::curl("GET", &format!("{admin}/stats/histograms"), None);
    assert_eq!(hist.status, 401);
    let ok = testkit::curl_with(
        "GET",
        &stats,
        None,
        &["authorization: Bearer t0ken-f0r-tests"],
    );
    assert_eq!(ok.status, 200, "{}", ok.text());
    assert!(ok.text().starts_with('{'));
    assert_eq!(
        testkit::curl("GET", &format!("{admin}/healthz"), None).status,
        200
    );
    let ready = format!("{admin}/readyz");
    testkit::wait_until(
        Duration::from_secs(10),
        "/readyz 200 without a token",
        || testkit::curl("GET", &ready, None).status == 200,
    );

    // An empty token file is a bad flag: exit 2 naming it.
    let empty = dir.0.join("empty-token");
    std::fs::write(&empty, "\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_terminator"))
        .args(["--http", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
        .args(["--admin-token", p(&empty)])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains(p(&empty)) && err.contains("empty"), "{err}");
}
