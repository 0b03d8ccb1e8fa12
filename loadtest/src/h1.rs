//! A lean HTTP/1.1 client connection for the hot path: the request is bytes
//! serialized once before the run, the response is parsed in place with
//! httparse and its body skipped without being kept. One write and
//! (usually) one read per request, no allocation, no channel between a
//! request future and a connection task.
//!
//! Why not hyper's client here: measured against `wrk -t1 -c64` on the
//! baseline server, hyper's `conn::http1` spent ~4 µs of user CPU per
//! request (dispatch channel, header maps, body channel, self-wakeups)
//! against wrk's ~0.8 µs, and on a small machine the generator's CPU comes
//! out of the server's. `--hyper` still selects hyper to cross-check.

use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Response heads larger than this are refused (a generator has no use for
/// them, and it bounds the buffer).
const MAX_HEAD: usize = 64 << 10;
const MAX_HEADERS: usize = 64;
const BUF: usize = 16 << 10;
/// A connection idle longer than this is checked for the server's close
/// before a request is written on it (one non-blocking read; back-to-back
/// requests skip it).
const STALE_CHECK_AFTER: Duration = Duration::from_millis(1);

pub struct Conn {
    stream: TcpStream,
    buf: Box<[u8]>,
    /// `buf[start..end]` holds received bytes not yet consumed.
    start: usize,
    end: usize,
    /// When the last response ended; `None` before the first.
    idle_since: Option<Instant>,
}

/// A complete response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    /// The connection may carry another request.
    pub reusable: bool,
}

#[derive(Debug)]
pub enum Error {
    /// Nothing was sent: the connection was already closed by the server
    /// (its idle close, seen before writing). Send again on a fresh one.
    Closed,
    /// The request was written, then the connection ended (EOF or reset)
    /// before the response was complete: a failed request, what wrk calls
    /// a read error.
    Read(&'static str),
    /// Writing the request failed.
    Write(io::Error),
    Protocol(&'static str),
}

enum Body {
    None,
    Length(u64),
    Chunked,
    /// No length: the body runs to the end of the connection.
    UntilClose,
}

impl Conn {
    pub async fn connect(addr: SocketAddr) -> io::Result<Conn> {
        let stream = TcpStream::connect(addr).await?;
        // Requests are small and latency is the point.
        stream.set_nodelay(true)?;
        Ok(Conn {
            stream,
            buf: vec![0; BUF].into_boxed_slice(),
            start: 0,
            end: 0,
            idle_since: None,
        })
    }

    /// Whether the server closed this connection while it sat idle: a
    /// request written now would be lost, not answered.
    fn closed_while_idle(&mut self) -> bool {
        match self.stream.try_read(&mut self.buf) {
            Ok(0) => true,
            Ok(_) => false, // stray bytes: dropped before the next response
            Err(e) => e.kind() != io::ErrorKind::WouldBlock,
        }
    }

    /// Sends `req` (a complete serialized request) and reads the response.
    /// `head` says the request was HEAD (its response has no body).
    pub async fn exchange(&mut self, req: &[u8], head: bool) -> Result<Response, Error> {
        if self
            .idle_since
            .is_some_and(|t| t.elapsed() >= STALE_CHECK_AFTER)
            && self.closed_while_idle()
        {
            return Err(Error::Closed);
        }
        self.idle_since = None;
        self.stream.write_all(req).await.map_err(Error::Write)?;
        // A response cannot start before the request went out: anything
        // left over from before is garbage from a broken previous exchange.
        self.start = 0;
        self.end = 0;
        let r = self.response(head).await;
        if r.is_ok() {
            self.idle_since = Some(Instant::now());
        }
        r
    }

    async fn response(&mut self, head: bool) -> Result<Response, Error> {
        loop {
            let (status, body, close, head_len) = match self.parse_head(head)? {
                Some(h) => h,
                None => {
                    if self.fill().await? == 0 {
                        return Err(Error::Read(if self.end == 0 {
                            "connection closed before the response"
                        } else {
                            "connection closed inside the response head"
                        }));
                    }
                    continue;
                }
            };
            self.start += head_len;
            if (100..200).contains(&status) && status != 101 {
                continue; // interim response (100 Continue): the real one follows
            }
            let reusable = !close && !matches!(body, Body::UntilClose);
            match body {
                Body::None => {}
                Body::Length(n) => self.skip(n).await?,
                Body::Chunked => self.skip_chunked().await?,
                Body::UntilClose => loop {
                    self.start = 0;
                    self.end = 0;
                    if self.fill().await? == 0 {
                        break;
                    }
                },
            }
            return Ok(Response { status, reusable });
        }
    }

    /// Parses the head in the buffer: `None` if incomplete.
    fn parse_head(&mut self, head_req: bool) -> Result<Option<(u16, Body, bool, usize)>, Error> {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut r = httparse::Response::new(&mut headers);
        let n = match r.parse(&self.buf[self.start..self.end]) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(_) => return Err(Error::Protocol("malformed response head")),
        };
        let status = r.code.unwrap_or(0);
        let mut close = r.version == Some(0); // HTTP/1.0 closes unless told otherwise
        let mut length = None;
        let mut chunked = false;
        for h in r.headers.iter() {
            if h.name.eq_ignore_ascii_case("content-length") {
                let v = std::str::from_utf8(h.value)
                    .ok()
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .ok_or(Error::Protocol("bad content-length"))?;
                length = Some(v);
            } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                chunked = last_token_is(h.value, b"chunked");
            } else if h.name.eq_ignore_ascii_case("connection") {
                if contains_token(h.value, b"close") {
                    close = true;
                } else if contains_token(h.value, b"keep-alive") {
                    close = false;
                }
            }
        }
        let body = if head_req || status == 204 || status == 304 || (100..200).contains(&status) {
            Body::None
        } else if chunked {
            Body::Chunked
        } else if let Some(n) = length {
            Body::Length(n)
        } else {
            Body::UntilClose
        };
        Ok(Some((status, body, close, n)))
    }

    /// Reads more bytes after `end`, compacting first if the buffer is full.
    /// Returns 0 at end of stream; a failed read (a reset) is a cut
    /// response.
    async fn fill(&mut self) -> Result<usize, Error> {
        if self.end == self.buf.len() {
            if self.start == 0 {
                // A head that fills the whole buffer: grow once, up to the cap.
                if self.buf.len() >= MAX_HEAD {
                    return Err(Error::Protocol("response head too large"));
                }
                let mut bigger = vec![0; MAX_HEAD].into_boxed_slice();
                bigger[..self.end].copy_from_slice(&self.buf[..self.end]);
                self.buf = bigger;
            } else {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            }
        }
        let n = self
            .stream
            .read(&mut self.buf[self.end..])
            .await
            .map_err(|_| Error::Read("connection reset before the response was complete"))?;
        self.end += n;
        Ok(n)
    }

    /// Consumes `n` body bytes, reading (and dropping) what is not buffered.
    async fn skip(&mut self, mut n: u64) -> Result<(), Error> {
        loop {
            let have = (self.end - self.start) as u64;
            let take = have.min(n);
            self.start += take as usize;
            n -= take;
            if n == 0 {
                return Ok(());
            }
            // Nothing buffered is needed any more: read from the start.
            self.start = 0;
            self.end = 0;
            if self.fill().await? == 0 {
                return Err(Error::Read("connection closed inside the body"));
            }
        }
    }

    async fn skip_chunked(&mut self) -> Result<(), Error> {
        loop {
            let size = loop {
                match httparse::parse_chunk_size(&self.buf[self.start..self.end]) {
                    Ok(httparse::Status::Complete((used, size))) => {
                        self.start += used;
                        break size;
                    }
                    Ok(httparse::Status::Partial) => self.more("chunk size").await?,
                    Err(_) => return Err(Error::Protocol("bad chunk size")),
                }
            };
            if size == 0 {
                // Trailer lines up to an empty one.
                loop {
                    let line = loop {
                        match self.buf[self.start..self.end]
                            .windows(2)
                            .position(|w| w == b"\r\n")
                        {
                            Some(p) => break p,
                            None => self.more("chunk trailer").await?,
                        }
                    };
                    self.start += line + 2;
                    if line == 0 {
                        return Ok(());
                    }
                }
            }
            self.skip(size + 2).await?; // data and its CRLF
        }
    }

    async fn more(&mut self, what: &'static str) -> Result<(), Error> {
        if self.fill().await? == 0 {
            return Err(Error::Read(match what {
                "chunk size" => "connection closed inside a chunk size",
                _ => "connection closed inside the chunk trailer",
            }));
        }
        Ok(())
    }
}

fn tokens(v: &[u8]) -> impl Iterator<Item = &[u8]> {
    v.split(|b| *b == b',').map(|t| t.trim_ascii())
}

fn contains_token(v: &[u8], t: &[u8]) -> bool {
    tokens(v).any(|x| x.eq_ignore_ascii_case(t))
}

fn last_token_is(v: &[u8], t: &[u8]) -> bool {
    tokens(v).last().is_some_and(|x| x.eq_ignore_ascii_case(t))
}

/// Serializes a request: request line, Host, the user's headers, a
/// content-length when there is a body (or the method expects one), body.
pub fn serialize(
    method: &http::Method,
    path_and_query: &str,
    authority: &str,
    headers: &http::HeaderMap,
    body: &[u8],
    out: &mut Vec<u8>,
) {
    out.clear();
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(path_and_query.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    if !headers.contains_key(http::header::HOST) {
        out.extend_from_slice(b"host: ");
        out.extend_from_slice(authority.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    for (k, v) in headers {
        out.extend_from_slice(k.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(v.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    let wants_length = !body.is_empty()
        || matches!(
            *method,
            http::Method::POST | http::Method::PUT | http::Method::PATCH
        );
    if wants_length
        && !headers.contains_key(http::header::CONTENT_LENGTH)
        && !headers.contains_key(http::header::TRANSFER_ENCODING)
    {
        out.extend_from_slice(b"content-length: ");
        out.extend_from_slice(body.len().to_string().as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    /// A server that answers each request with the next canned response.
    async fn canned(responses: Vec<&'static [u8]>) -> SocketAddr {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut buf = [0u8; 4096];
            for r in responses {
                let _ = s.read(&mut buf).await.unwrap();
                // Split the response in two writes to exercise partial reads.
                let mid = r.len() / 2;
                s.write_all(&r[..mid]).await.unwrap();
                s.flush().await.unwrap();
                tokio::task::yield_now().await;
                s.write_all(&r[mid..]).await.unwrap();
            }
        });
        addr
    }

    #[tokio::test]
    async fn parses_lengths_chunks_and_close() {
        let addr = canned(vec![
            b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello",
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 503 Busy\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nbusy\r\n3;x=1\r\nabc\r\n0\r\nx-t: 1\r\n\r\n",
            b"HTTP/1.1 204 No Content\r\n\r\n",
            b"HTTP/1.1 504 Late\r\nconnection: close\r\ncontent-length: 2\r\n\r\nno",
        ])
        .await;
        let mut c = Conn::connect(addr).await.unwrap();
        let req = b"GET / HTTP/1.1\r\nhost: x\r\n\r\n";
        let ok = |status, reusable| Response { status, reusable };
        assert_eq!(c.exchange(req, false).await.unwrap(), ok(200, true));
        assert_eq!(c.exchange(req, false).await.unwrap(), ok(503, true));
        assert_eq!(c.exchange(req, false).await.unwrap(), ok(204, true));
        assert_eq!(c.exchange(req, false).await.unwrap(), ok(504, false));
        // The server is gone: whether the write or the read notices.
        assert!(matches!(
            c.exchange(req, false).await,
            Err(Error::Read(_) | Error::Write(_) | Error::Closed)
        ));
    }

    /// A kept-alive connection the server closed while it was idle: the
    /// next request is not written (nothing lost, send it again), while a
    /// request the server read and then cut is a `Read` failure.
    #[tokio::test]
    async fn idle_close_is_closed_and_a_cut_request_is_a_read_error() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let (closed_tx, closed_rx) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let mut buf = [0u8; 4096];
            // First connection: one answer, then an idle close.
            let (mut s, _) = l.accept().await.unwrap();
            let _ = s.read(&mut buf).await.unwrap();
            s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                .await
                .unwrap();
            drop(s);
            let _ = closed_tx.send(());
            // Second: the request is read, then the connection closed.
            let (mut s, _) = l.accept().await.unwrap();
            let _ = s.read(&mut buf).await.unwrap();
        });
        let req = b"GET / HTTP/1.1\r\nhost: x\r\n\r\n";
        let mut c = Conn::connect(addr).await.unwrap();
        assert_eq!(c.exchange(req, false).await.unwrap().status, 200);
        closed_rx.await.unwrap();
        // Idle past the check threshold (the condition under test).
        tokio::time::sleep(STALE_CHECK_AFTER * 2).await;
        assert!(matches!(c.exchange(req, false).await, Err(Error::Closed)));
        let mut c = Conn::connect(addr).await.unwrap();
        assert!(matches!(c.exchange(req, false).await, Err(Error::Read(_))));
    }

    #[tokio::test]
    async fn body_until_close_and_garbage() {
        let addr = canned(vec![b"HTTP/1.0 200 OK\r\n\r\nall of it"]).await;
        let mut c = Conn::connect(addr).await.unwrap();
        let r = c.exchange(b"GET / HTTP/1.1\r\n\r\n", false).await.unwrap();
        assert_eq!(
            r,
            Response {
                status: 200,
                reusable: false
            }
        );

        let addr = canned(vec![b"NOT HTTP AT ALL\r\n\r\n"]).await;
        let mut c = Conn::connect(addr).await.unwrap();
        assert!(matches!(
            c.exchange(b"GET / HTTP/1.1\r\n\r\n", false).await,
            Err(Error::Protocol(_))
        ));
    }

    #[test]
    fn serializes_requests() {
        let mut h = http::HeaderMap::new();
        h.insert("x-a", "1".parse().unwrap());
        let mut out = Vec::new();
        serialize(&http::Method::POST, "/k1?x", "h:1", &h, b"hi", &mut out);
        assert_eq!(
            out,
            b"POST /k1?x HTTP/1.1\r\nhost: h:1\r\nx-a: 1\r\ncontent-length: 2\r\n\r\nhi"
        );
        serialize(
            &http::Method::GET,
            "/",
            "h",
            &http::HeaderMap::new(),
            b"",
            &mut out,
        );
        assert_eq!(out, b"GET / HTTP/1.1\r\nhost: h\r\n\r\n");
    }
}
