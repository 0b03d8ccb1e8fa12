//! Events over PUB/SUB: fire-and-forget notices such as `kv.changed`.
//!
//! ```text
//!  Publisher (PUB, bound)                        Subscriber (SUB, connects)
//!   publish(topic, body) ─► [topic][header][body] ─► thread: decode ─► on_event(Event)
//!   heartbeat thread ─────► [bus.heartbeat] every `heartbeat`
//! ```
//!
//! PUB/SUB loses messages by design: a subscriber that is not connected (or
//! whose queue is full) misses what was published meanwhile, and nobody is
//! told. The publisher therefore sends [`HEARTBEAT_TOPIC`] on a fixed
//! interval; a subscriber that has not heard anything for a few intervals
//! knows its view may have gaps ([`Subscriber::silent_for`]), and a user
//! such as a cache can distrust itself until the stream is live again.
//!
//! Frames are `[topic, header, body]` (docs/protocol.md §8): frame 0 is the
//! topic alone so that libzmq's prefix filtering works on it.

use crate::error::SetupError;
use crate::socket::{self, zerr, Tuning};
use crate::waker::Waker;
use crate::wire::{self, EncodeError, Event, Message};
use bytes::Bytes;
use parking_lot::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

/// The topic of the publisher's liveness beat; subscribers always receive it.
pub const HEARTBEAT_TOPIC: &str = "bus.heartbeat";
/// How often a publisher beats by default.
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_millis(200);

/// A bound PUB socket. `publish` never blocks: libzmq drops a message for a
/// subscriber whose queue is full rather than stall the writer.
pub struct Publisher {
    inner: Arc<PubInner>,
    endpoint: String,
    beat: Option<std::thread::JoinHandle<()>>,
}

struct PubInner {
    socket: Mutex<zmq::Socket>,
    stop: AtomicBool,
    stop_cv: parking_lot::Condvar,
    stop_mx: Mutex<()>,
    published: AtomicU64,
}

impl Publisher {
    /// Binds `endpoint` (port 0 picks a free one) and starts the heartbeat
    /// (`None` turns it off).
    pub fn bind(endpoint: &str, heartbeat: Option<Duration>) -> Result<Publisher, SetupError> {
        socket::check_endpoint(endpoint)?;
        let t = Tuning::default();
        let s = socket::context()
            .socket(zmq::PUB)
            .map_err(zerr("create PUB", endpoint))?;
        s.set_sndhwm(t.hwm).map_err(zerr("set SNDHWM", endpoint))?;
        s.set_linger(0).map_err(zerr("set LINGER", endpoint))?;
        s.bind(endpoint).map_err(zerr("bind", endpoint))?;
        let bound = s
            .get_last_endpoint()
            .ok()
            .and_then(|r| r.ok())
            .unwrap_or_else(|| endpoint.to_string());
        let inner = Arc::new(PubInner {
            socket: Mutex::new(s),
            stop: AtomicBool::new(false),
            stop_cv: parking_lot::Condvar::new(),
            stop_mx: Mutex::new(()),
            published: AtomicU64::new(0),
        });
        let beat = match heartbeat {
            Some(every) => {
                let inner = inner.clone();
                Some(
                    std::thread::Builder::new()
                        .name("bus-heartbeat".into())
                        .spawn(move || {
                            let mut g = inner.stop_mx.lock();
                            while !inner.stop.load(Ordering::Acquire) {
                                let _ = inner.send(HEARTBEAT_TOPIC, Bytes::new());
                                inner.stop_cv.wait_for(&mut g, every);
                            }
                        })?,
                )
            }
            None => None,
        };
        tracing::info!(endpoint = %bound, "events publisher bound");
        Ok(Publisher {
            inner,
            endpoint: bound,
            beat,
        })
    }

    /// The endpoint actually bound (the real port when bound to port 0).
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Publishes one event. Errors only for a topic too long to encode or a
    /// socket failure; a subscriber that is away simply misses it.
    pub fn publish(&self, topic: &str, body: Bytes) -> Result<(), PublishError> {
        self.inner.send(topic, body)
    }

    /// Events published so far (heartbeats included).
    pub fn published(&self) -> u64 {
        self.inner.published.load(Ordering::Relaxed)
    }
}

impl PubInner {
    fn send(&self, topic: &str, body: Bytes) -> Result<(), PublishError> {
        let header = wire::encode_event(&Event {
            topic: topic.to_string().into(),
            body: Bytes::new(),
        })?;
        let s = self.socket.lock();
        let flags = zmq::DONTWAIT;
        s.send(topic.as_bytes(), flags | zmq::SNDMORE)?;
        s.send(header, flags | zmq::SNDMORE)?;
        s.send(socket::to_message(body), flags)?;
        self.published.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        self.inner.stop.store(true, Ordering::Release);
        {
            let _g = self.inner.stop_mx.lock();
            self.inner.stop_cv.notify_all();
        }
        if let Some(t) = self.beat.take() {
            let _ = t.join();
        }
    }
}

/// Why an event could not be published.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("event cannot be encoded: {0}")]
    Encode(#[from] EncodeError),
    #[error("PUB socket: {0}")]
    Socket(#[from] zmq::Error),
}

/// A SUB socket on its own thread, connected to any number of publishers,
/// handing each decoded event to a callback on that thread (keep it short).
pub struct Subscriber {
    ctrl: mpsc::Sender<Ctrl>,
    waker: Arc<Waker>,
    shared: Arc<SubShared>,
    thread: Option<std::thread::JoinHandle<()>>,
}

enum Ctrl {
    Endpoints(Vec<String>),
    Stop,
}

struct SubShared {
    /// Milliseconds since `epoch` of the last message heard; 0 = never.
    last_heard_ms: AtomicU64,
    epoch: Instant,
    received: AtomicU64,
    malformed: AtomicU64,
}

impl Subscriber {
    /// Connects to `endpoints`, subscribed to `topics` (prefix match) and
    /// always to the heartbeat. `on_event` sees every event but heartbeats.
    pub fn connect<F>(
        endpoints: &[String],
        topics: &[&str],
        on_event: F,
    ) -> Result<Subscriber, SetupError>
    where
        F: FnMut(Event) + Send + 'static,
    {
        for ep in endpoints {
            socket::check_endpoint(ep)?;
        }
        let s = socket::context()
            .socket(zmq::SUB)
            .map_err(zerr("create SUB", "events"))?;
        let t = Tuning::default();
        s.set_rcvhwm(t.hwm).map_err(zerr("set RCVHWM", "events"))?;
        s.set_linger(0).map_err(zerr("set LINGER", "events"))?;
        s.set_maxmsgsize(t.max_message)
            .map_err(zerr("set MAXMSGSIZE", "events"))?;
        s.set_reconnect_ivl(100)
            .map_err(zerr("set RECONNECT_IVL", "events"))?;
        s.set_reconnect_ivl_max(1000)
            .map_err(zerr("set RECONNECT_IVL_MAX", "events"))?;
        s.set_subscribe(HEARTBEAT_TOPIC.as_bytes())
            .map_err(zerr("subscribe", "events"))?;
        for t in topics {
            s.set_subscribe(t.as_bytes())
                .map_err(zerr("subscribe", "events"))?;
        }
        let mut connected = Vec::new();
        for ep in endpoints {
            s.connect(ep).map_err(zerr("connect", ep))?;
            connected.push(ep.clone());
        }
        let (ctrl, ctrl_rx) = mpsc::channel();
        let waker = Arc::new(Waker::new()?);
        let shared = Arc::new(SubShared {
            last_heard_ms: AtomicU64::new(0),
            epoch: Instant::now(),
            received: AtomicU64::new(0),
            malformed: AtomicU64::new(0),
        });
        let worker = SubWorker {
            socket: s,
            ctrl: ctrl_rx,
            waker: waker.clone(),
            shared: shared.clone(),
            connected,
            on_event,
        };
        let thread = std::thread::Builder::new()
            .name("bus-subscriber".into())
            .spawn(move || worker.run())?;
        Ok(Subscriber {
            ctrl,
            waker,
            shared,
            thread: Some(thread),
        })
    }

    /// Replaces the set of publishers (discovery calls this on changes).
    pub fn set_endpoints(&self, endpoints: &[String]) -> Result<(), SetupError> {
        for ep in endpoints {
            socket::check_endpoint(ep)?;
        }
        let _ = self.ctrl.send(Ctrl::Endpoints(endpoints.to_vec()));
        self.waker.force();
        Ok(())
    }

    /// Time since anything (event or heartbeat) was heard; `None` if never.
    pub fn silent_for(&self) -> Option<Duration> {
        let ms = self.shared.last_heard_ms.load(Ordering::Acquire);
        if ms == 0 {
            return None;
        }
        let now = self.shared.epoch.elapsed().as_millis() as u64;
        Some(Duration::from_millis(now.saturating_sub(ms)))
    }

    /// Events received (heartbeats excluded) and malformed messages dropped.
    pub fn counts(&self) -> (u64, u64) {
        (
            self.shared.received.load(Ordering::Relaxed),
            self.shared.malformed.load(Ordering::Relaxed),
        )
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        let _ = self.ctrl.send(Ctrl::Stop);
        self.waker.force();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct SubWorker<F> {
    socket: zmq::Socket,
    ctrl: mpsc::Receiver<Ctrl>,
    waker: Arc<Waker>,
    shared: Arc<SubShared>,
    connected: Vec<String>,
    on_event: F,
}

impl<F: FnMut(Event)> SubWorker<F> {
    fn run(mut self) {
        loop {
            while let Ok(c) = self.ctrl.try_recv() {
                match c {
                    Ctrl::Stop => return,
                    Ctrl::Endpoints(eps) => self.reconnect(eps),
                }
            }
            // Control messages always `force` the eventfd, so no sleep
            // handshake is needed here.
            let (sock_ready, wake_ready) = {
                let mut items = [
                    self.socket.as_poll_item(zmq::POLLIN),
                    zmq::PollItem::from_fd(self.waker.fd(), zmq::POLLIN),
                ];
                let _ = zmq::poll(&mut items, 1000);
                (items[0].is_readable(), items[1].is_readable())
            };
            if wake_ready {
                self.waker.drain();
            }
            if sock_ready {
                self.drain_socket();
            }
        }
    }

    fn reconnect(&mut self, eps: Vec<String>) {
        for old in &self.connected {
            if !eps.contains(old) {
                let _ = self.socket.disconnect(old);
            }
        }
        for new in &eps {
            if !self.connected.contains(new) {
                if let Err(e) = self.socket.connect(new) {
                    tracing::warn!(endpoint = %new, error = %e, "events: cannot connect");
                }
            }
        }
        self.connected = eps;
    }

    fn drain_socket(&mut self) {
        // Bounded so that control messages are not starved by a flood.
        for _ in 0..1024 {
            let frames = match self.socket.recv_multipart(zmq::DONTWAIT) {
                Ok(f) => f,
                Err(_) => return,
            };
            let now = self.shared.epoch.elapsed().as_millis() as u64;
            self.shared
                .last_heard_ms
                .store(now.max(1), Ordering::Release);
            if frames.len() != 3 {
                self.shared.malformed.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let mut it = frames.into_iter();
            let topic = it.next().unwrap_or_default();
            if topic == HEARTBEAT_TOPIC.as_bytes() {
                continue;
            }
            let header = Bytes::from(it.next().unwrap_or_default());
            let body = Bytes::from(it.next().unwrap_or_default());
            match wire::decode(header, body) {
                Ok(Message::Event(e)) if e.topic.as_bytes()[..] == topic[..] => {
                    self.shared.received.fetch_add(1, Ordering::Relaxed);
                    (self.on_event)(e);
                }
                _ => {
                    self.shared.malformed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
}
