//! Rollout workers on other nodes (`PpoConfig::workers_on_cluster`), across
//! real processes on loopback: a head and two worker nodes are this test
//! binary re-launched in node mode (`node_process` below runs the `troupe
//! start` command line), and the test itself is the driver, holding the
//! learner. The head and the driver offer no CPUs, so every worker runs on
//! one of the two nodes. PPO with a worker on each node learns CartPole
//! exactly as it does with local workers; a worker node SIGKILLed mid-run,
//! a worker whose environment panics on its node, and one that hangs there
//! are each replaced and their fragments sampled again. Every process a
//! test starts is killed when its guard drops, even when the test fails.
//!
//! Run with `cargo test -p troupe-rl --features cluster --test cluster`.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use troupe::cluster::local::{run_node_if_asked, test_binary, LocalCluster, LocalNode};
use troupe::prelude::*;
use troupe::NodeId;
use troupe_rl::{
    Action, CartPole, Env, EnvError, EnvMaker, Info, IterationMetrics, PpoConfig, Reporter,
    RlError, Space, Stop, Trainer, Transition, WorkerPlacement,
};
use troupe_test_kit::{eventually_within, within_for};

/// One cluster node per process: the tests take turns as the driver.
static DRIVER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// How long a cluster test may take at most (they take seconds).
const DEADLINE: Duration = Duration::from_secs(90);

// Registered by name, so that the nodes (this same binary) make it too.
// Short episodes: a policy that learns shows it within a few iterations.
troupe_rl::register_env!("ClusterTest-CartPole-v0", |_index| {
    Ok(CartPole::new().max_episode_steps(200))
});

/// The file whose absence makes `ClusterTest-PanicsOnce-v0` panic (once:
/// it creates it first): named after the test process, the parent of the
/// nodes that run the environment.
fn panic_marker(test_pid: u32) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("troupe-rl-cluster-test-{test_pid}-panicked"))
}

/// A CartPole whose environment 0 fails at its 10th step, the first time
/// only, on a node of this test: it panics (a worker's panic on its node),
/// or with `hang`, blocks for ten minutes (a hung environment).
struct PanicsOnce {
    inner: CartPole,
    index: usize,
    steps: u32,
    hang: bool,
}

impl Env for PanicsOnce {
    fn observation_space(&self) -> Space {
        self.inner.observation_space()
    }
    fn action_space(&self) -> Space {
        self.inner.action_space()
    }
    fn reset(&mut self, seed: Option<u64>, obs: &mut [f32]) -> Result<Info, EnvError> {
        self.inner.reset(seed, obs)
    }
    fn step(&mut self, action: Action<'_>, obs: &mut [f32]) -> Result<Transition, EnvError> {
        self.steps += 1;
        if self.index == 0 && self.steps == 10 {
            let marker = panic_marker(std::os::unix::process::parent_id());
            if std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&marker)
                .is_ok()
            {
                if self.hang {
                    std::thread::sleep(Duration::from_secs(600));
                }
                panic!("ClusterTest-PanicsOnce-v0 panics once, as asked");
            }
        }
        self.inner.step(action, obs)
    }
}

troupe_rl::register_env!("ClusterTest-PanicsOnce-v0", |index| {
    Ok(PanicsOnce {
        inner: CartPole::new(),
        index,
        steps: 0,
        hang: false,
    })
});

troupe_rl::register_env!("ClusterTest-HangsOnce-v0", |index| {
    Ok(PanicsOnce {
        inner: CartPole::new(),
        index,
        steps: 0,
        hang: true,
    })
});

/// Node mode: when this binary is re-launched as a node, runs it;
/// otherwise does nothing.
#[test]
fn node_process() {
    run_node_if_asked();
}

/// A cluster of this test binary's processes in node mode.
fn processes(test: &str) -> LocalCluster {
    LocalCluster::new(test, test_binary("node_process", &[])).expect("a temporary directory")
}

/// A head with no CPUs (no worker lands there) and two nodes with `cpus`
/// CPUs each.
fn head_and_two_nodes(test: &str, cpus: &str) -> (LocalCluster, LocalNode, [LocalNode; 2]) {
    let mut p = processes(test);
    let head = p.head(&["--num-cpus", "0"]).expect("the head starts");
    let a = p
        .worker(&head, &["--num-cpus", cpus])
        .expect("node a starts");
    let b = p
        .worker(&head, &["--num-cpus", cpus])
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

/// Two workers of 8 environments, 32 steps each: 512 steps an update.
fn config() -> PpoConfig {
    PpoConfig::default()
        .seed(3)
        .num_workers(2)
        .envs_per_worker(8)
        .fragment_len(32)
        .workers_on_cluster(true)
}

/// Where each worker runs, as the worker itself says (a method that runs
/// there and reads its node's id).
async fn worker_nodes(trainer: &Trainer) -> Vec<NodeId> {
    let mut nodes = Vec::new();
    for worker in trainer.workers() {
        let node = within_for(DEADLINE, "a worker says where it runs", worker.node())
            .await
            .expect("the worker answers")
            .expect("the worker runs in a runtime");
        nodes.push(node);
    }
    nodes
}

/// The mean return over the first iteration that finished an episode.
fn first_return(history: &[IterationMetrics]) -> f64 {
    history
        .iter()
        .map(|m| m.episode_return_mean)
        .find(|r| r.is_finite())
        .expect("an episode finished")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_on_two_nodes_train_cartpole_as_local_workers_would() {
    let _turn = DRIVER.lock().await;
    let (p, head, [a, b]) = head_and_two_nodes("rl-two-nodes", "1");
    let rt = join_as_driver(&p, &head).await;
    let env = EnvMaker::by_id("ClusterTest-CartPole-v0").unwrap();
    let mut trainer = within_for(
        DEADLINE,
        "the trainer starts",
        Trainer::new(&rt, env, config()),
    )
    .await
    .unwrap();

    // One CPU per worker, one per node, in a spread placement group (the
    // default): a worker on each node, and none on the head or here.
    let nodes: BTreeSet<NodeId> = worker_nodes(&trainer).await.into_iter().collect();
    assert_eq!(
        nodes,
        BTreeSet::from([a.node, b.node]),
        "head {}",
        head.node
    );
    for worker in trainer.workers() {
        assert_ne!(worker.info().node, rt.node_id(), "not on the driver");
    }

    let summary = within_for(
        DEADLINE,
        "training on the cluster",
        trainer.train_until(&Stop::at_return(150.0).or_iterations(25), &mut ()),
    )
    .await
    .unwrap();
    let start = first_return(trainer.history());
    let end = summary.last.episode_return_mean;
    eprintln!(
        "cluster workers: mean return {start:.1} -> {end:.1} in {} iterations",
        summary.last.iteration
    );
    assert!(
        end > 2.0 * start && end > 50.0,
        "mean return went from {start:.1} to {end:.1}"
    );
    assert_eq!(summary.last.worker_restarts, 0, "no worker was lost");
    assert_eq!(
        summary.last.env_steps,
        summary.last.iteration * 512,
        "every fragment of every iteration arrived once"
    );
    let on_cluster = trainer.history().to_vec();
    trainer.shutdown().await;

    // Where the workers ran does not change the training: the same seed
    // and stop with local workers sample the same batches (initial
    // weights, episode seeds, action draws) and so train the same way,
    // iteration for iteration.
    let local = troupe::init(Config::default().resources(Resources::cpus(2.0)))
        .await
        .unwrap();
    let env = EnvMaker::by_id("ClusterTest-CartPole-v0").unwrap();
    let mut here = Trainer::new(&local, env, config().workers_on_cluster(false))
        .await
        .unwrap();
    within_for(
        DEADLINE,
        "the same training with local workers",
        here.train_until(&Stop::at_return(150.0).or_iterations(25), &mut ()),
    )
    .await
    .unwrap();
    let key = |m: &IterationMetrics| {
        (
            m.iteration,
            m.env_steps,
            m.episodes,
            m.episode_return_mean.to_bits(),
        )
    };
    let (cluster_keys, local_keys): (Vec<_>, Vec<_>) = (
        on_cluster.iter().map(key).collect(),
        here.history().iter().map(key).collect(),
    );
    assert_eq!(
        cluster_keys, local_keys,
        "(iteration, env steps, episodes, mean return bits): on the cluster vs here"
    );
    here.shutdown().await;
    local.shutdown().await.unwrap();
    rt.shutdown().await.unwrap();
}

/// Counts finished iterations where the test can see them while training
/// runs in a task of its own.
struct Count(Arc<AtomicU64>);

impl Reporter for Count {
    fn report(&mut self, m: &IterationMetrics) -> Result<(), RlError> {
        self.0.store(m.iteration, Ordering::SeqCst);
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_node_killed_mid_training_is_replaced_and_training_completes() {
    let _turn = DRIVER.lock().await;
    // Two CPUs a node: either node can hold both workers.
    let (mut p, head, [a, b]) = head_and_two_nodes("rl-node-killed", "2");
    let rt = join_as_driver(&p, &head).await;
    let env = EnvMaker::by_id("ClusterTest-CartPole-v0").unwrap();
    // Placed by resources alone (the default, a spread placement group,
    // is the other test's).
    // Sampling overlaps the updates (async_sampling): a worker is lost
    // while the learner works too.
    let config = config()
        .worker_placement(WorkerPlacement::Resources)
        .async_sampling(true)
        .sample_timeout(Duration::from_secs(20));
    let mut trainer = within_for(
        DEADLINE,
        "the trainer starts",
        Trainer::new(&rt, env, config),
    )
    .await
    .unwrap();
    let before = worker_nodes(&trainer).await;
    let victim = if before[0] == a.node {
        a.clone()
    } else {
        b.clone()
    };
    let survivor = if victim.node == a.node { &b } else { &a };
    assert_eq!(before[0], victim.node);
    assert!(
        before.iter().all(|n| *n == a.node || *n == b.node),
        "workers on the nodes: {before:?}"
    );

    let iterations = Arc::new(AtomicU64::new(0));
    let mut count = Count(iterations.clone());
    const ITERATIONS: u64 = 12;
    let stop = Stop::default().or_iterations(ITERATIONS);
    let training = within_for(
        DEADLINE,
        "training goes on and ends",
        trainer.train_until(&stop, &mut count),
    );
    // Kill worker 0's node while training runs (after a few iterations,
    // so that it is mid-way).
    let kill = async {
        eventually_within(DEADLINE, "a few iterations on both nodes", || {
            iterations.load(Ordering::SeqCst) >= 3
        })
        .await;
        p.kill(&victim);
    };
    let (result, ()) = tokio::join!(training, kill);
    let summary = result.expect("training completes despite the lost node");
    assert_eq!(summary.last.iteration, ITERATIONS);
    assert_eq!(
        summary.last.env_steps,
        ITERATIONS * 512,
        "no fragment lost, none counted twice"
    );
    assert!(
        summary.last.worker_restarts >= 1,
        "the lost worker's fragment was sampled again"
    );
    let after = worker_nodes(&trainer).await;
    eprintln!(
        "node {} killed after iteration 3: {} failure(s) resampled, workers now on {after:?}",
        victim.node, summary.last.worker_restarts
    );
    assert!(
        after.iter().all(|n| *n == survivor.node),
        "every worker on the surviving node {}: {after:?}",
        survivor.node
    );
    let lags: Vec<u64> = trainer.history().iter().map(|m| m.policy_lag).collect();
    assert!(
        lags[0] == 0 && lags[1..].iter().all(|l| *l == 1),
        "one update stale, never more: {lags:?}"
    );
    let m = trainer.history().last().unwrap();
    assert!(m.episode_return_mean.is_finite() && m.policy_loss.is_finite());
    trainer.shutdown().await;
    rt.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_panics_on_its_node_is_respawned_and_its_fragment_sampled_again() {
    let _turn = DRIVER.lock().await;
    let marker = panic_marker(std::process::id());
    let _ = std::fs::remove_file(&marker);
    let (p, head, [a, b]) = head_and_two_nodes("rl-worker-panics", "1");
    let rt = join_as_driver(&p, &head).await;
    let env = EnvMaker::by_id("ClusterTest-PanicsOnce-v0").unwrap();
    let mut trainer = within_for(
        DEADLINE,
        "the trainer starts",
        Trainer::new(&rt, env, config()),
    )
    .await
    .unwrap();
    let first = trainer.workers()[0].id();
    let summary = within_for(
        DEADLINE,
        "training past the panic",
        trainer.train_until(&Stop::default().or_iterations(4), &mut ()),
    )
    .await
    .unwrap();
    assert!(marker.exists(), "the environment panicked on a node");
    assert_eq!(
        summary.last.worker_restarts, 1,
        "one fragment sampled again"
    );
    assert_eq!(summary.last.env_steps, 4 * 512);
    assert_ne!(trainer.workers()[0].id(), first, "worker 0 was respawned");
    let nodes: BTreeSet<NodeId> = worker_nodes(&trainer).await.into_iter().collect();
    assert_eq!(
        nodes,
        BTreeSet::from([a.node, b.node]),
        "back in its bundle"
    );
    trainer.shutdown().await;
    rt.shutdown().await.unwrap();
    let _ = std::fs::remove_file(&marker);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_hung_on_its_node_is_replaced_after_sample_timeout() {
    let _turn = DRIVER.lock().await;
    let marker = panic_marker(std::process::id());
    let _ = std::fs::remove_file(&marker);
    // The hung worker is killed, and its replacement spawned into the
    // bundle it held.
    let (p, head, _) = head_and_two_nodes("rl-worker-hangs", "1");
    let rt = join_as_driver(&p, &head).await;
    let env = EnvMaker::by_id("ClusterTest-HangsOnce-v0").unwrap();
    let timeout = Duration::from_secs(3);
    let config = config().sample_timeout(timeout);
    let mut trainer = within_for(
        DEADLINE,
        "the trainer starts",
        Trainer::new(&rt, env, config),
    )
    .await
    .unwrap();
    let first = trainer.workers()[0].id();
    let began = std::time::Instant::now();
    let summary = within_for(
        DEADLINE,
        "training past the hang",
        trainer.train_until(&Stop::default().or_iterations(3), &mut ()),
    )
    .await
    .unwrap();
    assert!(marker.exists(), "the environment hung on a node");
    assert!(began.elapsed() >= timeout, "waited for sample_timeout");
    assert_eq!(
        summary.last.worker_restarts, 1,
        "one fragment sampled again"
    );
    assert_eq!(summary.last.env_steps, 3 * 512);
    assert_ne!(trainer.workers()[0].id(), first, "worker 0 was replaced");
    trainer.shutdown().await;
    rt.shutdown().await.unwrap();
    let _ = std::fs::remove_file(&marker);
}

/// PPO tuned with troupe-tune, each trial on a node of the cluster (the
/// `tune` feature too).
#[cfg(feature = "tune")]
mod tuned {
    use super::*;
    use troupe_rl::tune::{trial_config, PpoTrainable};
    use troupe_tune::{Mode, Params, SearchSpace, TrainableError, TrialStatus, TuneOptions, Tuner};

    // Built on the trial's node, from its registered name: the node's
    // runtime is the current one while a trial's actor is constructed.
    troupe_tune::register_trainable!("ClusterTest-PPO", |params: &Params| {
        let rt = Runtime::current()
            .ok_or_else(|| TrainableError::Failed("built outside a runtime".into()))?;
        let env = EnvMaker::by_id("ClusterTest-CartPole-v0")
            .map_err(|e| TrainableError::Failed(e.to_string()))?;
        PpoTrainable::from_params(&rt, env, &trial_config().seed(3), params)
    });

    /// Two PPO trials, one per node (each holds the node's only CPU; the
    /// head and the driver offer none): both train their 4 iterations
    /// there, and their checkpoints (troupe-rl's format) come back here.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn ppo_trials_train_on_the_nodes_and_checkpoint_here() {
        let _turn = DRIVER.lock().await;
        let (p, head, _nodes) = head_and_two_nodes("rl-tune", "1");
        let rt = join_as_driver(&p, &head).await;
        let dir = tempfile::tempdir().unwrap();
        let space = SearchSpace::new().grid("learning_rate", [0.001, 0.003]);
        let options = TuneOptions::new("episode_return_mean", Mode::Max)
            .dir(dir.path())
            .max_concurrent(2)
            .max_iterations(4)
            .progress(false)
            .plots(false)
            .trials_on_cluster(true);
        let tuner = Tuner::registered(rt.clone(), space, options, "ClusterTest-PPO").unwrap();
        let results = within_for(DEADLINE, "two PPO trials on the nodes", tuner.fit())
            .await
            .unwrap();
        assert_eq!(results.trials().len(), 2);
        for trial in results.trials() {
            assert_eq!(trial.status, TrialStatus::Terminated, "{:?}", trial.error);
            assert_eq!(trial.iteration(), 4);
            let checkpoint = trial.checkpoint.as_ref().expect("a checkpoint came back");
            assert_eq!(checkpoint.iteration, 4);
            assert!(!checkpoint.bytes.is_empty());
        }
        rt.shutdown().await.unwrap();
    }
}
