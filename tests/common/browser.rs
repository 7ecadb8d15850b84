//! Headless Chromium through chromedriver, for the dashboard's browser
//! tests: finding the binaries (or saying how to install them), starting
//! chromedriver and a browser, polling the page, saving a screenshot.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};

use super::http;

/// How long the page may take to show anything.
pub const DEADLINE: Duration = Duration::from_secs(30);

fn binary(env: &str, default: &str) -> PathBuf {
    std::env::var_os(env).map_or_else(|| PathBuf::from(default), PathBuf::from)
}

/// Chromium and chromedriver (`TROUPE_CHROMIUM`, `TROUPE_CHROMEDRIVER`
/// point at others). Missing, the test fails and says how to install
/// them; `None` when a developer skips browser tests with
/// `TROUPE_SKIP_BROWSER_TESTS=1` (ignored where `CI` is set).
pub fn installed() -> Option<(PathBuf, PathBuf)> {
    let chromium = binary("TROUPE_CHROMIUM", "/usr/bin/chromium");
    let chromedriver = binary("TROUPE_CHROMEDRIVER", "/usr/bin/chromedriver");
    if chromium.exists() && chromedriver.exists() {
        return Some((chromium, chromedriver));
    }
    let missing = format!(
        "Chromium ({}) or chromedriver ({}) is missing; install them with scripts/setup-chromium.sh (scripts/test.sh does)",
        chromium.display(),
        chromedriver.display()
    );
    // CI runs it always: a skip there would hide a missing install step.
    let in_ci = std::env::var_os("CI").is_some_and(|v| !v.is_empty() && v != "false");
    if !in_ci && std::env::var_os("TROUPE_SKIP_BROWSER_TESTS").is_some_and(|v| v == "1") {
        eprintln!("SKIPPED (TROUPE_SKIP_BROWSER_TESTS=1): {missing}");
        return None;
    }
    panic!("{missing}; set TROUPE_SKIP_BROWSER_TESTS=1 to skip this test on a developer machine");
}

/// chromedriver on a free port, killed when dropped.
pub struct Driver {
    child: Child,
    port: u16,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free local port")
}

/// Starts chromedriver on a free port. The port is picked before
/// chromedriver binds it (it takes no listening socket), so another
/// process may take it in between: chromedriver then exits, and it is
/// started again on another port.
pub async fn start_driver(chromedriver: &Path) -> Driver {
    const TRIES: usize = 3;
    for _ in 0..TRIES {
        let port = free_port();
        let child = Command::new(chromedriver)
            .arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("could not start {}: {e}", chromedriver.display()));
        let mut driver = Driver { child, port };
        let give_up = tokio::time::Instant::now() + DEADLINE;
        loop {
            if let Ok(status) = http::get(&format!("127.0.0.1:{port}"), "/status").await {
                if status.body.contains("ready") {
                    return driver;
                }
            }
            if let Ok(Some(exit)) = driver.child.try_wait() {
                eprintln!("chromedriver exited ({exit}) before it answered on port {port}: trying another port");
                break;
            }
            assert!(
                tokio::time::Instant::now() < give_up,
                "chromedriver did not answer on port {port}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    panic!("chromedriver exited {TRIES} times before it answered");
}

pub async fn open_browser(driver: &Driver, chromium: &Path, profile: &Path) -> Client {
    let mut capabilities = serde_json::Map::new();
    capabilities.insert(
        "goog:chromeOptions".to_owned(),
        serde_json::json!({
            "binary": chromium,
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
                "--window-size=1400,2000",
                format!("--user-data-dir={}", profile.display()),
            ],
        }),
    );
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    ClientBuilder::new(connector)
        .capabilities(capabilities)
        .connect(&format!("http://127.0.0.1:{}", driver.port))
        .await
        .unwrap_or_else(|e| panic!("Chromium did not start through chromedriver: {e}"))
}

/// Polls the page until `check` finds what it wants.
pub async fn until<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let give_up = tokio::time::Instant::now() + DEADLINE;
    loop {
        if let Some(found) = check().await {
            return found;
        }
        assert!(
            tokio::time::Instant::now() < give_up,
            "the page never showed {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The attribute of the first element matching `css`, if any.
pub async fn attribute(client: &Client, css: &str, name: &str) -> Option<String> {
    let element = client.find(Locator::Css(css)).await.ok()?;
    element.attr(name).await.ok().flatten()
}

/// The text of the first element matching `css`, if any.
pub async fn text(client: &Client, css: &str) -> Option<String> {
    let element = client.find(Locator::Css(css)).await.ok()?;
    element.text().await.ok()
}

/// Saves a screenshot of the page as `name` in the test's temporary
/// directory, and prints its path to the test log.
pub async fn screenshot(client: &Client, name: &str) -> PathBuf {
    let png = client.screenshot().await.expect("a screenshot");
    assert!(png.starts_with(b"\x89PNG"), "a PNG");
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"));
    std::fs::create_dir_all(dir).expect("the test's temporary directory");
    let shot = dir.join(name);
    std::fs::write(&shot, &png).expect("the screenshot is written");
    // Straight to stderr, past the test harness's capture: the path
    // belongs in the test log even when the test passes.
    let line = format!("dashboard screenshot: {}\n", shot.display());
    let _ = std::io::Write::write_all(&mut std::io::stderr(), line.as_bytes());
    shot
}
