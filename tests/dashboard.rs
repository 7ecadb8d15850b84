//! The dashboard and the Prometheus endpoint over HTTP (the browser test
//! is `dashboard_browser.rs`): the page and its assets, the state API as
//! JSON and its errors, live updates over server-sent events, the Host
//! guard, the timeline download, metrics, bad addresses, and that nothing
//! answers once the runtime has shut down.
//!
//! In its own binary: the metrics endpoint installs the process's
//! Prometheus recorder.

mod common;

use std::time::Duration;

use common::http::{self, authority, Events};
use troupe::dashboard::{self as dash, ConfigExt, Dashboard};
use troupe::prelude::*;

#[troupe::remote]
fn add_one(x: u64) -> u64 {
    x + 1
}

#[troupe::remote]
fn refuse(why: String) -> Result<u64, String> {
    Err(why)
}

struct Fragile;

#[troupe::actor]
impl Fragile {
    pub fn crash(&self) {
        panic!("crashed on purpose")
    }
    pub fn ok(&self) -> bool {
        true
    }
}

fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

/// The restarts of the in-place actor `id` in a snapshot's tree.
fn restarts_of(snapshot: &serde_json::Value, id: &str) -> Option<u64> {
    let user = snapshot["state"]["supervisors"]["children"]
        .as_array()?
        .iter()
        .find(|c| c["id"] == "user")?;
    user["supervisor"]["children"]
        .as_array()?
        .iter()
        .find(|c| c["id"] == id)?["restarts"]
        .as_u64()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_serves_the_page_the_api_and_live_updates() {
    let rt = troupe::init(
        Config::default()
            .service(Dashboard::new("127.0.0.1:0").interval(Duration::from_millis(100)))
            .metrics_addr("127.0.0.1:0"),
    )
    .await
    .unwrap();
    let url = dash::url(&rt).expect("the dashboard runs");
    let at = authority(&url);
    assert!(at.starts_with("127.0.0.1:"), "loopback: {url}");

    // The page and its assets, embedded, with a strict content policy.
    let page = http::get(&at, "/").await.unwrap();
    assert_eq!(page.status, 200);
    assert!(page.body.contains("<title>Troupe dashboard</title>"));
    assert!(!page.body.contains("http://") && !page.body.contains("https://"));
    assert!(page
        .header("content-security-policy")
        .unwrap()
        .contains("default-src 'none'"));
    for (path, kind) in [
        ("/assets/app.js", "javascript"),
        ("/assets/style.css", "css"),
    ] {
        let asset = http::get(&at, path).await.unwrap();
        assert_eq!(asset.status, 200, "{path}");
        assert!(asset.header("content-type").unwrap().contains(kind));
        // The SVG namespace is a name, not a place anything loads from.
        let body = asset.body.replace("http://www.w3.org/2000/svg", "");
        assert!(
            !body.contains("http://") && !body.contains("https://"),
            "{path} loads nothing from elsewhere"
        );
    }
    assert_eq!(http::get(&at, "/healthz").await.unwrap().body, "ok\n");
    assert_eq!(http::get(&at, "/nope").await.unwrap().status, 404);

    // A known workload: tasks (one failing), an actor that will crash.
    for i in 0..3 {
        rt.get(&add_one::remote(&rt, i)).await.unwrap();
    }
    let refused = refuse::remote(&rt, "not today".to_owned());
    assert!(rt.get(&refused).await.is_err());
    let fragile = rt
        .spawn_actor(ActorOptions::new().name("fragile").max_restarts(5), || {
            Fragile
        })
        .await
        .unwrap();
    let fragile_id = fragile.info().to_string();

    // The state API as JSON, with filters; bad filters say what to use.
    let state = http::get(&at, "/api/state?state=failed").await.unwrap();
    assert_eq!(state.status, 200);
    let state = json(&state.body);
    let tasks = state["tasks"].as_array().unwrap();
    assert_eq!(tasks.len(), 1, "{tasks:?}");
    assert_eq!(tasks[0]["state"], "Failed");
    assert!(tasks[0]["error"].as_str().unwrap().contains("not today"));
    assert_eq!(
        state["node"],
        rt.node_id().to_string(),
        "ids are strings in JSON"
    );
    let by_function = json(
        &http::get(&at, "/api/state?function=add_one&limit=2")
            .await
            .unwrap()
            .body,
    );
    assert_eq!(by_function["tasks"].as_array().unwrap().len(), 2);
    let bad = http::get(&at, "/api/state?state=sleeping").await.unwrap();
    assert_eq!(bad.status, 400);
    assert!(bad.body.contains("failed"), "{}", bad.body);

    // A request naming another host (DNS rebinding) is refused.
    let rebound = http::get_as(&at, "/api/state", "evil.example:80")
        .await
        .unwrap();
    assert_eq!(rebound.status, 403);
    assert!(
        http::get_as(
            &at,
            "/",
            &format!("localhost:{}", at.split(':').nth(1).unwrap())
        )
        .await
        .unwrap()
        .status
            == 200
    );

    // Live updates: a snapshot at once, then the restart after a crash.
    let mut events = Events::open(&at, "/api/events").await.unwrap();
    let (name, data) = events.next_within(Duration::from_secs(10)).await.unwrap();
    assert_eq!(name, "snapshot");
    let first = json(&data);
    assert_eq!(restarts_of(&first, &fragile_id), Some(0), "{first:#}");
    assert!(first["failures"]
        .as_array()
        .unwrap()
        .iter()
        .any(|f| f["kind"] == "task"));
    assert!(fragile.crash().await.is_err());
    assert!(fragile.ok().await.unwrap());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let restarted = loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no update showed the restart"
        );
        let (_, data) = events.next_within(Duration::from_secs(10)).await.unwrap();
        let snapshot = json(&data);
        if restarts_of(&snapshot, &fragile_id) == Some(1) {
            break snapshot;
        }
    };
    let failures = restarted["failures"].as_array().unwrap();
    assert!(
        failures.iter().any(|f| f["kind"] == "actor"
            && f["reason"].as_str().unwrap().contains("crashed on purpose")),
        "{failures:?}"
    );
    assert!(
        !restarted["store"].as_array().unwrap().is_empty(),
        "store samples"
    );
    let latest = json(&http::get(&at, "/api/snapshot").await.unwrap().body);
    assert!(
        latest["state"]["summary"]["functions"]
            .as_array()
            .unwrap()
            .len()
            >= 2
    );

    // The cluster view: this node runs alone, and has no jobs.
    let cluster = json(&http::get(&at, "/api/cluster").await.unwrap().body);
    assert_eq!(cluster["alone"], true, "{cluster:#}");
    let no_jobs = http::get(&at, "/api/jobs/log?id=job-1").await.unwrap();
    assert_eq!(no_jobs.status, 404);
    assert!(no_jobs.body.contains("alone"), "{}", no_jobs.body);

    // The timeline: refused until recorded, then a Chrome trace.
    let refused = http::get(&at, "/api/timeline").await.unwrap();
    assert_eq!(refused.status, 409);
    assert!(refused.body.contains("record_timeline"));
    rt.record_timeline(true);
    rt.get(&add_one::remote(&rt, 9)).await.unwrap();
    let trace = http::get(&at, "/api/timeline").await.unwrap();
    assert_eq!(trace.status, 200);
    let trace = json(&trace.body);
    assert!(trace
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["ph"] == "X" && e["cat"] == "task"));

    // Prometheus: Troupe's metrics, labelled by function.
    let metrics_url = dash::metrics_url(&rt).expect("the metrics endpoint runs");
    let scraped = http::get(&authority(&metrics_url), "/metrics")
        .await
        .unwrap();
    assert_eq!(scraped.status, 200);
    let text = scraped.body;
    let finished = text
        .lines()
        .find(|l| l.starts_with("troupe_tasks_finished_total{") && l.contains("add_one"))
        .unwrap_or_else(|| panic!("no finished count for add_one in:\n{text}"));
    assert!(finished.ends_with(" 4"), "{finished}");
    assert!(
        text.contains("troupe_task_scheduling_latency_seconds_bucket{"),
        "histograms have buckets"
    );
    assert!(text.contains("troupe_supervisor_restarts_total{supervisor=\"user\"}"));
    assert!(
        text.contains("troupe_scheduler_queued_tasks"),
        "sampled gauges are fresh"
    );
    // Prometheus's discovery: a runtime alone lists itself, where it was
    // reached.
    let targets = http::get(&authority(&metrics_url), "/targets")
        .await
        .unwrap();
    assert_eq!(targets.status, 200, "{}", targets.body);
    let groups = json(&targets.body);
    assert_eq!(
        groups[0]["targets"][0].as_str(),
        Some(authority(&metrics_url).as_str()),
        "{groups}"
    );
    assert_eq!(groups[0]["labels"]["troupe_role"], "alone");
    assert_eq!(groups[0]["labels"]["troupe_node"], rt.node_id().to_string());
    assert_eq!(groups.as_array().map(Vec::len), Some(1));

    // Shut down: the services stop first, and the ports close.
    rt.shutdown().await.unwrap();
    assert!(
        events.next_within(Duration::from_secs(5)).await.is_err(),
        "the stream ended"
    );
    assert!(
        http::get(&at, "/").await.is_err(),
        "nothing answers any more"
    );
    assert!(http::get(&authority(&metrics_url), "/metrics")
        .await
        .is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_addresses_fail_init_with_an_error_that_says_what_to_do() {
    let err = troupe::init(Config::default().dashboard("localhost-ish:80"))
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("dashboard") && text.contains("127.0.0.1:8265"),
        "{text}"
    );

    // A taken port: the second runtime cannot have it.
    let first = troupe::init(Config::default().dashboard("127.0.0.1:0"))
        .await
        .unwrap();
    let taken = authority(&dash::url(&first).unwrap());
    let err = troupe::init(Config::default().dashboard(taken.clone()))
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains(&taken) && text.contains("another port"),
        "{text}"
    );
    first.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_left_open_costs_nothing_once_closed() {
    let rt = troupe::init(
        Config::default()
            .service(Dashboard::new("127.0.0.1:0").interval(Duration::from_millis(20))),
    )
    .await
    .unwrap();
    let at = authority(&dash::url(&rt).unwrap());
    let mut events = Events::open(&at, "/api/events").await.unwrap();
    // Two snapshots (the cluster view's events come between them).
    let mut snapshots = 0;
    while snapshots < 2 {
        let (name, _) = events.next_within(Duration::from_secs(10)).await.unwrap();
        snapshots += usize::from(name == "snapshot");
    }
    let status = |body: &str| {
        let v = json(body);
        (v["clients"].as_u64().unwrap(), v["polls"].as_u64().unwrap())
    };
    let idle = |body: &str| json(body)["idle"].as_bool().unwrap();
    let body = http::get(&at, "/api/status").await.unwrap().body;
    let (clients, polls) = status(&body);
    assert_eq!(clients, 1);
    assert!(polls >= 2);
    assert!(!idle(&body), "{body}");
    drop(events);
    // With no page open, the poller goes idle: no snapshot, no events.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let body = http::get(&at, "/api/status").await.unwrap().body;
        if status(&body).0 == 0 && idle(&body) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the poller still runs with no page open: {body}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    rt.shutdown().await.unwrap();
}

/// With a token, every request but `/healthz` must carry it: as a bearer
/// header, a cookie, or in the URL (which sets the cookie for the page's
/// own requests). Beyond loopback, a dashboard without one does not start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_guards_every_request_and_is_required_beyond_loopback() {
    const TOKEN: &str = "0123456789abcdef-dashboard";
    let rt = troupe::init(Config::default().service(Dashboard::new("127.0.0.1:0").token(TOKEN)))
        .await
        .unwrap();
    let at = authority(&dash::url(&rt).unwrap());
    for path in [
        "/",
        "/api/state",
        "/api/snapshot",
        "/api/status",
        "/api/cluster",
        "/api/jobs/log?id=job-1",
    ] {
        let refused = http::get(&at, path).await.unwrap();
        assert_eq!(refused.status, 401, "{path} without the token");
        assert!(
            !refused.body.contains("supervisor"),
            "{path}: {}",
            refused.body
        );
    }
    let wrong = http::get_with(
        &at,
        "/api/state",
        &["Authorization: Bearer 0123456789abcdef-dashboarX"],
    )
    .await
    .unwrap();
    assert_eq!(wrong.status, 401);
    assert_eq!(http::get(&at, "/healthz").await.unwrap().status, 200);

    let bearer = format!("Authorization: Bearer {TOKEN}");
    let ok = http::get_with(&at, "/api/state", &[&bearer]).await.unwrap();
    assert_eq!(ok.status, 200, "{}", ok.body);
    let page = http::get(&at, &format!("/?token={TOKEN}")).await.unwrap();
    assert_eq!(page.status, 200);
    let cookie = page
        .header("set-cookie")
        .expect("the page's cookie")
        .to_owned();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    let pair = cookie.split(';').next().unwrap().to_owned();
    let with_cookie = http::get_with(&at, "/api/snapshot", &[&format!("Cookie: {pair}")])
        .await
        .unwrap();
    assert_eq!(with_cookie.status, 200);
    rt.shutdown().await.unwrap();

    let err = troupe::init(Config::default().service(Dashboard::new("0.0.0.0:0")))
        .await
        .unwrap_err();
    assert!(
        matches!(
            &err,
            SpawnError::Service { cause, .. }
                if matches!(cause.downcast_ref::<dash::DashboardError>(), Some(dash::DashboardError::NoToken { .. }))
        ),
        "{err}"
    );
}

/// A cluster seen through a stand-in inspector: answers once, then never.
struct OnceThenSilent {
    node: troupe::NodeId,
    asked: std::sync::atomic::AtomicU64,
}

impl troupe::runtime::ClusterInspector for OnceThenSilent {
    fn cluster(
        &self,
        _: troupe::StateQuery,
    ) -> futures::future::BoxFuture<
        'static,
        Result<troupe::runtime::ClusterView, troupe::runtime::InspectError>,
    > {
        use troupe::runtime::{ClusterView, NodeHealth, NodeLoad, NodeReply, NodeView};
        let first = self.asked.fetch_add(1, std::sync::atomic::Ordering::AcqRel) == 0;
        let node = self.node;
        Box::pin(async move {
            if !first {
                std::future::pending::<()>().await;
            }
            Ok(ClusterView {
                head: Some(node),
                me: Some(node),
                nodes: vec![NodeView {
                    id: node,
                    name: "stand-in".to_owned(),
                    address: "127.0.0.1:1".to_owned(),
                    role: "head".to_owned(),
                    pid: 1,
                    health: NodeHealth::Alive,
                    total: Resources::cpus(8.0),
                    available: Resources::cpus(6.0),
                    load: NodeLoad::default(),
                    reply: NodeReply::NoAnswer("asleep".to_owned()),
                    metrics: None,
                }],
            })
        })
    }

    fn jobs(
        &self,
    ) -> futures::future::BoxFuture<
        'static,
        Result<Vec<troupe::runtime::JobView>, troupe::runtime::InspectError>,
    > {
        Box::pin(async { Ok(Vec::new()) })
    }

    fn job_log(
        &self,
        id: String,
        from: u64,
    ) -> futures::future::BoxFuture<
        'static,
        Result<troupe::runtime::JobLogPage, troupe::runtime::InspectError>,
    > {
        Box::pin(async move {
            let text = format!("{id} from {from}\n");
            Ok(troupe::runtime::JobLogPage {
                next: from + text.len() as u64,
                bytes: text.into_bytes(),
                ended: true,
            })
        })
    }

    fn metrics_targets(&self) -> Vec<troupe::runtime::MetricsTarget> {
        Vec::new()
    }
}

/// The cluster view is polled apart: a cluster that stops answering
/// delays neither the page's own snapshots nor the view, which keeps its
/// last answer, says why it is old, and counts the poll that timed out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_cluster_delays_nothing_and_its_last_answer_stays_shown() {
    let node = troupe::NodeId(0xfeed);
    let inspector = std::sync::Arc::new(OnceThenSilent {
        node,
        asked: Default::default(),
    });
    let rt = troupe::init(
        Config::default()
            .cluster(troupe::ClusterSeams {
                inspector: Some(inspector),
                ..Default::default()
            })
            .service(
                Dashboard::new("127.0.0.1:0")
                    .interval(Duration::from_millis(20))
                    .cluster_interval(Duration::from_millis(20))
                    .cluster_deadline(Duration::from_millis(100)),
            ),
    )
    .await
    .unwrap();
    let at = authority(&dash::url(&rt).unwrap());
    let mut events = Events::open(&at, "/api/events").await.unwrap();
    let (mut snapshots, mut stale) = (0, None);
    while stale.is_none() || snapshots < 5 {
        let (name, data) = events.next_within(Duration::from_secs(10)).await.unwrap();
        match name.as_str() {
            "snapshot" => snapshots += 1,
            "cluster" => {
                let panel = json(&data);
                assert_eq!(panel["alone"], false);
                assert_eq!(panel["nodes"][0]["status"], "no answer", "{panel:#}");
                assert_eq!(panel["nodes"][0]["why"], "asleep");
                assert_eq!(panel["nodes"][0]["resources"][0]["used"], 2.0);
                if panel["error"].is_string() {
                    stale = Some(panel);
                }
            }
            other => panic!("an unexpected event {other}"),
        }
    }
    let stale = stale.unwrap();
    assert!(
        stale["error"].as_str().unwrap().contains("did not answer"),
        "{stale:#}"
    );
    assert!(stale["polled_at_us"].as_u64() > stale["nodes_at_us"].as_u64());
    let status = json(&http::get(&at, "/api/status").await.unwrap().body);
    assert!(
        status["cluster_timeouts"].as_u64().unwrap() >= 1,
        "{status}"
    );
    let log = json(
        &http::get(&at, "/api/jobs/log?id=job-7&from=3")
            .await
            .unwrap()
            .body,
    );
    assert_eq!(log["text"], "job-7 from 3\n");
    assert_eq!(log["ended"], true);
    rt.shutdown().await.unwrap();
}
