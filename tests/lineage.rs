//! Lineage reconstruction across processes: a head from the `troupe`
//! binary, worker nodes of this test binary re-launched in node mode, and
//! the test as the driver (the owner of every task it submits). A worker
//! holding the only copies of intermediate results is SIGKILLed; reading
//! the final result makes the lost ones again, and gives the local answer.
//! This binary installs a `metrics` recorder (process-wide) for the driver.

mod common;

use std::sync::OnceLock;
use std::time::Duration;

use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};

use common::cluster::processes;
use troupe::cluster::local::{binary, LocalCluster, LocalNode};
use troupe::cluster::{ClusterNode, ClusterOptions};
use troupe::prelude::*;
use troupe::remote::ClusterEvent;
use troupe::{SchedulingStrategy, TaskFilter};

/// Node mode: this test binary re-launched as a node (see `common::cluster`).
#[test]
fn node_process() {
    common::cluster::run_node_if_asked();
}

/// Bytes of each intermediate result: large enough to stay on the node
/// that made it (only small results travel back with the reply).
const SIZE: usize = 2 << 20;

/// `len` bytes made from `seed`.
fn bytes_of(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[troupe::remote]
fn source(seed: u64) -> Vec<u8> {
    bytes_of(seed, SIZE)
}

/// Depends on every byte of both inputs, and on their order.
#[troupe::remote]
fn mix(a: Vec<u8>, b: Vec<u8>, salt: u64) -> Vec<u8> {
    a.iter()
        .zip(b.iter().rev())
        .enumerate()
        .map(|(i, (x, y))| x.wrapping_mul(31) ^ y.wrapping_add(salt as u8 ^ i as u8))
        .collect()
}

/// Puts `SIZE` bytes made from `seed` in the store of the node it runs on
/// (which owns them) and returns the ref.
#[troupe::remote]
fn put_there(seed: u64) -> ObjectRef<Vec<u8>> {
    troupe::Runtime::current()
        .expect("in a runtime")
        .put_blocking(bytes_of(seed, SIZE))
        .expect("put")
}

/// Reads the objects it is given and keeps their refs (so its node keeps
/// the copies it fetched).
#[derive(Default)]
pub struct Reader {
    kept: Vec<ObjectRef<Vec<u8>>>,
}

#[troupe::actor]
impl Reader {
    pub fn new() -> Self {
        Reader::default()
    }

    pub async fn read(&mut self, r: ObjectRef<Vec<u8>>) -> Result<usize, String> {
        let rt = troupe::Runtime::current().ok_or("no runtime")?;
        let len = rt.get(&r).await.map_err(|e| e.to_string())?.len();
        self.kept.push(r);
        Ok(len)
    }
}

/// The process's recorder, installed before the first driver starts.
fn recorder() -> &'static Snapshotter {
    static SNAPSHOTTER: OnceLock<Snapshotter> = OnceLock::new();
    SNAPSHOTTER.get_or_init(|| {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        recorder
            .install()
            .expect("the only recorder of this binary");
        snapshotter
    })
}

/// The lineage metrics' changes since the last call (the debugging
/// recorder's snapshots drain): counters by name, and gauges' last values.
fn lineage_metrics() -> Vec<(String, f64)> {
    recorder()
        .snapshot()
        .into_vec()
        .into_iter()
        .filter(|(key, ..)| {
            let name = key.key().name();
            name.starts_with("troupe_lineage_")
                || name == "troupe_data_bytes_received_total"
                || name == "troupe_object_store_moved_to_replica_total"
        })
        .map(|(key, _, _, value)| {
            let value = match value {
                DebugValue::Counter(n) => n as f64,
                DebugValue::Gauge(g) => g.into_inner(),
                DebugValue::Histogram(_) => f64::NAN,
            };
            // Labels as `name{label=value}`: bytes received by peer.
            let labels: Vec<String> = key
                .key()
                .labels()
                .map(|l| format!("{}={}", l.key(), l.value()))
                .collect();
            let name = key.key().name();
            match labels.is_empty() {
                true => (name.to_owned(), value),
                false => (format!("{name}{{{}}}", labels.join(",")), value),
            }
        })
        .collect()
}

/// `name`'s value in `metrics` (0 if it did not change).
fn metric(metrics: &[(String, f64)], name: &str) -> f64 {
    metrics
        .iter()
        .find(|(n, _)| n == name)
        .map_or(0.0, |(_, v)| *v)
}

/// One driver per process: the tests of this file take turns.
static DRIVER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A head from the `troupe` binary (it runs no user code), a victim and a
/// survivor of this binary with 2 CPUs each, and this process as a driver
/// offering one.
async fn cluster(test: &str) -> (LocalCluster, LocalNode, LocalNode, Runtime) {
    cluster_with(test, &[]).await
}

/// [`cluster`], with `head_args` for the head.
async fn cluster_with(
    test: &str,
    head_args: &[&str],
) -> (LocalCluster, LocalNode, LocalNode, Runtime) {
    lineage_metrics(); // installed, and drained of earlier tests' changes
    let mut p = processes(test);
    let head = p
        .head_with(&binary(env!("CARGO_BIN_EXE_troupe")), head_args)
        .expect("the head starts");
    let victim = p
        .worker(&head, &["--num-cpus", "2"])
        .expect("a worker starts");
    let survivor = p
        .worker(&head, &["--num-cpus", "2"])
        .expect("a worker starts");
    // A driver with a CPU: a task may run on the owner itself.
    let mut options = ClusterOptions::driver(&head.address);
    options.cookie = Some(p.cookie().to_owned());
    options.state_dir = Some(p.home().clone());
    let rt = troupe::init(
        Config::default()
            .resources(Resources::cpus(1.0))
            .cluster_node(options),
    )
    .await
    .expect("the driver joins");
    common::eventually("every node is in the driver's view", || {
        ClusterNode::current().is_some_and(|c| c.alive_nodes() == 3)
    })
    .await;
    (p, victim, survivor, rt)
}

/// Runs on `node` while it lives, elsewhere once it cannot.
fn near(node: troupe::NodeId) -> TaskOptions {
    TaskOptions::default()
        .scheduling_strategy(SchedulingStrategy::NodeAffinity { node, soft: true })
}

/// The attempts of `function`'s tasks that this driver saw finish.
fn attempts(rt: &Runtime, function: &str) -> Vec<u32> {
    rt.tasks(&TaskFilter::default())
        .into_iter()
        .filter(|t| t.function.ends_with(function))
        .map(|t| t.attempt)
        .collect()
}

/// Waits until `id` is made (wherever), fetching nothing.
async fn made(rt: &Runtime, what: &str, id: troupe::ObjectId) {
    troupe_test_kit::within_for(Duration::from_secs(60), what, rt.objects().made(id)).await;
}

/// Kills `node` and waits until the driver has heard it is dead.
async fn kill(p: &mut LocalCluster, rt: &Runtime, node: &LocalNode) {
    let mut events = rt.cluster_events();
    p.kill(node);
    troupe_test_kit::within_for(
        Duration::from_secs(30),
        "the victim is declared dead",
        async {
            loop {
                match events.recv().await {
                    Ok(ClusterEvent::NodeDown { node: down, .. }) if down == node.node => break,
                    Ok(_) => continue,
                    Err(err) => panic!("events: {err}"),
                }
            }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_lost_with_a_sigkilled_node_are_made_again_and_give_the_local_answer() {
    let _turn = DRIVER.lock().await;
    let (mut p, victim, survivor, rt) = cluster("lineage").await;
    let on_victim = near(victim.node);
    // s0..s3 and m0, m2, m3 on the victim; m1 on the survivor. Reading m3
    // after the kill makes m3, m2, m0, s0, s1 and s3 again (m1 lives).
    let s: Vec<_> = (0..4u64)
        .map(|i| source::options(on_victim.clone()).remote(&rt, i))
        .collect();
    let m0 = mix::options(on_victim.clone()).remote(&rt, &s[0], &s[1], 1);
    let m1 = mix::options(near(survivor.node)).remote(&rt, &s[2], &s[3], 2);
    let m2 = mix::options(on_victim.clone()).remote(&rt, &m0, &m1, 3);
    let m3 = mix::options(on_victim).remote(&rt, &m2, &s[3], 4);
    let (m2_value, expected) = {
        let s: Vec<_> = (0..4u64).map(source).collect();
        let m0 = mix(s[0].clone(), s[1].clone(), 1);
        let m1 = mix(s[2].clone(), s[3].clone(), 2);
        let m2 = mix(m0, m1, 3);
        (m2.clone(), mix(m2, s[3].clone(), 4))
    };
    for (what, r) in [("m0", &m0), ("m1", &m1), ("m2", &m2), ("m3", &m3)] {
        made(&rt, what, r.id()).await;
    }
    for (what, r, at) in [
        ("s0", &s[0], victim.node),
        ("s3", &s[3], victim.node),
        ("m0", &m0, victim.node),
        ("m1", &m1, survivor.node),
        ("m3", &m3, victim.node),
    ] {
        assert_eq!(
            rt.objects().location(r.id()),
            Some(Some(at)),
            "{what} is kept where it was made"
        );
    }
    assert_eq!(rt.lineage_tasks(), 8, "one entry per task run elsewhere");
    assert!(metric(&lineage_metrics(), "troupe_lineage_bytes") > 0.0);
    // The driver keeps only the final result: the lineage keeps the rest.
    let kept_m2 = m2.clone();
    drop((s, m0, m1, m2));

    kill(&mut p, &rt, &victim).await;
    assert!(
        matches!(
            rt.objects().failure(m3.id()),
            Some(ObjectError::Lost { .. })
        ),
        "m3 is lost with the victim"
    );
    // Readers at once share one recovery per object: two gets here, a task
    // submitted after the loss, whose node asks for m3, and one that runs
    // here, on the owner, taking m2.
    let tail = mix::options(near(survivor.node)).remote(&rt, &m3, &m3, 5);
    let here = TaskOptions::default().scheduling_strategy(SchedulingStrategy::NodeAffinity {
        node: rt.node_id(),
        soft: false,
    });
    let local_tail = mix::options(here).remote(&rt, &kept_m2, &kept_m2, 6);
    let (a, b, t, l) = troupe_test_kit::within_for(
        Duration::from_secs(120),
        "the lost result is made again",
        async { tokio::join!(rt.get(&m3), rt.get(&m3), rt.get(&tail), rt.get(&local_tail)) },
    )
    .await;
    let l = l.unwrap_or_else(|err| panic!("a task on the owner on a lost argument: {err}"));
    assert!(
        *l == mix(m2_value.clone(), m2_value, 6),
        "the exact local answer, to a task run on the owner"
    );
    let a = a.unwrap_or_else(|err| panic!("made again: {err}"));
    let b = b.unwrap_or_else(|err| panic!("made again: {err}"));
    let t = t.unwrap_or_else(|err| panic!("a task on a lost argument: {err}"));
    assert!(*a == expected, "the exact local answer");
    assert!(
        *b == expected,
        "the exact local answer, to the second reader"
    );
    assert!(
        *t == mix(expected.clone(), expected.clone(), 5),
        "the exact local answer, to a task that took it"
    );
    assert_ne!(
        rt.objects().location(m3.id()),
        Some(Some(victim.node)),
        "made again elsewhere"
    );
    // Each lost task ran again once, as its second attempt: m3, m2, m0 and
    // s0, s1, s3 (m1 and s2 were not needed); the tails ran once each.
    let sorted = |mut v: Vec<u32>| {
        v.sort();
        v
    };
    common::eventually("the reconstructions are in the task history", || {
        sorted(attempts(&rt, "mix")) == [1, 1, 1, 1, 1, 1, 2, 2, 2]
            && sorted(attempts(&rt, "source")) == [1, 1, 1, 1, 2, 2, 2]
    })
    .await;

    let metrics = lineage_metrics();
    for (name, expected) in [
        ("troupe_lineage_reconstructions_started_total", 6.0),
        ("troupe_lineage_reconstructions_succeeded_total", 6.0),
        ("troupe_lineage_reconstructions_failed_total", 0.0),
        ("troupe_lineage_copies_found_total", 0.0),
    ] {
        assert_eq!(metric(&metrics, name), expected, "{name}: {metrics:?}");
    }

    // Nothing depends on the lineage once the last ref goes.
    drop((a, b, t, l, m3, tail, local_tail, kept_m2));
    troupe_test_kit::eventually_within(
        Duration::from_secs(30),
        "the lineage is freed with the refs",
        || rt.lineage_bytes() == 0 && rt.lineage_tasks() == 0,
    )
    .await;
    assert_eq!(
        metric(&lineage_metrics(), "troupe_lineage_bytes"),
        0.0,
        "the gauge follows"
    );
    rt.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_result_that_another_node_read_is_fetched_from_there_not_run_again() {
    let _turn = DRIVER.lock().await;
    let (mut p, victim, survivor, rt) = cluster("lineage-copy").await;
    let result = source::options(near(victim.node)).remote(&rt, 5);
    made(&rt, "the result", result.id()).await;
    assert_eq!(rt.objects().location(result.id()), Some(Some(victim.node)));
    let reader = Reader::remote(
        &rt,
        ActorOptions::new().scheduling_strategy(SchedulingStrategy::NodeAffinity {
            node: survivor.node,
            soft: false,
        }),
    )
    .new()
    .await
    .expect("the reader spawns");
    let read = common::within("the survivor reads it", reader.read(result.clone()))
        .await
        .expect("a reply")
        .expect("read");
    assert_eq!(read, SIZE);

    kill(&mut p, &rt, &victim).await;
    assert!(matches!(
        rt.objects().failure(result.id()),
        Some(ObjectError::Lost { .. })
    ));
    let value =
        troupe_test_kit::within_for(Duration::from_secs(60), "the lost result", rt.get(&result))
            .await
            .unwrap_or_else(|err| panic!("found again: {err}"));
    assert!(*value == bytes_of(5, SIZE), "the exact value");
    assert_eq!(
        attempts(&rt, "source"),
        [1],
        "fetched from the survivor's copy, not run again"
    );
    let metrics = lineage_metrics();
    assert_eq!(
        metric(&metrics, "troupe_lineage_copies_found_total"),
        1.0,
        "{metrics:?}"
    );
    // The copy's bytes are counted against the node they came from.
    let from_survivor = format!("troupe_data_bytes_received_total{{peer={}}}", survivor.node);
    assert!(
        metric(&metrics, &from_survivor) >= SIZE as f64,
        "{from_survivor}: {metrics:?}"
    );
    assert_eq!(
        metric(&metrics, "troupe_lineage_reconstructions_started_total"),
        0.0,
        "{metrics:?}"
    );
    rt.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_put_object_and_a_lost_result_of_a_task_with_no_retries_say_why() {
    let _turn = DRIVER.lock().await;
    let (mut p, victim, _survivor, rt) = cluster("lineage-lost").await;
    let outer = put_there::options(near(victim.node)).remote(&rt, 7);
    let put = (*troupe_test_kit::within_for(Duration::from_secs(60), "the put", rt.get(&outer))
        .await
        .unwrap_or_else(|err| panic!("the put: {err}")))
    .clone();
    assert_eq!(rt.lineage_tasks(), 1, "the task that put it keeps lineage");
    drop(outer);
    assert_eq!(rt.lineage_tasks(), 0, "freed with its result");
    let unretried = source::options(near(victim.node).max_retries(0)).remote(&rt, 9);
    made(&rt, "the result of a task with no retries", unretried.id()).await;
    assert_eq!(
        rt.objects().location(unretried.id()),
        Some(Some(victim.node))
    );
    assert_eq!(
        rt.lineage_tasks(),
        0,
        "a task with no retries keeps no lineage"
    );

    kill(&mut p, &rt, &victim).await;
    let err = common::within("the lost put object", rt.get(&put))
        .await
        .unwrap_err();
    match &err {
        ObjectError::Lost { id, node, why } => {
            assert_eq!(*id, put.id());
            assert_eq!(*node, victim.node);
            assert!(why.contains("it was put there"), "{why}");
        }
        other => panic!("expected Lost, got {other:?}"),
    }
    assert!(
        err.to_string()
            .contains("only an object's owner can make it again"),
        "{err}"
    );
    let err = common::within("the lost result", rt.get(&unretried))
        .await
        .unwrap_err();
    match &err {
        ObjectError::Lost { node, why, .. } => {
            assert_eq!(*node, victim.node);
            assert!(why.contains("max_retries = 0"), "{why}");
        }
        other => panic!("expected Lost, got {other:?}"),
    }
    assert!(
        err.to_string()
            .contains("make it in a task with max_retries > 0"),
        "{err}"
    );
    drop((put, unretried));
    common::eventually("no lineage left", || rt.lineage_bytes() == 0).await;
    rt.shutdown().await.unwrap();
}

/// A result read the moment its holder is SIGKILLed, before the failure
/// detector has declared that node dead: the read waits for the verdict and
/// gets the value made again, instead of failing because the holder's data
/// port refused the connection (which a chaos run hit when two nodes died).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_from_a_holder_killed_before_it_is_declared_dead_gets_the_value_made_again() {
    let _turn = DRIVER.lock().await;
    // A slow verdict (6 s) leaves a wide gap between the kill and the
    // death, in which the victim's data port refuses connections.
    let (mut p, victim, survivor, rt) =
        cluster_with("lineage-read-at-kill", &["--dead-after-ms", "6000"]).await;
    let r = source::options(near(victim.node)).remote(&rt, 21);
    made(&rt, "the result on the victim", r.id()).await;
    assert_eq!(rt.objects().location(r.id()), Some(Some(victim.node)));
    p.kill(&victim);
    let value = troupe_test_kit::within_for(Duration::from_secs(60), "the read", rt.get(&r))
        .await
        .unwrap_or_else(|err| panic!("a read at the kill failed: {err}"));
    assert_eq!(*value, bytes_of(21, SIZE));
    let now_at = rt.objects().location(r.id());
    assert!(
        now_at != Some(Some(victim.node)),
        "still at the dead victim: {now_at:?} (the survivor is {})",
        survivor.node
    );
    drop((r, value));
    rt.shutdown().await.unwrap();
}

/// The objects in `node`'s store, as the driver last heard (heartbeats).
fn objects_on(node: troupe::NodeId) -> Option<u64> {
    let cluster = ClusterNode::current()?;
    let member = cluster
        .members()
        .into_iter()
        .find(|m| m.hello.node == node)?;
    Some(member.load.objects)
}

/// A result kept on two nodes (`replicas(2)`) by a task that may not run
/// again outlives the node that made it: read from the other copy, never
/// run twice, and freed on every node once the driver drops its ref.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_with_a_replica_outlives_its_node_without_running_again() {
    let _turn = DRIVER.lock().await;
    let (mut p, victim, survivor, rt) = cluster("lineage-replica").await;
    let options = near(victim.node).max_retries(0).replicas(2);
    let kept = source::options(options).remote(&rt, 11);
    made(&rt, "the result and its replica", kept.id()).await;
    assert_eq!(rt.objects().location(kept.id()), Some(Some(victim.node)));
    // The head runs another program and the driver owns it: the replica
    // goes to the survivor.
    assert_eq!(
        rt.objects().keepers(kept.id()),
        vec![victim.node, survivor.node]
    );
    assert_eq!(rt.lineage_tasks(), 0, "no lineage: it cannot run again");

    kill(&mut p, &rt, &victim).await;
    let value = common::within("the result, from its replica", rt.get(&kept))
        .await
        .unwrap_or_else(|err| panic!("the replicated result was lost: {err}"));
    assert_eq!(*value, bytes_of(11, SIZE));
    assert_eq!(attempts(&rt, "source"), [1], "read, not run again");
    let metrics = lineage_metrics();
    assert_eq!(
        metric(&metrics, "troupe_object_store_moved_to_replica_total"),
        1.0,
        "{metrics:?}"
    );
    assert_eq!(
        metric(&metrics, "troupe_lineage_reconstructions_started_total"),
        0.0
    );
    common::eventually("the survivor holds the replica", || {
        objects_on(survivor.node) == Some(1)
    })
    .await;

    drop((kept, value));
    common::eventually("the replica is freed with the driver's ref", || {
        objects_on(survivor.node) == Some(0)
    })
    .await;
    rt.shutdown().await.unwrap();
}
