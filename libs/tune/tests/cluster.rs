//! Trials on other nodes (`TuneOptions::trials_on_cluster`), across real
//! processes on loopback: a head and two worker nodes are this test binary
//! re-launched in node mode (`node_process`), and the test itself is the
//! driver, holding the tuner and the experiment directory. The head and
//! the driver offer no CPUs, so every trial runs on one of the two nodes.
//! Each trial reports the process it ran in, so the tests see where it ran;
//! every result is checked against the same trainable evaluated here. Every
//! process a test starts is killed when its cluster drops, even when the
//! test fails.
//!
//! Run with `cargo test -p troupe-tune --features cluster --test cluster`.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use troupe::cluster::local::{run_node_if_asked, test_binary, LocalCluster, LocalNode};
use troupe::prelude::*;
use troupe_test_kit::{eventually_within, within_for};
use troupe_tune::{
    FnTrainable, Metrics, Mode, Params, Pbt, Scheduler, SearchSpace, TrialStatus, TuneError,
    TuneOptions, Tuner,
};

/// One cluster per test at a time: each test joins as the driver.
static DRIVER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// How long a cluster test may take at most (they take seconds).
const DEADLINE: Duration = Duration::from_secs(120);

/// What iteration `i` of a trial with `x` reports as `value` (its state is
/// the running sum of `x`, so a trial restored from a wrong checkpoint, or
/// one that ran an iteration twice, reports another value).
fn expected(x: f64, i: u64) -> f64 {
    x * i as f64
}

// A trainable every node builds by name: the running sum of `x`, the
// process it runs in, and a pause of `pause_ms` per iteration.
troupe_tune::register_trainable!("ClusterTest-Sum", |params: &Params| {
    Ok(FnTrainable::new(
        params.clone(),
        |p: &Params, sum: &mut f64, _i: u64| {
            let pause = p.i64("pause_ms").unwrap_or(0);
            std::thread::sleep(Duration::from_millis(pause.max(0) as u64));
            let x = p.f64("x")?;
            *sum += x;
            Ok(Metrics::new()
                .with("value", *sum)
                .with("x", x)
                .with("pid", f64::from(std::process::id())))
        },
    ))
});

/// Node mode: when this binary is re-launched as a node, runs it;
/// otherwise does nothing.
#[test]
fn node_process() {
    run_node_if_asked();
}

/// A head with no CPUs (no trial lands there) and two nodes of one CPU.
fn head_and_two_nodes(test: &str) -> (LocalCluster, LocalNode, [LocalNode; 2]) {
    let mut p =
        LocalCluster::new(test, test_binary("node_process", &[])).expect("a temporary directory");
    let head = p.head(&["--num-cpus", "0"]).expect("the head starts");
    let a = p
        .worker(&head, &["--num-cpus", "1"])
        .expect("node a starts");
    let b = p
        .worker(&head, &["--num-cpus", "1"])
        .expect("node b starts");
    (p, head, [a, b])
}

/// This process as a driver (no CPUs) of `head`'s cluster, once it sees
/// the head and both nodes alive.
async fn join_as_driver(p: &LocalCluster, head: &LocalNode) -> Runtime {
    let rt = p
        .join_as_driver(head, 3, DEADLINE)
        .await
        .expect("the driver joins");
    rt
}

fn options(dir: &Path) -> TuneOptions {
    TuneOptions::new("value", Mode::Max)
        .dir(dir)
        .max_concurrent(2)
        .progress(false)
        .plots(false)
        .trials_on_cluster(true)
}

/// The processes a trial's reports say it ran in.
fn pids(history: &[troupe_tune::Report]) -> BTreeSet<u32> {
    history
        .iter()
        .map(|r| r.metrics.get("pid").expect("each report has its pid") as u32)
        .collect()
}

/// Six trials, two at a time, on a cluster whose only CPUs are on two
/// nodes: every trial runs on one of them (both are used, none runs here),
/// and every report is what the trainable gives when run here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trials_run_on_the_nodes_and_report_what_they_would_here() {
    let _turn = DRIVER.lock().await;
    let (p, head, [a, b]) = head_and_two_nodes("tune-two-nodes");
    let rt = join_as_driver(&p, &head).await;
    let dir = tempfile::tempdir().unwrap();
    let xs = [0.5, -1.0, 2.0, 3.25, -0.75, 1.5];
    let space = SearchSpace::new().grid("x", xs).grid("pause_ms", [20_i64]);
    let tuner = Tuner::registered(
        rt.clone(),
        space,
        options(dir.path()).max_iterations(5),
        "ClusterTest-Sum",
    )
    .unwrap();
    let results = within_for(DEADLINE, "the experiment", tuner.fit())
        .await
        .unwrap();

    let mut ran_in = BTreeSet::new();
    assert_eq!(results.trials().len(), xs.len());
    for trial in results.trials() {
        assert_eq!(trial.status, TrialStatus::Terminated, "{:?}", trial.error);
        let x = trial.params.f64("x").unwrap();
        let values: Vec<f64> = trial
            .history
            .iter()
            .map(|r| r.metrics.get("value").unwrap())
            .collect();
        let here: Vec<f64> = (1..=5).map(|i| expected(x, i)).collect();
        assert_eq!(values, here, "trial {} (x = {x})", trial.id);
        let trial_pids = pids(&trial.history);
        assert_eq!(trial_pids.len(), 1, "trial {} ran in one process", trial.id);
        let node = trial.node.expect("the trial's node");
        let pid = if node == a.node { a.pid } else { b.pid };
        assert_eq!(
            trial_pids,
            BTreeSet::from([pid]),
            "the result names its node"
        );
        ran_in.extend(trial_pids);
        assert!(trial.checkpoint.is_some(), "its checkpoint came back here");
    }
    assert_eq!(
        ran_in,
        BTreeSet::from([a.pid, b.pid]),
        "trials ran on both nodes, and nowhere else (driver {}, head {})",
        std::process::id(),
        head.pid
    );
    rt.shutdown().await.unwrap();
}

/// The trial's node SIGKILLed mid-trial: the trial goes on, on the other
/// node, from its last checkpoint (one failure counted), and its history
/// is exactly that of a trial that never failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trial_whose_node_dies_goes_on_elsewhere_from_its_checkpoint() {
    let _turn = DRIVER.lock().await;
    let (mut p, head, nodes) = head_and_two_nodes("tune-node-dies");
    let rt = join_as_driver(&p, &head).await;
    let dir = tempfile::tempdir().unwrap();
    let iterations = 30;
    let space = SearchSpace::new()
        .grid("x", [1.25])
        .grid("pause_ms", [100_i64]);
    let tuner = Tuner::registered(
        rt.clone(),
        space,
        options(dir.path())
            .max_iterations(iterations)
            .max_failures(2),
        "ClusterTest-Sum",
    )
    .unwrap();
    let experiment = tokio::spawn(tuner.fit());

    // Wait for a few reports, then kill the node they came from.
    let results = dir.path().join("trial_00000").join("result.json");
    let mut victim = None;
    eventually_within(DEADLINE, "the trial reports 5 iterations", || {
        let Ok(text) = std::fs::read_to_string(&results) else {
            return false;
        };
        let reports: Vec<serde_json::Value> = text
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        victim = reports.last().and_then(|r| r["values"]["pid"].as_f64());
        reports.len() >= 5
    })
    .await;
    let victim = victim.expect("a pid") as u32;
    let (dead, alive) = match nodes.iter().position(|n| n.pid == victim) {
        Some(0) => (&nodes[0], &nodes[1]),
        Some(_) => (&nodes[1], &nodes[0]),
        None => panic!("the trial ran in {victim}, not on a node"),
    };
    tokio::task::block_in_place(|| p.kill(dead));

    let results = within_for(DEADLINE, "the experiment after the kill", experiment)
        .await
        .unwrap()
        .unwrap();
    let trial = &results.trials()[0];
    assert_eq!(trial.status, TrialStatus::Terminated, "{:?}", trial.error);
    assert_eq!(trial.failures, 1, "the node's death is one failure");
    let iterations_seen: Vec<u64> = trial.history.iter().map(|r| r.iteration).collect();
    assert_eq!(iterations_seen, (1..=iterations).collect::<Vec<_>>());
    for r in &trial.history {
        assert_eq!(
            r.metrics.get("value"),
            Some(expected(1.25, r.iteration)),
            "iteration {}",
            r.iteration
        );
    }
    assert_eq!(
        trial.history.last().and_then(|r| r.metrics.get("pid")),
        Some(f64::from(alive.pid)),
        "it finished on the other node"
    );
    assert_eq!(
        trial.node,
        Some(alive.node),
        "the result names the other node"
    );
    rt.shutdown().await.unwrap();
}

/// PBT across nodes: exploits copy a donor's checkpoint (made on one node)
/// into a trial on another, with the donor's config perturbed; the trial's
/// last report was made with the config it ends with.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pbt_exploits_move_checkpoints_and_configs_between_nodes() {
    let _turn = DRIVER.lock().await;
    let (p, head, _nodes) = head_and_two_nodes("tune-pbt");
    let rt = join_as_driver(&p, &head).await;
    let dir = tempfile::tempdir().unwrap();
    let first = [0.5, 2.0, -1.0, 1.0];
    let space = SearchSpace::new()
        .grid("x", first)
        .grid("pause_ms", [5_i64]);
    let pbt = Pbt::new(SearchSpace::new().uniform("x", -2.0, 3.0), 7).perturbation_interval(2);
    let tuner = Tuner::registered(
        rt.clone(),
        space,
        options(dir.path())
            .max_iterations(8)
            .scheduler(Scheduler::Pbt(pbt)),
        "ClusterTest-Sum",
    )
    .unwrap();
    let results = within_for(DEADLINE, "the experiment", tuner.fit())
        .await
        .unwrap();
    let mut exploited = 0;
    for trial in results.trials() {
        assert_eq!(trial.status, TrialStatus::Terminated, "{:?}", trial.error);
        let x = trial.params.f64("x").unwrap();
        assert_eq!(
            trial.last().and_then(|m| m.get("x")),
            Some(x),
            "trial {}: its last iteration ran with its last config",
            trial.id
        );
        if x != first[trial.id] {
            exploited += 1;
        }
    }
    assert!(exploited > 0, "PBT exploited at least once");
    rt.shutdown().await.unwrap();
}

/// A tuner whose trainable is a closure cannot put trials on the cluster,
/// and says how to; an unregistered name is refused at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trials_on_the_cluster_need_a_registered_trainable() {
    let rt = troupe::init(Config::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let space = SearchSpace::new().grid("x", [1.0]);
    let tuner = Tuner::with_fn(
        rt.clone(),
        space.clone(),
        options(dir.path()),
        |_: &Params, _: &mut (), _| Ok(Metrics::new().with("value", 1.0)),
    );
    let Err(TuneError::Invalid { what, reason }) = tuner.fit().await else {
        panic!("a closure is refused on the cluster");
    };
    assert_eq!(what, "trials_on_cluster");
    assert!(reason.contains("register_trainable!"), "{reason}");

    let Err(TuneError::Invalid { what, reason }) =
        Tuner::registered(rt.clone(), space, options(dir.path()), "ClusterTest-Nobody")
    else {
        panic!("an unknown name is refused");
    };
    assert_eq!(what, "trainable");
    assert!(
        reason.contains("ClusterTest-Sum"),
        "lists the known: {reason}"
    );
    rt.shutdown().await.unwrap();
}
