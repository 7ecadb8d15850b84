//! The dashboard in a real browser: headless Chromium (Debian's, installed
//! by `scripts/setup-chromium.sh`), driven through chromedriver. The page
//! loads, shows the supervision tree with the expected actors, shows a
//! restart live after an actor crashes, and a screenshot is saved (its
//! path is printed).
//!
//! Without Chromium this test fails and says how to install it. A
//! developer may skip it with `TROUPE_SKIP_BROWSER_TESTS=1`; where `CI` is
//! set (CI sets `CI=true`) that is ignored. `TROUPE_CHROMIUM` and `TROUPE_CHROMEDRIVER` point at other
//! binaries.

mod common;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use futures::FutureExt;
use troupe::dashboard::{self as dash, Dashboard};
use troupe::prelude::*;

use common::http::{self, authority};

struct Worker;

#[troupe::actor]
impl Worker {
    pub fn crash(&self) {
        panic!("the worker fell over")
    }
    pub fn ok(&self) -> bool {
        true
    }
}

#[troupe::remote]
fn work(x: u64) -> u64 {
    x + 1
}

#[troupe::remote]
fn fail(x: u64) -> u64 {
    panic!("task {x} failed on purpose")
}

/// How long the page may take to show anything.
const DEADLINE: Duration = Duration::from_secs(30);

fn binary(env: &str, default: &str) -> PathBuf {
    std::env::var_os(env).map_or_else(|| PathBuf::from(default), PathBuf::from)
}

/// chromedriver on a free port, killed when dropped.
struct Driver {
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

async fn start_driver(chromedriver: &Path) -> Driver {
    let port = free_port();
    let child = Command::new(chromedriver)
        .arg(format!("--port={port}"))
        .arg("--allowed-ips=127.0.0.1")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("could not start {}: {e}", chromedriver.display()));
    let driver = Driver { child, port };
    let give_up = tokio::time::Instant::now() + DEADLINE;
    loop {
        if let Ok(status) = http::get(&format!("127.0.0.1:{port}"), "/status").await {
            if status.body.contains("ready") {
                return driver;
            }
        }
        assert!(
            tokio::time::Instant::now() < give_up,
            "chromedriver did not answer on port {port}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn open_browser(driver: &Driver, chromium: &Path, profile: &Path) -> Client {
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
async fn until<T, F, Fut>(what: &str, mut check: F) -> T
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

/// A CSS selector for the tree entry at `path` (ids hold quotes: `Worker#3 "a"`).
fn entry(path: &str) -> String {
    let escaped = path.replace('\\', "\\\\").replace('"', "\\\"");
    format!("li[data-path=\"{escaped}\"]")
}

/// The attribute of the first element matching `css`, if any.
async fn attribute(client: &Client, css: &str, name: &str) -> Option<String> {
    let element = client.find(Locator::Css(css)).await.ok()?;
    element.attr(name).await.ok().flatten()
}

async fn text(client: &Client, css: &str) -> Option<String> {
    let element = client.find(Locator::Css(css)).await.ok()?;
    element.text().await.ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_the_tree_and_a_restart_live_in_chromium() {
    let chromium = binary("TROUPE_CHROMIUM", "/usr/bin/chromium");
    let chromedriver = binary("TROUPE_CHROMEDRIVER", "/usr/bin/chromedriver");
    if !chromium.exists() || !chromedriver.exists() {
        let missing = format!(
            "Chromium ({}) or chromedriver ({}) is missing; install them with scripts/setup-chromium.sh (scripts/test.sh does)",
            chromium.display(),
            chromedriver.display()
        );
        // CI runs it always: a skip there would hide a missing install step.
        let in_ci = std::env::var_os("CI").is_some_and(|v| !v.is_empty() && v != "false");
        if !in_ci && std::env::var_os("TROUPE_SKIP_BROWSER_TESTS").is_some_and(|v| v == "1") {
            eprintln!("SKIPPED (TROUPE_SKIP_BROWSER_TESTS=1): {missing}");
            return;
        }
        panic!(
            "{missing}; set TROUPE_SKIP_BROWSER_TESTS=1 to skip this test on a developer machine"
        );
    }

    // A runtime with a tree of workers, an actor in place, some tasks.
    let rt = troupe::init(
        Config::default()
            .name("browser-test")
            .service(Dashboard::new("127.0.0.1:0").interval(Duration::from_millis(200))),
    )
    .await
    .unwrap();
    let (a_spec, a) = rt
        .actor_child(ActorOptions::new().name("a"), || Worker)
        .unwrap();
    let (b_spec, _b) = rt
        .actor_child(ActorOptions::new().name("b"), || Worker)
        .unwrap();
    rt.spawn_supervisor(
        SupervisorSpec::new("workers", Strategy::OneForOne)
            .child(a_spec.restart(Restart::Permanent))
            .child(b_spec.restart(Restart::Permanent)),
    )
    .await
    .unwrap();
    let lone = rt
        .spawn_actor(ActorOptions::new().name("lone").max_restarts(3), || Worker)
        .await
        .unwrap();
    for i in 0..5 {
        rt.get(&work::remote(&rt, i)).await.unwrap();
    }
    let failed = fail::options(TaskOptions::default().max_retries(0)).remote(&rt, 7);
    assert!(rt.get(&failed).await.is_err());
    let url = dash::url(&rt).unwrap();
    assert_eq!(
        http::get(&authority(&url), "/healthz")
            .await
            .unwrap()
            .status,
        200
    );

    let driver = start_driver(&chromedriver).await;
    let profile = std::env::temp_dir().join(format!("troupe-chromium-{}", std::process::id()));
    let client = open_browser(&driver, &chromium, &profile).await;
    let a_id = a.info().to_string();
    let lone_id = lone.info().to_string();

    // Whatever happens, the browser is closed and chromedriver killed.
    let checks = async {
        client.goto(&url).await.expect("the page loads");
        assert_eq!(client.title().await.unwrap(), "Troupe dashboard");
        until("a live connection", || async {
            text(&client, "#status").await.filter(|s| s == "live")
        })
        .await;

        // The tree: the system actors, the user's tree and its workers,
        // and the actor supervised in place.
        for path in [
            "root/system/object_store",
            "root/system/scheduler",
            "root/user/workers",
            &format!("root/user/workers/{a_id}"),
            &format!("root/user/{lone_id}"),
        ] {
            let css = entry(path);
            until(&format!("the tree entry {path}"), || async {
                client.find(Locator::Css(&css)).await.ok()
            })
            .await;
        }
        let name = text(&client, "#runtime-name").await.unwrap();
        assert_eq!(name, "browser-test");
        // The failed task, with its error, among the recent failures.
        until("the failed task", || async {
            text(&client, "#failures")
                .await
                .filter(|t| t.contains("failed on purpose"))
        })
        .await;

        // Crash both actors: the page shows each restart without a reload.
        let lone_css = entry(&format!("root/user/{lone_id}"));
        let a_css = entry(&format!("root/user/workers/{a_id}"));
        // Read by polling: each update re-renders the tree, so an element
        // found may be replaced before its attribute is read.
        until("the lone actor, not restarted yet", || async {
            attribute(&client, &lone_css, "data-restarts")
                .await
                .filter(|r| r == "0")
        })
        .await;
        assert!(lone.crash().await.is_err());
        assert!(a.crash().await.is_err());
        assert!(lone.ok().await.unwrap());
        for css in [&lone_css, &a_css] {
            until(&format!("a restart of {css}"), || async {
                attribute(&client, css, "data-restarts")
                    .await
                    .filter(|r| r == "1")
            })
            .await;
        }
        let failure = until("the last failure", || async {
            text(&client, &format!("{lone_css} .last-failure"))
                .await
                .filter(|t| t.contains("the worker fell over"))
        })
        .await;
        assert!(failure.starts_with("last failure"), "{failure}");

        // The screenshot, for the test log.
        let png = client.screenshot().await.expect("a screenshot");
        assert!(png.starts_with(b"\x89PNG"), "a PNG");
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR"));
        std::fs::create_dir_all(dir).unwrap();
        let shot = dir.join("dashboard.png");
        std::fs::write(&shot, &png).unwrap();
        // Straight to stderr, past the test harness's capture: the path
        // belongs in the test log even when the test passes.
        let line = format!("dashboard screenshot: {}\n", shot.display());
        let _ = std::io::Write::write_all(&mut std::io::stderr(), line.as_bytes());
    };
    let outcome = std::panic::AssertUnwindSafe(checks).catch_unwind().await;
    let _ = client.close().await;
    drop(driver);
    let _ = std::fs::remove_dir_all(&profile);
    rt.shutdown().await.unwrap();
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}
