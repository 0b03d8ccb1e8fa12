//! `terminator`: placeholder until its issue lands; it parses its flags so the
//! workspace's binaries all answer `--help`.
//!
//! # Layout
//!
//! - `main`: flag parsing.

use clap::Parser;

/// Switchboard terminator.
#[derive(Parser, Debug)]
#[command(name = "terminator", version, about)]
struct Args {}

pub fn main() -> std::process::ExitCode {
    let _args = Args::parse();
    eprintln!("terminator: not implemented yet");
    std::process::ExitCode::from(2)
}
