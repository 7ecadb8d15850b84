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

use std::time::Duration;

use fantoccini::Locator;
use futures::FutureExt;
use troupe::dashboard::{self as dash, Dashboard};
use troupe::prelude::*;

use common::browser::{attribute, open_browser, screenshot, start_driver, text, until};
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

/// A CSS selector for the tree entry at `path` (ids hold quotes: `Worker#3 "a"`).
fn entry(path: &str) -> String {
    let escaped = path.replace('\\', "\\\\").replace('"', "\\\"");
    format!("li[data-path=\"{escaped}\"]")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_the_tree_and_a_restart_live_in_chromium() {
    let Some((chromium, chromedriver)) = common::browser::installed() else {
        return;
    };

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

        // The screenshot, for the test log; a lone node says so in the
        // cluster view.
        until("the cluster view's note", || async {
            text(&client, "#cluster-note")
                .await
                .filter(|t| t == "this node runs alone")
        })
        .await;
        screenshot(&client, "dashboard.png").await;
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
