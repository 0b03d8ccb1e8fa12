//! The admin listener: small JSON pages for operators and orchestrators.
//!
//! - `/healthz`: 200 while the process runs.
//! - `/readyz`: 200 or 503 with a JSON body, from the process's [`Admin`].
//! - `/stats`: the process's own page (if any) with the telemetry
//!   counters, gauges and latency percentiles added.
//! - `/stats/histograms`: every latency histogram, HDR V2 compressed,
//!   base64, for merging across instances.
//! - anything else the process's [`Admin::page`] knows.

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use std::sync::Arc;
use tokio::net::TcpListener;

/// A JSON page: status and body.
pub type Page = (StatusCode, String);

/// What a process shows on its admin port.
pub trait Admin: Send + Sync + 'static {
    /// `/readyz`: `(true, body)` when the process should take traffic.
    fn ready(&self) -> (bool, String);
    /// Any other path; `None` is a 404.
    fn page(&self, _path: &str) -> Option<Page> {
        None
    }
}

/// Serves the admin pages until the task is dropped or aborted.
pub async fn serve(listener: TcpListener, admin: Arc<dyn Admin>) {
    let mut backoff = crate::accept::Backoff::new("admin");
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => {
                backoff.ok();
                s
            }
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tokio::time::sleep(backoff.failed(&e)).await;
                continue;
            }
        };
        let admin = admin.clone();
        let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
            let (status, body) = route(&*admin, req.uri().path(), req.uri().query());
            let mut r = Response::new(Full::new(Bytes::from(body)));
            *r.status_mut() = status;
            r.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/json"),
            );
            async move { Ok::<_, std::convert::Infallible>(r) }
        });
        tokio::spawn(async move {
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

fn route(admin: &dyn Admin, path: &str, query: Option<&str>) -> Page {
    match path {
        "/healthz" => (StatusCode::OK, "{\"status\":\"ok\"}".into()),
        "/readyz" => match admin.ready() {
            (true, body) => (StatusCode::OK, body),
            (false, body) => (StatusCode::SERVICE_UNAVAILABLE, body),
        },
        "/stats" => {
            let mut v = admin
                .page("/stats")
                .and_then(|(_, b)| serde_json::from_str::<serde_json::Value>(&b).ok())
                .filter(|v| v.is_object())
                .unwrap_or_else(|| serde_json::json!({}));
            if let (Some(o), serde_json::Value::Object(t)) =
                (v.as_object_mut(), telemetry::export::stats_json())
            {
                o.extend(t);
            }
            (StatusCode::OK, v.to_string())
        }
        // `?name=latency` keeps one histogram (what `loadtest
        // --server-stats` should merge); no query: all of them.
        "/stats/histograms" => {
            let name = query
                .into_iter()
                .flat_map(|q| q.split('&'))
                .find_map(|kv| kv.strip_prefix("name="));
            (
                StatusCode::OK,
                telemetry::export::histograms_json(name).to_string(),
            )
        }
        p => admin
            .page(p)
            .unwrap_or_else(|| (StatusCode::NOT_FOUND, "{\"error\":\"not_found\"}".into())),
    }
}
