//! What Troupe records as `metrics`: restarts and escalations per
//! supervisor, GPUs in use, and after a known workload, tasks by function
//! (submitted, attempts, finished, failed, retried, running, scheduling
//! latency, run time), actors alive by type, and the object store
//! (objects, bytes, spilled bytes, spill time).
//!
//! One test in its own binary: it installs the process-wide recorder (actors
//! run on worker threads, so a thread-local recorder would see nothing).

use std::time::Duration;

use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use troupe::prelude::*;

#[troupe::remote]
fn square(x: u64) -> u64 {
    x * x
}

#[troupe::remote]
fn always_panics() -> u64 {
    panic!("on purpose")
}

type Labels = Vec<(String, String)>;

/// One snapshot of every metric (the debugging recorder's snapshots drain:
/// counters and gauges read as changes since the last one).
struct Metrics(Vec<(String, Labels, DebugValue)>);

impl Metrics {
    fn take(snapshotter: &Snapshotter) -> Self {
        Metrics(
            snapshotter
                .snapshot()
                .into_vec()
                .into_iter()
                .map(|(key, _, _, value)| {
                    let labels = key
                        .key()
                        .labels()
                        .map(|l| (l.key().to_owned(), l.value().to_owned()))
                        .collect();
                    (key.key().name().to_owned(), labels, value)
                })
                .collect(),
        )
    }

    /// The metric `name` whose label `label` ends with `value`.
    fn find(&self, name: &str, label: &str, value: &str) -> Option<&DebugValue> {
        self.0
            .iter()
            .find(|(n, labels, _)| {
                n == name && labels.iter().any(|(k, v)| k == label && v.ends_with(value))
            })
            .map(|(.., v)| v)
    }

    fn counter(&self, name: &str, label: &str, value: &str) -> u64 {
        match self.find(name, label, value) {
            Some(DebugValue::Counter(n)) => *n,
            other => panic!("{name}{{{label}=~{value}}} is not a counter: {other:?}"),
        }
    }

    fn gauge(&self, name: &str, label: &str, value: &str) -> f64 {
        match self.find(name, label, value) {
            Some(DebugValue::Gauge(g)) => g.into_inner(),
            other => panic!("{name}{{{label}=~{value}}} is not a gauge: {other:?}"),
        }
    }

    fn histogram(&self, name: &str, label: &str, value: &str) -> Vec<f64> {
        match self.find(name, label, value) {
            Some(DebugValue::Histogram(v)) => v.iter().map(|x| x.into_inner()).collect(),
            other => panic!("{name}{{{label}=~{value}}} is not a histogram: {other:?}"),
        }
    }

    fn unlabelled(&self, name: &str) -> Option<&DebugValue> {
        self.0.iter().find(|(n, ..)| n == name).map(|(.., v)| v)
    }
}

struct Fragile;

#[troupe::actor]
impl Fragile {
    pub fn crash(&self) {
        panic!("crash")
    }
    pub fn ok(&self) -> bool {
        true
    }
}

fn counter(snapshotter: &Snapshotter, name: &str, supervisor: &str) -> u64 {
    snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .filter(|(key, ..)| {
            key.key().name() == name
                && key
                    .key()
                    .labels()
                    .any(|l| l.key() == "supervisor" && l.value() == supervisor)
        })
        .map(|(.., value)| match value {
            DebugValue::Counter(n) => n,
            _ => 0,
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_after_known_workloads() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder.install().expect("first recorder in this process");

    let rt = troupe::init(Config::default()).await.unwrap();
    let actor = rt
        .spawn_actor(ActorOptions::new().max_restarts(None), || Fragile)
        .await
        .unwrap();
    for _ in 0..3 {
        assert!(actor.crash().await.is_err());
        assert!(actor.ok().await.unwrap());
    }
    assert_eq!(
        counter(&snapshotter, "troupe_supervisor_restarts_total", "user"),
        3
    );

    // A tree that allows no restart escalates on the first failure.
    let (child, fragile) = rt.actor_child(ActorOptions::new(), || Fragile).unwrap();
    let tree = SupervisorSpec::new("strict", Strategy::OneForOne)
        .intensity(Intensity::new(0, Duration::from_secs(5)))
        .child(child.restart(Restart::Permanent));
    let sup = rt.spawn_supervisor(tree).await.unwrap();
    assert!(fragile.crash().await.is_err());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while sup.is_alive() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert!(!sup.is_alive());
    assert_eq!(
        counter(
            &snapshotter,
            "troupe_supervisor_escalations_total",
            "strict"
        ),
        1
    );
    assert_eq!(
        counter(&snapshotter, "troupe_supervisor_restarts_total", "strict"),
        0
    );
    rt.shutdown().await.unwrap();

    // GPUs in use: an actor holds half of one for its life.
    let rt = troupe::init(Config::default().resources(Resources::cpus(2.0).with_gpus(2.0)))
        .await
        .unwrap();
    assert_eq!(gauge(&snapshotter, "troupe_node_gpus"), Some(2.0));
    let half = rt
        .spawn_actor(
            ActorOptions::new().resources(Resources::default().with_gpus(0.5)),
            || Fragile,
        )
        .await
        .unwrap();
    assert_eq!(
        gauge(&snapshotter, "troupe_scheduler_gpus_in_use"),
        Some(0.5)
    );
    half.kill(true).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while gauge(&snapshotter, "troupe_scheduler_gpus_in_use") != Some(0.0) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "GPU never given back"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    rt.shutdown().await.unwrap();

    tasks_actors_and_objects(&snapshotter).await;
}

/// Tasks by function, actors alive by type, the object store.
async fn tasks_actors_and_objects(snapshotter: &Snapshotter) {
    let spill_dir = std::env::temp_dir().join(format!("troupe-metrics-{}", std::process::id()));
    let store = StoreConfig {
        memory_budget: 64 * 1024,
        spill_threshold: 0.5,
        spill_dir: spill_dir.clone(),
        ..StoreConfig::default()
    };
    // The debugging recorder's snapshots drain: from here on, counters and
    // incremented gauges read as changes since this one.
    let _ = Metrics::take(snapshotter);
    let rt = troupe::init(Config::default().objects(store))
        .await
        .unwrap();
    let keep: Vec<_> = {
        let mut actors = Vec::new();
        for _ in 0..3 {
            actors.push(
                rt.spawn_actor(ActorOptions::new(), || Fragile)
                    .await
                    .unwrap(),
            );
        }
        actors
    };
    for i in 0..10 {
        assert_eq!(*rt.get(&square::remote(&rt, i)).await.unwrap(), i * i);
    }
    let failed = always_panics::options(TaskOptions::default().max_retries(1)).remote(&rt);
    assert!(rt.get(&failed).await.is_err());
    // Objects over half of the budget: the object store actor spills.
    let mut objects = Vec::new();
    for i in 0..12u8 {
        objects.push(rt.put(vec![i; 4096]).await.unwrap());
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while rt.objects().spilled().0 == 0 {
        assert!(tokio::time::Instant::now() < deadline, "nothing spilled");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    rt.sample_metrics();

    let m = Metrics::take(snapshotter);
    let f = "function";
    assert_eq!(m.counter("troupe_tasks_submitted_total", f, "::square"), 10);
    assert_eq!(m.counter("troupe_task_attempts_total", f, "::square"), 10);
    assert_eq!(m.counter("troupe_tasks_finished_total", f, "::square"), 10);
    assert_eq!(m.gauge("troupe_tasks_running", f, "::square"), 0.0);
    let latency = m.histogram("troupe_task_scheduling_latency_seconds", f, "::square");
    assert_eq!(latency.len(), 10, "one per first attempt");
    assert!(
        latency.iter().all(|s| (0.0..60.0).contains(s)),
        "{latency:?}"
    );
    // The failing task: two attempts, one retry, one failure, no finish.
    assert_eq!(
        m.counter("troupe_tasks_submitted_total", f, "::always_panics"),
        1
    );
    assert_eq!(
        m.counter("troupe_task_attempts_total", f, "::always_panics"),
        2
    );
    assert_eq!(
        m.counter("troupe_task_retries_total", f, "::always_panics"),
        1
    );
    assert_eq!(
        m.counter("troupe_tasks_failed_total", f, "::always_panics"),
        1
    );
    assert_eq!(
        m.counter("troupe_tasks_finished_total", f, "::always_panics"),
        0
    );
    assert_eq!(
        m.histogram(
            "troupe_task_scheduling_latency_seconds",
            f,
            "::always_panics"
        )
        .len(),
        1,
        "a retry is not scheduling latency"
    );
    // Actors alive by type: three more Fragile actors; the runtime's own.
    let t = "type";
    assert_eq!(m.gauge("troupe_actors_alive", t, "Fragile"), 3.0);
    assert_eq!(
        m.gauge("troupe_actors_alive", t, "troupe::supervisor"),
        3.0,
        "root, system, user"
    );
    assert_eq!(m.gauge("troupe_actors_alive", t, "troupe::scheduler"), 1.0);
    assert_eq!(
        m.gauge("troupe_actors_alive", t, "troupe::object_store"),
        1.0
    );
    // The object store.
    let gauge = |name: &str| match m.unlabelled(name) {
        Some(DebugValue::Gauge(g)) => g.into_inner(),
        other => panic!("{name} is not a gauge: {other:?}"),
    };
    assert!(gauge("troupe_object_store_objects") >= 12.0);
    assert!(gauge("troupe_object_store_memory_bytes") > 0.0);
    assert_eq!(gauge("troupe_object_store_budget_bytes"), 64.0 * 1024.0);
    assert!(gauge("troupe_object_store_spilled_bytes") > 0.0);
    // A round's time is recorded as the round ends, after its first object
    // counted as spilled (what the wait above saw): a later snapshot may
    // hold it.
    let spill_times = |m: &Metrics| match m.unlabelled("troupe_object_store_spill_seconds") {
        Some(DebugValue::Histogram(times)) => times.len(),
        _ => 0,
    };
    let mut recorded = spill_times(&m);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while recorded == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no spill time recorded"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
        recorded += spill_times(&Metrics::take(snapshotter));
    }
    // The gauge follows the store: the spiller may still be at work after
    // the first snapshot, so it is sampled again until both agree (the
    // store unchanged across the sample). After the spill time's wait:
    // each snapshot drains the histograms.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let live = rt.objects().spilled().0 as f64;
        rt.sample_metrics();
        let now = match Metrics::take(snapshotter).unlabelled("troupe_object_store_spilled_bytes") {
            Some(DebugValue::Gauge(g)) => g.into_inner(),
            other => panic!("troupe_object_store_spilled_bytes is not a gauge: {other:?}"),
        };
        if now == live && rt.objects().spilled().0 as f64 == live {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the spilled-bytes gauge reads {now}, the store {live}"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    // Sampled gauges: tasks by where they are, free resources.
    assert!(matches!(
        m.unlabelled("troupe_scheduler_queued_tasks"),
        Some(DebugValue::Gauge(_))
    ));
    assert!(m.gauge("troupe_node_resources_available", "resource", "CPU") >= 1.0);

    drop(keep);
    rt.shutdown().await.unwrap();
    let m = Metrics::take(snapshotter);
    assert_eq!(
        m.gauge("troupe_actors_alive", t, "troupe::supervisor"),
        -3.0,
        "all three stopped"
    );
    assert_eq!(m.gauge("troupe_actors_alive", t, "troupe::scheduler"), -1.0);
    assert_eq!(m.gauge("troupe_actors_alive", t, "Fragile"), -3.0);
    let _ = std::fs::remove_dir_all(&spill_dir);
}

fn gauge(snapshotter: &Snapshotter, name: &str) -> Option<f64> {
    snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .find(|(key, ..)| key.key().name() == name)
        .and_then(|(.., value)| match value {
            DebugValue::Gauge(g) => Some(g.into_inner()),
            _ => None,
        })
}
