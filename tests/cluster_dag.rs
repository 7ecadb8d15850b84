//! Cluster correctness, started as the README starts a cluster: a head from
//! the `troupe` binary (it runs no user code), worker nodes from this test
//! binary re-launched in node mode, and the test as the driver.

mod common;
#[path = "dag/mod.rs"]
mod dag;

use std::ffi::OsString;
use std::process::Command;
use std::time::Duration;

use troupe::cluster::local::{binary, Launcher, LocalCluster, LocalNode};
use troupe::cluster::{ClusterNode, ClusterOptions, MemberState, Role};
use troupe::prelude::*;

const NODE_ARGS: &str = "TROUPE_TEST_NODE_ARGS";

/// Node mode: with `TROUPE_TEST_NODE_ARGS` set, this test is a node.
#[test]
fn node_process() {
    let Ok(args) = std::env::var(NODE_ARGS) else {
        return;
    };
    let argv =
        std::iter::once(OsString::from("troupe")).chain(args.split('\u{1f}').map(OsString::from));
    let code = troupe::cluster::cli::run(argv, true);
    std::process::exit(if code == std::process::ExitCode::SUCCESS {
        0
    } else {
        1
    });
}

#[troupe::remote]
fn step(prev: u64, k: u64) -> u64 {
    prev.wrapping_mul(31).wrapping_add(k)
}

/// One driver per process: the tests of this file take turns.
static DRIVER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn processes(test: &str) -> LocalCluster {
    let launcher: Launcher = Box::new(|args: &[String]| {
        let mut command = Command::new(std::env::current_exe().expect("the test binary"));
        command
            .args(["node_process", "--exact", "--nocapture", "--test-threads=1"])
            .env(NODE_ARGS, args.join("\u{1f}"));
        command
    });
    LocalCluster::new(test, launcher).expect("a temporary directory")
}

/// A head from the `troupe` binary, `workers` nodes of this binary with 2
/// CPUs each, and this process as a driver offering none.
async fn readme_cluster(
    test: &str,
    workers: usize,
) -> (LocalCluster, LocalNode, Vec<LocalNode>, Runtime) {
    let mut p = processes(test);
    let head = p
        .head_with(&binary(env!("CARGO_BIN_EXE_troupe")), &[])
        .expect("the head starts");
    let nodes: Vec<LocalNode> = (0..workers)
        .map(|_| {
            p.worker(&head, &["--num-cpus", "2"])
                .expect("a worker starts")
        })
        .collect();
    let mut options = ClusterOptions::driver(&head.address);
    options.state_dir = Some(p.home().clone());
    options.cookie = Some(p.cookie().to_owned());
    let rt = troupe::init(
        Config::default()
            .resources(Resources::default())
            .cluster_node(options),
    )
    .await
    .expect("the driver joins");
    common::eventually("every node is in the driver's view", || {
        ClusterNode::current().is_some_and(|c| {
            c.members()
                .iter()
                .filter(|m| {
                    m.state == MemberState::Alive
                        && matches!(m.hello.role, Role::Head | Role::Worker)
                })
                .count()
                == workers + 1
        })
    })
    .await;
    (p, head, nodes, rt)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chains_of_small_tasks_submitted_up_front_give_the_exact_answer() {
    let _turn = DRIVER.lock().await;
    let (_p, _head, _nodes, rt) = readme_cluster("chains", 3).await;
    let chains: Vec<_> = (0..500u64)
        .map(|c| {
            let mut prev = step::remote(&rt, c, 0);
            for k in 1..10 {
                prev = step::remote(&rt, &prev, k);
            }
            prev
        })
        .collect();
    for (c, r) in chains.iter().enumerate() {
        let expected = (1..10u64).fold(c as u64 * 31, |v, k| v.wrapping_mul(31).wrapping_add(k));
        let got = tokio::time::timeout(Duration::from_secs(60), rt.get(r))
            .await
            .expect("within a minute")
            .unwrap_or_else(|err| panic!("chain {c}: {err}"));
        assert_eq!(*got, expected, "chain {c}");
    }
    rt.shutdown().await.unwrap();
}

/// Seeds from `var` (`7`, `1,5,9`, or `1..=200`), else `default`.
fn seeds(var: &str, default: std::ops::RangeInclusive<u64>) -> Vec<u64> {
    let Ok(spec) = std::env::var(var) else {
        return default.collect();
    };
    if let Some((lo, hi)) = spec.split_once("..=") {
        let lo: u64 = lo.trim().parse().expect("a seed range start");
        let hi: u64 = hi.trim().parse().expect("a seed range end");
        return (lo..=hi).collect();
    }
    spec.split(',')
        .map(|s| s.trim().parse().expect("a seed"))
        .collect()
}

/// Waits until no node (driver included) holds an object: what the
/// cluster's reference counting owes once the driver dropped its refs.
async fn nothing_left(rt: &Runtime, seed: u64, nodes: &[LocalNode], ran: &dag::Ran) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let members = ClusterNode::current()
            .map(|c| c.members())
            .unwrap_or_default();
        let held: Vec<(String, u64)> = members
            .iter()
            .filter(|m| m.hello.role != Role::Client && m.load.objects > 0)
            .map(|m| {
                (
                    format!("{} {:?}", m.hello.node, m.hello.role),
                    m.load.objects,
                )
            })
            .collect();
        let here = rt.objects().len();
        if held.is_empty() && here == 0 {
            return;
        }
        if tokio::time::Instant::now() > deadline {
            let listed: Vec<String> = rt
                .objects()
                .list_some(20)
                .into_iter()
                .map(|o| {
                    format!(
                        "{} {} refs={} borrowers={:?} at {:?}",
                        o.id, o.state, o.refs, o.borrowers, o.location
                    )
                })
                .collect();
            let ids: Vec<_> = nodes.iter().map(|n| n.node).collect();
            let reports = dag::reports(rt, &ids).await;
            let named = ran.named_in(&format!("{reports:?} {listed:?}"));
            panic!(
                "seed {seed}: objects left 30 s after the driver dropped its refs: on the nodes {held:?}; \
                 {here} here: {listed:#?}\nthe nodes: {reports:#?}\nwhat made them: {named:#?}"
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Random DAGs (tasks with 0 to 4 ref arguments, fan-in and fan-out,
/// chains up to 100 deep, results from 8 bytes to 16 MB, keeper actors
/// holding refs, refs inside arguments and returned from tasks, planned
/// failures) on a head and three nodes: the same answers as in plain Rust,
/// the planned errors, and no object left anywhere once the driver lets
/// go. `TROUPE_DAG_SEEDS=1..=200` runs more; a failure names its seed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_dags_give_the_local_answer_and_leave_no_object_behind() {
    let _turn = DRIVER.lock().await;
    let (_p, _head, nodes, rt) = readme_cluster("random", 3).await;
    let shape = dag::Shape::default();
    for seed in seeds("TROUPE_DAG_SEEDS", 1..=3) {
        let keepers = dag::keepers(&rt, 2).await;
        let ran = tokio::time::timeout(
            Duration::from_secs(300),
            dag::run_seed(&rt, seed, &shape, &keepers),
        )
        .await
        .unwrap_or_else(|_| panic!("seed {seed}: not done within 5 minutes"));
        let ran = match ran {
            Ok(ran) => ran,
            Err(err) => {
                let ids: Vec<_> = nodes.iter().map(|n| n.node).collect();
                let reports = dag::reports(&rt, &ids).await;
                panic!("{err}\nthe nodes: {reports:#?}");
            }
        };
        for keeper in &keepers {
            keeper.stop().await;
        }
        drop(keepers);
        nothing_left(&rt, seed, &nodes, &ran).await;
        eprintln!(
            "seed {seed}: {} tasks, depth {}, answered in {:?}",
            ran.tasks, ran.depth, ran.elapsed
        );
    }
    rt.shutdown().await.unwrap();
}
