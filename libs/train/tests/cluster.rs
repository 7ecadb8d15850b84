//! Workers on other nodes (`fit_registered`), across real processes on
//! loopback: a head and three worker nodes are this test binary
//! re-launched in node mode (`node_process`); the test is the driver. The
//! head and the driver offer no CPUs and each node one, so each worker
//! runs on a node of its own, and one node stays spare. Every process a
//! test starts is killed when its cluster drops.
//!
//! Run with `cargo test -p troupe-train --features cluster --test cluster`.

mod common;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use common::{input, losses, mlp_loop, Mlp};
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};
use troupe::cluster::local::{run_node_if_asked, test_binary, LocalCluster, LocalNode};
use troupe::prelude::*;
use troupe_test_kit::{eventually_within, within_for};
use troupe_train::data::SyntheticClassification;
use troupe_train::{
    LoopError, Metrics, ReduceOp, TrainError, Trainer, TrainerConfig, WorkerContext,
};

/// One cluster per test at a time: each test joins as the driver.
static DRIVER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// How long a cluster test may take at most (they take seconds).
const DEADLINE: Duration = Duration::from_secs(120);

/// Node mode: when this binary is re-launched as a node, runs it.
#[test]
fn node_process() {
    run_node_if_asked();
}

/// A head with no CPUs and three nodes of one CPU; this process joined as
/// a driver with none, once it sees them all alive.
async fn cluster(test: &str) -> (LocalCluster, Vec<LocalNode>, Runtime) {
    let mut p =
        LocalCluster::new(test, test_binary("node_process", &[])).expect("a temporary directory");
    let head = p.head(&["--num-cpus", "0"]).expect("the head starts");
    let nodes: Vec<LocalNode> = (0..3)
        .map(|_| {
            p.worker(&head, &["--num-cpus", "1"])
                .expect("a node starts")
        })
        .collect();
    let rt = p
        .join_as_driver(&head, 4, DEADLINE)
        .await
        .expect("the driver joins");
    (p, nodes, rt)
}

const SIZES: [usize; 4] = [1, 7, 1000, 300_007];
const KINDS: [Kind; 3] = [Kind::Float, Kind::Double, Kind::Int64];

/// Every collective on random tensors, each result checked on every rank
/// against the sum one process makes in rank order. Rank 0 reports how
/// many were wrong on any rank, and each rank's process id.
fn collectives(ctx: &mut WorkerContext) -> Result<(), LoopError> {
    let world = ctx.world_size();
    let mut wrong = 0i64;
    for size in SIZES {
        for kind in KINDS {
            let mut ops = vec![ReduceOp::Sum];
            if kind != Kind::Int64 {
                ops.push(ReduceOp::Mean);
            }
            for op in ops {
                let mut t = input(ctx.rank(), size, kind);
                ctx.all_reduce(&mut t, op)?;
                let mut want = input(0, size, kind);
                for r in 1..world {
                    want += input(r, size, kind);
                }
                if op == ReduceOp::Mean {
                    want /= world as f64;
                }
                wrong += i64::from(!t.equal(&want));
            }
        }
    }
    let mut x = Tensor::from_slice(&[ctx.rank() as f64; 5]);
    ctx.broadcast(&mut x, world - 1)?;
    wrong += i64::from(!x.equal(&Tensor::from_slice(&[(world - 1) as f64; 5])));
    ctx.barrier()?;
    let mut wrong = Tensor::from(wrong);
    ctx.all_reduce(&mut wrong, ReduceOp::Sum)?;
    let mut pids = Tensor::zeros([world as i64], (Kind::Int64, tch::Device::Cpu));
    let _ = pids
        .get(ctx.rank() as i64)
        .fill_(i64::from(std::process::id()));
    ctx.all_reduce(&mut pids, ReduceOp::Sum)?;
    let mut metrics = Metrics::new().with("wrong", wrong.int64_value(&[]) as f64);
    for r in 0..world {
        metrics = metrics.with(format!("pid_{r}"), pids.int64_value(&[r as i64]) as f64);
    }
    ctx.report(metrics, None)?;
    Ok(())
}

troupe_train::register_train_loop!("ClusterTest-Collectives", collectives);

/// The MLP of `common`, with where to note each rank's process id.
#[derive(Serialize, Deserialize)]
struct MlpRun {
    mlp: Mlp,
    pid_dir: Option<PathBuf>,
}

troupe_train::register_train_loop!("ClusterTest-Mlp", |ctx| {
    let run: MlpRun = ctx.loop_config()?;
    if let Some(dir) = &run.pid_dir {
        let pid = std::process::id().to_string();
        std::fs::write(dir.join(format!("rank{}.pid", ctx.rank())), pid)?;
    }
    let data = Arc::new(SyntheticClassification::new(512, 8, 3, 5));
    mlp_loop(data, run.mlp)(ctx)
});

fn mlp(batch: usize, checkpoint_every: u64, pace_ms: u64) -> MlpRun {
    MlpRun {
        mlp: Mlp {
            steps: 40,
            batch,
            checkpoint_every,
            fault: None,
            pace_ms,
        },
        pid_dir: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collectives_across_node_processes_are_the_sum_of_one_process() {
    let _turn = DRIVER.lock().await;
    let (_p, nodes, rt) = cluster("train-collectives").await;
    let node_pids: BTreeSet<u32> = nodes.iter().map(|n| n.pid).collect();
    for world in [2, 3] {
        let result = within_for(
            DEADLINE,
            "the collectives",
            Trainer::new(&rt, TrainerConfig::new(world)).fit_registered("ClusterTest-Collectives"),
        )
        .await
        .expect("runs");
        let m = result.last_metrics().expect("a report");
        assert_eq!(
            m.get("wrong"),
            Some(0.0),
            "every result exact on {world} ranks"
        );
        let pids: BTreeSet<u32> = (0..world)
            .map(|r| m.get(&format!("pid_{r}")).expect("a pid") as u32)
            .collect();
        assert_eq!(pids.len(), world, "one process per rank: {pids:?}");
        assert!(
            pids.is_subset(&node_pids),
            "ranks ran on the nodes: {pids:?}"
        );
    }
    let err = within_for(
        DEADLINE,
        "an unknown loop",
        Trainer::new(&rt, TrainerConfig::new(2)).fit_registered("nope"),
    )
    .await
    .expect_err("unknown");
    assert!(
        matches!(&err, TrainError::Config(m) if m.contains("ClusterTest-Mlp")),
        "{err}"
    );
    // A closure cannot run on another node: fit says what to do instead.
    let err = within_for(
        DEADLINE,
        "a closure",
        Trainer::new(&rt, TrainerConfig::new(1)).fit(|_ctx| Ok(())),
    )
    .await
    .expect_err("the driver has no CPUs: the worker would be elsewhere");
    assert!(
        matches!(&err, TrainError::Start(m) if m.contains("fit_registered")),
        "{err}"
    );
    rt.shutdown().await.expect("shuts down");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_on_two_nodes_follow_one_worker_and_survive_a_node_killed() {
    let _turn = DRIVER.lock().await;
    let (mut p, nodes, rt) = cluster("train-mlp").await;
    let fit = |workers: usize, run: MlpRun, storage: Option<PathBuf>| {
        let mut config = TrainerConfig::new(workers).seed(3).max_failures(1);
        if let Some(dir) = storage {
            config = config.storage_path(dir);
        }
        let trainer = Trainer::new(&rt, config);
        async move { trainer.fit_registered_with("ClusterTest-Mlp", &run).await }
    };
    let one = within_for(DEADLINE, "one worker", fit(1, mlp(32, 0, 0), None))
        .await
        .expect("one worker");
    let two = within_for(DEADLINE, "two workers", fit(2, mlp(16, 0, 0), None))
        .await
        .expect("two workers");
    let (l1, l2) = (losses(&one), losses(&two));
    assert_eq!(l2.len(), 40);
    // Float sums in another order differ in the last bits (as in
    // tests/train.rs); over 40 SGD steps that stays far below this.
    for (i, (a, b)) in l2.iter().zip(&l1).enumerate() {
        assert!(
            (a - b).abs() <= 1e-4 * (1.0 + b.abs()),
            "step {i}: {a} vs {b}"
        );
    }
    assert!(l1[39] < 0.7 * l1[0], "it learns: {} -> {}", l1[0], l1[39]);

    // The same run, with a checkpoint every 5 steps, each step at least
    // 50 ms: rank 1's node is SIGKILLed after the checkpoint of step 10.
    let dir = tempfile::tempdir().expect("a directory");
    let storage = dir.path().join("run");
    let mut run = mlp(16, 5, 50);
    run.pid_dir = Some(dir.path().to_owned());
    let training = tokio::spawn(fit(2, run, Some(storage.clone())));
    eventually_within(DEADLINE, "the checkpoint of step 10", || {
        storage.join("checkpoint_000010").is_dir()
    })
    .await;
    let pid: u32 = std::fs::read_to_string(dir.path().join("rank1.pid"))
        .expect("rank 1 noted its process")
        .parse()
        .expect("a pid");
    let victim = nodes
        .iter()
        .find(|n| n.pid == pid)
        .expect("rank 1 runs on a node");
    p.kill(victim);
    let killed = within_for(DEADLINE, "the run after the kill", training)
        .await
        .expect("the task")
        .expect("recovers");
    assert_eq!(killed.restarts, 1, "{:?}", killed.failures);
    let iterations: Vec<u64> = killed.history.iter().map(|r| r.iteration).collect();
    assert_eq!(iterations, (1..=40).collect::<Vec<_>>(), "every step once");
    let after: BTreeSet<String> = std::fs::read_dir(dir.path())
        .expect("the pid files")
        .filter_map(|e| std::fs::read_to_string(e.ok()?.path()).ok())
        .collect();
    assert!(
        !after.contains(&pid.to_string()),
        "no rank runs on the dead node now"
    );
    // Restarted from the checkpoint of step 10 or later, the run takes the
    // steps the uninterrupted one took, bitwise.
    assert_eq!(losses(&killed), l2, "the same curve as without the kill");
    rt.shutdown().await.expect("shuts down");
}
