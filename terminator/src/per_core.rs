//! Experiment, not a supported mode: one current-thread runtime per core,
//! each accepting from the same HTTP socket and owning its own bus
//! connections, so a request never leaves the thread that accepted it.
//! `SWITCHBOARD_RUNTIME=per-core` selects it; docs/benchmarks.md compares
//! it with the shared multi-thread runtime (which stays the default because
//! it measured as fast or faster; see there).

use crate::config::Settings;
use std::process::ExitCode;

pub(crate) fn main(settings: Settings) -> ExitCode {
    let http = match std::net::TcpListener::bind(settings.http) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("terminator: cannot listen on {} (http): {e}", settings.http);
            return ExitCode::FAILURE;
        }
    };
    let admin = match std::net::TcpListener::bind(settings.admin) {
        Ok(l) => l,
        Err(e) => {
            eprintln!(
                "terminator: cannot listen on {} (admin): {e}",
                settings.admin
            );
            return ExitCode::FAILURE;
        }
    };
    println!(
        "terminator listening http=http://{} admin=http://{}",
        http.local_addr().map(|a| a.to_string()).unwrap_or_default(),
        admin
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_default()
    );
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut threads = Vec::new();
    for i in 0..cores {
        let settings = settings.clone();
        let (http, admin) = match (http.try_clone(), admin.try_clone()) {
            (Ok(h), Ok(a)) => (h, a),
            _ => return ExitCode::FAILURE,
        };
        threads.push(std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let _ = http.set_nonblocking(true);
                let http = tokio::net::TcpListener::from_std(http).expect("http listener");
                // Only the first runtime serves the admin port; the others
                // get a private one (the metrics registry is process-wide).
                let admin = if i == 0 {
                    let _ = admin.set_nonblocking(true);
                    tokio::net::TcpListener::from_std(admin).expect("admin listener")
                } else {
                    tokio::net::TcpListener::bind("127.0.0.1:0")
                        .await
                        .expect("admin listener")
                };
                crate::run(settings, http, admin, bus::signal::shutdown()).await
            })
        }));
    }
    let mut code = ExitCode::SUCCESS;
    for t in threads {
        if !matches!(t.join(), Ok(Ok(()))) {
            code = ExitCode::FAILURE;
        }
    }
    code
}
