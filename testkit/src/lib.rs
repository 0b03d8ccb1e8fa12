//! Test support for whole-stack tests: the workspace's real binaries run as
//! child processes on port 0, and curl as the HTTP client.
//!
//! # Layout
//!
//! - [`bin`]: path to a workspace binary, built once per test process.
//! - [`Proc`]: a child that printed its "listening" line; killed on drop.
//! - [`backend_svc`], [`aggregator`], [`terminator`]: the stack's processes with the flags
//!   every test gives them (admin on port 0), plus the test's own.
//! - [`curl`]: one HTTP request through the real curl.
//! - [`wait_until`]: poll a condition with a bound (tests never sleep to
//!   wait).
//! - [`etcd`]: a real etcd server per test, and `etcdctl`.
//! - [`keepalive`]: one keep-alive HTTP/1.1 connection, for tests that send
//!   thousands of requests.
//! - [`proxy`]: a TCP proxy whose connections can be cut (a partition).
//! - [`zmtp`]: a raw ZMTP peer that sends exactly the bytes a test wants.

pub mod etcd;
pub mod keepalive;
pub mod proxy;
pub mod zmtp;

pub use etcd::Etcd;
pub use proxy::Proxy;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The binaries whole-stack tests start; [`bin`] builds them together.
pub const STACK_BINS: [&str; 3] = ["terminator", "aggregator", "backend-svc"];

/// A workspace binary. The first call builds the stack's binaries (a no-op
/// when `cargo test --workspace` already did), so a test run of one package
/// still finds the others; any other binary is built on its own.
pub fn bin(name: &str) -> PathBuf {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| cargo_build(&STACK_BINS));
    if !STACK_BINS.contains(&name) {
        cargo_build(&[name]);
    }
    // target/<profile>/deps/<test> → target/<profile>/<name>
    let exe = std::env::current_exe().expect("current_exe");
    let dir = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("test binary lives in target/<profile>/deps");
    let p = dir.join(name);
    assert!(p.exists(), "{} not built", p.display());
    p
}

/// `cargo build --bin ...` from inside a test. Usually a no-op; when it
/// does build (`cargo test -p aggregator` on a fresh clone builds the
/// terminator and backend-svc here, a minute or more on two cores), its
/// `Compiling` lines go straight to the terminal, past libtest's capture,
/// so the tests waiting for it do not look hung. Nothing is printed when
/// there is nothing to build.
fn cargo_build(names: &[&str]) {
    use std::io::Write;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    // --workspace: under `cargo test` the current directory is the
    // package's, whose default members lack the other packages' binaries.
    cmd.args(["build", "--workspace", "--color", "never"]);
    for n in names {
        cmd.args(["--bin", n]);
    }
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot run cargo");
    let mut said = false;
    let mut all = String::new();
    let stderr = child.stderr.take().expect("cargo stderr");
    for line in BufReader::new(stderr).lines().map_while(Result::ok) {
        let l = line.trim_start();
        if l.starts_with("Compiling") || l.starts_with("Blocking") {
            let mut err = std::io::stderr().lock();
            if !said {
                said = true;
                let _ = writeln!(
                    err,
                    "testkit: building {} for the whole-stack tests (once; they wait for it)",
                    names.join(", ")
                );
            }
            let _ = writeln!(err, "testkit:   {l}");
        }
        all.push_str(&line);
        all.push('\n');
    }
    let st = child.wait().expect("wait for cargo");
    assert!(st.success(), "cargo build of {names:?} failed:\n{all}");
}

/// A running child process of the stack. Its first stdout line (the
/// "NAME listening k=v ..." line every binary prints once bound) is parsed
/// into [`Proc::addr`]; stderr goes to a file kept for failure messages.
pub struct Proc {
    pub name: String,
    child: Option<Child>,
    fields: HashMap<String, String>,
    log: PathBuf,
    /// Stdout after the listening line (the first MiB).
    rest: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Proc {
    /// Starts `name` with `args` and waits (at most 60 s) for its listening
    /// line.
    pub fn start(name: &str, args: &[&str]) -> Proc {
        Self::start_env(name, args, &[])
    }

    pub fn start_env(name: &str, args: &[&str], env: &[(&str, &str)]) -> Proc {
        let log = std::env::temp_dir().join(format!(
            "switchboard-test-{name}-{}-{}.log",
            std::process::id(),
            fastish_id()
        ));
        let mut cmd = Command::new(bin(name));
        cmd.args(args).env("SWITCHBOARD_LOG", "warn");
        for (k, v) in env {
            cmd.env(k, v);
        }
        Self::start_command(name, cmd, log)
    }

    /// Starts any program that prints a "NAME listening k=v ..." line first
    /// (a pyzmq peer, say), stderr to `log`.
    pub fn start_command(name: &str, mut cmd: Command, log: PathBuf) -> Proc {
        cmd.stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).expect("log file"));
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        let rest = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let kept = rest.clone();
        std::thread::spawn(move || {
            let mut r = BufReader::new(stdout);
            let mut line = String::new();
            let _ = r.read_line(&mut line);
            let _ = tx.send(line);
            // Keep draining so the child never blocks on a full pipe.
            let mut chunk = [0u8; 8192];
            while let Ok(n) = r.read(&mut chunk) {
                if n == 0 {
                    break;
                }
                let mut k = kept.lock().unwrap();
                if k.len() < 1 << 20 {
                    k.push_str(&String::from_utf8_lossy(&chunk[..n]));
                }
            }
        });
        let line = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(l) if l.contains("listening") => l,
            other => {
                let _ = child.kill();
                let _ = child.wait();
                let err = std::fs::read_to_string(&log).unwrap_or_default();
                panic!("{name} did not start ({other:?}); stderr:\n{err}");
            }
        };
        let fields = line
            .split_whitespace()
            .filter_map(|w| w.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Proc {
            name: name.into(),
            child: Some(child),
            fields,
            log,
            rest,
        }
    }

    /// A `key=value` field of the listening line (`bus`, `admin`, `http`...).
    pub fn addr(&self, key: &str) -> String {
        self.fields
            .get(key)
            .unwrap_or_else(|| panic!("{} printed no {key}= field", self.name))
            .clone()
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().map_or(0, |c| c.id() as i32)
    }

    /// `kill -9`: no chance to flush or clean up.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then waits (at most `bound`) for the exit status.
    pub fn terminate(&mut self, bound: Duration) -> Option<std::process::ExitStatus> {
        let mut c = self.child.take()?;
        // SAFETY: plain kill(2) on our own child's pid.
        unsafe {
            libc::kill(c.id() as i32, libc::SIGTERM);
        }
        let until = Instant::now() + bound;
        while Instant::now() < until {
            if let Ok(Some(st)) = c.try_wait() {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = c.kill();
        let _ = c.wait();
        None
    }

    /// What the process wrote on stdout after its listening line, so far.
    pub fn stdout(&self) -> String {
        self.rest.lock().unwrap().clone()
    }

    /// What the process wrote on stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    /// Kills the process. Its log file goes too, unless the test is
    /// failing: then the log's tail joins the test's captured output (which
    /// libtest prints only for a failed test) and the file stays.
    fn drop(&mut self) {
        self.kill9();
        if std::thread::panicking() {
            print_log_tail(&self.name, &self.log);
        } else {
            let _ = std::fs::remove_file(&self.log);
        }
    }
}

/// The last lines of a child's log, into the running test's captured
/// output (`eprintln!`, so libtest shows it only when the test fails).
pub fn print_log_tail(name: &str, log: &Path) {
    const LINES: usize = 60;
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let tail = &lines[lines.len().saturating_sub(LINES)..];
    eprintln!(
        "---- {name}: last {} of {} stderr lines ({}) ----\n{}",
        tail.len(),
        lines.len(),
        log.display(),
        tail.join("\n")
    );
}

fn fastish_id() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// backend-svc with its bus and events on `bus`/`events` (port 0 welcome),
/// admin on port 0 and its data in `dir`; `extra` flags appended.
pub fn backend_svc(dir: &Path, bus: &str, events: &str, extra: &[&str]) -> Proc {
    let d = dir.to_str().expect("utf-8 temp dir");
    let mut args = vec![
        "--bus",
        bus,
        "--events",
        events,
        "--admin",
        "127.0.0.1:0",
        "--data-dir",
        d,
    ];
    args.extend_from_slice(extra);
    Proc::start("backend-svc", &args)
}

/// A `tcp://127.0.0.1:PORT` endpoint nobody listens on (yet): for a peer a
/// test starts later, or never.
pub fn free_endpoint() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind port 0");
    format!("tcp://{}", l.local_addr().expect("local addr"))
}

/// `docs/examples/echo_service.py` (pyzmq, a libzmq ROUTER) bound to
/// `endpoint` (`tcp://127.0.0.1:*` for any port).
pub fn python_echo_service(endpoint: &str) -> Proc {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/examples/echo_service.py");
    python_service(&script, &[endpoint])
}

/// Runs a Python program under `/usr/bin/python3` (pyzmq from Debian's
/// python3-zmq, which `scripts/deps` installs) and returns its stdout.
pub fn python_run(program: &str, args: &[&str], bound: Duration) -> String {
    let mut child = std::process::Command::new("/usr/bin/python3")
        .arg("-c")
        .arg(program)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 (scripts/deps installs python3-zmq)");
    let end = Instant::now() + bound;
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            let mut out = String::new();
            let mut err = String::new();
            child
                .stdout
                .take()
                .unwrap()
                .read_to_string(&mut out)
                .unwrap();
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut err)
                .unwrap();
            assert!(st.success(), "python failed: {err}\n{out}");
            return out;
        }
        if Instant::now() > end {
            let _ = child.kill();
            panic!("python did not finish within {bound:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A Python bus service (Debian's python3 with pyzmq) that prints a
/// listening line like the workspace's binaries.
pub fn python_service(script: &Path, args: &[&str]) -> Proc {
    let mut cmd = Command::new("/usr/bin/python3");
    cmd.arg(script).args(args);
    let name = script
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let log = std::env::temp_dir().join(format!(
        "switchboard-test-{name}-{}-{}.log",
        std::process::id(),
        fastish_id()
    ));
    Proc::start_command(&name, cmd, log)
}

/// The aggregator with its bus and admin on port 0; `extra` flags
/// appended (`--backend`, `--etcd`, ...).
pub fn aggregator(extra: &[&str]) -> Proc {
    let mut args = vec!["--bus", "tcp://127.0.0.1:0", "--admin", "127.0.0.1:0"];
    args.extend_from_slice(extra);
    Proc::start("aggregator", &args)
}

/// The terminator on port 0 (HTTP and admin) with one `--route`; `extra`
/// flags appended.
pub fn terminator(route: &str, extra: &[&str]) -> Proc {
    let mut args = vec![
        "--http",
        "127.0.0.1:0",
        "--admin",
        "127.0.0.1:0",
        "--route",
        route,
    ];
    args.extend_from_slice(extra);
    Proc::start("terminator", &args)
}

/// A response as curl saw it.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    /// The final response's headers, names in lowercase.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The first value of header `name` (lowercase).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// One request with curl (a real HTTP client, separate process). `body`
/// is sent as is (binary safe) when given. Status 0: no HTTP response.
pub fn curl(method: &str, url: &str, body: Option<&[u8]>) -> Response {
    curl_with(method, url, body, &[])
}

/// [`curl`] with extra request headers (`"name: value"`).
pub fn curl_with(method: &str, url: &str, body: Option<&[u8]>, headers: &[&str]) -> Response {
    let dump = std::env::temp_dir().join(format!(
        "switchboard-curl-{}-{}.head",
        std::process::id(),
        fastish_id()
    ));
    let mut cmd = Command::new("curl");
    cmd.args([
        "-s",
        "-S",
        "--max-time",
        "20",
        "-X",
        method,
        "-o",
        "-",
        "-w",
        "\n%{http_code}",
        "-D",
    ])
    .arg(&dump);
    if body.is_some() {
        cmd.args([
            "--data-binary",
            "@-",
            "-H",
            "content-type: application/octet-stream",
        ]);
    }
    for h in headers {
        cmd.args(["-H", h]);
    }
    cmd.arg(url)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut child = cmd.spawn().expect("curl is installed (scripts/deps)");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("stdin");
        if let Some(b) = body {
            stdin.write_all(b).expect("write body to curl");
        }
    }
    let out = child.wait_with_output().expect("curl output");
    let mut raw = out.stdout;
    let nl = raw.iter().rposition(|&b| b == b'\n').unwrap_or(0);
    let status = std::str::from_utf8(&raw[nl..])
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    raw.truncate(nl);
    let head = std::fs::read_to_string(&dump).unwrap_or_default();
    let _ = std::fs::remove_file(&dump);
    // The last block: a 100 Continue comes first when there is one.
    let last = head.trim_end().rsplit("\r\n\r\n").next().unwrap_or("");
    let headers = last
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Response {
        status,
        headers,
        body: raw,
    }
}

/// `service`'s entry in a terminator's `/console/data` (`admin` is its
/// admin address); `Null` when the console does not list the service.
pub fn console_service(admin: &str, service: &str) -> serde_json::Value {
    let data = curl("GET", &format!("{admin}/console/data"), None);
    let v: serde_json::Value = serde_json::from_slice(&data.body).expect("console data is JSON");
    v["services"]
        .as_array()
        .and_then(|a| a.iter().find(|s| s["service"] == service))
        .cloned()
        .unwrap_or_default()
}

/// Polls `f` every 10 ms until it is true or `bound` passes.
pub fn wait_until(bound: Duration, what: &str, f: impl FnMut() -> bool) {
    assert!(
        poll(bound, f),
        "timed out after {bound:?} waiting for {what}"
    );
}

/// Polls `f` every 10 ms; true as soon as it is, false once `bound` passed.
pub fn poll(bound: Duration, mut f: impl FnMut() -> bool) -> bool {
    let until = Instant::now() + bound;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= until {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Many GETs through one curl process (one keep-alive connection, one
/// after another): status and total time of each, in order. Status 0: no
/// HTTP response.
pub fn curl_many(urls: &[String]) -> Vec<(u16, Duration)> {
    use std::io::Write;
    let cfg = std::env::temp_dir().join(format!(
        "switchboard-curl-{}-{}.cfg",
        std::process::id(),
        fastish_id()
    ));
    {
        let mut f = std::io::BufWriter::new(std::fs::File::create(&cfg).expect("curl config"));
        for u in urls {
            writeln!(f, "url = \"{u}\"\noutput = \"/dev/null\"").expect("write curl config");
        }
    }
    let out = Command::new("curl")
        .args([
            "-s",
            "--max-time",
            "20",
            "-w",
            "%{http_code} %{time_total}\n",
            "--config",
        ])
        .arg(&cfg)
        .stdin(Stdio::null())
        .output()
        .expect("curl is installed (scripts/deps)");
    let _ = std::fs::remove_file(&cfg);
    let text = String::from_utf8_lossy(&out.stdout);
    let mut r: Vec<(u16, Duration)> = text
        .lines()
        .filter_map(|l| {
            let (code, secs) = l.split_once(' ')?;
            Some((
                code.parse().ok()?,
                Duration::from_secs_f64(secs.parse().ok()?),
            ))
        })
        .collect();
    // A transfer curl could not even start still counts, as a failure.
    r.resize(urls.len(), (0, Duration::ZERO));
    r
}
