//! Headless Chromium driven over WebDriver (chromedriver + fantoccini):
//! what the console tests and the screenshot see is what a browser sees.

use fantoccini::{Client, ClientBuilder};
use serde_json::{json, Value};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A chromedriver on a free port, and a session in headless Chromium.
pub struct Browser {
    pub client: Client,
    driver: Child,
    dir: PathBuf,
}

fn need(tool: &str, package: &str) {
    let found = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        found,
        "{tool} is not installed: `scripts/deps` installs it (Debian package {package})"
    );
}

impl Browser {
    pub async fn start(width: u32, height: u32) -> Browser {
        need("chromium", "chromium");
        need("chromedriver", "chromium-driver");
        let dir = std::env::temp_dir().join(format!(
            "switchboard-console-{}-{}",
            std::process::id(),
            fastrand::u64(..)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let port = testkit::etcd::free_port();
        // Its own process group, which the browsers it starts join: a
        // test that panics still takes them all down (see Drop).
        let driver = Command::new("chromedriver")
            .process_group(0)
            .arg(format!("--port={port}"))
            .env("HOME", &dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver");
        let url = format!("http://127.0.0.1:{port}");
        testkit::wait_until(Duration::from_secs(20), "chromedriver answers", || {
            testkit::curl("GET", &format!("{url}/status"), None).status == 200
        });
        let caps = json!({
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu",
                    "--disable-dev-shm-usage", "--no-first-run",
                    format!("--window-size={width},{height}"),
                    format!("--user-data-dir={}", dir.join("profile").display()),
                ],
            },
        });
        let Value::Object(caps) = caps else {
            unreachable!()
        };
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let client = ClientBuilder::new(connector)
            .capabilities(caps)
            .connect(&url)
            .await
            .expect("a WebDriver session in headless chromium");
        Browser {
            client,
            driver,
            dir,
        }
    }

    /// Runs `script` (a function body that `return`s) in the page.
    pub async fn eval(&self, script: &str) -> Value {
        self.client
            .execute(script, vec![])
            .await
            .unwrap_or_else(|e| panic!("script failed: {e}\n{script}"))
    }

    /// Ends the session (the browser exits); the driver and the profile
    /// go with `Drop`.
    pub async fn close(self) {
        let _ = self.client.clone().close().await;
    }
}

/// Also when a test panics: no driver left running, no profile left in
/// the temp dir.
impl Drop for Browser {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the process group this Browser started.
        unsafe {
            libc::kill(-(self.driver.id() as i32), libc::SIGKILL);
        }
        let _ = self.driver.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Polls `f` every 50 ms until it gives `Some`, or panics after `bound`
/// naming `what` and the last state seen.
pub async fn until<T, F, Fut>(bound: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let start = Instant::now();
    loop {
        match f().await {
            Ok(v) => return v,
            Err(last) if start.elapsed() >= bound => {
                panic!("timed out after {bound:?} waiting for {what}; last seen: {last}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}
