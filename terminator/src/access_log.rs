//! `--access-log stdout|FILE`: one JSON line per request, for the tools
//! operators already feed logs to.
//!
//! ```text
//! {"time":"2026-11-30T04:20:00.123Z","request_id":"…","client":"127.0.0.1:50412",
//!  "method":"GET","path":"/kv/a?x=1","status":200,"bytes_in":0,"bytes_out":12,
//!  "duration_ms":0.412,"service":"aggregator","instance":"tcp://127.0.0.1:8100",
//!  "version":"0.1.0","retries":0,"shed":false}
//! ```
//!
//! (one line each; the fields are documented in docs/operations.md).
//!
//! The request path never waits for the log: it hands a small record to a
//! bounded queue ([`QUEUE`] records) and goes on; one thread wakes every
//! [`TICK`], formats and writes what is queued, and flushes. When the queue is full
//! the record is dropped and counted (`access_log.dropped`), never the
//! request delayed. The file is opened for append and reopened on SIGHUP,
//! so logrotate's `create` + `postrotate kill -HUP` works; stdout is never
//! reopened.

use bytes::Bytes;
use http::{HeaderValue, Method, Uri};
use serde::Serialize;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TryRecvError, TrySendError};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// Records waiting to be written before new ones are dropped: about a
/// second at 50k req/s, a few megabytes at most.
pub const QUEUE: usize = 64 * 1024;

/// How often the writer wakes to empty the queue: lines reach the file at
/// most this late, and the request path never wakes a thread.
pub const TICK: Duration = Duration::from_millis(10);

/// Where the lines go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Stdout,
    File(PathBuf),
}

impl Target {
    pub fn parse(v: &str) -> Result<Option<Target>, String> {
        match v {
            "" | "off" => Ok(None),
            "stdout" | "-" => Ok(Some(Target::Stdout)),
            p => Ok(Some(Target::File(PathBuf::from(p)))),
        }
    }
}

/// One request, as the request path hands it over: owned, cheap to move
/// (shared buffers, no formatting).
pub struct Record {
    /// When the request head arrived; the wall-clock time is worked out
    /// on the writer thread, so the request path reads no extra clock.
    pub started: std::time::Instant,
    pub request_id: HeaderValue,
    pub client: Option<SocketAddr>,
    pub method: Method,
    pub uri: Uri,
    pub status: u16,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub duration: Duration,
    pub service: Option<bus::Text>,
    pub instance: Option<Arc<bus::Instance>>,
    pub retries: u32,
    pub shed: bool,
}

enum Msg {
    Line(Box<Record>),
    Flush(std::sync::mpsc::Sender<()>),
}

/// The log: a queue and the thread that empties it.
pub struct AccessLog {
    tx: SyncSender<Msg>,
    written: Arc<AtomicU64>,
    dropped: AtomicU64,
    failed: Arc<AtomicU64>,
}

impl AccessLog {
    /// Opens the target (a file is created if need be and appended to)
    /// and starts the writer thread.
    pub fn open(target: Target) -> std::io::Result<Arc<AccessLog>> {
        let out = Output::open(&target)?;
        let (tx, rx) = sync_channel(QUEUE);
        let reopen = Arc::new(AtomicBool::new(false));
        let written = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        if let Target::File(p) = &target {
            let (r, p) = (reopen.clone(), p.clone());
            // No stamps to poll: a file that grows is not a file to reopen.
            svc_host::reload::watch("access log", Vec::new, move || {
                r.store(true, Ordering::SeqCst);
                Ok(p.display().to_string())
            })?;
        }
        let w = Writer {
            out,
            target,
            reopen,
            written: written.clone(),
            failed: failed.clone(),
        };
        std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || w.run(rx))?;
        let log = Arc::new(AccessLog {
            tx,
            written,
            dropped: AtomicU64::new(0),
            failed,
        });
        telemetry::register(&log);
        Ok(log)
    }

    /// Queues `r`; drops it (counted) when the queue is full.
    pub fn log(&self, r: Record) {
        match self.tx.try_send(Msg::Line(Box::new(r))) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Waits (at most `bound`) until every record queued so far is
    /// written and flushed: at exit, so the last requests are not lost.
    pub fn flush(&self, bound: Duration) -> bool {
        let (tx, rx) = std::sync::mpsc::channel();
        let end = std::time::Instant::now() + bound;
        let mut msg = Msg::Flush(tx);
        loop {
            match self.tx.try_send(msg) {
                Ok(()) => break,
                Err(TrySendError::Full(m)) if std::time::Instant::now() < end => {
                    msg = m;
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(_) => return false,
            }
        }
        rx.recv_timeout(end.saturating_duration_since(std::time::Instant::now()))
            .is_ok()
    }

    /// Lines written, records dropped (queue full), write failures.
    pub fn counts(&self) -> (u64, u64, u64) {
        (
            self.written.load(Ordering::Relaxed),
            self.dropped.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        )
    }
}

/// Reports `access_log.written`, `.dropped` and `.write_errors`.
impl telemetry::Source for AccessLog {
    fn visit(&self, v: &mut dyn telemetry::Visitor) {
        let (w, d, f) = self.counts();
        v.counter("access_log.written", w);
        v.counter("access_log.dropped", d);
        v.counter("access_log.write_errors", f);
    }
}

enum Output {
    Stdout(std::io::BufWriter<std::io::Stdout>),
    File(std::io::BufWriter<std::fs::File>),
}

impl Output {
    fn open(t: &Target) -> std::io::Result<Output> {
        Ok(match t {
            Target::Stdout => Output::Stdout(std::io::BufWriter::new(std::io::stdout())),
            Target::File(p) => Output::File(std::io::BufWriter::with_capacity(
                64 * 1024,
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)
                    .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", p.display())))?,
            )),
        })
    }

    fn writer(&mut self) -> &mut dyn Write {
        match self {
            Output::Stdout(w) => w,
            Output::File(w) => w,
        }
    }
}

struct Writer {
    out: Output,
    target: Target,
    reopen: Arc<AtomicBool>,
    written: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
}

impl Writer {
    fn run(mut self, rx: Receiver<Msg>) {
        let mut line = Vec::with_capacity(512);
        let mut warned = false;
        loop {
            // Everything queued now, then one flush, then a nap. The writer
            // never blocks in `recv`: a blocked receiver costs every sender
            // a futex wake, measured at a third of a request's CPU
            // (docs/benchmarks.md, "Access log").
            let mut wrote = false;
            let gone = loop {
                match rx.try_recv() {
                    Ok(Msg::Line(r)) => {
                        line.clear();
                        self.format(&r, &mut line);
                        match self.out.writer().write_all(&line) {
                            Ok(()) => {
                                wrote = true;
                                self.written.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(e) => self.failed(&e, &mut warned),
                        }
                    }
                    Ok(Msg::Flush(ack)) => {
                        if let Err(e) = self.out.writer().flush() {
                            self.failed(&e, &mut warned);
                        }
                        let _ = ack.send(());
                    }
                    Err(TryRecvError::Empty) => break false,
                    Err(TryRecvError::Disconnected) => break true,
                }
            };
            if wrote {
                if let Err(e) = self.out.writer().flush() {
                    self.failed(&e, &mut warned);
                }
            }
            if self.reopen.swap(false, Ordering::SeqCst) {
                match Output::open(&self.target) {
                    Ok(o) => {
                        self.out = o;
                        warned = false;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "access log not reopened; writing to the old file")
                    }
                }
            }
            if gone {
                return;
            }
            std::thread::sleep(TICK);
        }
    }

    fn failed(&self, e: &std::io::Error, warned: &mut bool) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        if !*warned {
            // Once until the next reopen: a full disk would log per line.
            tracing::warn!(error = %e, "access log write failed; lines are being lost");
            *warned = true;
        }
    }

    fn format(&self, r: &Record, out: &mut Vec<u8>) {
        let instance = r.instance.as_ref().map(|i| i.endpoint());
        let version = r.instance.as_ref().and_then(|i| i.version());
        let wall = SystemTime::now()
            .checked_sub(r.started.elapsed())
            .unwrap_or(SystemTime::UNIX_EPOCH);
        let line = Line {
            time: time::OffsetDateTime::from(wall)
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default(),
            request_id: String::from_utf8_lossy(r.request_id.as_bytes()),
            client: r.client,
            method: r.method.as_str(),
            path: r.uri.path_and_query().map_or("/", |p| p.as_str()),
            status: r.status,
            bytes_in: r.bytes_in,
            bytes_out: r.bytes_out,
            duration_ms: (r.duration.as_secs_f64() * 1e6).round() / 1e3,
            service: r.service.as_ref().map(|s| s.as_str()),
            instance,
            version: version.as_deref().map(|v| v.as_str()),
            retries: r.retries,
            shed: r.shed,
        };
        // Serializing these types cannot fail; an empty line would be worse
        // than none, so a failure writes nothing.
        if serde_json::to_writer(&mut *out, &line).is_ok() {
            out.push(b'\n');
        } else {
            out.clear();
        }
    }
}

#[derive(Serialize)]
struct Line<'a> {
    time: String,
    request_id: std::borrow::Cow<'a, str>,
    client: Option<SocketAddr>,
    method: &'a str,
    path: &'a str,
    status: u16,
    bytes_in: u64,
    bytes_out: u64,
    duration_ms: f64,
    service: Option<&'a str>,
    instance: Option<&'a str>,
    version: Option<&'a str>,
    retries: u32,
    shed: bool,
}

/// What the response body will be, for `bytes_out`.
pub fn body_len(b: &http_body_util::Full<Bytes>) -> u64 {
    hyper::body::Body::size_hint(b).exact().unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(path: &str) -> Record {
        Record {
            started: std::time::Instant::now(),
            request_id: HeaderValue::from_static("rid-1"),
            client: Some("127.0.0.1:5000".parse().unwrap()),
            method: Method::GET,
            uri: path.parse().unwrap(),
            status: 200,
            bytes_in: 3,
            bytes_out: 12,
            duration: Duration::from_micros(412),
            service: Some("aggregator".into()),
            instance: None,
            retries: 0,
            shed: false,
        }
    }

    #[test]
    fn a_line_is_one_json_object_with_every_field() {
        let dir = std::env::temp_dir().join(format!("sb-access-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("access.log");
        let log = AccessLog::open(Target::File(p.clone())).unwrap();
        log.log(record("/kv/a?x=%22quoted%22"));
        assert!(log.flush(Duration::from_secs(5)));
        let text = std::fs::read_to_string(&p).unwrap();
        assert_eq!(text.lines().count(), 1, "{text}");
        let v: serde_json::Value = serde_json::from_str(text.trim_end()).unwrap();
        let t = v["time"].as_str().unwrap();
        let now = time::OffsetDateTime::now_utc();
        assert!(
            t.starts_with(&now.year().to_string()) && t.ends_with('Z'),
            "{t}"
        );
        assert_eq!(v["path"], "/kv/a?x=%22quoted%22");
        assert_eq!(v["duration_ms"], 0.412);
        assert_eq!(v["client"], "127.0.0.1:5000");
        assert_eq!(v["instance"], serde_json::Value::Null);
        for k in [
            "request_id",
            "method",
            "status",
            "bytes_in",
            "bytes_out",
            "service",
            "version",
            "retries",
            "shed",
        ] {
            assert!(v.get(k).is_some(), "{k} missing in {v}");
        }
        assert_eq!(log.counts(), (1, 0, 0));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn targets() {
        assert_eq!(Target::parse("off"), Ok(None));
        assert_eq!(Target::parse("stdout"), Ok(Some(Target::Stdout)));
        assert_eq!(
            Target::parse("/var/log/a.log"),
            Ok(Some(Target::File("/var/log/a.log".into())))
        );
    }
}
