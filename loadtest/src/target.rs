//! The request to send: the URL (with its optional `{i}` key pattern), method,
//! headers and body, turned once into a template that makes each request
//! with as little work as possible (the hot path clones refcounted parts).

use std::net::{SocketAddr, ToSocketAddrs};

use bytes::Bytes;
use http::uri::{Authority, Uri};
use http::{HeaderMap, HeaderValue, Method, Request};
use http_body_util::Full;

use crate::args::KeyOrder;

/// The placeholder replaced by a key.
const KEY: &str = "{i}";

/// Up to this many keys, every URI is built before the run; beyond it each
/// request formats its own (one allocation) to keep memory bounded.
const PREBUILT_KEYS: u64 = 1 << 16;

/// A parsed `http://host:port/path?query` whose path/query may contain `{i}`.
#[derive(Debug, Clone)]
pub struct Target {
    pub raw: String,
    pub authority: Authority,
    host: String,
    port: u16,
    /// Path and query split on `{i}`: one piece when there is no key.
    pieces: Vec<String>,
}

impl Target {
    pub fn parse(s: &str) -> Result<Target, String> {
        // `{` is not a URI character: validate with a stand-in key.
        let probe = s.replace(KEY, "0");
        let uri: Uri = probe.parse().map_err(|e| format!("bad URL {s:?}: {e}"))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some("https") => {
                return Err(format!(
                    "bad URL {s:?}: https is not supported (use http:// or h2c with --h2)"
                ))
            }
            _ => return Err(format!("bad URL {s:?}: expected http://host[:port]/path")),
        }
        let authority = uri
            .authority()
            .cloned()
            .ok_or_else(|| format!("bad URL {s:?}: no host"))?;
        if authority.as_str().contains('@') {
            return Err(format!(
                "bad URL {s:?}: credentials in URLs are not supported"
            ));
        }
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        if host.is_empty() {
            return Err(format!("bad URL {s:?}: no host"));
        }
        // `port_u16` is `None` both without a port and with one out of range:
        // tell them apart so `:99999` is an error, not port 80.
        let after_host = authority
            .as_str()
            .rsplit_once(']')
            .map_or(authority.as_str(), |(_, rest)| rest);
        let port = match after_host.rsplit_once(':') {
            None | Some((_, "")) => 80,
            Some((_, p)) => p
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| format!("bad URL {s:?}: bad port {p:?} (1..65535)"))?,
        };
        // Locate the path/query in the original text so `{i}` survives.
        let after_scheme = &s[s.find("://").map(|i| i + 3).unwrap_or(0)..];
        let path_start = after_scheme.find(['/', '?']).unwrap_or(after_scheme.len());
        if after_scheme[..path_start].contains(KEY) {
            return Err(format!(
                "bad URL {s:?}: {KEY} may only appear in the path or query"
            ));
        }
        let mut pq = after_scheme[path_start..].to_string();
        if let Some(h) = pq.find('#') {
            pq.truncate(h);
        }
        if pq.is_empty() || pq.starts_with('?') {
            pq.insert(0, '/');
        }
        Ok(Target {
            raw: s.to_string(),
            authority,
            host,
            port,
            pieces: pq.split(KEY).map(str::to_string).collect(),
        })
    }

    pub fn has_key(&self) -> bool {
        self.pieces.len() > 1
    }

    /// Resolves the host once, before the run (DNS stays off the hot path).
    pub fn resolve(&self) -> Result<SocketAddr, String> {
        (self.host.as_str(), self.port)
            .to_socket_addrs()
            .map_err(|e| format!("cannot resolve {}: {e}", self.authority))?
            .next()
            .ok_or_else(|| format!("cannot resolve {}: no address", self.authority))
    }

    /// Path and query with `{i}` replaced by `key`.
    fn path_for(&self, key: u64) -> String {
        let k = key.to_string();
        self.pieces.join(&k)
    }
}

/// Builds each request. Shared read-only by all users of a worker thread.
pub struct Template {
    method: Method,
    headers: HeaderMap,
    body: Bytes,
    uris: Uris,
    /// The lean HTTP/1.1 client's requests, serialized (see [`crate::h1`]).
    raw: Option<Raw>,
    keys: (u64, u64),
    order: KeyOrder,
}

enum Raw {
    /// One per key (or a single one without keys).
    Prebuilt(Vec<Bytes>),
    /// Too many keys to keep: serialized per request into a reused buffer.
    Formatted(Target),
}

enum Uris {
    One(Uri),
    Prebuilt(Vec<Uri>),
    /// Formatted per request: prefix (scheme+authority for h2) and the target.
    Formatted {
        prefix: String,
        target: Target,
    },
}

/// What the user asked every request to carry besides its URL.
pub struct RequestSpec<'a> {
    pub method: Method,
    pub headers: &'a [(http::HeaderName, HeaderValue)],
    pub body: Bytes,
    /// The range `{i}` takes (B excluded); `None` without a key pattern.
    pub keys: Option<(u64, u64)>,
    pub order: KeyOrder,
}

impl Template {
    /// `h2`: requests for hyper's h2c client; otherwise HTTP/1.1, serialized
    /// for the lean client when `lean_h1` (else built for hyper's).
    pub fn new(
        target: &Target,
        h2: bool,
        lean_h1: bool,
        spec: RequestSpec<'_>,
    ) -> Result<Template, String> {
        let RequestSpec {
            method,
            headers: extra,
            body,
            keys,
            order,
        } = spec;
        let mut headers = HeaderMap::new();
        // HTTP/1.1 needs Host; h2 carries the authority in the URI instead
        // (hyper's low-level connections add neither).
        if !h2 {
            headers.insert(
                http::header::HOST,
                HeaderValue::from_str(target.authority.as_str()).map_err(|e| e.to_string())?,
            );
        }
        for (k, v) in extra {
            headers.append(k.clone(), v.clone());
        }
        if !body.is_empty() && !headers.contains_key(http::header::CONTENT_TYPE) {
            headers.insert(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            );
        }
        // h1 sends origin-form (`/path`), h2 needs the absolute URI for its
        // :scheme/:authority pseudo-headers.
        let prefix = if h2 {
            format!("http://{}", target.authority)
        } else {
            String::new()
        };
        let make = |pq: &str| -> Result<Uri, String> {
            format!("{prefix}{pq}")
                .parse::<Uri>()
                .map_err(|e| format!("bad URL {:?}: {e}", target.raw))
        };
        let keys = keys.unwrap_or((0, 1));
        let uris = if !target.has_key() {
            Uris::One(make(&target.pieces[0])?)
        } else if keys.1 - keys.0 <= PREBUILT_KEYS {
            Uris::Prebuilt(
                (keys.0..keys.1)
                    .map(|k| make(&target.path_for(k)))
                    .collect::<Result<_, _>>()?,
            )
        } else {
            // Validate the pattern once with the largest key.
            make(&target.path_for(keys.1 - 1))?;
            Uris::Formatted {
                prefix,
                target: target.clone(),
            }
        };
        let raw = (lean_h1 && !h2).then(|| {
            let ser = |pq: &str| {
                let mut out = Vec::new();
                crate::h1::serialize(
                    &method,
                    pq,
                    target.authority.as_str(),
                    &headers,
                    &body,
                    &mut out,
                );
                Bytes::from(out)
            };
            match &uris {
                Uris::Formatted { .. } => Raw::Formatted(target.clone()),
                _ if !target.has_key() => Raw::Prebuilt(vec![ser(&target.pieces[0])]),
                _ => Raw::Prebuilt((keys.0..keys.1).map(|k| ser(&target.path_for(k))).collect()),
            }
        });
        Ok(Template {
            method,
            headers,
            body,
            uris,
            raw,
            keys,
            order,
        })
    }

    /// A per-user cursor over the keys; users start spread over the range so
    /// round-robin covers it evenly across connections.
    pub fn cursor(&self, user: u64, users: u64) -> KeyCursor {
        let n = self.keys.1 - self.keys.0;
        KeyCursor {
            next: user % n,
            step: users % n,
            n,
        }
    }

    /// The next serialized request for the lean HTTP/1.1 client; `scratch`
    /// is used only when requests are formatted per key.
    pub fn h1_request<'a>(&'a self, cur: &mut KeyCursor, scratch: &'a mut Vec<u8>) -> &'a [u8] {
        match &self.raw {
            Some(Raw::Prebuilt(v)) if v.len() == 1 => &v[0],
            Some(Raw::Prebuilt(v)) => &v[cur.next(self.order) as usize],
            Some(Raw::Formatted(target)) => {
                let k = self.keys.0 + cur.next(self.order);
                crate::h1::serialize(
                    &self.method,
                    &target.path_for(k),
                    target.authority.as_str(),
                    &self.headers,
                    &self.body,
                    scratch,
                );
                scratch
            }
            None => unreachable!("h1_request on a template built for hyper"),
        }
    }

    /// HEAD responses have no body, whatever their headers say.
    pub fn is_head(&self) -> bool {
        self.method == Method::HEAD
    }

    pub fn request(&self, cur: &mut KeyCursor) -> Request<Full<Bytes>> {
        let uri = match &self.uris {
            Uris::One(u) => u.clone(),
            Uris::Prebuilt(v) => v[cur.next(self.order) as usize].clone(),
            Uris::Formatted { prefix, target } => {
                let k = self.keys.0 + cur.next(self.order);
                format!("{prefix}{}", target.path_for(k))
                    .parse()
                    .expect("validated pattern with a numeric key")
            }
        };
        let mut req = Request::new(Full::new(self.body.clone()));
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = uri;
        *req.headers_mut() = self.headers.clone();
        req
    }
}

/// Which key a user sends next (an offset into the key range).
pub struct KeyCursor {
    next: u64,
    step: u64,
    n: u64,
}

impl KeyCursor {
    fn next(&mut self, order: KeyOrder) -> u64 {
        match order {
            KeyOrder::Random => fastrand::u64(0..self.n),
            KeyOrder::RoundRobin => {
                let k = self.next;
                // A step of 0 (users a multiple of keys) would pin each user
                // to one key: fall back to 1 so every user still cycles.
                let step = if self.step == 0 { 1 } else { self.step };
                self.next = (self.next + step) % self.n;
                k
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_urls() {
        let t = Target::parse("http://127.0.0.1:8000/kv/k{i}?x={i}").unwrap();
        assert!(t.has_key());
        assert_eq!(t.path_for(7), "/kv/k7?x=7");
        assert_eq!(t.port, 8000);
        let t = Target::parse("http://[::1]:8080/x").unwrap();
        assert_eq!((t.host.as_str(), t.port), ("::1", 8080));
        let t = Target::parse("http://[::1]/x").unwrap();
        assert_eq!((t.host.as_str(), t.port), ("::1", 80));
        let t = Target::parse("http://localhost").unwrap();
        assert_eq!((t.pieces[0].as_str(), t.port), ("/", 80));
        for bad in [
            "",
            "foo",
            "https://x/",
            "ftp://x/",
            "http://{i}/",
            "http:///x",
            "http://a b/",
            "http://127.0.0.1:99999/",
            "http://127.0.0.1:0/",
            "http://[::1]:70000/",
        ] {
            assert!(Target::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn keys_round_robin_and_formatted() {
        let t = Target::parse("http://h:1/k{i}").unwrap();
        let spec = |keys, order| RequestSpec {
            method: Method::GET,
            headers: &[],
            body: Bytes::new(),
            keys: Some(keys),
            order,
        };
        let tpl = Template::new(&t, false, true, spec((10, 13), KeyOrder::RoundRobin)).unwrap();
        let mut c = tpl.cursor(0, 1);
        let got: Vec<String> = (0..4)
            .map(|_| tpl.request(&mut c).uri().to_string())
            .collect();
        assert_eq!(got, ["/k10", "/k11", "/k12", "/k10"]);
        assert_eq!(tpl.request(&mut c).headers()["host"], "h:1");
        let mut scratch = Vec::new();
        let raw = tpl.h1_request(&mut c, &mut scratch);
        assert_eq!(raw, b"GET /k12 HTTP/1.1\r\nhost: h:1\r\n\r\n");

        let big = Template::new(&t, true, false, spec((0, 1 << 20), KeyOrder::Random)).unwrap();
        let mut c = big.cursor(0, 1);
        let u = big.request(&mut c).uri().to_string();
        assert!(u.starts_with("http://h:1/k"), "{u}");
    }
}
