//! A cluster of real processes on loopback: a head and worker nodes are this
//! test binary re-launched in node mode (`node_process` below runs the
//! `troupe start` command line), and the test itself is the driver. Every
//! process a test starts is killed when its guard drops, even when the test
//! fails.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::cluster::{join_as_driver, processes};
use troupe::cluster::local::{free_port, LocalCluster, LocalNode};
use troupe::cluster::{ClusterError, ClusterNode, ClusterOptions, MemberState, Role};
use troupe::prelude::*;
use troupe::remote::ClusterEvent;
use troupe::task::{TaskId, TraceContext};
use troupe::{NodeId, SchedulingStrategy, SpawnError, TaskCause, TaskState};

/// Node mode: this test binary re-launched as a node (see `common::cluster`).
#[test]
fn node_process() {
    common::cluster::run_node_if_asked();
}

/// Job mode: this test binary run by the head as a job's driver (with
/// `TROUPE_TEST_JOB` set): it spawns an actor named `job-actor` on the
/// cluster, says so, and waits to be stopped.
#[test]
fn job_process() {
    if std::env::var("TROUPE_TEST_JOB").is_err() {
        return;
    }
    let rt = Runtime::start(Config::connect_from_env().expect("TROUPE_ADDRESS")).expect("joins");
    rt.block_on(async {
        let _actor = Tally::remote(&rt, ActorOptions::new().name("job-actor"))
            .new(1)
            .await
            .expect("spawned");
        println!("job ready");
        tokio::time::sleep(Duration::from_secs(120)).await;
    });
}

/// Where the task ran.
#[troupe::remote]
async fn where_am_i(ms: u64) -> NodeId {
    tokio::time::sleep(Duration::from_millis(ms)).await;
    troupe::task::current().expect("in a task").node
}

/// Runs on `node`.
fn on(node: NodeId) -> TaskOptions {
    TaskOptions::default()
        .scheduling_strategy(SchedulingStrategy::NodeAffinity { node, soft: false })
}

/// The running task, its place in its tree of tasks, and its node.
fn current_trace() -> (TaskId, TraceContext, NodeId) {
    let me = troupe::task::current().expect("in a task");
    (me.task_id, me.trace, me.node)
}

/// Where a task ran and its place in its tree of tasks.
#[troupe::remote]
fn trace_here() -> (TaskId, TraceContext, NodeId) {
    current_trace()
}

/// The same for itself and for a child it submits to run on `child_node`.
#[troupe::remote]
async fn trace_with_a_child(child_node: NodeId) -> Vec<(TaskId, TraceContext, NodeId)> {
    let rt = troupe::task::runtime().expect("in a runtime");
    let child = trace_here::options(on(child_node)).remote(&rt);
    let child = *rt.get(&child).await.expect("the child's trace");
    vec![current_trace(), child]
}

/// `n` bytes of a known pattern, made wherever it runs.
#[troupe::remote]
fn pattern(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// A checksum and the length of bytes, and where it was computed.
#[troupe::remote]
fn digest(bytes: Vec<u8>) -> (u64, usize, NodeId) {
    let sum = bytes.iter().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ *b as u64).wrapping_mul(0x100000001b3)
    });
    let node = troupe::task::current().expect("in a task").node;
    (sum, bytes.len(), node)
}

/// A counter that says where it lives.
pub struct Tally {
    n: u64,
}

#[troupe::actor]
impl Tally {
    pub fn new(start: u64) -> Self {
        Tally { n: start }
    }

    pub fn add(&mut self, by: u64) -> u64 {
        self.n += by;
        tracing::info!(by, total = self.n, "added");
        self.n
    }

    pub fn node(&self) -> NodeId {
        troupe::task::runtime().expect("in a runtime").node_id()
    }

    pub async fn slowly(&mut self, ms: u64) -> u64 {
        tokio::time::sleep(Duration::from_millis(ms)).await;
        self.n
    }

    pub fn crash(&mut self) -> u64 {
        panic!("asked to crash at {}", self.n)
    }

    /// A handle to a new tally on this node, named `name` (a name keeps it
    /// alive once the handle has left).
    pub async fn sibling(&self, name: String, start: u64) -> Result<TallyHandle, String> {
        let rt = troupe::task::runtime().ok_or("no runtime")?;
        rt.spawn_actor(ActorOptions::new().name(name), move || Tally { n: start })
            .await
            .map_err(|e| e.to_string())
    }
}

/// Fills its own node: holds a local actor of 1 CPU, spawned by the node
/// itself (so that another node's view of its room lags until its next
/// heartbeat: as when another program fills it).
#[derive(Default)]
pub struct Hog {
    held: Option<TallyHandle>,
}

#[troupe::actor]
impl Hog {
    pub fn new() -> Self {
        Hog::default()
    }

    pub async fn hold_a_cpu(&mut self) -> Result<(), String> {
        let rt = troupe::task::runtime().ok_or("no runtime")?;
        let options = ActorOptions::new().resources(Resources::cpus(1.0));
        let held = rt
            .spawn_actor(options, || Tally { n: 0 })
            .await
            .map_err(|e| e.to_string())?;
        self.held = Some(held);
        Ok(())
    }

    pub async fn release(&mut self) {
        if let Some(held) = self.held.take() {
            held.stop().await;
        }
    }
}

/// A [`Hog`] on `node` that holds one of its CPUs.
async fn hog_holding_a_cpu_on(rt: &Runtime, node: NodeId) -> HogHandle {
    let pinned = ActorOptions::new()
        .scheduling_strategy(SchedulingStrategy::NodeAffinity { node, soft: false });
    let hog = common::within("a hog", Hog::remote(rt, pinned).new())
        .await
        .unwrap();
    common::within("its CPU held", hog.hold_a_cpu())
        .await
        .unwrap()
        .unwrap();
    hog
}

/// Where each member of a remote tree came up, in order: what the driver
/// sees of a tree that runs on other nodes.
#[derive(Default)]
pub struct Ledger {
    arrivals: Vec<(String, NodeId)>,
}

#[troupe::actor]
impl Ledger {
    pub fn new() -> Self {
        Ledger::default()
    }

    pub fn arrived(&mut self, label: String, node: NodeId) {
        self.arrivals.push((label, node));
    }

    pub fn arrivals(&self) -> Vec<(String, NodeId)> {
        self.arrivals.clone()
    }
}

/// A member of a remote tree: tells the ledger where it came up.
pub struct Enlisted {
    _label: String,
}

#[troupe::actor]
impl Enlisted {
    pub fn new(label: String, ledger: LedgerHandle) -> Self {
        let node = troupe::task::runtime().expect("in a runtime").node_id();
        ledger.arrived(label.clone(), node).detach();
        Enlisted { _label: label }
    }
}

/// A one-for-all tree of two members placed near nodes `b` and `c`
/// (from wherever the tree runs), allowing one restart a minute.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct Pair {
    b: NodeId,
    c: NodeId,
    ledger: LedgerHandle,
}

impl RemoteTree for Pair {
    const NAME: &'static str = "cluster_tests::Pair";

    fn spec(self, rt: &Runtime) -> SupervisorSpec {
        self.ledger
            .arrived("tree".to_owned(), rt.node_id())
            .detach();
        let mut spec = SupervisorSpec::new("pair", Strategy::OneForAll)
            .intensity(Intensity::new(1, Duration::from_secs(60)));
        for (label, node) in [("b", self.b), ("c", self.c)] {
            let near = ActorOptions::new()
                .scheduling_strategy(SchedulingStrategy::NodeAffinity { node, soft: true });
            let args = (label.to_owned(), self.ledger.clone());
            let (child, _) = rt
                .remote_child::<Enlisted>(&format!("pair-{label}"), near, "new", &args)
                .expect("a remote child");
            spec = spec.child(child);
        }
        spec
    }
}

troupe::remote_tree!(Pair);

/// Holds a handle to a tally it was given, and adds through it.
pub struct Relay {
    tally: TallyHandle,
}

#[troupe::actor]
impl Relay {
    pub fn new(tally: TallyHandle) -> Self {
        Relay { tally }
    }

    pub async fn add(&mut self, by: u64) -> Result<u64, String> {
        self.tally.add(by).await.map_err(|err| err.to_string())
    }
}

/// Finds the tally by name on whichever node this task runs, and adds.
#[troupe::remote]
async fn add_to_tally(by: u64) -> (u64, NodeId) {
    let rt = troupe::task::runtime().expect("in a runtime");
    let tally = rt
        .find_actor::<Tally>("tally")
        .await
        .expect("found by name");
    (tally.add(by).await.expect("a remote call"), rt.node_id())
}

/// Calls the tally it was handed (a handle inside a task's arguments).
#[troupe::remote]
async fn add_through(tally: TallyHandle, by: u64) -> (u64, NodeId) {
    let node = troupe::task::runtime().expect("in a runtime").node_id();
    (tally.add(by).await.expect("a remote call"), node)
}

fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ *b as u64).wrapping_mul(0x100000001b3)
    })
}

/// One driver per process (ractor_cluster's state is process-wide): the
/// tests of this file take turns.
static DRIVER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The cluster's own error inside a runtime that failed to start.
fn cluster_cause(err: &SpawnError) -> Option<&ClusterError> {
    match err {
        SpawnError::Service { cause, .. } => cause.downcast_ref::<ClusterError>(),
        _ => None,
    }
}

/// A head (with `head_cpus`), one worker per entry of `workers` (its
/// flags), and this process as the driver, all up and connected.
async fn started(
    test: &str,
    head_cpus: &str,
    workers: &[&[&str]],
) -> (LocalCluster, LocalNode, Vec<LocalNode>, Runtime) {
    let mut p = processes(test);
    let head = p.head(&["--num-cpus", head_cpus]).expect("the head starts");
    let nodes: Vec<LocalNode> = workers
        .iter()
        .map(|flags| p.worker(&head, flags).expect("a worker starts"))
        .collect();
    let rt = join_as_driver(&p, &head).await;
    wait_for_nodes(1 + nodes.len()).await;
    (p, head, nodes, rt)
}

async fn wait_for_nodes(n: usize) {
    common::eventually("every node is in the driver's view", || {
        ClusterNode::current().is_some_and(|c| c.alive_nodes() == n)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_spread_over_every_node_and_fill_the_cluster() {
    let _turn = DRIVER.lock().await;
    let (_p, head, nodes, rt) =
        started("spread", "1", &[&["--num-cpus", "1"], &["--num-cpus", "1"]]).await;
    let (a, b) = (&nodes[0], &nodes[1]);

    let spread = TaskOptions::default().scheduling_strategy(SchedulingStrategy::Spread);
    let refs: Vec<_> = (0..12)
        .map(|_| where_am_i::options(spread.clone()).remote(&rt, 1))
        .collect();
    let mut nodes = BTreeSet::new();
    for r in &refs {
        nodes.insert(*common::within("a spread task", rt.get(r)).await.unwrap());
    }
    assert_eq!(nodes, BTreeSet::from([head.node, a.node, b.node]));

    // A tree of tasks keeps one trace across nodes: the child names the
    // root and its parent, though they ran on two nodes.
    let tree = trace_with_a_child::options(on(a.node)).remote(&rt, b.node);
    let tree = common::within("a tree of tasks", rt.get(&tree))
        .await
        .unwrap();
    let [(parent, parent_trace, parent_node), (_, child_trace, child_node)] = tree[..] else {
        panic!("two traces: {tree:?}");
    };
    assert_eq!((parent_node, child_node), (a.node, b.node));
    assert_eq!(
        parent_trace,
        TraceContext {
            root: parent,
            parent: None
        }
    );
    assert_eq!(
        child_trace,
        TraceContext {
            root: parent,
            parent: Some(parent)
        }
    );

    // Default placement: a burst larger than the cluster queues and finishes.
    let refs: Vec<_> = (0..30).map(|_| where_am_i::remote(&rt, 5)).collect();
    for r in &refs {
        common::within("a default task", rt.get(r)).await.unwrap();
    }
    rt.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_200_mb_object_made_on_one_node_is_read_on_another_and_by_the_driver() {
    let _turn = DRIVER.lock().await;
    let (_p, _head, nodes, rt) = started(
        "bigobject",
        "1",
        &[
            &["--num-cpus", "1", "--resources", "maker=1"],
            &["--num-cpus", "1", "--resources", "reader=1"],
        ],
    )
    .await;
    let (a, b) = (&nodes[0], &nodes[1]);

    let n = 200 << 20;
    let big = pattern::options(TaskOptions::default().resource("maker", 1.0)).remote(&rt, n, 7);
    let summary = digest::options(TaskOptions::default().resource("reader", 1.0)).remote(&rt, &big);
    // Generous: a debug build makes and sums 200 MB slowly.
    let (sum, len, at) = *tokio::time::timeout(Duration::from_secs(120), rt.get(&summary))
        .await
        .expect("the digest on B within 2 minutes")
        .unwrap();
    let expected: Vec<u8> = (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(7))
        .collect();
    assert_eq!((len, at), (n, b.node));
    assert_eq!(sum, fnv(&expected));
    assert_eq!(
        rt.objects().location(big.id()),
        Some(Some(a.node)),
        "made on A; the driver has not read it yet"
    );
    let here = common::within("the bytes at the driver", rt.get(&big))
        .await
        .unwrap();
    assert!(here[..] == expected[..], "identical bytes");
    rt.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_waits_until_a_node_with_its_resource_joins() {
    let _turn = DRIVER.lock().await;
    let mut p = processes("pending");
    let head = p.head(&["--num-cpus", "1"]).expect("the head starts");
    let rt = join_as_driver(&p, &head).await;
    wait_for_nodes(1).await;

    let r = where_am_i::options(TaskOptions::default().resource("special", 1.0)).remote(&rt, 1);
    common::eventually("pending: no node fits", || rt.task_summary().unplaced == 1).await;
    assert!(rt
        .get_timeout(&r, Duration::from_millis(100))
        .await
        .is_err());
    // The head learns of it with the driver's next heartbeat.
    status_shows(&p, &head, "1 pending").await;

    let special = p
        .worker(&head, &["--num-cpus", "1", "--resources", "special=1"])
        .expect("a worker starts");
    let node = *common::within("placed once the node joined", rt.get(&r))
        .await
        .unwrap();
    assert_eq!(node, special.node);
    rt.shutdown().await.unwrap();
}

/// Waits (10 s at most) until `troupe status` shows `wanted`.
async fn status_shows(p: &LocalCluster, head: &LocalNode, wanted: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (ok, status) = p
            .run(&["status", "--address", &head.address])
            .expect("runs");
        assert!(ok, "{status}");
        if status.contains(wanted) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "troupe status does not show {wanted:?}: {status}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The free CPUs each live node last reported, by node.
fn free_cpus() -> std::collections::BTreeMap<NodeId, f64> {
    ClusterNode::current()
        .map(|c| c.members())
        .unwrap_or_default()
        .into_iter()
        .filter(|m| m.state == MemberState::Alive && m.hello.role != Role::Driver)
        .map(|m| (m.hello.node, m.available.num_cpus))
        .collect()
}

/// An actor placed on a node that another program has just filled (its
/// room as last heard of is stale) is placed again on a node with room,
/// not queued there; with no room anywhere, it waits until some frees,
/// and lands there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_actor_sent_to_a_node_filled_meanwhile_is_placed_again_elsewhere() {
    let _turn = DRIVER.lock().await;
    let one_cpu: &[&str] = &["--num-cpus", "1"];
    let (_p, _head, nodes, rt) = started("replace-spawn", "0", &[one_cpu, one_cpu]).await;
    let (a, b) = (nodes[0].node, nodes[1].node);
    // Node a is full from now on; the driver last heard it had a CPU free.
    let hog = hog_holding_a_cpu_on(&rt, a).await;
    let prefers_a = ActorOptions::new()
        .resources(Resources::cpus(1.0))
        .scheduling_strategy(SchedulingStrategy::NodeAffinity {
            node: a,
            soft: true,
        });
    let placed = common::within(
        "an actor placed again on b",
        Tally::remote(&rt, prefers_a.clone()).new(1),
    )
    .await
    .unwrap();
    assert_eq!(common::within("where", placed.node()).await.unwrap(), b);

    // Both full: the next one waits, and lands on a once a's CPU frees.
    let waiting = tokio::spawn({
        let rt = rt.clone();
        async move { Tally::remote(&rt, prefers_a).new(2).await }
    });
    common::eventually("both nodes full in the view", || {
        free_cpus().get(&a) == Some(&0.0) && free_cpus().get(&b) == Some(&0.0)
    })
    .await;
    assert!(!waiting.is_finished(), "no node had room");
    common::within("a's CPU freed", hog.release())
        .await
        .unwrap();
    let landed = common::within("the waiting actor lands", waiting)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(common::within("where", landed.node()).await.unwrap(), a);
    rt.shutdown().await.unwrap();
}

/// Tasks sent to a node whose CPU an actor holds for life do not wait
/// there for ever: once another node has room they go there (spillback),
/// through their owner, and none runs twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_queued_behind_an_actor_that_holds_the_cpu_move_to_a_node_with_room() {
    let _turn = DRIVER.lock().await;
    let one_cpu: &[&str] = &["--num-cpus", "1"];
    let (_p, _head, nodes, rt) = started("spillback", "0", &[one_cpu, one_cpu]).await;
    let (a, b) = (nodes[0].node, nodes[1].node);
    let _hog = hog_holding_a_cpu_on(&rt, a).await;
    let busy = where_am_i::options(on(b)).remote(&rt, 1500);
    common::eventually("both nodes full in the view", || {
        free_cpus().get(&a) == Some(&0.0) && free_cpus().get(&b) == Some(&0.0)
    })
    .await;
    // No node has room: the driver queues them where their need fits the
    // total, the least loaded first, so at least the first on a.
    let refs: Vec<_> = (0..4).map(|_| where_am_i::remote(&rt, 50)).collect();
    for r in &refs {
        let ran_on = *common::within("a task queued on a full node", rt.get(r))
            .await
            .unwrap();
        assert_eq!(ran_on, b, "a's CPU stays held: every task ran on b");
    }
    assert_eq!(*common::within("b's task", rt.get(&busy)).await.unwrap(), b);
    rt.shutdown().await.unwrap();
}

/// Placement groups over real nodes: SPREAD gives each bundle its own node
/// and work in a bundle runs there; STRICT_SPREAD over more bundles than
/// nodes waits until a node joins; a node dying with a bundle gets it
/// reserved again on another; removal gives every node its CPUs back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn placement_groups_spread_over_nodes_wait_for_one_and_outlive_a_dead_one() {
    let _turn = DRIVER.lock().await;
    let (mut p, head, nodes, rt) =
        started("groups", "2", &[&["--num-cpus", "2"], &["--num-cpus", "2"]]).await;
    let (a, b) = (&nodes[0], &nodes[1]);
    let ready = Duration::from_secs(30);

    let spread = rt
        .placement_group(
            PlacementGroupOptions::new(vec![Resources::cpus(1.0); 3])
                .strategy(PlacementStrategy::Spread),
        )
        .unwrap();
    let placed = spread.ready(ready).await.unwrap();
    assert_eq!(
        placed.iter().copied().collect::<BTreeSet<_>>(),
        BTreeSet::from([head.node, a.node, b.node]),
        "one bundle per node"
    );
    for (index, node) in placed.iter().enumerate() {
        let r = where_am_i::options(TaskOptions::default().placement_group(&spread, Some(index)))
            .remote(&rt, 1);
        let ran = *common::within("a task in a bundle", rt.get(&r))
            .await
            .unwrap();
        assert_eq!(ran, *node, "bundle {index}'s task ran on its node");
    }
    common::eventually("each node holds one CPU for the group", || {
        free_cpus().values().all(|free| *free == 1.0)
    })
    .await;

    // Four bundles apart on three nodes: pending until a fourth joins.
    let apart = rt
        .placement_group(
            PlacementGroupOptions::new(vec![Resources::cpus(0.5); 4])
                .strategy(PlacementStrategy::StrictSpread),
        )
        .unwrap();
    let err = apart.ready(Duration::from_millis(300)).await.unwrap_err();
    assert!(err.to_string().contains("STRICT_SPREAD"), "{err}");
    // `troupe status` reports it, from the driver's next heartbeat.
    status_shows(&p, &head, "1 placement group(s) pending").await;
    let c = p
        .worker(&head, &["--num-cpus", "2"])
        .expect("a worker starts");
    let placed_apart = apart.ready(ready).await.unwrap();
    assert_eq!(placed_apart.iter().collect::<BTreeSet<_>>().len(), 4);
    assert!(placed_apart.contains(&c.node));
    rt.remove_placement_group(&apart).await;

    // A node with one of the SPREAD bundles dies: it is reserved again on
    // a node with room, and work in it runs there. A result made in that
    // bundle (too large to travel inline: it stays on its node), which
    // nobody read, is made again in the bundle where it is now.
    let lost = placed.iter().position(|n| *n == a.node).expect("a has one");
    let in_bundle = || TaskOptions::default().placement_group(&spread, Some(lost));
    let made = pattern::options(in_bundle()).remote(&rt, 1 << 20, 7);
    let pattern_runs = || {
        rt.tasks(&troupe::TaskFilter {
            function: Some("pattern".to_owned()),
            ..Default::default()
        })
        .into_iter()
        .map(|t| (t.state, t.attempt, t.node))
        .collect::<Vec<_>>()
    };
    // Made (`wait` would fetch it here: a copy the driver would keep).
    common::eventually("the result is made in its bundle", || {
        pattern_runs() == vec![(TaskState::Finished, 1, Some(a.node))]
    })
    .await;
    // And a task running in the bundle as its node dies: retried in it.
    let running = where_am_i::options(in_bundle()).remote(&rt, 3_000);
    common::eventually("a task runs in the bundle", || {
        rt.tasks(&troupe::TaskFilter {
            function: Some("where_am_i".to_owned()),
            state: Some(TaskState::Delegated),
            ..Default::default()
        })
        .len()
            == 1
    })
    .await;
    p.kill(a);
    let mut again = None;
    common::eventually("the lost bundle is reserved again", || {
        again = spread.bundle_node(lost).filter(|node| *node != a.node);
        again.is_some()
    })
    .await;
    let r = where_am_i::options(in_bundle()).remote(&rt, 1);
    let ran = *common::within("a task in the moved bundle", rt.get(&r))
        .await
        .unwrap();
    assert_eq!(Some(ran), again);
    let retried = *common::within("the retry in the moved bundle", rt.get(&running))
        .await
        .expect("retried in its bundle, wherever it is now");
    assert_eq!(Some(retried), again);
    let value = common::within("the lost result, made again", rt.get(&made))
        .await
        .expect("made again in its bundle's new node");
    assert_eq!(*value, pattern(1 << 20, 7));
    let runs = pattern_runs();
    assert!(
        runs.contains(&(TaskState::Finished, 2, again)),
        "made again (attempt 2) on the bundle's new node {again:?}: {runs:?}"
    );
    drop((made, value));

    rt.remove_placement_group(&spread).await;
    common::eventually("every live node has its CPUs back", || {
        let free = free_cpus();
        free.len() == 3 && free.values().all(|cpus| *cpus == 2.0)
    })
    .await;
    rt.shutdown().await.unwrap();
}

/// A supervisor on the driver with one-for-all children on two other
/// nodes: a child's node SIGKILLed is that child's abnormal exit, and both
/// restart (the lost one on another node, its handle following it); a
/// child that panics on its node is an exit too; past the supervisor's
/// intensity, it escalates (and its remote children are killed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_supervisor_restarts_its_children_on_other_nodes_as_otp_says() {
    let _turn = DRIVER.lock().await;
    let two = ["--num-cpus", "2"];
    let (mut p, _head, nodes, rt) = started("remote-children", "1", &[&two, &two, &two]).await;
    let (b, c) = (&nodes[0], &nodes[1]);
    let near = |node: NodeId| {
        ActorOptions::new()
            .scheduling_strategy(SchedulingStrategy::NodeAffinity { node, soft: true })
    };
    let mut events = rt.subscribe();
    let (on_b, tally_b) = rt
        .remote_child::<Tally>("on-b", near(b.node), "new", &(0u64,))
        .unwrap();
    let (on_c, tally_c) = rt
        .remote_child::<Tally>("on-c", near(c.node), "new", &(0u64,))
        .unwrap();
    let sup = rt
        .spawn_supervisor(
            SupervisorSpec::new("spanning", Strategy::OneForAll)
                .intensity(Intensity::new(2, Duration::from_secs(60)))
                .child(on_b)
                .child(on_c),
        )
        .await
        .unwrap();
    assert_eq!(tally_b.node().await.unwrap(), b.node);
    assert_eq!(tally_c.node().await.unwrap(), c.node);
    assert_eq!(tally_b.add(5).await.unwrap(), 5);
    assert_eq!(tally_c.add(7).await.unwrap(), 7);
    let restarted = |child: &'static str| move |e: &SupervisionEvent| matches!(e, SupervisionEvent::ChildRestarted { supervisor, child: c, .. } if &**supervisor == "spanning" && &**c == child);

    // b dies: on-b's exit (noconnection); one-for-all restarts both.
    p.kill(b);
    let exit = common::next_event(
        &mut events,
        |e| matches!(e, SupervisionEvent::ChildExited { child, .. } if &**child == "on-b"),
    )
    .await;
    match exit {
        SupervisionEvent::ChildExited {
            abnormal, reason, ..
        } => {
            assert!(abnormal, "{reason}");
            assert!(reason.contains("noconnection"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    common::next_event(&mut events, restarted("on-b")).await;
    common::next_event(&mut events, restarted("on-c")).await;
    let moved = common::within("the restarted child answers", tally_b.node())
        .await
        .unwrap();
    assert_ne!(moved, b.node, "restarted on a live node");
    assert_eq!(tally_b.add(1).await.unwrap(), 1, "a fresh incarnation");
    assert_eq!(
        tally_c.add(1).await.unwrap(),
        1,
        "its sibling restarted too"
    );

    // A panic on its node is an exit as well (a second failure).
    assert!(tally_c.crash().await.is_err());
    common::next_event(&mut events, restarted("on-c")).await;
    assert_eq!(tally_c.add(2).await.unwrap(), 2);

    // A third failure within the minute: past the intensity, it escalates.
    p.kill(c);
    common::next_event(&mut events, |e| {
        matches!(e, SupervisionEvent::IntensityExceeded { supervisor, .. } if &**supervisor == "spanning")
    })
    .await;
    common::eventually("the supervisor gave up", || !sup.is_alive()).await;
    let mut gone = false;
    for _ in 0..100 {
        if tally_b.add(1).await.is_err() {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(gone, "its remote children were killed with it");
    rt.shutdown().await.unwrap();
}

/// The nodes `label` came up on, in order.
async fn arrivals(ledger: &LedgerHandle, label: &str) -> Vec<NodeId> {
    ledger
        .arrivals()
        .await
        .expect("the ledger answers")
        .into_iter()
        .filter(|(l, _)| l == label)
        .map(|(_, node)| node)
        .collect()
}

/// Waits until `label` came up `times` times; the nodes it came up on.
async fn came_up(ledger: &LedgerHandle, label: &str, times: usize) -> Vec<NodeId> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let nodes = arrivals(ledger, label).await;
        if nodes.len() >= times {
            return nodes;
        }
        assert!(
            Instant::now() < deadline,
            "{label} came up {} times, not {times}: {nodes:?}",
            nodes.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A supervision subtree on another node: a one-for-all tree on node A
/// (children near B and C) under a supervisor on the driver. B's death is
/// one failure of the tree, which restarts both children itself (its
/// parent sees nothing); C's is a second, past the tree's intensity: it
/// escalates to its parent on the driver, which starts the tree again.
/// The tree's own node dying is its parent's child exiting (noconnection),
/// and the tree starts again elsewhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subtree_on_another_node_restarts_its_children_and_escalates_to_its_parent() {
    let _turn = DRIVER.lock().await;
    let two = ["--num-cpus", "2"];
    let (mut p, _head, nodes, rt) = started("remote-tree", "1", &[&two, &two, &two]).await;
    let (a, b, c) = (&nodes[0], &nodes[1], &nodes[2]);
    let ledger = rt
        .spawn_actor(ActorOptions::new(), Ledger::new)
        .await
        .unwrap();
    let mut events = rt.subscribe();
    let pair = Pair {
        b: b.node,
        c: c.node,
        ledger: ledger.clone(),
    };
    let on_a = ActorOptions::new().scheduling_strategy(SchedulingStrategy::NodeAffinity {
        node: a.node,
        soft: true,
    });
    let tree = rt.remote_tree_child("tree", on_a, &pair).unwrap();
    let top = rt
        .spawn_supervisor(
            SupervisorSpec::new("top", Strategy::OneForOne)
                .intensity(Intensity::new(3, Duration::from_secs(60)))
                .child(tree),
        )
        .await
        .unwrap();
    assert_eq!(came_up(&ledger, "tree", 1).await, vec![a.node]);
    assert_eq!(came_up(&ledger, "b", 1).await, vec![b.node]);
    assert_eq!(came_up(&ledger, "c", 1).await, vec![c.node]);
    let tree_exited = |e: &SupervisionEvent| matches!(e, SupervisionEvent::ChildExited { supervisor, child, .. } if &**supervisor == "top" && &**child == "tree");

    // B dies: the tree restarts both its children (one-for-all), B's
    // elsewhere; one failure, within its intensity: its parent sees nothing.
    p.kill(b);
    let b_nodes = came_up(&ledger, "b", 2).await;
    assert_ne!(b_nodes[1], b.node, "restarted on a live node");
    came_up(&ledger, "c", 2).await;
    while let Ok(event) = events.try_recv() {
        assert!(
            !tree_exited(&event),
            "the tree escalated too early: {event:?}"
        );
    }
    assert_eq!(
        arrivals(&ledger, "tree").await.len(),
        1,
        "the tree itself ran on"
    );

    // C dies: a second failure within the minute. The tree gives up and
    // escalates: its parent, on the driver, sees it exit and restarts it.
    p.kill(c);
    match common::next_event(&mut events, tree_exited).await {
        SupervisionEvent::ChildExited {
            abnormal, reason, ..
        } => assert!(abnormal, "{reason}"),
        other => panic!("{other:?}"),
    }
    common::next_event(&mut events, |e| {
        matches!(e, SupervisionEvent::ChildRestarted { supervisor, child, .. } if &**supervisor == "top" && &**child == "tree")
    })
    .await;
    let trees = came_up(&ledger, "tree", 2).await;
    came_up(&ledger, "b", 3).await;
    came_up(&ledger, "c", 3).await;

    // The tree's own node dies: to its parent, noconnection.
    let host = nodes
        .iter()
        .find(|n| n.node == trees[1])
        .expect("the tree runs on a worker");
    p.kill(host);
    match common::next_event(&mut events, tree_exited).await {
        SupervisionEvent::ChildExited {
            abnormal, reason, ..
        } => assert!(abnormal && reason.contains("noconnection"), "{reason}"),
        other => panic!("{other:?}"),
    }
    let trees = came_up(&ledger, "tree", 3).await;
    assert_ne!(trees[2], host.node, "started again on a live node");
    came_up(&ledger, "b", 4).await;
    came_up(&ledger, "c", 4).await;
    assert!(
        top.is_alive(),
        "the parent's own intensity was not exceeded"
    );
    assert!(top.stop(Duration::from_secs(10)).await);
    rt.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkilled_node_is_declared_dead_and_its_work_moves_or_fails_as_it_should() {
    let _turn = DRIVER.lock().await;
    let mut p = processes("sigkill");
    let head = p.head(&["--num-cpus", "2"]).expect("the head starts");
    let victim = p
        .worker(&head, &["--num-cpus", "2", "--resources", "victim=1"])
        .expect("a worker starts");
    let rt = join_as_driver(&p, &head).await;
    wait_for_nodes(2).await;
    let mut events = rt.cluster_events();

    // An object whose only copy is on the victim (too large to come back
    // inline), made before the kill.
    let on_victim = TaskOptions::default()
        .resource("victim", 1.0)
        .max_retries(0);
    let kept = pattern::options(on_victim.clone()).remote(&rt, 1 << 20, 1);
    common::eventually("made on the victim", || rt.task_summary().delegated == 0).await;
    // Work running on the victim when it dies: retriable tasks (pinned
    // softly, so their retry may go elsewhere), and one with no retries.
    let soft = TaskOptions::default().max_retries(3).scheduling_strategy(
        SchedulingStrategy::NodeAffinity {
            node: victim.node,
            soft: true,
        },
    );
    let retried: Vec<_> = (0..2)
        .map(|_| where_am_i::options(soft.clone()).remote(&rt, 3_000))
        .collect();
    let doomed = where_am_i::options(on_victim).remote(&rt, 3_000);
    common::eventually("the victim runs them", || rt.task_summary().delegated == 3).await;

    let killed = Instant::now();
    p.kill(&victim);
    common::within("the victim is declared dead", async {
        loop {
            match events.recv().await {
                Ok(ClusterEvent::NodeDown { node, .. }) if node == victim.node => break,
                Ok(_) => continue,
                Err(err) => panic!("events: {err}"),
            }
        }
    })
    .await;
    let detected = killed.elapsed();
    assert!(
        detected < Duration::from_secs(5),
        "declared dead after {detected:?}"
    );

    for r in &retried {
        let node = *common::within("a retried task", rt.get(r)).await.unwrap();
        assert_eq!(node, head.node, "retried on the surviving node");
    }
    let err = common::within("the task with no retries", rt.get(&doomed))
        .await
        .unwrap_err();
    match err.failure::<TaskError>() {
        Some(TaskError::Failed {
            cause: TaskCause::NodeDied(node),
            ..
        }) => assert_eq!(*node, victim.node),
        other => panic!("expected NodeDied, got {other:?}"),
    }
    let lost = common::within("the lost object", rt.get(&kept))
        .await
        .unwrap_err();
    match lost {
        ObjectError::Lost { node, .. } => assert_eq!(node, victim.node),
        other => panic!("expected Lost naming the victim, got {other:?}"),
    }
    rt.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_cookie_another_build_and_an_empty_address_are_refused_clearly() {
    let _turn = DRIVER.lock().await;
    let mut p = processes("refused");
    let head = p.head(&["--num-cpus", "1"]).expect("the head starts");

    // A node with another cookie: refused, it says why, and exits.
    let err = p
        .start_with_cookie(
            &["start", "--block", "--address", &head.address],
            "not-the-cookie",
        )
        .err()
        .unwrap_or_else(|| panic!("refused"));
    assert!(
        err.contains("refused this node: use the cluster's cookie"),
        "{err}"
    );
    // Nor does the read-only token open a node's way in.
    let token = read_only_token(&p);
    let err = p
        .start_with_cookie(&["start", "--block", "--address", &head.address], &token)
        .err()
        .unwrap_or_else(|| panic!("a node joined with the read-only token"));
    assert!(
        err.contains("refused this node: use the cluster's cookie"),
        "{err}"
    );

    // A driver of another build.
    let mut options = ClusterOptions::driver(&head.address);
    options.cookie = Some(p.cookie().to_owned());
    options.build_id = Some(troupe::registry::build_id() ^ 1);
    let err = troupe::init(
        Config::default()
            .resources(Resources::default())
            .cluster_node(options),
    )
    .await
    .err()
    .unwrap_or_else(|| panic!("refused"));
    assert!(
        matches!(cluster_cause(&err), Some(ClusterError::Refused(why)) if why.contains("differs from the cluster's build")),
        "{err}"
    );

    // Nothing listens there: a clear error within seconds.
    let started = Instant::now();
    let mut options =
        ClusterOptions::driver(format!("127.0.0.1:{}", free_port().expect("a free port")));
    options.cookie = Some(p.cookie().to_owned());
    let err = troupe::init(
        Config::default()
            .resources(Resources::default())
            .cluster_node(options),
    )
    .await
    .err()
    .unwrap_or_else(|| panic!("nothing answers"));
    assert!(
        matches!(cluster_cause(&err), Some(ClusterError::Unreachable { .. })),
        "{err}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));

    // The head kept running through all of it.
    let (ok, status) = p
        .run(&["status", "--address", &head.address])
        .expect("runs");
    assert!(ok && status.contains("1 nodes (1 alive)"), "{status}");
}

/// What `troupe token` prints (the test binary, relaunched as `troupe`,
/// prints its test harness's lines too).
fn read_only_token(p: &LocalCluster) -> String {
    let (ok, out) = p.run(&["token"]).expect("runs");
    assert!(ok, "{out}");
    out.split_whitespace()
        .find(|w| w.len() == 64 && w.bytes().all(|b| b.is_ascii_hexdigit()))
        .unwrap_or_else(|| panic!("no token in {out}"))
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn troupe_status_lists_the_nodes_a_read_only_token_cannot_stop_them_and_troupe_stop_does() {
    let _turn = DRIVER.lock().await;
    let mut p = processes("stop");
    let head = p.head(&["--num-cpus", "1"]).expect("the head starts");
    let a = p
        .worker(&head, &["--num-cpus", "1"])
        .expect("a worker starts");
    let b = p
        .worker(&head, &["--num-cpus", "1", "--resources", "special=2"])
        .expect("a worker starts");
    let (ok, status) = p
        .run(&["status", "--address", &head.address])
        .expect("runs");
    assert!(ok, "{status}");
    assert!(status.contains("3 nodes (3 alive)"), "{status}");
    for node in [head.node, a.node, b.node] {
        assert!(
            status.contains(&node.to_string()),
            "{node} listed: {status}"
        );
    }
    assert!(status.contains("special 2"), "{status}");

    // With the read-only token: the same status, and no stop.
    let token_file = p.home().join("read-only-token");
    std::fs::write(&token_file, read_only_token(&p)).expect("writes the token");
    let token_file = token_file.to_str().expect("a UTF-8 path");
    let read_only = ["--address", &head.address, "--token-file", token_file];
    let (ok, seen) = p
        .run(&[&["status"][..], &read_only[..]].concat())
        .expect("runs");
    assert!(ok && seen.contains("3 nodes (3 alive)"), "{seen}");
    let (ok, out) = p
        .run(&[&["stop"][..], &read_only[..]].concat())
        .expect("runs");
    assert!(!ok && out.contains("read-only token"), "{out}");
    std::fs::write(p.home().join("read-only-token"), "0".repeat(64)).expect("writes");
    let (ok, out) = p
        .run(&[&["status"][..], &read_only[..]].concat())
        .expect("runs");
    assert!(!ok && out.contains("not this cluster's"), "{out}");
    let (ok, status) = p
        .run(&["status", "--address", &head.address])
        .expect("runs");
    assert!(
        ok && status.contains("3 nodes (3 alive)"),
        "still running: {status}"
    );

    let (ok, out) = p.run(&["stop", "--address", &head.address]).expect("runs");
    assert!(ok, "{out}");
    let exits = p
        .wait_all(Duration::from_secs(10))
        .expect("every node exits after `troupe stop`");
    for (args, success) in exits {
        assert!(success, "`{args}` exited with an error");
    }
}

/// A driver that shuts down leaves: the head has recorded it as `Left`
/// (not a failure) by the time `shutdown` returns, with no pause for the
/// notice to travel.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_driver_that_shuts_down_is_recorded_as_left_before_shutdown_returns() {
    let _turn = DRIVER.lock().await;
    let (p, head, _nodes, rt) = started("leave", "1", &[&["--num-cpus", "1"]]).await;
    let me = rt.node_id().to_string();
    rt.shutdown().await.unwrap();
    let (ok, status) = p
        .run(&["status", "--address", &head.address])
        .expect("runs");
    assert!(ok, "{status}");
    let line = status
        .lines()
        .find(|l| l.starts_with(&me))
        .unwrap_or_else(|| panic!("the driver {me} is listed: {status}"));
    assert!(line.contains(" Left "), "recorded as left: {line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_actor_on_one_node_is_called_from_another_and_found_by_name_and_its_death_is_an_error() {
    let _turn = DRIVER.lock().await;
    let (mut p, _head, nodes, rt) = started(
        "actors",
        "1",
        &[
            &["--num-cpus", "1", "--resources", "b=1"],
            &["--num-cpus", "1", "--resources", "c=1"],
        ],
    )
    .await;
    let (b, c) = (nodes[0].clone(), nodes[1].clone());

    // Spawned on B by its constructor; called through the typed handle.
    let on_b =
        ActorOptions::new()
            .name("tally")
            .scheduling_strategy(SchedulingStrategy::NodeAffinity {
                node: b.node,
                soft: false,
            });
    let tally = Tally::remote(&rt, on_b)
        .new(10)
        .await
        .expect("spawned on B");
    assert!(tally.as_ref().is_remote());
    assert_eq!(tally.info().node, b.node);
    assert_eq!(
        common::within("a call", tally.node()).await.unwrap(),
        b.node
    );
    assert_eq!(common::within("a call", tally.add(1)).await.unwrap(), 11);
    // Pipelined calls keep their order.
    let pending: Vec<_> = (0..50).map(|_| tally.add(1)).collect();
    let mut last = 0;
    for p in pending {
        last = p.await.unwrap();
    }
    assert_eq!(last, 61);

    // A reply may hold a handle: it decodes here (outside any task) as a
    // handle to the actor on B.
    let sibling = common::within("a handle in a reply", tally.sibling("sibling".into(), 5))
        .await
        .unwrap()
        .expect("spawned on B");
    assert_eq!(sibling.info().node, b.node);
    assert_eq!(common::within("a call", sibling.add(2)).await.unwrap(), 7);

    // A task on C finds it by name and calls it.
    let r = add_to_tally::options(TaskOptions::default().resource("c", 1.0)).remote(&rt, 100);
    let (value, ran_on) = *common::within("the task on C", rt.get(&r)).await.unwrap();
    assert_eq!((value, ran_on), (161, c.node));

    // A handle travels inside a task's arguments.
    let r = add_through::options(TaskOptions::default().resource("c", 1.0)).remote(
        &rt,
        tally.clone(),
        1000,
    );
    let (value, ran_on) = *common::within("the handle on C", rt.get(&r)).await.unwrap();
    assert_eq!((value, ran_on), (1161, c.node));

    // The driver finds it by name too; the wrong type is an error.
    let found = rt
        .find_actor::<Tally>("tally")
        .await
        .expect("found by name");
    assert_eq!(found.id(), tally.id());
    assert!(rt.find_actor::<Tally>("nobody").await.is_err());

    // B dies with a call in flight (sent at once, as every call is): it
    // fails with ActorDied, never hangs.
    let in_flight = tally.slowly(60_000);
    p.kill(&b);
    let err = common::within("the call fails", in_flight)
        .await
        .unwrap_err();
    assert!(matches!(err, ActorError::ActorDied { .. }), "{err}");
    assert!(tally.is_dead());
    rt.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_actor_whose_node_dies_is_restarted_on_another_node_and_its_handles_follow_it() {
    let _turn = DRIVER.lock().await;
    let (mut p, _head, nodes, rt) = started(
        "restart",
        "1",
        &[
            &["--num-cpus", "1", "--resources", "b=1"],
            &["--num-cpus", "1", "--resources", "c=1"],
        ],
    )
    .await;
    let (b, c) = (nodes[0].clone(), nodes[1].clone());

    // On B while B lives, with one restart.
    let options = ActorOptions::new()
        .name("phoenix")
        .max_restarts(1)
        .scheduling_strategy(SchedulingStrategy::NodeAffinity {
            node: b.node,
            soft: true,
        });
    let tally = Tally::remote(&rt, options)
        .new(10)
        .await
        .expect("spawned on B");
    let first = tally.id();
    assert_eq!(
        common::within("a call", tally.node()).await.unwrap(),
        b.node
    );
    assert_eq!(common::within("a call", tally.add(5)).await.unwrap(), 15);
    assert_eq!(tally.as_ref().owner().map(|o| o.owner), Some(rt.node_id()));

    // A relay on C holds a handle made before B dies.
    let on_c = ActorOptions::new().scheduling_strategy(SchedulingStrategy::NodeAffinity {
        node: c.node,
        soft: false,
    });
    let relay = Relay::remote(&rt, on_c)
        .new(tally.clone())
        .await
        .expect("the relay on C");
    assert_eq!(
        common::within("through the relay", relay.add(1))
            .await
            .unwrap(),
        Ok(16)
    );

    // B dies: the call in flight fails (at-most-once), the actor does not.
    let in_flight = tally.slowly(60_000);
    p.kill(&b);
    let err = common::within("the call in flight fails", in_flight)
        .await
        .unwrap_err();
    assert!(matches!(err, ActorError::ActorDied { .. }), "{err}");

    // The next call waits for the restart elsewhere, and finds the actor
    // fresh from its constructor, with the same id.
    let moved_to = common::within("the restarted actor answers", tally.node())
        .await
        .expect("restarted on another node");
    assert_ne!(moved_to, b.node);
    assert_eq!(tally.as_ref().location().node, moved_to);
    assert_eq!(tally.id(), first);
    assert!(!tally.is_dead());
    assert_eq!(common::within("a call", tally.add(1)).await.unwrap(), 11);

    // The relay's old handle on C asks the owner (this driver) and follows.
    assert_eq!(
        common::within("through the relay", relay.add(1))
            .await
            .unwrap(),
        Ok(12)
    );
    // Its name moved with it.
    let found = rt
        .find_actor::<Tally>("phoenix")
        .await
        .expect("found by name after the restart");
    assert_eq!(common::within("a call", found.add(0)).await.unwrap(), 12);

    // Stopped through a handle, it is forgotten by its owner: dead for good.
    tally.stop().await;
    assert!(tally.is_dead());
    let err = common::within("a call after stop", tally.add(1))
        .await
        .unwrap_err();
    assert!(matches!(err, ActorError::ActorDied { .. }), "{err}");
    rt.shutdown().await.unwrap();
}

/// A cluster with TLS, made with `troupe cert` as the README says: tasks
/// run on its nodes, a 20 MB object crosses nodes, `troupe status` answers
/// with the TLS files, and a node without them cannot join.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_with_tls_runs_tasks_moves_objects_and_refuses_a_node_without_it() {
    let _turn = DRIVER.lock().await;
    let mut p = processes("tls");
    let tls = p.home().join("tls");
    let tls_dir = tls.to_str().expect("a UTF-8 path").to_owned();
    for cert in [
        &["cert", "init", "--dir", &tls_dir][..],
        &["cert", "issue", "--ca-dir", &tls_dir][..],
    ] {
        let (ok, out) = p.run(cert).expect("runs");
        assert!(ok, "{out}");
    }
    let head = p
        .head(&["--num-cpus", "1", "--tls-dir", &tls_dir])
        .expect("the head starts");
    let node = p
        .worker(&head, &["--num-cpus", "1", "--tls-dir", &tls_dir])
        .expect("a node with the cluster's certificate joins");
    let refused = p.worker(&head, &["--num-cpus", "1"]);
    let why = refused.expect_err("a node without TLS joined");
    assert!(why.contains("--tls-dir"), "{why}");

    let mut options = ClusterOptions::driver(&head.address);
    options.cookie = Some(p.cookie().to_owned());
    options.state_dir = Some(p.home().clone());
    options.tls_dir = Some(tls.clone());
    let rt = troupe::init(
        Config::default()
            .resources(Resources::default())
            .cluster_node(options),
    )
    .await
    .expect("the driver joins over TLS");
    wait_for_nodes(2).await;

    let spread = TaskOptions::default().scheduling_strategy(SchedulingStrategy::Spread);
    let mut ran_on = BTreeSet::new();
    for r in (0..8)
        .map(|_| where_am_i::options(spread.clone()).remote(&rt, 1))
        .collect::<Vec<_>>()
    {
        ran_on.insert(*common::within("a task over TLS", rt.get(&r)).await.unwrap());
    }
    assert_eq!(ran_on, BTreeSet::from([head.node, node.node]));

    let len = 20 << 20;
    let made = pattern::options(on(node.node)).remote(&rt, len, 7);
    let (sum, got_len, read_on) = *common::within(
        "a digest on the head",
        rt.get(&digest::options(on(head.node)).remote(&rt, &made)),
    )
    .await
    .unwrap();
    assert_eq!((got_len, read_on), (len, head.node));
    let here = common::within("the object, here", rt.get(&made))
        .await
        .unwrap();
    assert_eq!(fnv(&here), sum, "the same bytes on every node");

    let (ok, status) = p
        .run(&["status", "--address", &head.address, "--tls-dir", &tls_dir])
        .expect("runs");
    assert!(ok, "{status}");
    let (ok, status) = p
        .run(&["status", "--address", &head.address])
        .expect("runs");
    assert!(!ok, "status without the TLS files answered: {status}");
    rt.shutdown().await.unwrap();
}

/// This machine's address on its default route, if it has one.
fn routed_ipv4() -> Option<std::net::IpAddr> {
    let socket = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    socket.connect("192.0.2.1:9").ok()?;
    let ip = socket.local_addr().ok()?.ip();
    (!ip.is_loopback()).then_some(ip)
}

/// A driver left on the loopback default that joins a head at a routed
/// address listens and advertises where the head (on another machine)
/// could reach it back, and says what to do when that needs TLS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_driver_joining_a_head_elsewhere_listens_where_the_head_reaches_it() {
    let Some(ip) = routed_ipv4() else {
        eprintln!("skipped: this machine has no address beyond loopback");
        return;
    };
    let _turn = DRIVER.lock().await;
    let mut p = processes("routed");
    let ip_text = ip.to_string();
    let head = p
        .head(&["--num-cpus", "1", "--bind", &ip_text, "--insecure"])
        .expect("the head starts on a routed address");
    assert!(head.address.starts_with(&ip_text), "{}", head.address);

    // Without TLS or --insecure, it says so instead of binding.
    let mut options = ClusterOptions::driver(&head.address);
    options.cookie = Some(p.cookie().to_owned());
    options.state_dir = Some(p.home().clone());
    let err = troupe::init(
        Config::default()
            .resources(Resources::default())
            .cluster_node(options.clone()),
    )
    .await
    .err()
    .unwrap_or_else(|| panic!("joined a remote head without TLS"));
    assert!(
        matches!(cluster_cause(&err), Some(ClusterError::Insecure { .. })),
        "{err}"
    );

    options.insecure = true;
    let node = ClusterNode::new(options);
    let rt = troupe::init(node.configure(Config::default().resources(Resources::default())))
        .await
        .expect("the driver joins");
    let me = rt.node_id();
    let members = node.status().await.expect("the status");
    let driver = members
        .iter()
        .find(|m| m.hello.node == me)
        .expect("the driver is listed");
    assert!(
        driver.hello.control_addr.starts_with(&ip_text) && driver.hello.data_addr.ip() == ip,
        "the driver advertises {} and {}",
        driver.hello.control_addr,
        driver.hello.data_addr
    );
    let r = square::options(on_node(head.node)).remote(&rt, 7);
    assert_eq!(
        *common::within("a task on the head", rt.get(&r))
            .await
            .unwrap(),
        49
    );
    rt.shutdown().await.unwrap();
}

/// `troupe list`, `summary` and `get` (and `ClusterNode::cluster_state`)
/// show the work of every node; a SIGKILLed node is listed dead and
/// unasked, and the others still answer; the read-only token lists too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_state_and_timeline_of_every_node_are_listed_and_written_and_a_dead_one_is_shown() {
    let _turn = DRIVER.lock().await;
    let (mut p, head, nodes, rt) =
        started("state", "1", &[&["--num-cpus", "1"], &["--num-cpus", "1"]]).await;
    let (b, c) = (nodes[0].clone(), nodes[1].clone());
    let trace_file = p.home().join("trace.json");
    let trace_path = trace_file.to_str().expect("a UTF-8 path").to_owned();
    let (ok, out) = p
        .run(&["timeline", "-o", &trace_path, "--address", &head.address])
        .expect("runs");
    assert!(!ok && out.contains("no node has recorded"), "{out}");
    let node = ClusterNode::current().expect("this process's node");
    let unrecorded = node.record_cluster_timeline(true).await.expect("recording");
    assert!(unrecorded.is_empty(), "{unrecorded:?}");
    let began_us = rt.clock_us();
    // An actor on B, tasks finished on every node, one still running on C.
    let on_b =
        ActorOptions::new()
            .name("listed")
            .scheduling_strategy(SchedulingStrategy::NodeAffinity {
                node: b.node,
                soft: false,
            });
    let tally = Tally::remote(&rt, on_b).new(1).await.expect("spawned on B");
    for node in [head.node, b.node, c.node] {
        let r = square::options(on_node(node)).remote(&rt, 3);
        assert_eq!(*common::within("a task", rt.get(&r)).await.unwrap(), 9);
    }
    let _running = where_am_i::options(on(c.node)).remote(&rt, 60_000);
    let kept = rt.put(vec![7u8; 1 << 16]).await.expect("put");

    // The Rust API: every member answered, the driver's object and B's
    // actor among them.
    let state = node
        .cluster_state(Default::default())
        .await
        .expect("the state");
    let answered: BTreeSet<NodeId> = state.answered().map(|(m, _)| m.hello.node).collect();
    for n in [head.node, b.node, c.node, rt.node_id()] {
        assert!(answered.contains(&n), "{n} did not answer");
    }
    assert!(state
        .answered()
        .any(|(m, s)| m.hello.node == b.node
            && s.actors.iter().any(|a| a.info.id == tally.info().id)));
    assert!(state
        .answered()
        .any(|(_, s)| s.objects.iter().any(|o| o.id == kept.id())));

    let address = ["--address", head.address.as_str()];
    let run = |p: &LocalCluster, args: &[&str]| {
        let (ok, out) = p.run(&[args, &address[..]].concat()).expect("runs");
        assert!(ok, "troupe {args:?}: {out}");
        out
    };
    let listed = run(&p, &["list", "nodes"]);
    for n in [head.node, b.node, c.node] {
        assert!(listed.contains(&n.to_string()), "{n} not in {listed}");
    }
    let actors = run(&p, &["list", "actors", "--filter", "name=listed"]);
    assert!(
        actors.contains(&tally.info().id.to_string()) && actors.contains("ALIVE"),
        "{actors}"
    );
    let running = run(
        &p,
        &[
            "list",
            "tasks",
            "--filter",
            "state=RUNNING",
            "--format",
            "json",
        ],
    );
    assert!(
        running.contains("where_am_i") && !running.contains("square"),
        "{running}"
    );
    // Each task once, though its owner and the node that ran it both list
    // it.
    let summary = run(&p, &["summary", "tasks", "--format", "json"]);
    assert!(
        summary.contains("\"tasks\": 3") && summary.contains("\"FINISHED\": 3"),
        "{summary}"
    );
    let tasks = run(&p, &["list", "tasks"]);
    assert_eq!(tasks.matches("cluster::square").count(), 3, "{tasks}");
    let got = run(&p, &["get", "actors", &tally.info().id.to_string()]);
    assert!(
        got.contains("Tally") && got.contains(&b.node.to_string()),
        "{got}"
    );
    let (ok, out) = p
        .run(&[&["get", "tasks", "task-0-0"][..], &address[..]].concat())
        .expect("runs");
    assert!(!ok && out.contains("no task with id task-0-0"), "{out}");

    // What each task's and actor's code logged, on the node that ran it.
    assert_eq!(tally.add(2).await.expect("added"), 3);
    let squares: Vec<(String, NodeId)> = rt
        .tasks(&troupe::TaskFilter::default())
        .into_iter()
        .filter(|t| t.function.ends_with("::square"))
        .map(|t| (t.id.to_string(), t.node.expect("it ran somewhere")))
        .collect();
    assert_eq!(squares.len(), 3, "{squares:?}");
    for (task, ran_on) in &squares {
        let out = run(&p, &["logs", "--task", task]);
        let lines: Vec<&str> = out.lines().filter(|l| l.contains(" INFO ")).collect();
        let short = &ran_on.to_string()[..8];
        assert_eq!(lines.len(), 1, "{task}: {out}");
        assert!(
            lines[0].contains("squaring x=3")
                && lines[0].contains(&format!("node={short}"))
                && lines[0].contains(&format!("task={task}")),
            "{task} on {ran_on}: {out}"
        );
    }
    let actor = tally.info().id.to_string();
    let out = run(
        &p,
        &[
            "logs",
            "--actor",
            &actor,
            "--node",
            &b.node.to_string()[..6],
        ],
    );
    assert!(out.contains("added by=2 total=3"), "{out}");
    let page = node
        .logs(
            b.node,
            troupe::logs::LogQuery {
                actor: Some(actor),
                ..Default::default()
            },
        )
        .await
        .expect("B's log");
    assert_eq!(page.lines.len(), 1, "{page:?}");
    // Followed: a line logged after `troupe logs -f` started comes out.
    let mut follow = std::process::Command::new(env!("CARGO_BIN_EXE_troupe"))
        .args(["logs", "-f", "--actor", &tally.info().id.to_string()])
        .args(address)
        .env("TROUPE_HOME", p.home())
        .env("TROUPE_COOKIE", p.cookie())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("troupe logs -f starts");
    let stdout = follow.stdout.take().expect("its output");
    let (lines_tx, lines_rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let wait_for = |want: &str| {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match lines_rx.recv_timeout(left) {
                Ok(line) if line.contains(want) => return,
                Ok(_) => continue,
                Err(err) => panic!("no line with {want:?} from troupe logs -f: {err}"),
            }
        }
    };
    wait_for("added by=2 total=3");
    assert_eq!(tally.add(5).await.expect("added"), 8);
    wait_for("added by=5 total=8");
    let _ = follow.kill();
    let _ = follow.wait();
    let (ok, out) = p
        .run(&[&["logs", "--node", "ffffffffffffffff"][..], &address[..]].concat())
        .expect("runs");
    assert!(
        !ok && out.contains("no live node's id starts with"),
        "{out}"
    );

    // One trace, a process per node, each node's tasks on it, on one clock.
    run(&p, &["timeline", "-o", &trace_path]);
    let trace: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&trace_file).expect("written")).expect("JSON");
    let records = trace.as_array().expect("an array");
    let pid_of = |n: NodeId| {
        records
            .iter()
            .find(|r| {
                r["name"] == "process_name"
                    && r["args"]["name"]
                        .as_str()
                        .is_some_and(|name| name.contains(&n.to_string()))
            })
            .map(|r| r["pid"].clone())
            .unwrap_or_else(|| panic!("no process for {n}"))
    };
    let ended_us = rt.clock_us();
    for n in [head.node, b.node, c.node] {
        let pid = pid_of(n);
        let squares: Vec<u64> = records
            .iter()
            .filter(|r| r["pid"] == pid && r["ph"] == "X" && r["name"] == "cluster::square")
            .filter_map(|r| r["ts"].as_u64())
            .collect();
        assert_eq!(squares.len(), 1, "{n}: {squares:?}");
        assert!(
            squares[0] + 1_000_000 > began_us && squares[0] < ended_us + 1_000_000,
            "{n}'s task at {} is off the driver's clock [{began_us}, {ended_us}]",
            squares[0]
        );
    }

    // Read-only, with the token.
    let token_file = p.home().join("state-token");
    std::fs::write(&token_file, read_only_token(&p)).expect("writes the token");
    let token_file = token_file.to_str().expect("a UTF-8 path");
    let seen = run(&p, &["list", "actors", "--token-file", token_file]);
    assert!(seen.contains(&tally.info().id.to_string()), "{seen}");

    // C dies: listed dead, not asked; the others still answer.
    p.kill(&c);
    common::eventually("C is declared dead", || {
        ClusterNode::current().is_some_and(|n| {
            n.members()
                .iter()
                .any(|m| m.hello.node == c.node && m.state == MemberState::Dead)
        })
    })
    .await;
    let listed = run(&p, &["list", "nodes", "--node", &c.node.to_string()]);
    assert!(
        listed.contains("DEAD") && listed.contains("departed"),
        "{listed}"
    );
    let actors = run(&p, &["list", "actors"]);
    assert!(actors.contains(&tally.info().id.to_string()), "{actors}");
    rt.shutdown().await.unwrap();
}

/// A job runs on the head with the cluster's address and cookie: its log is
/// followed, its status kept after it ends, and stopping it ends the
/// actors it owns on other nodes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_runs_on_the_head_and_stopping_it_ends_its_actors() {
    let _turn = DRIVER.lock().await;
    let (p, head, _nodes, rt) = started("jobs", "1", &[&["--num-cpus", "1"]]).await;
    let address = ["--address", head.address.as_str()];
    // The cluster's address goes before a job's `--`, which takes the rest.
    let troupe = |args: &[&str]| {
        let at = args.iter().position(|a| *a == "--").unwrap_or(args.len());
        p.run(&[&args[..at], &address[..], &args[at..]].concat())
            .expect("runs")
    };

    // A job that fails: its output followed, its outcome the command's.
    let (ok, out) = troupe(&[
        "job",
        "submit",
        "--",
        "sh",
        "-c",
        "echo out; echo err >&2; exit 3",
    ]);
    assert!(
        !ok && out.contains("out") && out.contains("err") && out.contains("FAILED"),
        "{out}"
    );

    // A driver that spawns an actor on the cluster and waits.
    let exe = std::env::current_exe().expect("the test binary");
    let exe = exe.to_str().expect("a UTF-8 path");
    let (ok, out) = troupe(&[
        "job",
        "submit",
        "--no-wait",
        "--env",
        "TROUPE_TEST_JOB=1",
        "--",
        exe,
        "job_process",
        "--exact",
        "--nocapture",
        "--test-threads=1",
    ]);
    assert!(ok, "{out}");
    let id = out
        .split_whitespace()
        .find(|w| w.starts_with("job-"))
        .unwrap_or_else(|| panic!("no job id in {out}"))
        .to_owned();
    common::eventually("the job's driver is ready", || {
        troupe(&["job", "logs", &id]).1.contains("job ready")
    })
    .await;
    let (_, actors) = troupe(&["list", "actors", "--filter", "name=job-actor"]);
    assert!(actors.contains("ALIVE"), "{actors}");
    let (_, status) = troupe(&["job", "status", &id]);
    assert!(status.contains("RUNNING"), "{status}");

    let (ok, stopped) = troupe(&["job", "stop", &id]);
    assert!(ok && stopped.contains("STOPPED"), "{stopped}");
    common::eventually("the job's actor ends with it", || {
        troupe(&["list", "actors", "--filter", "name=job-actor"])
            .1
            .contains("(none)")
    })
    .await;
    // Its status and log outlive it.
    let (_, listed) = troupe(&["job", "list"]);
    assert!(
        listed.contains(&format!("{id}  STOPPED")) && listed.contains("FAILED"),
        "{listed}"
    );
    assert!(troupe(&["job", "logs", &id]).1.contains("job ready"));
    let (ok, out) = troupe(&["job", "status", "job-999"]);
    assert!(!ok && out.contains("no job job-999"), "{out}");
    rt.shutdown().await.unwrap();
}

/// `x` squared, wherever it runs (and said in its node's log).
#[troupe::remote]
fn square(x: u64) -> u64 {
    tracing::info!(x, "squaring");
    x * x
}

/// A node's resident memory, in bytes.
fn rss_of(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .map(|kib| kib * 1024)
        .unwrap_or(0)
}

/// Idle connections and connections of random or truncated bytes per
/// port: 200 and 1,000 by default, 2,000 and 20,000 (half random, half
/// truncated) with `TROUPE_ATTACK_SCALE=full` (needs about 13,000 open
/// files in the test process: `ulimit -n`).
fn attack_scale() -> (usize, usize) {
    match std::env::var("TROUPE_ATTACK_SCALE").as_deref() {
        Ok("full") => (2_000, 20_000),
        _ => (200, 1_000),
    }
}

/// A connection from the attacker's own address (127.0.0.2: the per-source
/// bounds keep it from taking the members' share of a port).
async fn hostile(to: std::net::SocketAddr) -> Option<tokio::net::TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4().ok()?;
    socket.bind("127.0.0.2:0".parse().ok()?).ok()?;
    tokio::time::timeout(Duration::from_secs(2), socket.connect(to))
        .await
        .ok()?
        .ok()
}

/// Attacks `to` until `stop`: idle connections held open, connections
/// that send random bytes, connections that send a truncated start of a
/// frame, and one that sends a byte every 50 ms.
async fn attack(to: std::net::SocketAddr, stop: tokio::sync::watch::Receiver<bool>) -> usize {
    use tokio::io::AsyncWriteExt;
    let (idle_count, rounds) = attack_scale();
    let mut idle = Vec::new();
    let mut made = 0;
    for _ in 0..idle_count {
        if let Some(s) = hostile(to).await {
            idle.push(s);
            made += 1;
        }
    }
    let slow = tokio::spawn(async move {
        let Some(mut s) = hostile(to).await else {
            return;
        };
        while !*stop.borrow() {
            if s.write_all(&[0x5a]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    let mut seed = 0x9e37_79b9_7f4a_7c15u64 ^ u64::from(to.port());
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for round in 0..rounds {
        let Some(mut s) = hostile(to).await else {
            continue;
        };
        made += 1;
        let bytes: Vec<u8> = if round % 2 == 0 {
            (0..1 + next() % 2048).map(|_| next() as u8).collect()
        } else {
            // A frame's start that claims far more than follows.
            let mut b = (1u64 << 20).to_be_bytes().to_vec();
            b.extend_from_slice(&(1u32 << 20).to_le_bytes());
            b.extend((0..next() % 40).map(|_| next() as u8));
            b
        };
        let _ = s.write_all(&bytes).await;
        let _ = s.shutdown().await;
    }
    let _ = slow.await;
    drop(idle);
    made
}

/// Hostile clients at every port of every node (sessions, links, the data
/// path) while a job runs: idle connections, connections of random or
/// truncated bytes (`attack_scale`) and a slowloris each. The job's answers are
/// exact, every node lives on with its memory within 256 MiB of where it
/// started, and the refusals are in the nodes' logs with the attacker's
/// address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_under_attack_keep_serving_and_log_the_attacks() {
    let _turn = DRIVER.lock().await;
    let mut p = processes("attack");
    let ports: Vec<String> = (0..4)
        .map(|_| free_port().expect("a free port").to_string())
        .collect();
    let head = p
        .head(&[
            "--num-cpus",
            "1",
            "--link-port",
            &ports[0],
            "--data-port",
            &ports[1],
        ])
        .expect("the head starts");
    let node = p
        .worker(
            &head,
            &[
                "--num-cpus",
                "1",
                "--link-port",
                &ports[2],
                "--data-port",
                &ports[3],
            ],
        )
        .expect("a node starts");
    let rt = join_as_driver(&p, &head).await;
    wait_for_nodes(2).await;
    let before = [rss_of(head.pid), rss_of(node.pid)];

    let mut targets: Vec<std::net::SocketAddr> = vec![
        head.address.parse().expect("an address"),
        node.address.parse().expect("an address"),
    ];
    targets.extend(ports.iter().map(|port| {
        format!("127.0.0.1:{port}")
            .parse::<std::net::SocketAddr>()
            .expect("an address")
    }));
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let attacks: Vec<_> = targets
        .iter()
        .map(|to| tokio::spawn(attack(*to, stopped.clone())))
        .collect();

    // The job, while the attack runs.
    let refs: Vec<_> = (0..300u64)
        .map(|i| {
            let on = if i % 2 == 0 { head.node } else { node.node };
            (i, square::options(on_node(on)).remote(&rt, i))
        })
        .collect();
    for (i, r) in &refs {
        let got = common::within("a task under attack", rt.get(r))
            .await
            .unwrap();
        assert_eq!(*got, i * i);
    }
    let len = 20 << 20;
    let made = pattern::options(on_node(node.node)).remote(&rt, len, 3);
    let (sum, got_len, _) = *common::within(
        "a digest under attack",
        rt.get(&digest::options(on_node(head.node)).remote(&rt, &made)),
    )
    .await
    .unwrap();
    assert_eq!(got_len, len);
    let here = common::within("the object, here", rt.get(&made))
        .await
        .unwrap();
    assert_eq!(fnv(&here), sum);

    let _ = stop.send(true);
    let mut connections = 0;
    for a in attacks {
        connections += common::within("the attack ends", a).await.expect("joined");
    }
    let (idle_count, rounds) = attack_scale();
    assert!(
        connections > (idle_count + rounds) * targets.len() * 4 / 5,
        "{connections} hostile connections made"
    );

    // Every node lives on, within its memory bound.
    wait_for_nodes(2).await;
    for (pid, before) in [(head.pid, before[0]), (node.pid, before[1])] {
        let after = rss_of(pid);
        assert!(after > 0, "node {pid} is gone");
        assert!(
            after < before + (256 << 20),
            "node {pid} grew from {before} to {after} bytes under attack"
        );
    }
    // A member still joins and works after the attack.
    let late = p
        .worker(&head, &["--num-cpus", "1"])
        .expect("a node joins after the attack");
    wait_for_nodes(3).await;
    assert_eq!(
        *common::within(
            "a task after the attack",
            rt.get(&square::options(on_node(late.node)).remote(&rt, 9))
        )
        .await
        .unwrap(),
        81
    );
    let log = p.log_tail(&head).join("\n");
    assert!(
        log.contains("refused") && log.contains("127.0.0.2"),
        "the head's log names the refusals and the attacker: {log}"
    );
    rt.shutdown().await.unwrap();
}

/// Runs on `node`.
fn on_node(node: NodeId) -> TaskOptions {
    TaskOptions::default()
        .scheduling_strategy(SchedulingStrategy::NodeAffinity { node, soft: false })
}
