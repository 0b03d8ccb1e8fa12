//! The admin listener: small JSON pages for operators and orchestrators.
//!
//! - `/healthz`: 200 while the process runs.
//! - `/readyz`: 200 or 503 with a JSON body, from the process's [`Admin`].
//! - `/stats`: the process's own page (if any) with the telemetry
//!   counters, gauges and latency percentiles added.
//! - `/stats/histograms`: every latency histogram, HDR V2 compressed,
//!   base64, for merging across instances.
//! - anything else the process's [`Admin::reply`] (any content type, with
//!   the query) or [`Admin::page`] (JSON) knows.
//!
//! With `--admin-token FILE` ([`TokenArgs`]) every page but `/healthz` and
//! `/readyz` (what orchestrators probe) needs `Authorization: Bearer
//! TOKEN`, compared in constant time; without it the answer is 401 in the
//! one error shape (`bus::Problem`). The token file is re-read when it
//! changes and on SIGHUP (`crate::reload`). The port is bound to loopback by
//! default; bound elsewhere without a token, the process warns at start.

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use tokio::net::TcpListener;

/// `--admin-token`, shared by every binary (`#[command(flatten)]`).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct TokenArgs {
    /// File holding the bearer token that every admin page except /healthz
    /// and /readyz requires (`Authorization: Bearer TOKEN`; surrounding
    /// whitespace is ignored) [default: none: the pages are open]
    #[arg(
        long = "admin-token",
        value_name = "FILE",
        env = "SWITCHBOARD_ADMIN_TOKEN_FILE"
    )]
    pub admin_token: Option<PathBuf>,
}

impl TokenArgs {
    /// The token read from the file, None without the flag, or the problem
    /// (naming the file).
    pub fn token(&self) -> Result<Option<Token>, String> {
        let Some(p) = &self.admin_token else {
            return Ok(None);
        };
        let t = read_token(p)?;
        Ok(Some(Token {
            current: Arc::new(RwLock::new(t)),
            file: p.clone(),
        }))
    }
}

fn read_token(p: &Path) -> Result<Arc<[u8]>, String> {
    let text = std::fs::read(p).map_err(|e| format!("--admin-token {}: {e}", p.display()))?;
    let t = text.trim_ascii();
    if t.is_empty() {
        return Err(format!("--admin-token {}: the file is empty", p.display()));
    }
    if !t.iter().all(|b| b.is_ascii_graphic()) {
        return Err(format!(
            "--admin-token {}: the token must be printable ASCII without spaces",
            p.display()
        ));
    }
    Ok(t.into())
}

/// The admin bearer token, re-read when its file changes and on SIGHUP
/// ([`Token::watch`]; a file that no longer holds a token keeps the old
/// one). Its `Debug` does not show it.
#[derive(Clone)]
pub struct Token {
    current: Arc<RwLock<Arc<[u8]>>>,
    file: PathBuf,
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Token({})", self.file.display())
    }
}

impl PartialEq for Token {
    fn eq(&self, other: &Token) -> bool {
        self.file == other.file && *self.value() == *other.value()
    }
}

impl Eq for Token {}

impl Token {
    fn value(&self) -> Arc<[u8]> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The `Authorization` value that carries this token (for a process
    /// reading a peer's admin pages with the token they share).
    pub fn bearer(&self) -> String {
        format!("Bearer {}", String::from_utf8_lossy(&self.value()))
    }

    /// Whether an `Authorization` header value carries this token
    /// (`Bearer`, any case), compared in constant time.
    pub fn allows(&self, authorization: Option<&[u8]>) -> bool {
        use subtle::ConstantTimeEq;
        let Some(v) = authorization else {
            return false;
        };
        if v.len() < 7 || !v[..7].eq_ignore_ascii_case(b"bearer ") {
            return false;
        }
        let given = v[7..].trim_ascii();
        bool::from(given.ct_eq(&self.value()))
    }

    /// Follows the file: a new token is in force within a second of being
    /// written (or at once on SIGHUP), with no restart.
    pub fn watch(&self) -> std::io::Result<()> {
        let (file, f2, current) = (self.file.clone(), self.file.clone(), self.current.clone());
        crate::reload::watch(
            "admin token",
            move || vec![crate::reload::stamp(&f2)],
            move || {
                let t = read_token(&file).map_err(|e| vec![e])?;
                *current.write().unwrap_or_else(|e| e.into_inner()) = t;
                Ok(file.display().to_string())
            },
        )
    }
}

/// A JSON page: status and body.
pub type Page = (StatusCode, String);

/// A page of any content type (HTML, JS, CSS as well as JSON).
pub struct Reply {
    pub status: StatusCode,
    pub content_type: &'static str,
    pub body: Bytes,
}

impl Reply {
    pub fn json(status: StatusCode, body: String) -> Reply {
        Reply {
            status,
            content_type: "application/json",
            body: body.into(),
        }
    }
}

impl From<Page> for Reply {
    fn from((status, body): Page) -> Reply {
        Reply::json(status, body)
    }
}

/// What a process shows on its admin port.
pub trait Admin: Send + Sync + 'static {
    /// `/readyz`: `(true, body)` when the process should take traffic.
    fn ready(&self) -> (bool, String);
    /// Any other path; `None` is a 404.
    fn page(&self, _path: &str) -> Option<Page> {
        None
    }
    /// Any path but the built-in ones, with its query, asked before
    /// [`Admin::page`]; `None` passes it on to `page`.
    fn reply(&self, _path: &str, _query: Option<&str>) -> Option<Reply> {
        None
    }
}

/// Serves the admin pages, open to all, until the task is dropped or
/// aborted.
pub async fn serve(listener: TcpListener, admin: Arc<dyn Admin>) {
    serve_with(listener, admin, None).await
}

/// [`serve`], with every page but `/healthz` and `/readyz` behind `token`
/// when there is one.
pub async fn serve_with(listener: TcpListener, admin: Arc<dyn Admin>, token: Option<Token>) {
    if let Ok(a) = listener.local_addr() {
        if !a.ip().is_loopback() && token.is_none() {
            tracing::warn!(
                admin = %a,
                "the admin port is reachable from other hosts and has no --admin-token: anyone who reaches it can read /stats"
            );
        }
    }
    if let Some(t) = &token {
        if let Err(e) = t.watch() {
            tracing::warn!(error = %e, "the admin token will not be reloaded: no watcher");
        }
    }
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
        let (admin, token) = (admin.clone(), token.clone());
        let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
            let path = req.uri().path();
            let open = matches!(path, "/healthz" | "/readyz");
            let auth = req
                .headers()
                .get(http::header::AUTHORIZATION)
                .map(|v| v.as_bytes());
            let r = match &token {
                Some(t) if !open && !t.allows(auth) => unauthorized(&req),
                _ => {
                    let reply = route(&*admin, path, req.uri().query());
                    let mut r = Response::new(Full::new(reply.body));
                    *r.status_mut() = reply.status;
                    r.headers_mut().insert(
                        http::header::CONTENT_TYPE,
                        http::HeaderValue::from_static(reply.content_type),
                    );
                    r
                }
            };
            let mut r = r;
            let h = r.headers_mut();
            h.entry(http::header::CONTENT_TYPE)
                .or_insert(http::HeaderValue::from_static("application/json"));
            // Every page is live: a cached one would be a lie. The pages
            // load nothing from elsewhere, and say so to the browser.
            h.insert(
                http::header::CACHE_CONTROL,
                http::HeaderValue::from_static("no-store"),
            );
            h.insert(
                http::header::CONTENT_SECURITY_POLICY,
                http::HeaderValue::from_static("default-src 'self'; img-src 'self' data:"),
            );
            h.insert(
                http::header::X_CONTENT_TYPE_OPTIONS,
                http::HeaderValue::from_static("nosniff"),
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

/// 401 in the one error shape, with the client's `x-request-id` when it
/// sent a sane one.
fn unauthorized<B>(req: &http::Request<B>) -> Response<Full<Bytes>> {
    let rid = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map(str::to_string)
        .unwrap_or_else(|| format!("{:024x}", fastrand::u128(..) >> 32));
    let body = bus::Problem::new(
        401,
        "unauthorized",
        "this admin page needs `Authorization: Bearer TOKEN` (the --admin-token file)",
    )
    .body(&rid);
    let mut r = Response::new(Full::new(body));
    *r.status_mut() = StatusCode::UNAUTHORIZED;
    r.headers_mut().insert(
        http::header::WWW_AUTHENTICATE,
        http::HeaderValue::from_static("Bearer realm=\"switchboard-admin\""),
    );
    if let Ok(v) = http::HeaderValue::from_str(&rid) {
        r.headers_mut().insert("x-request-id", v);
    }
    r
}

fn route(admin: &dyn Admin, path: &str, query: Option<&str>) -> Reply {
    if !matches!(
        path,
        "/healthz" | "/readyz" | "/stats" | "/stats/histograms"
    ) {
        if let Some(r) = admin.reply(path, query) {
            return r;
        }
    }
    route_json(admin, path, query).into()
}

fn route_json(admin: &dyn Admin, path: &str, query: Option<&str>) -> Page {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_from_file_and_bearer_check() {
        let p = std::env::temp_dir().join(format!("sb-token-{}", std::process::id()));
        std::fs::write(&p, "s3cret-token\n").unwrap();
        let t = TokenArgs {
            admin_token: Some(p.clone()),
        }
        .token()
        .unwrap()
        .unwrap();
        assert!(t.allows(Some(b"Bearer s3cret-token")));
        assert!(t.allows(Some(b"bearer s3cret-token")));
        assert!(!t.allows(Some(b"Bearer s3cret-toke")));
        assert!(!t.allows(Some(b"Basic s3cret-token")));
        assert!(!t.allows(None));
        assert!(!format!("{t:?}").contains("s3cret"), "{t:?}");

        // Rotated by rewriting the file: in force with no restart.
        t.watch().unwrap();
        std::fs::write(&p, "rotated-token-2\n").unwrap();
        let end = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !t.allows(Some(b"Bearer rotated-token-2")) {
            assert!(std::time::Instant::now() < end, "the new token never took");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert!(!t.allows(Some(b"Bearer s3cret-token")));

        std::fs::write(&p, "  \n").unwrap();
        let e = TokenArgs {
            admin_token: Some(p.clone()),
        }
        .token()
        .unwrap_err();
        assert!(e.contains("empty") && e.contains("sb-token"), "{e}");
        std::fs::remove_file(&p).unwrap();
        assert_eq!(TokenArgs::default().token(), Ok(None));
    }
}
