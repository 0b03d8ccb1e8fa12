//! The benchmark baseline: a bare hyper server (HTTP/1.1 + h2c) answering
//! every request directly with the same body as the aggregator's `GET /echo`.
//! `scripts/bench` measures the stack against it in the same run.

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use bytes::Bytes;
use clap::Parser;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;

#[derive(Parser)]
#[command(name = "baseline", about = "Bare hyper server: the benchmark baseline")]
struct Args {
    /// Listen address
    #[arg(long, default_value = "127.0.0.1:8090")]
    addr: std::net::SocketAddr,
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let l = match tokio::net::TcpListener::bind(args.addr).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("baseline: cannot listen on {}: {e}", args.addr);
                return std::process::ExitCode::FAILURE;
            }
        };
        println!("baseline listening http=http://{}", l.local_addr().unwrap());
        loop {
            let Ok((s, _)) = l.accept().await else {
                continue;
            };
            let _ = s.set_nodelay(true);
            tokio::spawn(async move {
                let svc = service_fn(|_req| async {
                    let mut r = http::Response::new(Full::new(Bytes::from_static(b"echo\n")));
                    r.headers_mut()
                        .insert("content-type", http::HeaderValue::from_static("text/plain"));
                    Ok::<_, std::convert::Infallible>(r)
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    })
}
