//! One keep-alive HTTP/1.1 connection, for tests that send thousands of
//! requests (a curl process each would spend seconds on process starts).
//! Enough HTTP for the stack's own answers: `content-length` bodies only.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

pub struct Conn {
    s: TcpStream,
    buf: Vec<u8>,
}

/// A response: status, headers (names lowercase), body.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

impl Conn {
    /// `http`: `http://host:port` or `host:port`.
    pub fn open(http: &str) -> Conn {
        let s = TcpStream::connect(http.trim_start_matches("http://")).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("read timeout");
        s.set_nodelay(true).expect("nodelay");
        Conn { s, buf: Vec::new() }
    }

    /// Sends one request (`headers`: `name: value` lines) and reads its
    /// response.
    pub fn send(&mut self, method: &str, path: &str, headers: &[&str], body: &[u8]) -> Answer {
        let mut req = format!("{method} {path} HTTP/1.1\r\nhost: t\r\n");
        for h in headers {
            req.push_str(h);
            req.push_str("\r\n");
        }
        if !body.is_empty() || method == "PUT" || method == "POST" {
            req.push_str(&format!("content-length: {}\r\n", body.len()));
        }
        req.push_str("\r\n");
        let mut out = req.into_bytes();
        out.extend_from_slice(body);
        self.s.write_all(&out).expect("send");
        self.buf.clear();
        let mut chunk = [0u8; 8192];
        loop {
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.buf[..end]).to_string();
                let mut lines = head.split("\r\n");
                let status = lines
                    .next()
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|s| s.parse().ok())
                    .expect("a status line");
                let headers: Vec<(String, String)> = lines
                    .filter_map(|l| l.split_once(':'))
                    .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
                    .collect();
                let len: usize = headers
                    .iter()
                    .find(|(n, _)| n == "content-length")
                    .and_then(|(_, v)| v.parse().ok())
                    .unwrap_or(0);
                let len = if method == "HEAD" { 0 } else { len };
                if self.buf.len() >= end + 4 + len {
                    let body = self.buf[end + 4..end + 4 + len].to_vec();
                    return Answer {
                        status,
                        headers,
                        body,
                    };
                }
            }
            let n = self.s.read(&mut chunk).expect("response");
            assert!(n > 0, "connection closed mid-response");
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}
