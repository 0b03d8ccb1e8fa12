//! `gen-cert DIR [NAME...]`: a self-signed certificate for local HTTPS
//! (`scripts/up --tls`), valid for NAME... (default: localhost and
//! 127.0.0.1, ::1), written as DIR/cert.pem and DIR/key.pem (key mode
//! 0600). Not for production: a real deployment brings its own
//! certificates (docs/deployment.md).

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(dir) = args.first().filter(|a| !a.starts_with('-')) else {
        eprintln!("usage: gen-cert DIR [NAME...]   (writes DIR/cert.pem and DIR/key.pem; NAME defaults to localhost 127.0.0.1 ::1)");
        return ExitCode::from(2);
    };
    let names: Vec<String> = if args.len() > 1 {
        args[1..].to_vec()
    } else {
        vec!["localhost".into(), "127.0.0.1".into(), "::1".into()]
    };
    match write(Path::new(dir), names) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gen-cert: {e}");
            ExitCode::FAILURE
        }
    }
}

fn write(dir: &Path, names: Vec<String>) -> Result<(), String> {
    let mut params = rcgen::CertificateParams::new(names.clone()).map_err(|e| e.to_string())?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "Switchboard local development");
    let key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
    let cert = params.self_signed(&key).map_err(|e| e.to_string())?;
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let (c, k) = (dir.join("cert.pem"), dir.join("key.pem"));
    // Write-then-rename: a terminator watching the files never reads half
    // a file.
    let put = |path: &Path, text: &str, mode: u32| -> Result<(), String> {
        let tmp = path.with_extension("pem.tmp");
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)
            .and_then(|mut f| f.write_all(text.as_bytes()).map(|_| f))
            .map_err(|e| format!("{}: {e}", tmp.display()))?;
        f.flush().map_err(|e| e.to_string())?;
        std::fs::rename(&tmp, path).map_err(|e| format!("{}: {e}", path.display()))
    };
    put(&k, &key.serialize_pem(), 0o600)?;
    put(&c, &cert.pem(), 0o644)?;
    println!(
        "gen-cert: wrote {} and {} for {}",
        c.display(),
        k.display(),
        names.join(", ")
    );
    Ok(())
}
