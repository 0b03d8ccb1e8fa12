//! `backend-svc`: placeholder until its issue lands; it parses its flags so the
//! workspace's binaries all answer `--help`.
//!
//! # Layout
//!
//! - `main`: flag parsing.

use clap::Parser;

/// Switchboard backend-svc.
#[derive(Parser, Debug)]
#[command(name = "backend-svc", version, about)]
struct Args {}

pub fn main() -> std::process::ExitCode {
    let _args = Args::parse();
    eprintln!("backend-svc: not implemented yet");
    std::process::ExitCode::from(2)
}
