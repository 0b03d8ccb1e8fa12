//! bus-keygen: writes a CURVE key pair for the Switchboard bus, as libzmq's
//! `curve_keygen` does, into files the `--curve-*` flags read.

use clap::Parser;
use std::path::PathBuf;
use std::process::ExitCode;

/// Writes a CURVE key pair for the Switchboard bus: DIR/NAME.key (the
/// public key: give it to services as an authorised caller, or to callers
/// as --curve-server-key) and DIR/NAME.key_secret (both keys, mode 0600:
/// this process's --curve-secret). Z85 text in czmq's certificate form;
/// never overwrites. Prints the public key.
#[derive(Parser, Debug)]
#[command(name = "bus-keygen", version, about)]
struct Args {
    /// Name of the key pair, e.g. the process: `aggregator`
    name: String,
    /// Directory to write into (created if missing) [default: .]
    #[arg(long)]
    dir: Option<PathBuf>,
}

fn main() -> ExitCode {
    let a = Args::parse();
    let dir = a.dir.unwrap_or_else(|| PathBuf::from("."));
    let bad = a.name.is_empty() || a.name.contains(['/', '\0']) || a.name.starts_with('.');
    if bad {
        eprintln!("bus-keygen: NAME {:?}: a plain file name is needed", a.name);
        return ExitCode::from(2);
    }
    if let Err(e) = std::fs::create_dir_all(&dir) {
        eprintln!("bus-keygen: {}: {e}", dir.display());
        return ExitCode::FAILURE;
    }
    let pair = bus::curve::KeyPair::generate();
    match pair.write_files(&dir, &a.name) {
        Ok(()) => {
            println!("{}", pair.public);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("bus-keygen: {e}");
            ExitCode::FAILURE
        }
    }
}
