//! A raw ZMTP peer on a blocking TCP socket: it sends exactly the bytes a
//! test asks for, including ones the bus client never would (an expired
//! budget, bad frames, a truncated greeting).

use bus::zmtp::frame::{self, Command, Metadata};
use bus::zmtp::greeting;
use bytes::{Bytes, BytesMut};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

pub struct RawPeer {
    pub stream: TcpStream,
    buf: BytesMut,
}

impl RawPeer {
    /// Connects to `tcp://HOST:PORT` and completes the NULL handshake as a
    /// `socket_type` (e.g. "DEALER", "SUB").
    pub fn connect(endpoint: &str, socket_type: &str) -> RawPeer {
        let addr = endpoint.trim_start_matches("tcp://");
        let mut stream = TcpStream::connect(addr).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        stream.write_all(&greeting::encode("NULL", false)).unwrap();
        let mut g = [0u8; greeting::GREETING_LEN];
        stream.read_exact(&mut g).expect("greeting");
        greeting::parse(&g)
            .expect("valid greeting")
            .expect("complete");
        let mut out = Vec::new();
        Command::Ready(Metadata(vec![(
            Bytes::from_static(b"Socket-Type"),
            Bytes::copy_from_slice(socket_type.as_bytes()),
        )]))
        .put(&mut out);
        stream.write_all(&out).unwrap();
        let mut p = RawPeer {
            stream,
            buf: BytesMut::new(),
        };
        match p.next_frame(Duration::from_secs(5)) {
            Some(f) if f.is_command() => {
                assert!(matches!(Command::parse(f.body).unwrap(), Command::Ready(_)))
            }
            other => panic!("expected READY, got {other:?}"),
        }
        p
    }

    /// Sends one message of `frames`.
    pub fn send(&mut self, frames: &[&[u8]]) {
        let mut out = Vec::new();
        for (i, f) in frames.iter().enumerate() {
            frame::put_frame(&mut out, i + 1 < frames.len(), f);
        }
        self.stream.write_all(&out).unwrap();
    }

    /// The next message, skipping commands (PING gets no PONG: tests are
    /// shorter than a heartbeat timeout); `None` after `timeout` or on close.
    pub fn recv(&mut self, timeout: Duration) -> Option<Vec<Bytes>> {
        let mut frames = Vec::new();
        loop {
            let f = self.next_frame(timeout)?;
            if f.is_command() {
                continue;
            }
            let more = f.more();
            frames.push(f.body);
            if !more {
                return Some(frames);
            }
        }
    }

    fn next_frame(&mut self, timeout: Duration) -> Option<frame::RawFrame> {
        self.stream.set_read_timeout(Some(timeout)).unwrap();
        loop {
            if let Some(f) = frame::parse(&mut self.buf, 64 << 20).expect("valid frame") {
                return Some(f);
            }
            let mut chunk = [0u8; 16 * 1024];
            match self.stream.read(&mut chunk) {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// Whether the peer has closed the connection within `timeout`.
    pub fn closed_within(&mut self, timeout: Duration) -> bool {
        closed_within(&mut self.stream, timeout)
    }
}

/// Whether the other side closes `stream` (EOF or reset) within `timeout`,
/// skipping whatever it still sends.
pub fn closed_within(stream: &mut TcpStream, timeout: Duration) -> bool {
    stream.set_read_timeout(Some(timeout)).unwrap();
    let mut chunk = [0u8; 4096];
    let end = std::time::Instant::now() + timeout;
    while std::time::Instant::now() < end {
        match stream.read(&mut chunk) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
    false
}
