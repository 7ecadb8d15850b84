//! Cluster correctness, started as the README starts a cluster: a head from
//! the `troupe` binary (it runs no user code), worker nodes from this test
//! binary re-launched in node mode, and the test as the driver. Each test
//! guards a property a user of a cluster relies on, with randomized
//! workloads checked against a local evaluation where it can.

mod common;
#[path = "dag/mod.rs"]
mod dag;

use std::process::Command;
use std::time::Duration;

use common::cluster::{join_as_driver, processes};
use troupe::cluster::local::{binary, LocalCluster, LocalNode};
use troupe::cluster::{ClusterNode, ClusterOptions, MemberState, Role};
use troupe::prelude::*;
use troupe::SchedulingStrategy;

const DRIVER_ARGS: &str = "TROUPE_TEST_DRIVER_ARGS";

/// Node mode: this test binary re-launched as a node (see `common::cluster`).
#[test]
fn node_process() {
    common::cluster::run_node_if_asked();
}

/// Driver mode: with `TROUPE_TEST_DRIVER_ARGS` (`head address|cookie|home`)
/// set, this test is a second driver that spawns two actors on the cluster,
/// one detached, says so on stdout, and waits to be killed.
#[test]
fn driver_process() {
    let Ok(args) = std::env::var(DRIVER_ARGS) else {
        return;
    };
    let mut parts = args.split('|');
    let (Some(head), Some(cookie), Some(home)) = (parts.next(), parts.next(), parts.next()) else {
        panic!("driver arguments: {args}");
    };
    let mut options = ClusterOptions::driver(head);
    options.cookie = Some(cookie.to_owned());
    options.state_dir = Some(home.into());
    let rt = Runtime::start(
        Config::default()
            .resources(Resources::default())
            .cluster_node(options),
    )
    .expect("the second driver joins");
    rt.block_on(async {
        let holds_a_cpu = |name: &str| {
            ActorOptions::new()
                .name(name)
                .resources(Resources::cpus(1.0))
        };
        Holder::remote(&rt, holds_a_cpu("owned"))
            .new()
            .await
            .expect("spawned");
        Holder::remote(&rt, holds_a_cpu("detached").detached(true))
            .new()
            .await
            .expect("spawned");
    });
    println!("both actors spawned");
    std::thread::sleep(Duration::from_secs(120));
}

#[troupe::remote]
fn step(prev: u64, k: u64) -> u64 {
    prev.wrapping_mul(31).wrapping_add(k)
}

/// Where it ran.
#[troupe::remote]
fn where_am_i() -> troupe::NodeId {
    troupe::task::current().expect("in a task").node
}

/// 16 MB made from `seed`.
#[troupe::remote]
fn block(seed: u64) -> Vec<u8> {
    dag::pattern(seed, 16 << 20)
}

/// The digest of `len` bytes of `bytes` from `at`.
#[troupe::remote]
fn slice_digest(bytes: Vec<u8>, at: usize, len: usize) -> u64 {
    dag::digest(&bytes[at..at + len])
}

/// Puts `n` in the store of the node it runs on and returns the ref
/// (`return ray.put(x)`).
#[troupe::remote]
fn put_and_return(n: u64) -> ObjectRef<u64> {
    troupe::Runtime::current()
        .expect("in a runtime")
        .put_blocking(n)
        .expect("put")
}

/// Reads a ref it was given inside its arguments.
#[troupe::remote]
fn read_inner(inner: Vec<ObjectRef<u64>>) -> u64 {
    let rt = troupe::Runtime::current().expect("in a runtime");
    inner
        .iter()
        .map(|r| *rt.get_blocking(r).expect("the inner object"))
        .sum()
}

/// Fails its first attempt (a panic), then returns `n`.
#[troupe::remote]
fn flaky(n: u64) -> u64 {
    let attempt = troupe::task::current().expect("in a task").attempt;
    assert!(attempt > 1, "attempt {attempt} fails on purpose");
    n
}

/// Blocks its worker thread (as a careless async body does).
#[troupe::remote]
async fn hog(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

/// An actor that keeps refs it is given.
#[derive(Default)]
pub struct Holder {
    kept: Vec<ObjectRef<u64>>,
}

#[troupe::actor]
impl Holder {
    pub fn new() -> Self {
        Holder::default()
    }

    pub fn keep(&mut self, r: ObjectRef<u64>) -> usize {
        self.kept.push(r);
        self.kept.len()
    }

    pub async fn sum(&self) -> Result<u64, String> {
        let rt = troupe::Runtime::current().ok_or("no runtime")?;
        let mut sum = 0;
        for r in &self.kept {
            sum += *rt.get(r).await.map_err(|e| e.to_string())?;
        }
        Ok(sum)
    }

    pub fn node(&self) -> troupe::NodeId {
        troupe::Runtime::current().expect("in a runtime").node_id()
    }
}

/// One driver per process: the tests of this file take turns.
static DRIVER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// With `TROUPE_TEST_LOG` (a filter), the driver's own log on stderr, for
/// a failing case (nodes log per `RUST_LOG`).
fn log_driver_if_asked() {
    if let Ok(filter) = std::env::var("TROUPE_TEST_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_writer(std::io::stderr)
            .try_init();
    }
}

/// A head from the `troupe` binary, `workers` nodes of this binary with 2
/// CPUs each, and this process as a driver offering none.
async fn readme_cluster(
    test: &str,
    workers: usize,
) -> (LocalCluster, LocalNode, Vec<LocalNode>, Runtime) {
    log_driver_if_asked();
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
    let rt = join_as_driver(&p, &head).await;
    in_view(workers + 1).await;
    (p, head, nodes, rt)
}

/// Waits until the driver's view lists `nodes` live heads and workers.
async fn in_view(nodes: usize) {
    common::eventually("every node is in the driver's view", || {
        ClusterNode::current().is_some_and(|c| c.alive_nodes() == nodes)
    })
    .await;
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
        // A dead node's last load is what it held when it died: gone.
        let held: Vec<(String, u64)> = members
            .iter()
            .filter(|m| {
                m.hello.role != Role::Client
                    && m.load.objects > 0
                    && !matches!(m.state, MemberState::Dead | MemberState::Left)
            })
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
/// chains up to 100 deep, results from 8 bytes to 64 MB, keeper actors
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
                let here = dag::awaited_here(&rt, &reports);
                panic!("{err}\nthe nodes: {reports:#?}\n{here}");
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

/// What happens to a worker during a job (`chaos`).
#[derive(Clone, Copy, Debug, PartialEq)]
enum Chaos {
    /// SIGKILL.
    Kill,
    /// SIGSTOP for 3 s, then SIGCONT: past the detector's limit, so the
    /// cluster handles it as dead while it still runs.
    Stall,
    /// SIGKILL, then a second worker 1 to 2 s later.
    KillTwo,
}

/// A DAG with a few intermediates of 16 to 100 MB (half with a replica),
/// without objects owned by the workers (`put` in a task), which a node's
/// death loses for good, nor (by default) keeper actors:
/// `TROUPE_CHAOS_KEEPERS=1` adds them, on a worker that stays.
fn survivable() -> dag::Shape {
    let tasks = std::env::var("TROUPE_CHAOS_TASKS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1_000);
    dag::Shape {
        tasks,
        // Intermediates of 16 to 100 MB: lost with their node, read across
        // nodes, made again.
        large: (tasks / 1000).max(3),
        large_min: 16 << 20,
        large_max: 100 << 20,
        keepers: std::env::var_os("TROUPE_CHAOS_KEEPERS").is_some(),
        puts: false,
        // Half of them kept twice: read from the replica when lost.
        replicas: true,
        ..dag::Shape::default()
    }
}

fn sigkill(node: &LocalNode) {
    let _ = Command::new("kill")
        .args(["-KILL", &node.pid.to_string()])
        .status();
}

/// Runs seed `seed`'s DAG while `chaos` happens to `nodes[0]` (and
/// `nodes[1]`) at a random moment of it; panics unless every answer is
/// exact.
async fn job_through(
    p: &LocalCluster,
    rt: &Runtime,
    head: &LocalNode,
    nodes: &[LocalNode],
    seed: u64,
    chaos: Chaos,
) -> dag::Ran {
    let mut rng = dag::Rng::new(seed);
    let after = Duration::from_millis(rng.range(100, 1_000));
    let then = Duration::from_millis(rng.range(1_000, 2_000));
    let victim = &nodes[0];
    let strike = async {
        tokio::time::sleep(after).await;
        match chaos {
            Chaos::Kill => sigkill(victim),
            Chaos::KillTwo => {
                sigkill(victim);
                tokio::time::sleep(then).await;
                sigkill(&nodes[1]);
            }
            Chaos::Stall => {
                p.pause(victim).expect("SIGSTOP");
                tokio::time::sleep(Duration::from_secs(3)).await;
                p.resume(victim).expect("SIGCONT");
            }
        }
    };
    let shape = survivable();
    let stays = nodes.last().expect("a worker that stays").node;
    let on_it = ActorOptions::new().scheduling_strategy(SchedulingStrategy::NodeAffinity {
        node: stays,
        soft: false,
    });
    let keepers = if shape.keepers {
        dag::keepers_with(rt, 2, on_it).await
    } else {
        Vec::new()
    };
    let job = tokio::time::timeout(
        Duration::from_secs(300),
        dag::run_seed(rt, seed, &shape, &keepers),
    );
    let finished = tokio::join!(job, strike);
    for keeper in &keepers {
        // A keeper stuck in a call (a get that never ends) would hold this
        // stop forever: said, with the job's own outcome.
        if tokio::time::timeout(Duration::from_secs(60), keeper.stop())
            .await
            .is_err()
        {
            let ids: Vec<_> = nodes.iter().map(|n| n.node).skip(2).collect();
            let reports = dag::reports(rt, &ids).await;
            let outcome = match &finished.0 {
                Ok(Ok(ran)) => format!("answered in {:?}", ran.elapsed),
                Ok(Err(err)) => err.clone(),
                Err(_) => "not done within 5 minutes".to_owned(),
            };
            panic!("seed {seed}: a keeper did not stop within a minute; the job: {outcome}\nthe nodes: {reports:#?}");
        }
    }
    match finished {
        (Ok(Ok(ran)), ()) => {
            eprintln!(
                "seed {seed}: {} tasks, {chaos:?} after {after:?}, answered in {:?}",
                ran.tasks, ran.elapsed
            );
            ran
        }
        (Ok(Err(err)), ()) => {
            let members: Vec<String> = ClusterNode::current()
                .map(|c| c.members())
                .unwrap_or_default()
                .iter()
                .map(|m| format!("{} {:?}", m.hello.node, m.state))
                .collect();
            let ids: Vec<_> = nodes.iter().map(|n| n.node).skip(2).collect();
            let reports = dag::reports(rt, &ids).await;
            let here = dag::awaited_here(rt, &reports);
            // What membership said (deaths, stalls, rejoins), without the
            // flood of tasks that failed for good once a node was lost.
            let membership = |node: &LocalNode| {
                let log: Vec<String> = p
                    .log_tail(node)
                    .into_iter()
                    .filter(|line| !line.contains("task failed for good"))
                    .collect();
                log[log.len().saturating_sub(40)..].join("\n")
            };
            let head_log = membership(head);
            let log = membership(&nodes[nodes.len() - 1]);
            panic!("seed {seed}, {chaos:?} after {after:?}: {err}; members {members:?}\nthe nodes: {reports:#?}\n{here}\nthe head's log:\n{head_log}\nthe last worker's log:\n{log}")
        }
        (Err(_), ()) => panic!("seed {seed}: not done within 5 minutes"),
    }
}

/// A worker SIGKILLed at a random moment of a random DAG: its tasks run
/// again elsewhere, the results it held are made again from their
/// lineage, and every answer is exact, with nothing left behind.
/// CI runs seeds 1 and 2; `TROUPE_CHAOS_SEEDS=1..=10` runs more (a fresh
/// cluster each), `TROUPE_CHAOS_TASKS=10000` larger DAGs, and
/// `TROUPE_CHAOS_KEEPERS=1` adds actor calls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_job_leaves_every_answer_exact() {
    let _turn = DRIVER.lock().await;
    for seed in seeds("TROUPE_CHAOS_SEEDS", 1..=2) {
        let (p, head, nodes, rt) = readme_cluster(&format!("kill-{seed}"), 3).await;
        let ran = job_through(&p, &rt, &head, &nodes, seed, Chaos::Kill).await;
        nothing_left(&rt, seed, &nodes, &ran).await;
        rt.shutdown().await.unwrap();
    }
}

/// A worker stalled past the failure detector's limit (SIGSTOP for 3 s,
/// then SIGCONT) is declared dead and fenced: what it sends on waking is
/// dropped, and its process comes back as a new node, which takes work;
/// a random DAG afterwards gives the exact answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_worker_is_fenced_and_rejoins_as_a_new_node_that_takes_work() {
    let _turn = DRIVER.lock().await;
    let (p, _head, nodes, rt) = readme_cluster("stall", 3).await;
    let victim = &nodes[0];
    p.pause(victim).expect("SIGSTOP");
    tokio::time::sleep(Duration::from_secs(3)).await;
    p.resume(victim).expect("SIGCONT");
    // The same process, a new node id, alive; the stalled one dead.
    let mut again = None;
    common::eventually("the stalled worker rejoins as a new node", || {
        let members = ClusterNode::current()
            .map(|c| c.members())
            .unwrap_or_default();
        let old_dead = members
            .iter()
            .any(|m| m.hello.node == victim.node && m.state == MemberState::Dead);
        again = members
            .iter()
            .find(|m| {
                m.hello.pid == victim.pid
                    && m.hello.node != victim.node
                    && m.state == MemberState::Alive
            })
            .map(|m| m.hello.node);
        old_dead && again.is_some()
    })
    .await;
    let again = again.expect("found");
    let log = p.log_tail(victim).join("\n");
    assert!(log.contains("the head declared this node dead"), "{log}");
    let asked = where_am_i::options(TaskOptions::default().scheduling_strategy(
        SchedulingStrategy::NodeAffinity {
            node: again,
            soft: false,
        },
    ))
    .remote(&rt);
    let there = tokio::time::timeout(Duration::from_secs(30), rt.get(&asked))
        .await
        .expect("within 30 s")
        .expect("the new node runs a task");
    assert_eq!(*there, again);
    drop(asked);
    let ran = dag::run_seed(&rt, 1, &survivable(), &[])
        .await
        .unwrap_or_else(|err| panic!("after the rejoin: {err}"));
    nothing_left(&rt, 1, &nodes, &ran).await;
    rt.shutdown().await.unwrap();
}

/// The same with two workers of three SIGKILLed one after the other (1 to
/// 2 s apart): the last one does all the work again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_killed_one_after_the_other_leave_every_answer_exact() {
    let _turn = DRIVER.lock().await;
    for seed in seeds("TROUPE_CHAOS_SEEDS", 1..=1) {
        let (p, head, nodes, rt) = readme_cluster(&format!("kill-two-{seed}"), 3).await;
        let ran = job_through(&p, &rt, &head, &nodes, seed, Chaos::KillTwo).await;
        nothing_left(&rt, seed, &nodes, &ran).await;
        rt.shutdown().await.unwrap();
    }
}

/// The same with a worker stalled (SIGSTOP 3 s, SIGCONT) at a random moment:
/// it is handled as dead while it still runs, and what it sends on waking
/// changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_stalled_mid_job_leaves_every_answer_exact() {
    let _turn = DRIVER.lock().await;
    for seed in seeds("TROUPE_CHAOS_SEEDS", 1..=2) {
        let (p, head, nodes, rt) = readme_cluster(&format!("stall-{seed}"), 3).await;
        let ran = job_through(&p, &rt, &head, &nodes, seed, Chaos::Stall).await;
        nothing_left(&rt, seed, &nodes, &ran).await;
        rt.shutdown().await.unwrap();
    }
}

/// Whether `troupe status`'s table lists each of `nodes` as alive.
fn status_lists_alive(status: &str, nodes: &[troupe::NodeId]) -> bool {
    nodes.iter().all(|node| {
        status
            .lines()
            .any(|line| line.starts_with(&node.to_string()) && line.contains(" Alive "))
    })
}

/// A head that runs work too: this program's, with 2 CPUs, and two workers.
async fn working_head_cluster(test: &str) -> (LocalCluster, LocalNode, Vec<LocalNode>, Runtime) {
    let mut p = processes(test);
    let head = p
        .start(&[
            "start",
            "--head",
            "--block",
            "--num-cpus",
            "2",
            "--port",
            "0",
        ])
        .expect("the head starts");
    let nodes: Vec<LocalNode> = (0..2)
        .map(|_| {
            p.worker(&head, &["--num-cpus", "2"])
                .expect("a worker starts")
        })
        .collect();
    let rt = join_as_driver(&p, &head).await;
    in_view(3).await;
    (p, head, nodes, rt)
}

/// The head SIGKILLed and started again at the same address in the middle
/// of seed `seed`'s random DAG (through `troupe`, the `troupe` binary, or
/// else this program with 2 CPUs, as it was started): tasks submitted while
/// it is down run; every worker and the driver are taken back under their
/// own ids, their work kept; `troupe status` lists every node alive again
/// within seconds; what ran on the head is retried or made again; every
/// answer is exact and nothing is left behind.
async fn head_restarted_mid_job(
    seed: u64,
    (mut p, head, nodes, rt): (LocalCluster, LocalNode, Vec<LocalNode>, Runtime),
    troupe: Option<troupe::cluster::local::Launcher>,
) {
    {
        let port = head.address.rsplit(':').next().expect("a port").to_owned();
        let head_args: Vec<&str> = match troupe {
            Some(_) => vec!["start", "--head", "--block", "--port", port.as_str()],
            None => vec![
                "start",
                "--head",
                "--block",
                "--num-cpus",
                "2",
                "--port",
                port.as_str(),
            ],
        };
        let mut rng = dag::Rng::new(seed);
        let after = Duration::from_millis(rng.range(100, 1_000));
        let mut wanted: Vec<troupe::NodeId> = nodes.iter().map(|n| n.node).collect();
        wanted.push(rt.node_id());
        let restart = async {
            tokio::time::sleep(after).await;
            sigkill(&head);
            // Work submitted while the head is down runs on the nodes known.
            let while_down: Vec<_> = (0..20).map(|_| where_am_i::remote(&rt)).collect();
            for r in &while_down {
                let node = *common::within("a task while the head is down", rt.get(r))
                    .await
                    .expect("a task runs while the head is down");
                assert!(nodes.iter().any(|n| n.node == node), "ran on {node}");
            }
            let again = tokio::task::block_in_place(|| match &troupe {
                Some(troupe) => p.start_with(troupe, &head_args),
                None => p.start(&head_args),
            })
            .expect("the head starts again at the same address");
            let up = std::time::Instant::now();
            let deadline = up + Duration::from_secs(30);
            loop {
                let (ok, status) = p
                    .run(&["status", "--address", &again.address])
                    .expect("troupe status runs");
                if ok && status_lists_alive(&status, &wanted) {
                    break (again, up.elapsed(), status);
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "troupe status does not list every node alive 30 s after the restart: {status}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        };
        let shape = survivable();
        let job = tokio::time::timeout(
            Duration::from_secs(300),
            dag::run_seed(&rt, seed, &shape, &[]),
        );
        let (ran, (again, back_after, status)) = tokio::join!(job, restart);
        eprintln!(
            "seed {seed}: head restarted after {after:?}; every node listed alive {back_after:?} after it was up\n{status}"
        );
        assert_ne!(again.node, head.node, "a restarted head is a new node");
        let ran = match ran {
            Ok(Ok(ran)) => {
                eprintln!(
                    "seed {seed}: {} tasks answered in {:?}",
                    ran.tasks, ran.elapsed
                );
                ran
            }
            Ok(Err(err)) => panic!("seed {seed}: the job across the head's restart: {err}"),
            Err(_) => panic!("seed {seed}: the job was not done within 5 minutes"),
        };
        // The driver follows the new head, and the old one is dead for it.
        let members = ClusterNode::current()
            .map(|c| c.members())
            .unwrap_or_default();
        let state = |node| {
            members
                .iter()
                .find(|m| m.hello.node == node)
                .map(|m| m.state)
        };
        assert_eq!(state(head.node), Some(MemberState::Dead), "{members:?}");
        assert_eq!(state(again.node), Some(MemberState::Alive), "{members:?}");
        assert_eq!(
            ClusterNode::current().and_then(|c| c.head()),
            Some(again.node)
        );
        nothing_left(&rt, seed, &nodes, &ran).await;
        for node in &nodes {
            let asked = where_am_i::options(TaskOptions::default().scheduling_strategy(
                SchedulingStrategy::NodeAffinity {
                    node: node.node,
                    soft: false,
                },
            ))
            .remote(&rt);
            let there = common::within("a task on a worker taken back", rt.get(&asked))
                .await
                .expect("the worker runs a task under its old id");
            assert_eq!(*there, node.node);
        }
        rt.shutdown().await.unwrap();
    }
}

/// [`head_restarted_mid_job`] with a head from the `troupe` binary (no
/// work of its own) and three workers, as the README starts a cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_restarted_mid_job_takes_every_node_back_and_the_job_is_exact() {
    let _turn = DRIVER.lock().await;
    for seed in seeds("TROUPE_CHAOS_SEEDS", 1..=1) {
        let cluster = readme_cluster(&format!("head-restart-{seed}"), 3).await;
        let troupe = binary(env!("CARGO_BIN_EXE_troupe"));
        head_restarted_mid_job(seed, cluster, Some(troupe)).await;
    }
}

/// [`head_restarted_mid_job`] with a head that runs tasks and holds
/// results: its tasks are retried and its results made again elsewhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_that_ran_work_restarted_mid_job_leaves_every_answer_exact() {
    let _turn = DRIVER.lock().await;
    for seed in seeds("TROUPE_CHAOS_SEEDS", 2..=2) {
        let cluster = working_head_cluster(&format!("working-head-{seed}")).await;
        head_restarted_mid_job(seed, cluster, None).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_from_the_troupe_binary_is_never_given_a_task() {
    let _turn = DRIVER.lock().await;
    let (_p, head, nodes, rt) = readme_cluster("head", 1).await;
    let refs: Vec<_> = (0..200).map(|_| where_am_i::remote(&rt)).collect();
    for r in &refs {
        let node = *common::within("a task", rt.get(r))
            .await
            .unwrap_or_else(|err| panic!("a task failed: {err}"));
        assert_eq!(node, nodes[0].node, "not on the head {}", head.node);
    }
    rt.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocks_read_in_slices_by_many_tasks_give_the_exact_answer() {
    let _turn = DRIVER.lock().await;
    let (_p, _head, _nodes, rt) = readme_cluster("blocks", 3).await;
    let blocks: Vec<_> = (0..8u64).map(|b| block::remote(&rt, b)).collect();
    let slices: Vec<_> = (0..400usize)
        .map(|i| {
            let (b, at, len) = (
                i % 8,
                (i * 40_013) % ((16 << 20) - 4096),
                1 + (i * 7) % 4096,
            );
            (b, at, len, slice_digest::remote(&rt, &blocks[b], at, len))
        })
        .collect();
    for (b, at, len, r) in &slices {
        let want = dag::digest(&dag::pattern(*b as u64, 16 << 20)[*at..*at + *len]);
        let got = tokio::time::timeout(Duration::from_secs(120), rt.get(r))
            .await
            .expect("within two minutes")
            .unwrap_or_else(|err| panic!("block {b} at {at}: {err}"));
        assert_eq!(*got, want, "block {b} at {at}, {len} bytes");
    }
    rt.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refs_that_cross_nodes_keep_their_objects_alive() {
    let _turn = DRIVER.lock().await;
    let (_p, _head, nodes, rt) = readme_cluster("borrow", 2).await;
    // A remote actor keeps a ref that the driver then drops.
    let on_a_node = ActorOptions::new().scheduling_strategy(SchedulingStrategy::NodeAffinity {
        node: nodes[0].node,
        soft: false,
    });
    let holder = Holder::remote(&rt, on_a_node)
        .new()
        .await
        .expect("the holder spawns");
    let kept = rt.put(41u64).await.unwrap();
    assert_eq!(
        common::within("keep", holder.keep(kept.clone()))
            .await
            .unwrap(),
        1
    );
    let id = kept.id();
    drop(kept);
    assert!(
        rt.objects().borrowers(id).contains(&nodes[0].node),
        "the holder's node borrows it"
    );
    assert_eq!(
        common::within("sum", holder.sum()).await.unwrap(),
        Ok(41),
        "the driver's object outlives the driver's ref"
    );
    // A task returns the ref of an object it put on its node; the driver
    // reads it, and so does a task on the other node.
    let returned = put_and_return::options(TaskOptions::default().scheduling_strategy(
        SchedulingStrategy::NodeAffinity {
            node: nodes[1].node,
            soft: false,
        },
    ))
    .remote(&rt, 7);
    let inner = (*common::within("the ref", rt.get(&returned)).await.unwrap()).clone();
    assert_eq!(inner.id().node, nodes[1].node, "owned where it was put");
    drop(returned);
    assert_eq!(
        *common::within("the inner value", rt.get(&inner))
            .await
            .unwrap(),
        7
    );
    let on_other = read_inner::options(TaskOptions::default().scheduling_strategy(
        SchedulingStrategy::NodeAffinity {
            node: nodes[0].node,
            soft: false,
        },
    ))
    .remote(&rt, vec![inner.clone(), inner.clone()]);
    assert_eq!(
        *common::within("read elsewhere", rt.get(&on_other))
            .await
            .unwrap(),
        14
    );
    // The holder keeps it too, after the driver lets go.
    assert_eq!(
        common::within("keep", holder.keep(inner.clone()))
            .await
            .unwrap(),
        2
    );
    drop((inner, on_other));
    assert_eq!(common::within("sum", holder.sum()).await.unwrap(), Ok(48));
    holder.stop().await;
    drop(holder);
    common::eventually("nothing left once the holder stopped", || {
        rt.objects().is_empty()
            && ClusterNode::current()
                .is_some_and(|c| c.members().iter().all(|m| m.load.objects == 0))
    })
    .await;
    rt.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_on_the_node_that_knew_its_result_id_succeeds() {
    let _turn = DRIVER.lock().await;
    let (_p, _head, nodes, rt) = readme_cluster("retry", 1).await;
    let on_b = TaskOptions::default().scheduling_strategy(SchedulingStrategy::NodeAffinity {
        node: nodes[0].node,
        soft: false,
    });
    // A reader on B holds a ref to the result (inside its arguments) while
    // the task's first attempt fails there; the second runs there too.
    let result = flaky::options(on_b.clone().max_retries(2)).remote(&rt, 5);
    let reader = read_inner::options(on_b).remote(&rt, vec![result.clone()]);
    assert_eq!(
        *common::within("the retried task", rt.get(&result))
            .await
            .unwrap(),
        5
    );
    assert_eq!(
        *common::within("its reader", rt.get(&reader)).await.unwrap(),
        5
    );
    rt.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_code_that_blocks_every_worker_does_not_get_its_node_declared_dead() {
    let _turn = DRIVER.lock().await;
    let mut p = processes("starve");
    let head = p
        .head_with(&binary(env!("CARGO_BIN_EXE_troupe")), &["--num-cpus", "0"])
        .expect("the head starts");
    // Two CPUs: both async workers of the node's runtime get blocked.
    let node = p
        .worker(&head, &["--num-cpus", "2"])
        .expect("a worker starts");
    let rt = join_as_driver(&p, &head).await;
    common::eventually("the node is up", || {
        ClusterNode::current().is_some_and(|c| {
            c.members()
                .iter()
                .any(|m| m.hello.node == node.node && m.state == MemberState::Alive)
        })
    })
    .await;
    let mut events = rt.cluster_events();
    let hogs: Vec<_> = (0..2).map(|_| hog::remote(&rt, 2_500)).collect();
    for r in &hogs {
        let got = tokio::time::timeout(Duration::from_secs(30), rt.get(r))
            .await
            .expect("answered within 30 s")
            .expect("not lost");
        assert_eq!(*got, 2_500);
    }
    while let Ok(event) = events.try_recv() {
        assert!(
            !matches!(event, troupe::remote::ClusterEvent::NodeDown { node: n, .. } if n == node.node),
            "the node was declared dead: {event:?}"
        );
    }
    rt.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn actors_die_with_the_driver_that_spawned_them_unless_detached() {
    let _turn = DRIVER.lock().await;
    let (p, head, nodes, rt) = readme_cluster("owner", 1).await;
    // A second driver, in its own process, spawns two actors holding a CPU
    // each on the node (2 CPUs), one of them detached.
    let mut second = Command::new(std::env::current_exe().expect("the test binary"))
        .args([
            "driver_process",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(
            DRIVER_ARGS,
            format!("{}|{}|{}", head.address, p.cookie(), p.home().display()),
        )
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("the second driver starts");
    let stdout = second.stdout.take().expect("its stdout");
    let spawned = tokio::task::spawn_blocking(move || {
        use std::io::BufRead;
        std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .any(|line| line.contains("both actors spawned"))
    });
    assert!(
        tokio::time::timeout(Duration::from_secs(60), spawned)
            .await
            .expect("within a minute")
            .expect("read its output"),
        "the second driver spawned its actors"
    );
    assert!(rt.find_actor::<Holder>("owned").await.is_ok());
    let _ = second.kill();
    let _ = second.wait();
    // Its owner is gone: the owned actor is killed and its CPU is free;
    // the detached one lives on.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while rt.find_actor::<Holder>("owned").await.is_ok() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the owned actor outlived its owner"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let detached = rt
        .find_actor::<Holder>("detached")
        .await
        .expect("the detached actor lives on");
    assert_eq!(
        common::within("a call", detached.node()).await.unwrap(),
        nodes[0].node
    );
    common::eventually("the owned actor's CPU is free again", || {
        ClusterNode::current().is_some_and(|c| {
            c.members()
                .iter()
                .any(|m| m.hello.node == nodes[0].node && m.available.num_cpus >= 1.0)
        })
    })
    .await;
    detached.stop().await;
    rt.shutdown().await.unwrap();
}

/// Whether this driver has a session to `node` now.
fn connected_to(node: troupe::NodeId) -> bool {
    ClusterNode::current().is_some_and(|c| c.connected().contains(&node))
}

/// Runs `where_am_i` on `node` alone; where it ran.
async fn run_on(rt: &Runtime, node: troupe::NodeId) -> troupe::NodeId {
    let options = TaskOptions::default()
        .scheduling_strategy(SchedulingStrategy::NodeAffinity { node, soft: false });
    let r = where_am_i::options(options).remote(rt);
    *common::within("a task on the worker", rt.get(&r))
        .await
        .unwrap_or_else(|err| panic!("a task on the worker: {err}"))
}

/// A head, a worker behind a forwarder, and this process as a driver that
/// ran a task there. The worker listens on 127.0.0.1 and advertises
/// 127.0.0.2, where the forwarder takes its ports (session, control link,
/// data path, in that order): whoever dials it goes through the forwarder.
async fn driver_and_worker_behind_forwarder(test: &str) -> BehindForwarder {
    let mut p = processes(test);
    let head = p
        .head_with(&binary(env!("CARGO_BIN_EXE_troupe")), &[])
        .expect("the head starts");
    let forwarder = common::forwarder::Forwarder::start("127.0.0.2", "127.0.0.1", 3).await;
    let ports = forwarder.ports();
    let [port, link_port, data_port] = [ports[0], ports[1], ports[2]].map(|p| p.to_string());
    let worker = p
        .worker(
            &head,
            &[
                "--num-cpus",
                "2",
                "--bind",
                "127.0.0.1",
                "--advertise",
                "127.0.0.2",
                "--port",
                &port,
                "--link-port",
                &link_port,
                "--data-port",
                &data_port,
            ],
        )
        .expect("a worker starts");
    let rt = join_as_driver(&p, &head).await;
    in_view(2).await;
    common::eventually("a session to the worker", || connected_to(worker.node)).await;
    assert_eq!(run_on(&rt, worker.node).await, worker.node);
    BehindForwarder {
        p,
        head,
        forwarder,
        worker,
        rt,
    }
}

struct BehindForwarder {
    p: LocalCluster,
    head: LocalNode,
    forwarder: common::forwarder::Forwarder,
    worker: LocalNode,
    rt: Runtime,
}

/// Fails if `events` holds a `NodeDown` for `node`.
fn assert_never_down(
    events: &mut tokio::sync::broadcast::Receiver<troupe::remote::ClusterEvent>,
    node: troupe::NodeId,
) {
    while let Ok(event) = events.try_recv() {
        if let troupe::remote::ClusterEvent::NodeDown { node: down, reason } = event {
            assert_ne!(down, node, "declared down: {reason}");
        }
    }
}

/// A worker whose cluster I/O runtime is held up for longer than the death
/// limit (a long poll, or a deep queue of ready work on a loaded machine)
/// is not declared dead: its heartbeats go out from a thread of their own.
/// Three holds of 2.5 s (the limit is 1.5 s); tasks sent there meanwhile
/// run, late.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_io_runtime_is_held_up_is_not_declared_dead() {
    held_io_is_not_death("held-io", false).await;
}

/// The same over TLS, where a link's writer task seals every frame: it
/// runs apart from the I/O runtime too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_io_runtime_is_held_up_is_not_declared_dead_over_tls() {
    held_io_is_not_death("held-io-tls", true).await;
}

async fn held_io_is_not_death(test: &str, tls: bool) {
    let _turn = DRIVER.lock().await;
    let mut p = processes(test);
    let tls_dir = p.home().join("tls");
    let tls_arg = tls_dir.to_str().expect("a UTF-8 path").to_owned();
    let mut extra = vec!["--num-cpus", "1"];
    if tls {
        for cert in [
            &["cert", "init", "--dir", &tls_arg][..],
            &["cert", "issue", "--ca-dir", &tls_arg][..],
        ] {
            let (ok, out) = p.run(cert).expect("runs");
            assert!(ok, "{out}");
        }
        extra.extend(["--tls-dir", &tls_arg]);
    }
    let head = p
        .head_with(&binary(env!("CARGO_BIN_EXE_troupe")), &extra)
        .expect("the head starts");
    let held = common::cluster::node_launcher(&[(troupe::cluster::HOLD_IO_ENV, "2500")]);
    let mut join = vec!["start", "--block", "--address", head.address.as_str()];
    join.extend(&extra);
    let worker = p.start_with(&held, &join).expect("a worker starts");
    let mut options = ClusterOptions::driver(&head.address);
    options.cookie = Some(p.cookie().to_owned());
    options.state_dir = Some(p.home().clone());
    options.tls_dir = tls.then(|| tls_dir.clone());
    let rt = troupe::init(
        Config::default()
            .resources(Resources::default())
            .cluster_node(options),
    )
    .await
    .expect("the driver joins");
    in_view(2).await;
    let mut events = rt.cluster_events();
    let holds = |p: &LocalCluster| {
        p.log_tail(&worker)
            .iter()
            .filter(|line| line.contains("holding the cluster's I/O runtime"))
            .count()
    };
    // Tasks run there throughout: until the third hold began, then for as
    // long as it lasts and the death limit after it.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while holds(&p) < 3 {
        assert!(
            std::time::Instant::now() < deadline,
            "the worker never held its I/O runtime 3 times"
        );
        assert_eq!(run_on(&rt, worker.node).await, worker.node);
        assert_never_down(&mut events, worker.node);
    }
    let after = std::time::Instant::now() + Duration::from_millis(2500 + 1500 + 500);
    while std::time::Instant::now() < after {
        assert_eq!(run_on(&rt, worker.node).await, worker.node);
    }
    assert_never_down(&mut events, worker.node);
    assert!(
        ClusterNode::current().is_some_and(|c| c
            .members()
            .iter()
            .any(|m| m.hello.node == worker.node && m.state == MemberState::Alive)),
        "the worker is alive in the head's view"
    );
    rt.shutdown().await.unwrap();
}

/// Every connection between the driver and a worker cut at once (a
/// partition between the two while both still reach the head): the
/// session is dialed again, the worker is never declared dead, and work
/// and objects reach it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_cut_between_two_live_members_is_dialed_again() {
    let _turn = DRIVER.lock().await;
    // The cluster's processes live as long as `_p`.
    let BehindForwarder {
        p: _p,
        head: _,
        forwarder,
        worker,
        rt,
    } = driver_and_worker_behind_forwarder("redial").await;
    let made = block::options(TaskOptions::default().scheduling_strategy(
        SchedulingStrategy::NodeAffinity {
            node: worker.node,
            soft: false,
        },
    ))
    .remote(&rt, 3);
    rt.objects().made(made.id()).await;
    assert!(
        forwarder.accepted() >= 1,
        "the driver reached it through the forwarder"
    );

    // The driver dialed the worker (it joined later): its session goes
    // through the forwarder. Whichever end has the larger id dials again
    // (the driver, through the forwarder; or the worker, directly).
    let mut events = rt.cluster_events();
    let cut = forwarder.cut();
    assert!(cut >= 2, "the session and its links cut: {cut} connections");
    // Down for at least the first pause before a dial (100 ms).
    common::eventually("the cut is seen", || !connected_to(worker.node)).await;
    common::eventually("the session is up again", || connected_to(worker.node)).await;
    assert_eq!(run_on(&rt, worker.node).await, worker.node);
    let bytes = common::within("the worker's object", rt.get(&made))
        .await
        .unwrap_or_else(|err| panic!("the worker's object: {err}"));
    assert_eq!(dag::digest(&bytes), dag::digest(&dag::pattern(3, 16 << 20)));
    // Suspected by the head as its link through the cut closed, heard
    // from again with the next heartbeat; never declared dead.
    common::eventually("the worker alive in the head's view", || {
        ClusterNode::current().is_some_and(|c| {
            c.members()
                .iter()
                .any(|m| m.hello.node == worker.node && m.state == MemberState::Alive)
        })
    })
    .await;
    assert_never_down(&mut events, worker.node);
    drop((made, bytes));
    rt.shutdown().await.unwrap();
}

/// The control links to a worker go silent without closing (half-open
/// connections, or a firewall dropping their packets) while the worker
/// still reaches the head: nothing waits forever and nobody is declared
/// dead. The driver's task sent on its link gets no answer to its probe:
/// the link is closed and dialed again, and the task runs on the worker.
/// The head's link goes silent too: the worker, hearing nothing from the
/// head, rejoins while its heartbeats go on, and the head dials it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_control_link_gone_silent_is_dialed_again_and_its_work_retried() {
    let _turn = DRIVER.lock().await;
    log_driver_if_asked();
    let BehindForwarder {
        p,
        head,
        forwarder,
        worker,
        rt,
    } = driver_and_worker_behind_forwarder("silent-link").await;
    let dialed = forwarder.accepted();

    let mut events = rt.cluster_events();
    forwarder.stall(forwarder.ports()[1]);
    let options = TaskOptions::default().scheduling_strategy(SchedulingStrategy::NodeAffinity {
        node: worker.node,
        soft: false,
    });
    let r = where_am_i::options(options).remote(&rt);
    // Probed after 2 s, unanswered for 10 s, then retried on a new link.
    let limit = troupe::cluster::PROBE_AFTER * 2 + troupe::cluster::PROBE_ANSWER_WITHIN;
    let answer = tokio::time::timeout(limit + common::DEADLINE, rt.get(&r)).await;
    let Ok(Ok(ran_on)) = answer else {
        for node in [&head, &worker] {
            eprintln!("{}", p.log_tail(node).join("\n"));
        }
        panic!("the task sent on a silent link: {answer:?}");
    };
    assert_eq!(*ran_on, worker.node);
    assert!(
        forwarder.accepted() > dialed,
        "the control link was dialed again"
    );
    assert_never_down(&mut events, worker.node);
    rt.shutdown().await.unwrap();
}
