//! Packaging: the Dockerfile, its two container scripts and the compose file.
//!
//! No container engine runs where the tests run, so the image is checked by
//! parts: the binaries the Dockerfile builds and copies are exactly the
//! workspace's `[[bin]]` targets and cargo builds them (in the test's own
//! profile, debug under `cargo test`: the same targets and features as the
//! image's release build, without minutes of fat LTO); the files it copies
//! from the context exist; the entrypoint and the healthcheck behave when
//! run here; and `docker-compose config` accepts the compose file.
//!
//! `docker-compose` (Debian's, installed by scripts/deps) is required: a
//! missing one fails the test with that message rather than skipping it.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("testkit lives in the workspace root")
        .to_path_buf()
}

fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(root());
    c
}

/// Every `[[bin]]` target of the workspace's members, from cargo itself.
fn workspace_bins() -> BTreeSet<String> {
    let out = cargo()
        .args(["metadata", "--no-deps", "--locked", "--format-version", "1"])
        .output()
        .expect("run cargo metadata");
    assert!(
        out.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).expect("metadata JSON");
    let mut bins = BTreeSet::new();
    for pkg in meta["packages"].as_array().expect("packages") {
        for t in pkg["targets"].as_array().expect("targets") {
            let is_bin = t["kind"]
                .as_array()
                .is_some_and(|k| k.iter().any(|k| k == "bin"));
            if is_bin {
                bins.insert(t["name"].as_str().expect("target name").to_string());
            }
        }
    }
    bins
}

/// What the Dockerfile builds and ships.
#[derive(Debug, Default)]
struct Dockerfile {
    /// `--bin NAME` of the `cargo build` step.
    cargo_bins: Vec<String>,
    /// `target/release/NAME` copied out of the cache-mounted target dir.
    copied_out: Vec<String>,
    /// `COPY --from=build /out/NAME /usr/local/bin/...` of the runtime stage.
    shipped: Vec<String>,
    /// Sources of `COPY` from the build context.
    context_sources: Vec<String>,
    /// The `cargo build` step's flags.
    cargo_flags: Vec<String>,
}

/// Instructions with `\` continuations joined, comments and blanks dropped.
fn instructions(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with('#') || (t.is_empty() && cur.is_empty()) {
            continue;
        }
        match t.strip_suffix('\\') {
            Some(head) => {
                cur.push_str(head);
                cur.push(' ');
            }
            None => {
                cur.push_str(t);
                out.push(std::mem::take(&mut cur));
            }
        }
    }
    if !cur.trim().is_empty() {
        out.push(cur);
    }
    out
}

fn parse_dockerfile(text: &str) -> Dockerfile {
    let mut d = Dockerfile::default();
    for ins in instructions(text) {
        let words: Vec<&str> = ins.split_whitespace().collect();
        match words.first().map(|w| w.to_ascii_uppercase()).as_deref() {
            Some("RUN") if ins.contains("cargo build") => {
                let mut it = words.iter().skip_while(|w| **w != "build").skip(1);
                while let Some(w) = it.next() {
                    match *w {
                        "&&" => break,
                        "--bin" => d
                            .cargo_bins
                            .push(it.next().expect("--bin takes a name").to_string()),
                        f if f.starts_with("--") => d.cargo_flags.push(f.to_string()),
                        _ => {}
                    }
                }
                d.copied_out.extend(
                    words
                        .iter()
                        .filter_map(|w| w.strip_prefix("target/release/"))
                        .map(String::from),
                );
            }
            Some("COPY") => {
                let args: Vec<&str> = words[1..]
                    .iter()
                    .copied()
                    .filter(|w| !w.starts_with("--"))
                    .collect();
                let (dest, sources) = args.split_last().expect("COPY has a destination");
                if words.contains(&"--from=build") {
                    for s in sources {
                        let name = s
                            .strip_prefix("/out/")
                            .unwrap_or_else(|| panic!("binary COPY from /out/: {ins}"));
                        assert!(
                            *dest == "/usr/local/bin/" || *dest == format!("/usr/local/bin/{name}"),
                            "binaries go to /usr/local/bin (on PATH): {ins}"
                        );
                        d.shipped.push(name.to_string());
                    }
                } else {
                    d.context_sources
                        .extend(sources.iter().map(|s| s.to_string()));
                }
            }
            _ => {}
        }
    }
    d
}

fn sorted(v: &[String]) -> BTreeSet<String> {
    v.iter().cloned().collect()
}

#[test]
fn dockerfile_ships_exactly_the_workspace_binaries_and_cargo_builds_them() {
    let text = std::fs::read_to_string(root().join("Dockerfile")).expect("read Dockerfile");
    let d = parse_dockerfile(&text);
    let bins = workspace_bins();
    assert!(!bins.is_empty(), "cargo metadata listed no binaries");

    for (what, list) in [
        ("cargo build --bin", &d.cargo_bins),
        ("cp target/release/", &d.copied_out),
        ("COPY --from=build /out/", &d.shipped),
    ] {
        assert_eq!(
            sorted(list),
            bins,
            "the Dockerfile's {what} names must be the workspace's [[bin]] targets"
        );
        assert_eq!(
            sorted(list).len(),
            list.len(),
            "{what} names a binary twice"
        );
    }
    for flag in ["--release", "--locked"] {
        assert!(
            d.cargo_flags.iter().any(|f| f == flag),
            "the image's cargo build uses {flag}: {:?}",
            d.cargo_flags
        );
    }

    // Files the Dockerfile takes from the build context exist, and the
    // context (.dockerignore) keeps them.
    let ignore = std::fs::read_to_string(root().join(".dockerignore")).expect(".dockerignore");
    for s in d.context_sources.iter().filter(|s| *s != ".") {
        assert!(root().join(s).is_file(), "Dockerfile copies missing {s}");
        let top = s.split('/').next().unwrap_or(s);
        assert!(
            !ignore
                .lines()
                .map(str::trim)
                .any(|l| l == top || l == format!("/{top}")),
            ".dockerignore drops {s}, which the Dockerfile copies"
        );
    }
    for keep in ["Cargo.lock", "Cargo.toml", "docker"] {
        assert!(
            !ignore
                .lines()
                .any(|l| l.trim().trim_start_matches('/') == keep),
            ".dockerignore must keep {keep}"
        );
    }

    // Build exactly those binaries, in this test's profile.
    let exe = std::env::current_exe().expect("current_exe");
    let dir = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("test binary lives in target/<profile>/deps");
    let profile = match dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") => "dev".to_string(),
        Some(p) => p.to_string(),
        None => panic!("no profile directory in {}", dir.display()),
    };
    let mut cmd = cargo();
    cmd.args(["build", "--locked", "--quiet", "--profile", &profile]);
    for b in &d.cargo_bins {
        cmd.args(["--bin", b]);
    }
    let st = cmd.status().expect("run cargo build");
    assert!(
        st.success(),
        "cargo build of the Dockerfile's binaries failed"
    );
    for b in &d.cargo_bins {
        let p = dir.join(b);
        assert!(p.is_file(), "{} was not built", p.display());
    }
}

#[test]
fn dockerfile_parser_reads_continuations_and_flags() {
    let d = parse_dockerfile(
        "FROM x AS build\n# COPY --from=build /out/commented /usr/local/bin/\n\
         RUN --mount=type=cache,target=/t \\\n  cargo build --release --locked \\\n  \
         --bin a --bin b \\\n && cp target/release/a target/release/b /out/\n\
         FROM y\nCOPY --from=build /out/a /usr/local/bin/a\n\
         COPY --from=build /out/b /usr/local/bin/\nCOPY --chmod=0755 docker/e.sh /e\n",
    );
    assert_eq!(d.cargo_bins, ["a", "b"]);
    assert_eq!(d.copied_out, ["a", "b"]);
    assert_eq!(d.shipped, ["a", "b"]);
    assert_eq!(d.context_sources, ["docker/e.sh"]);
    assert_eq!(d.cargo_flags, ["--release", "--locked"]);
}

fn compose(args: &[&str]) -> Output {
    let file = root().join("docker-compose.yml");
    let file = file.to_str().expect("utf-8 path");
    match Command::new("docker-compose")
        .args(["-f", file])
        .args(args)
        .output()
    {
        Ok(o) => o,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
            "docker-compose is not installed (bash scripts/deps installs Debian's); \
             the compose file cannot be validated without it"
        ),
        Err(e) => panic!("run docker-compose: {e}"),
    }
}

#[test]
fn compose_file_is_valid_and_runs_the_whole_stack() {
    let out = compose(&["config", "--quiet"]);
    assert!(
        out.status.success(),
        "docker-compose config rejected docker-compose.yml:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = compose(&["config", "--services"]);
    assert!(out.status.success(), "docker-compose config --services");
    let services: BTreeSet<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim().to_string())
        .collect();
    for s in ["etcd", "graphite", "backend-svc", "terminator"] {
        assert!(services.contains(s), "no {s} service in {services:?}");
    }
    let aggregators = services
        .iter()
        .filter(|s| s.starts_with("aggregator"))
        .count();
    assert!(
        aggregators >= 2,
        "two aggregator replicas expected: {services:?}"
    );

    // Every Switchboard process finds the others through etcd and pushes to
    // statsd: the resolved file names both for each of them.
    let out = compose(&["config"]);
    let text = String::from_utf8_lossy(&out.stdout);
    let mut current = String::new();
    let mut seen: BTreeSet<String> = BTreeSet::new();
    for line in text.lines() {
        if let Some(name) = line
            .strip_prefix("  ")
            .and_then(|l| l.strip_suffix(':'))
            .filter(|l| !l.starts_with(' '))
        {
            current = name.to_string();
        }
        if line.trim() == "SWITCHBOARD_ETCD: http://etcd:2379" {
            seen.insert(format!("{current} etcd"));
        }
        if line.trim() == "SWITCHBOARD_STATSD: graphite:8125" {
            seen.insert(format!("{current} statsd"));
        }
    }
    for s in services.iter().filter(|s| *s != "etcd" && *s != "graphite") {
        for what in ["etcd", "statsd"] {
            assert!(
                seen.contains(&format!("{s} {what}")),
                "{s} is not wired to {what}"
            );
        }
    }
}

/// A scratch directory removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Scratch {
        let p = std::env::temp_dir().join(format!(
            "switchboard-packaging-{tag}-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("scratch dir");
        Scratch(p)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs docker/entrypoint.sh with `args`, a clean environment plus `env`,
/// and stand-ins for the binaries that print what they were given.
fn entrypoint(scratch: &Path, env: &[(&str, &str)], args: &[&str]) -> String {
    use std::os::unix::fs::PermissionsExt;
    for b in ["terminator", "aggregator", "backend-svc", "loadtest"] {
        let p = scratch.join(b);
        std::fs::write(
            &p,
            format!("#!/bin/sh\necho \"ran {b} $*\"\nenv | grep '^SWITCHBOARD_' | sort\n"),
        )
        .expect("write stand-in");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    let path = format!("{}:/usr/bin:/bin", scratch.display());
    let out = Command::new("sh")
        .arg(root().join("docker/entrypoint.sh"))
        .args(args)
        .env_clear()
        .env("PATH", path)
        .envs(env.iter().copied())
        .output()
        .expect("run entrypoint");
    assert!(
        out.status.success(),
        "entrypoint failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

#[test]
fn entrypoint_binds_convention_ports_on_all_interfaces_unless_told_otherwise() {
    let s = Scratch::new("entrypoint");
    let lines = |t: &str| -> Vec<String> { t.lines().map(String::from).collect() };

    let t = entrypoint(&s.0, &[], &["terminator", "--timeout", "2s"]);
    assert_eq!(
        lines(&t),
        [
            "ran terminator --timeout 2s",
            "SWITCHBOARD_ADMIN=0.0.0.0:8001",
            "SWITCHBOARD_HTTP=0.0.0.0:8000",
        ]
    );

    let t = entrypoint(
        &s.0,
        &[("SWITCHBOARD_ADMIN", "10.1.2.3:9101")],
        &["aggregator"],
    );
    assert_eq!(
        lines(&t),
        [
            "ran aggregator ",
            "SWITCHBOARD_ADMIN=10.1.2.3:9101",
            "SWITCHBOARD_BUS=tcp://0.0.0.0:8100",
        ]
    );

    let t = entrypoint(&s.0, &[], &["backend-svc"]);
    assert_eq!(
        lines(&t),
        [
            "ran backend-svc ",
            "SWITCHBOARD_ADMIN=0.0.0.0:8201",
            "SWITCHBOARD_BUS=tcp://0.0.0.0:8200",
            "SWITCHBOARD_EVENTS=tcp://0.0.0.0:8202",
        ]
    );

    let t = entrypoint(&s.0, &[], &["loadtest", "--help"]);
    assert_eq!(lines(&t), ["ran loadtest --help"]);
}

/// An admin port stand-in: answers `status` to GET /healthz, 404 otherwise.
fn admin_stub(status: u16) -> String {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr").to_string();
    std::thread::spawn(move || {
        for mut c in l.incoming().flatten() {
            let mut req = Vec::new();
            let mut buf = [0u8; 1024];
            while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                match c.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => req.extend_from_slice(&buf[..n]),
                }
            }
            let code = if req.starts_with(b"GET /healthz ") {
                status
            } else {
                404
            };
            let _ = write!(
                c,
                "HTTP/1.1 {code} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
            );
        }
    });
    addr
}

/// A port nothing listens on.
fn closed_port() -> String {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let a = l.local_addr().expect("addr").to_string();
    drop(l);
    assert!(TcpStream::connect(&a).is_err(), "port {a} reused at once");
    a
}

/// Runs docker/healthcheck.sh against a stand-in process started as
/// `sh -c 'cat; :' sh ARGS...` with `env` (it lives until its stdin
/// closes); returns whether the check passed.
fn healthcheck(args: &[&str], env: &[(&str, &str)]) -> bool {
    let mut target = Command::new("sh")
        .args(["-c", "cat; :", "sh"])
        .args(args)
        .env_remove("SWITCHBOARD_ADMIN")
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn stand-in");
    let out = Command::new("sh")
        .arg(root().join("docker/healthcheck.sh"))
        .env("SWITCHBOARD_HEALTHCHECK_PID", target.id().to_string())
        .env_remove("SWITCHBOARD_ADMIN")
        .output()
        .expect("run healthcheck");
    drop(target.stdin.take());
    let _ = target.wait();
    out.status.success()
}

#[test]
fn healthcheck_finds_the_admin_port_the_process_uses() {
    let ok = admin_stub(200);
    let failing = admin_stub(503);
    let port = ok.rsplit_once(':').expect("port").1.to_string();
    let wildcard = format!("0.0.0.0:{port}");
    let closed = closed_port();

    assert!(healthcheck(&["--admin", &ok], &[]), "--admin ADDR");
    assert!(
        healthcheck(&[&format!("--admin={wildcard}")], &[]),
        "--admin=0.0.0.0:PORT is checked on loopback"
    );
    assert!(
        healthcheck(&[], &[("SWITCHBOARD_ADMIN", &ok)]),
        "SWITCHBOARD_ADMIN"
    );
    assert!(
        healthcheck(&["--admin", &ok], &[("SWITCHBOARD_ADMIN", &closed)]),
        "the flag wins over the variable, as in clap"
    );
    assert!(
        !healthcheck(&["--admin", &failing], &[]),
        "503 is unhealthy"
    );
    assert!(
        !healthcheck(&["--admin", &closed], &[]),
        "nothing listening"
    );
    assert!(
        !healthcheck(&[], &[]),
        "no flag, no variable and not a Switchboard binary: unhealthy"
    );
}
