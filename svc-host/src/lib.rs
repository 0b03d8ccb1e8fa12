//! What every bus service process needs besides the bus: the admin HTTP
//! listener, logging set up the same way everywhere, and the runtime.
//!
//! # Layout
//!
//! - [`admin`]: `/healthz`, `/readyz` and process-specific JSON pages.
//! - [`init_tracing`], [`runtime`]: process setup shared by the binaries.

pub mod admin;

/// Logs to stderr, filtered by `SWITCHBOARD_LOG` (default `info`).
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SWITCHBOARD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// The multi-thread tokio runtime every service binary runs on.
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
}
