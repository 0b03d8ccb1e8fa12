//! A TCP proxy on loopback whose connections can be cut: a partition
//! between one client and its server, while others still reach the server.

use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

pub struct Proxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
}

struct Shared {
    cut: AtomicBool,
    stop: AtomicBool,
    conns: Mutex<Vec<TcpStream>>,
}

impl Proxy {
    /// Listens on 127.0.0.1:0 and forwards every connection to `upstream`.
    pub fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr");
        let shared = Arc::new(Shared {
            cut: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            conns: Mutex::new(Vec::new()),
        });
        let sh = shared.clone();
        std::thread::spawn(move || {
            for down in listener.incoming() {
                if sh.stop.load(Ordering::Relaxed) {
                    return;
                }
                let Ok(down) = down else { continue };
                if sh.cut.load(Ordering::Relaxed) {
                    let _ = down.shutdown(Shutdown::Both);
                    continue;
                }
                let Ok(up) = TcpStream::connect(upstream) else {
                    continue;
                };
                let _ = down.set_nodelay(true);
                let _ = up.set_nodelay(true);
                let (Ok(d2), Ok(u2)) = (down.try_clone(), up.try_clone()) else {
                    continue;
                };
                if let (Ok(d3), Ok(u3)) = (down.try_clone(), up.try_clone()) {
                    sh.conns.lock().unwrap().extend([d3, u3]);
                }
                pump(down, u2);
                pump(up, d2);
            }
        });
        Proxy { addr, shared }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ADDR`, for an etcd client.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Closes every open connection and refuses new ones until [`heal`].
    ///
    /// [`heal`]: Proxy::heal
    pub fn cut(&self) {
        self.shared.cut.store(true, Ordering::Relaxed);
        for c in self.shared.conns.lock().unwrap().drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
    }

    pub fn heal(&self) {
        self.shared.cut.store(false, Ordering::Relaxed);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.cut();
        self.shared.stop.store(true, Ordering::Relaxed);
        // Wake the accept loop so it sees `stop`.
        let _ = TcpStream::connect(self.addr);
    }
}

fn pump(mut from: TcpStream, mut to: TcpStream) {
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut from, &mut to);
        let _ = to.shutdown(Shutdown::Write);
    });
}
