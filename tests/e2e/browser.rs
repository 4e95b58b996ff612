//! A headless Chromium driven over the W3C WebDriver protocol (Debian's `chromium` and
//! `chromium-driver`, which `.ci/services.sh` installs).
//!
//! We speak WebDriver's few HTTP calls ourselves (new session, navigate, execute script,
//! screenshot) rather than link a WebDriver crate: they are stable, and this keeps the test stack
//! to what the workspace already has (reqwest, serde_json).

use std::io::{Read as _, Write as _};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{Value, json};

/// `$HUBROUTE_CHROMIUM`, else `/usr/bin/chromium`; panics with instructions when missing.
fn chromium() -> PathBuf {
    located("HUBROUTE_CHROMIUM", "/usr/bin/chromium")
}

/// `$HUBROUTE_CHROMEDRIVER`, else `/usr/bin/chromedriver`.
fn chromedriver() -> PathBuf {
    located("HUBROUTE_CHROMEDRIVER", "/usr/bin/chromedriver")
}

fn located(variable: &str, default: &str) -> PathBuf {
    let path = std::env::var_os(variable).map_or_else(|| PathBuf::from(default), PathBuf::from);
    assert!(
        path.exists(),
        "{} is missing: run .ci/test (its services.sh installs Debian's chromium and \
         chromium-driver), or `apt-get install chromium chromium-driver`, or set {variable}",
        path.display()
    );
    path
}

/// A Chromium session, closed (with its driver) on drop.
pub(crate) struct Browser {
    driver: Child,
    port: u16,
    session: String,
    client: reqwest::Client,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts chromedriver and a headless Chromium with a fresh profile, `width` × `height`.
    pub(crate) async fn start(width: u32, height: u32) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let driver = Command::new(chromedriver())
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting chromedriver");
        let client = reqwest::Client::new();
        let base = format!("http://127.0.0.1:{port}");
        let started = Instant::now();
        loop {
            if let Ok(response) = client.get(format!("{base}/status")).send().await
                && response.status().is_success()
            {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "chromedriver did not answer on port {port} within 30 s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let profile = tempfile::tempdir().unwrap();
        let capabilities = json!({
            "capabilities": {"alwaysMatch": {
                "browserName": "chrome",
                "goog:chromeOptions": {
                    "binary": chromium(),
                    "args": [
                        "--headless",
                        "--no-sandbox",
                        "--disable-gpu",
                        "--disable-quic",
                        "--no-first-run",
                        "--disable-background-networking",
                        "--disable-component-update",
                        "--disable-sync",
                        "--disable-dev-shm-usage",
                        format!("--user-data-dir={}", profile.path().display()),
                        format!("--window-size={width},{height}"),
                    ],
                },
            }}
        });
        let response: Value = client
            .post(format!("{base}/session"))
            .json(&capabilities)
            .send()
            .await
            .expect("creating a WebDriver session")
            .json()
            .await
            .expect("WebDriver answers JSON");
        let session = response["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("Chromium did not start: {response}"))
            .to_owned();
        Self {
            driver,
            port,
            session,
            client,
            _profile: profile,
        }
    }

    async fn command(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let url = format!(
            "http://127.0.0.1:{}/session/{}{path}",
            self.port, self.session
        );
        let mut request = self.client.request(method, &url);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response: Value = request
            .send()
            .await
            .unwrap_or_else(|e| panic!("WebDriver {path}: {e}"))
            .json()
            .await
            .unwrap_or_else(|e| panic!("WebDriver {path}: {e}"));
        if response["value"]["error"].is_string() {
            panic!("WebDriver {path}: {}", response["value"]);
        }
        response["value"].clone()
    }

    /// Navigates to `url`.
    pub(crate) async fn goto(&self, url: &str) {
        self.command(reqwest::Method::POST, "/url", Some(json!({ "url": url })))
            .await;
    }

    /// Runs `script` (a function body; `return` its result) in the page.
    pub(crate) async fn eval(&self, script: &str) -> Value {
        self.command(
            reqwest::Method::POST,
            "/execute/sync",
            Some(json!({ "script": script, "args": [] })),
        )
        .await
    }

    /// Evaluates `script` until it returns `true` (then `true`) or `timeout` passes (`false`).
    pub(crate) async fn poll_until(&self, timeout: Duration, script: &str) -> bool {
        let started = Instant::now();
        loop {
            if self.eval(script).await == Value::Bool(true) {
                return true;
            }
            if started.elapsed() >= timeout {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Evaluates `script` until it returns `true`; panics with `what` after `timeout`.
    pub(crate) async fn wait_for(&self, what: &str, timeout: Duration, script: &str) {
        assert!(
            self.poll_until(timeout, script).await,
            "timed out after {timeout:?} waiting until {what}"
        );
    }

    /// A PNG of the viewport.
    pub(crate) async fn screenshot(&self) -> Vec<u8> {
        let encoded = self
            .command(reqwest::Method::GET, "/screenshot", None)
            .await;
        base64::engine::general_purpose::STANDARD
            .decode(encoded.as_str().expect("a base64 screenshot"))
            .expect("valid base64")
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Deleting the session makes chromedriver quit Chromium; then the driver itself goes.
        // Plain blocking HTTP, since a drop cannot await.
        if let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", self.port)) {
            let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
            let request = format!(
                "DELETE /session/{} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\n\
                 Connection: close\r\n\r\n",
                self.session
            );
            if stream.write_all(request.as_bytes()).is_ok() {
                let mut answer = Vec::new();
                let _ = stream.read_to_end(&mut answer);
            }
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
