//! Endpoints (`tcp://HOST:PORT`, `ipc://PATH`) and the byte streams under a
//! connection: TCP or a Unix socket, split into owned halves so a reader
//! and a writer task can each hold one.

use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{tcp, unix, TcpListener, TcpStream, UnixListener, UnixStream};

/// Where a peer is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    Tcp { host: String, port: u16 },
    Ipc(PathBuf),
}

impl Endpoint {
    /// `tcp://HOST:PORT` (`*` for any address when binding; port 0 picks
    /// one) or `ipc://PATH`.
    pub fn parse(ep: &str) -> Option<Endpoint> {
        match ep.split_once("://")? {
            ("tcp", rest) => {
                let (h, p) = rest.rsplit_once(':')?;
                let h = h.trim_start_matches('[').trim_end_matches(']');
                if h.is_empty() {
                    return None;
                }
                let port = if p == "*" { 0 } else { p.parse().ok()? };
                let host = if h == "*" { "0.0.0.0" } else { h };
                Some(Endpoint::Tcp {
                    host: host.to_string(),
                    port,
                })
            }
            ("ipc", rest) if !rest.is_empty() => Some(Endpoint::Ipc(PathBuf::from(rest))),
            _ => None,
        }
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Tcp { host, port } if host.contains(':') => {
                write!(f, "tcp://[{host}]:{port}")
            }
            Endpoint::Tcp { host, port } => write!(f, "tcp://{host}:{port}"),
            Endpoint::Ipc(p) => write!(f, "ipc://{}", p.display()),
        }
    }
}

pub(crate) enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

pub(crate) enum ReadHalf {
    Tcp(tcp::OwnedReadHalf),
    Unix(unix::OwnedReadHalf),
}

pub(crate) enum WriteHalf {
    Tcp(tcp::OwnedWriteHalf),
    Unix(unix::OwnedWriteHalf),
}

impl Stream {
    pub(crate) async fn connect(ep: &Endpoint) -> io::Result<Stream> {
        Ok(match ep {
            Endpoint::Tcp { host, port } => {
                let s = TcpStream::connect((host.as_str(), *port)).await?;
                // Requests are small and latency is the product.
                s.set_nodelay(true)?;
                Stream::Tcp(s)
            }
            Endpoint::Ipc(p) => Stream::Unix(UnixStream::connect(p).await?),
        })
    }

    pub(crate) fn into_split(self) -> (ReadHalf, WriteHalf) {
        match self {
            Stream::Tcp(s) => {
                let (r, w) = s.into_split();
                (ReadHalf::Tcp(r), WriteHalf::Tcp(w))
            }
            Stream::Unix(s) => {
                let (r, w) = s.into_split();
                (ReadHalf::Unix(r), WriteHalf::Unix(w))
            }
        }
    }
}

/// A bound listener.
pub(crate) enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener, PathBuf),
}

impl Listener {
    /// Binds synchronously (so `Service::bind` can report the real port at
    /// once); must run inside a tokio runtime.
    pub(crate) fn bind(ep: &Endpoint) -> io::Result<Listener> {
        match ep {
            Endpoint::Tcp { host, port } => {
                let l = std::net::TcpListener::bind((host.as_str(), *port))?;
                l.set_nonblocking(true)?;
                Ok(Listener::Tcp(TcpListener::from_std(l)?))
            }
            Endpoint::Ipc(p) => {
                // As libzmq does: a stale socket file from a dead process
                // would otherwise make every restart fail.
                let _ = std::fs::remove_file(p);
                let l = std::os::unix::net::UnixListener::bind(p)?;
                l.set_nonblocking(true)?;
                Ok(Listener::Unix(UnixListener::from_std(l)?, p.clone()))
            }
        }
    }

    pub(crate) fn local_endpoint(&self) -> io::Result<Endpoint> {
        Ok(match self {
            Listener::Tcp(l) => {
                let a = l.local_addr()?;
                Endpoint::Tcp {
                    host: a.ip().to_string(),
                    port: a.port(),
                }
            }
            Listener::Unix(_, p) => Endpoint::Ipc(p.clone()),
        })
    }

    /// The next connection; a failed accept (EMFILE and friends) is logged
    /// and retried after a short pause instead of spinning.
    pub(crate) async fn next(&self, who: &str) -> Stream {
        loop {
            match self.accept().await {
                Ok(s) => return s,
                Err(e) => {
                    tracing::warn!(listener = who, error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            }
        }
    }

    async fn accept(&self) -> io::Result<Stream> {
        Ok(match self {
            Listener::Tcp(l) => {
                let (s, _) = l.accept().await?;
                s.set_nodelay(true)?;
                Stream::Tcp(s)
            }
            Listener::Unix(l, _) => Stream::Unix(l.accept().await?.0),
        })
    }
}

impl AsyncRead for ReadHalf {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ReadHalf::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            ReadHalf::Unix(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for WriteHalf {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            WriteHalf::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            WriteHalf::Unix(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            WriteHalf::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            WriteHalf::Unix(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            WriteHalf::Tcp(s) => Pin::new(s).poll_flush(cx),
            WriteHalf::Unix(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            WriteHalf::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            WriteHalf::Unix(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse() {
        assert_eq!(
            Endpoint::parse("tcp://127.0.0.1:8100"),
            Some(Endpoint::Tcp {
                host: "127.0.0.1".into(),
                port: 8100
            })
        );
        assert_eq!(
            Endpoint::parse("tcp://*:0").unwrap().to_string(),
            "tcp://0.0.0.0:0"
        );
        assert_eq!(
            Endpoint::parse("tcp://[::1]:5").unwrap().to_string(),
            "tcp://[::1]:5"
        );
        assert_eq!(
            Endpoint::parse("ipc:///tmp/x"),
            Some(Endpoint::Ipc("/tmp/x".into()))
        );
        for bad in [
            "127.0.0.1:8100",
            "tcp://host",
            "tcp://:1",
            "udp://x:1",
            "tcp://h:99999",
            "ipc://",
            "inproc://a",
        ] {
            assert_eq!(Endpoint::parse(bad), None, "{bad}");
        }
    }
}
