//! Restarts and escalations are `metrics` counters; GPUs in use a gauge.
//!
//! One test in its own binary: it installs the process-wide recorder (actors
//! run on worker threads, so a thread-local recorder would see nothing).

use std::time::Duration;

use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use troupe::prelude::*;

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
async fn restarts_and_escalations_are_counted() {
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
