//! The dashboard's cluster view in a real browser, over a cluster of real
//! processes: a head and two worker nodes (this test binary re-launched in
//! node mode, see `common::cluster`), and this process as the driver that
//! serves the dashboard. The page shows every node with its resources and
//! the actor placed on it (and a placement group on one), a job and its log, and then a SIGKILLed node
//! turn dead, live; a screenshot is saved (its path is printed).
//!
//! Chromium is found, or the test skipped, as in `dashboard_browser.rs`.
//!
//! Also here: Prometheus's service discovery over the same kind of
//! cluster (no browser needed).

mod common;

use std::time::{Duration, Instant};

use fantoccini::Locator;
use futures::FutureExt;
use troupe::cluster::jobs::JobSpec;
use troupe::cluster::{ClusterNode, ClusterOptions, MemberState};
use troupe::dashboard::{self as dash, ConfigExt, Dashboard};
use troupe::prelude::*;
use troupe::SchedulingStrategy;

use common::browser::{attribute, open_browser, screenshot, start_driver, text, until};

/// One cluster driver at a time in this process (a process has one
/// current cluster node).
static DRIVER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Node mode: this test binary re-launched as a node (see `common::cluster`).
#[test]
fn node_process() {
    common::cluster::run_node_if_asked();
}

/// An actor to place on each node.
pub struct Resident {
    n: u64,
}

#[troupe::actor]
impl Resident {
    pub fn new(n: u64) -> Self {
        Resident { n }
    }

    pub fn n(&self) -> u64 {
        self.n
    }
}

/// The node card of `node`, by its status.
fn card(node: troupe::NodeId, status: &str) -> String {
    format!(".node-card[data-node=\"{node}\"][data-status=\"{status}\"]")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_view_shows_every_node_a_job_and_a_death_live_in_chromium() {
    let Some((chromium, chromedriver)) = common::browser::installed() else {
        return;
    };
    let _turn = DRIVER.lock().await;
    let began = Instant::now();
    let mut p = common::cluster::processes("dashboard-cluster");
    let head = p.head(&["--num-cpus", "1"]).expect("the head starts");
    let b = p
        .worker(&head, &["--num-cpus", "2"])
        .expect("a worker starts");
    let c = p
        .worker(&head, &["--num-cpus", "1"])
        .expect("a worker starts");
    let mut options = ClusterOptions::driver(&head.address);
    options.cookie = Some(p.cookie().to_owned());
    options.state_dir = Some(p.home().clone());
    let rt = troupe::init(
        Config::default()
            .name("dashboard-driver")
            .resources(Resources::default())
            .cluster_node(options)
            .service(
                Dashboard::new("127.0.0.1:0")
                    .interval(Duration::from_millis(200))
                    .cluster_interval(Duration::from_millis(250)),
            ),
    )
    .await
    .expect("the driver joins");
    let node = ClusterNode::current().expect("this process's node");
    common::eventually("every node is in the driver's view", || {
        node.members()
            .iter()
            .filter(|m| m.state == MemberState::Alive)
            .count()
            >= 4
    })
    .await;

    // An actor on each node, and a job on the head that writes to its log.
    let mut residents = Vec::new();
    for (i, n) in [head.node, b.node, c.node].into_iter().enumerate() {
        let on = ActorOptions::new()
            .name(format!("resident-{i}"))
            .scheduling_strategy(SchedulingStrategy::NodeAffinity {
                node: n,
                soft: false,
            });
        let actor = common::within("an actor spawned", Resident::remote(&rt, on).new(i as u64))
            .await
            .expect("spawned on its node");
        residents.push((n, actor.info().id.to_string()));
    }
    // A placement group that only B fits: B's CPUs are all reserved.
    let group = rt
        .placement_group(PlacementGroupOptions::new(vec![Resources::cpus(2.0)]))
        .expect("a placement group");
    let placed = group
        .ready(Duration::from_secs(20))
        .await
        .expect("reserved");
    assert_eq!(placed, vec![b.node]);
    let job = node
        .submit_job(JobSpec {
            command: ["/bin/sh", "-c", "echo hello from the job; sleep 60"]
                .map(String::from)
                .to_vec(),
            env: Vec::new(),
            working_dir: None,
        })
        .await
        .expect("the job starts");

    let url = dash::url(&rt).expect("the dashboard runs");
    let driver = start_driver(&chromedriver).await;
    let profile =
        std::env::temp_dir().join(format!("troupe-chromium-cluster-{}", std::process::id()));
    let client = open_browser(&driver, &chromium, &profile).await;

    let checks = async {
        client.goto(&url).await.expect("the page loads");
        until("the cluster's nodes", || async {
            text(&client, "#cluster-note")
                .await
                .filter(|t| t.starts_with("4 nodes"))
        })
        .await;

        // Every node alive, with its CPUs, and the actor placed on it.
        for (n, actor) in &residents {
            let alive = card(*n, "alive");
            until(&format!("node {n} alive"), || async {
                client.find(Locator::Css(&alive)).await.ok()
            })
            .await;
            let listed = format!("{alive} li[data-id=\"{actor}\"]");
            until(&format!("{actor} on node {n}"), || async {
                client.find(Locator::Css(&listed)).await.ok()
            })
            .await;
            // Read by polling: each update re-renders the cards, so an
            // element found may be replaced before it is read.
            until(
                &format!("node {n}'s actor counted, and its CPUs"),
                || async {
                    let actors = attribute(&client, &alive, "data-actors").await?;
                    let shown = text(&client, &alive).await?;
                    (actors != "0" && shown.contains("CPU")).then_some(())
                },
            )
            .await;
        }
        let b_groups = format!(
            "{} [data-count=\"placement-groups\"]",
            card(b.node, "alive")
        );
        until("B's 2 CPUs reserved by its placement group", || async {
            let shown = text(&client, &card(b.node, "alive")).await?;
            let groups = text(&client, &b_groups).await?;
            (shown.contains("2 / 2") && groups.starts_with("1 ")).then_some(())
        })
        .await;

        // The job, and its log followed.
        let row = format!("tr[data-job=\"{}\"][data-status=\"running\"]", job.id);
        until("the job, running", || async {
            client.find(Locator::Css(&row)).await.ok()
        })
        .await;
        let view = format!("button[data-log=\"{}\"]", job.id);
        // Each update re-renders the table: find and click until it takes.
        until("the job's log", || async {
            if text(&client, "#job-log-id").await.as_deref() != Some(job.id.as_str()) {
                let button = client.find(Locator::Css(&view)).await.ok()?;
                button.click().await.ok()?;
            }
            text(&client, "#job-log")
                .await
                .filter(|t| t.contains("hello from the job"))
        })
        .await;

        // C is SIGKILLed: its card turns dead, live, still listing what it
        // held when last heard.
        p.kill(&c);
        let dead = card(c.node, "dead");
        until("C dead", || async {
            client.find(Locator::Css(&dead)).await.ok()
        })
        .await;
        let c_actor = &residents[2].1;
        let listed = format!("{dead} li[data-id=\"{c_actor}\"]");
        until("C's last known actor", || async {
            client.find(Locator::Css(&listed)).await.ok()
        })
        .await;
        for n in [head.node, b.node] {
            let alive = card(n, "alive");
            until(&format!("{n} still alive"), || async {
                client.find(Locator::Css(&alive)).await.ok()
            })
            .await;
        }
        screenshot(&client, "dashboard-cluster.png").await;
        let polls = common::http::get(&common::http::authority(&url), "/api/status")
            .await
            .expect("the status");
        assert!(polls.body.contains("\"cluster_polls\""), "{}", polls.body);
    };
    let outcome = std::panic::AssertUnwindSafe(checks).catch_unwind().await;
    let _ = client.close().await;
    drop(driver);
    let _ = std::fs::remove_dir_all(&profile);
    let _ = node.stop_job(&job.id).await;
    rt.shutdown().await.expect("the driver leaves");
    drop(p);
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
    let line = format!("cluster view test took {:?}\n", began.elapsed());
    let _ = std::io::Write::write_all(&mut std::io::stderr(), line.as_bytes());
}

/// What `/targets` lists: (node id, role, name) by address.
fn discovered(body: &str) -> Vec<(String, String, String, String)> {
    let groups: serde_json::Value =
        serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"));
    let label =
        |g: &serde_json::Value, key: &str| g["labels"][key].as_str().unwrap_or("").to_owned();
    let mut found: Vec<_> = groups
        .as_array()
        .unwrap_or_else(|| panic!("not a list of groups: {body}"))
        .iter()
        .map(|g| {
            let targets = g["targets"].as_array().expect("a group's targets");
            assert_eq!(targets.len(), 1, "one target per node: {body}");
            (
                targets[0].as_str().expect("an address").to_owned(),
                label(g, "troupe_node"),
                label(g, "troupe_role"),
                label(g, "troupe_name"),
            )
        })
        .collect();
    found.sort_by(|a, b| a.2.cmp(&b.2));
    found
}

/// One scrape config finds every node: nodes started with
/// `--metrics-port`, and a driver with its own endpoint, tell the others
/// where they serve metrics; any one endpoint's `/targets` (Prometheus's
/// HTTP service discovery) lists each with its id, role and name, a node
/// without an endpoint is left out, each target answers a scrape with its
/// own process's series, and a dead node drops out of the list.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_scrape_config_finds_every_nodes_metrics() {
    let _turn = DRIVER.lock().await;
    let mut p = common::cluster::processes("metrics-discovery");
    let head = p
        .head(&["--num-cpus", "1", "--metrics-port", "0"])
        .expect("the head starts");
    let worker = p
        .worker(
            &head,
            &[
                "--num-cpus",
                "1",
                "--metrics-port",
                "0",
                "--name",
                "scraped",
            ],
        )
        .expect("a worker starts");
    let unscraped = p
        .worker(&head, &["--num-cpus", "1"])
        .expect("a worker without metrics starts");
    let mut options = ClusterOptions::driver(&head.address);
    options.cookie = Some(p.cookie().to_owned());
    options.state_dir = Some(p.home().clone());
    // The endpoint before the node, so that the node can advertise it.
    let rt = troupe::init(
        Config::default()
            .name("metrics-driver")
            .resources(Resources::default())
            .metrics_addr("127.0.0.1:0")
            .cluster_node(options),
    )
    .await
    .expect("the driver joins");
    let url = dash::metrics_url(&rt).expect("the driver serves metrics");
    let at = common::http::authority(&url);

    let expected = |with_worker: bool| {
        let mut nodes = vec![
            (head.node.to_string(), "head".to_owned()),
            (rt.node_id().to_string(), "driver".to_owned()),
        ];
        if with_worker {
            nodes.push((worker.node.to_string(), "worker".to_owned()));
        }
        nodes.sort();
        nodes
    };
    let listed = |body: &str| {
        let mut nodes: Vec<_> = discovered(body)
            .into_iter()
            .map(|(_, node, role, _)| (node, role))
            .collect();
        nodes.sort();
        nodes
    };
    let targets = || async {
        let answer = common::http::get(&at, "/targets")
            .await
            .expect("/targets answers");
        assert_eq!(answer.status, 200, "{}", answer.body);
        assert!(
            answer
                .header("content-type")
                .is_some_and(|t| t.starts_with("application/json")),
            "Prometheus reads JSON"
        );
        answer.body
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut body = targets().await;
    while listed(&body) != expected(true) {
        assert!(
            Instant::now() < deadline,
            "every node with an endpoint listed in time: {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        body = targets().await;
    }
    let found = discovered(&body);
    assert!(
        !found
            .iter()
            .any(|(_, node, ..)| *node == unscraped.node.to_string()),
        "a node without an endpoint is not a target: {body}"
    );
    assert!(
        found
            .iter()
            .any(|(_, node, _, name)| *node == worker.node.to_string() && name == "scraped"),
        "each target carries its node's name: {body}"
    );

    // Each target is that process's own endpoint: only the head counts
    // heartbeats received, and every node records its runtime's series.
    for (address, node, role, _) in &found {
        let scrape = common::http::get(address, "/metrics")
            .await
            .unwrap_or_else(|e| panic!("{role} {node} at {address}: {e}"));
        assert_eq!(scrape.status, 200, "{role} at {address}: {}", scrape.body);
        assert!(
            scrape.body.contains("troupe_object_store_objects"),
            "{role} at {address} serves the runtime's metrics: {}",
            scrape.body
        );
        assert_eq!(
            scrape
                .body
                .contains("troupe_cluster_heartbeats_received_total"),
            role == "head",
            "{role} at {address}: only the head receives heartbeats"
        );
    }

    // A dead node is no target.
    p.kill(&worker);
    let deadline = Instant::now() + Duration::from_secs(20);
    while listed(&body) != expected(false) {
        assert!(Instant::now() < deadline, "the dead worker dropped: {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
        body = targets().await;
    }
    rt.shutdown().await.expect("the driver leaves");
}
