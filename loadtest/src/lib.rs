//! `loadtest`: placeholder until its issue lands; it parses its flags so the
//! workspace's binaries all answer `--help`.
//!
//! # Layout
//!
//! - `main`: flag parsing.

use clap::Parser;

/// Switchboard loadtest.
#[derive(Parser, Debug)]
#[command(name = "loadtest", version, about)]
struct Args {}

pub fn main() -> std::process::ExitCode {
    let _args = Args::parse();
    eprintln!("loadtest: not implemented yet");
    std::process::ExitCode::from(2)
}
