//! A real etcd server for one test: free loopback ports, a temp data dir,
//! killed on drop. It can be stopped and started again on the same ports
//! and data (an etcd outage), and driven with the real `etcdctl`.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub struct Etcd {
    client_port: u16,
    peer_port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl Etcd {
    /// Starts etcd and waits (at most 30 s) until it answers `/health`.
    pub fn start() -> Etcd {
        let dir = std::env::temp_dir().join(format!(
            "switchboard-etcd-{}-{}",
            std::process::id(),
            crate::fastish_id()
        ));
        std::fs::create_dir_all(&dir).expect("etcd temp dir");
        let mut e = Etcd {
            client_port: free_port(),
            peer_port: free_port(),
            dir,
            child: None,
        };
        e.resume();
        e
    }

    /// `http://127.0.0.1:PORT`, what `--etcd` takes.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    /// Kills etcd (SIGKILL: an outage, not a goodbye). Data stays.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Freezes etcd (SIGSTOP): its sockets stay open but nothing answers,
    /// and its clock keeps running, so leases expire the moment it thaws.
    pub fn freeze(&self) {
        self.signal(libc::SIGSTOP);
    }

    /// Lets a frozen etcd run again (SIGCONT).
    pub fn thaw(&self) {
        self.signal(libc::SIGCONT);
    }

    fn signal(&self, sig: libc::c_int) {
        let c = self.child.as_ref().expect("etcd is running");
        // SAFETY: kill(2) on our own child's pid, which we have not reaped.
        let rc = unsafe { libc::kill(c.id() as libc::pid_t, sig) };
        assert_eq!(rc, 0, "kill({}, {sig})", c.id());
    }

    /// Starts etcd again on the same ports and data.
    pub fn resume(&mut self) {
        assert!(self.child.is_none(), "etcd already running");
        let client = self.url();
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let log = std::fs::File::create(self.dir.join("etcd.log")).expect("etcd log");
        let child = Command::new("etcd")
            .args(["--name", "t", "--data-dir"])
            .arg(self.dir.join("data"))
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("t={peer}")])
            .args(["--log-level", "warn"])
            // No --grpc-keepalive-* flags on purpose: clients must live with
            // etcd's defaults (pings no closer than 5 s), as in production.
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("etcd is installed (scripts/deps installs etcd-server)");
        self.child = Some(child);
        let health = format!("{client}/health");
        let mut last = String::new();
        let ok = crate::poll(Duration::from_secs(30), || {
            last = crate::curl("GET", &health, None).text();
            last.contains("true")
        });
        if !ok {
            let log = std::fs::read_to_string(self.dir.join("etcd.log")).unwrap_or_default();
            panic!("etcd did not become healthy ({last:?}); log:\n{log}");
        }
    }

    /// Runs `etcdctl ARGS` against this server; returns stdout. Panics with
    /// stderr when etcdctl fails.
    pub fn ctl(&self, args: &[&str]) -> String {
        let out = Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .args(["--endpoints", &self.url(), "--command-timeout=5s"])
            .args(args)
            .output()
            .expect("etcdctl is installed (scripts/deps installs etcd-client)");
        assert!(
            out.status.success(),
            "etcdctl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Keys under `prefix`.
    pub fn keys(&self, prefix: &str) -> Vec<String> {
        self.ctl(&["get", "--prefix", "--keys-only", prefix])
            .lines()
            .filter(|l| !l.is_empty())
            .map(String::from)
            .collect()
    }

    /// The store's current revision.
    pub fn revision(&self) -> i64 {
        let out = self.ctl(&["endpoint", "status", "-w", "json"]);
        // [{"Endpoint":..,"Status":{"header":{..,"revision":N,..},..}}]
        let at = out
            .find("\"revision\":")
            .expect("revision in endpoint status")
            + 11;
        out[at..]
            .chars()
            .take_while(|c| c.is_ascii_digit())
            .collect::<String>()
            .parse()
            .expect("revision is a number")
    }
}

impl Drop for Etcd {
    /// Kills etcd; its data and log go too, unless the test is failing
    /// (then the log's tail joins the test's output and the files stay).
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            crate::print_log_tail("etcd", &self.dir.join("etcd.log"));
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// A loopback port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind 127.0.0.1:0")
}

/// An aggregator on port 0 registered in `etcd` as `version`, with `extra`
/// flags (the live-upgrade tests run several versions side by side).
pub fn versioned_aggregator(etcd: &Etcd, version: &str, extra: &[&str]) -> crate::Proc {
    let url = etcd.url();
    let mut args = vec!["--etcd", &url, "--service-version", version];
    args.extend_from_slice(extra);
    crate::aggregator(&args)
}

/// The terminator on port 0 (HTTP and admin) following `etcd`'s
/// registrations (no `--route` unless `extra` gives one); `extra` flags
/// appended.
pub fn terminator(etcd: &Etcd, extra: &[&str]) -> crate::Proc {
    let url = etcd.url();
    let mut args = vec![
        "--http",
        "127.0.0.1:0",
        "--admin",
        "127.0.0.1:0",
        "--etcd",
        &url,
    ];
    args.extend_from_slice(extra);
    crate::Proc::start("terminator", &args)
}
