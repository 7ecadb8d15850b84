//! Placement groups on one node: bundles reserved out of the node's
//! resources, work placed into them, pending groups, and removal.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::eventually;
use troupe::placement_group::PlacementGroupError;
use troupe::prelude::*;

const READY: Duration = Duration::from_secs(10);

async fn node(cpus: f64) -> Runtime {
    troupe::init(Config::default().resources(Resources::cpus(cpus)))
        .await
        .expect("runtime starts")
}

#[troupe::remote]
fn square(x: u64) -> u64 {
    x * x
}

#[troupe::remote]
async fn forever() -> u64 {
    std::future::pending::<()>().await;
    0
}

static RUNNING: AtomicUsize = AtomicUsize::new(0);
static MOST: AtomicUsize = AtomicUsize::new(0);

/// Counts how many of its kind run at once.
#[troupe::remote]
async fn counted(ms: u64) -> u64 {
    let now = RUNNING.fetch_add(1, Ordering::SeqCst) + 1;
    MOST.fetch_max(now, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(ms)).await;
    RUNNING.fetch_sub(1, Ordering::SeqCst);
    ms
}

struct Holder;

#[troupe::actor]
impl Holder {
    pub fn new() -> Self {
        Holder
    }

    pub fn ping(&self) -> u32 {
        7
    }
}

fn cpu_bundles(n: usize, each: f64) -> Vec<Resources> {
    vec![Resources::cpus(each); n]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_holds_its_bundles_and_gives_them_back_when_removed() {
    let rt = node(4.0).await;
    let group = rt
        .placement_group(PlacementGroupOptions::new(cpu_bundles(3, 1.0)).name("trio"))
        .unwrap();
    let nodes = group.ready(READY).await.unwrap();
    assert_eq!(nodes, vec![rt.node_id(); 3]);
    assert_eq!(rt.available_resources().num_cpus, 1.0, "3 of 4 CPUs held");
    assert_eq!(rt.hosted_bundles().len(), 3);
    assert_eq!(rt.summary().placement_groups, 1, "one group, three bundles");
    let listed = rt.placement_groups();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].1.as_deref(), Some("trio"));

    // Work in a bundle runs out of it; work outside uses the one CPU left.
    for bundle in [Some(0), Some(2), None] {
        let r =
            square::options(TaskOptions::default().placement_group(&group, bundle)).remote(&rt, 9);
        assert_eq!(*rt.get(&r).await.unwrap(), 81);
    }
    let outside = square::remote(&rt, 3);
    assert_eq!(*rt.get(&outside).await.unwrap(), 9);

    rt.remove_placement_group(&group).await;
    assert_eq!(group.state(), PlacementGroupState::Removed);
    // The last task's CPU comes back just after its result does.
    eventually("all given back", || {
        rt.available_resources().num_cpus == 4.0
    })
    .await;
    assert!(rt.hosted_bundles().is_empty());
    assert_eq!(rt.summary().placement_groups, 0);
    let late =
        square::options(TaskOptions::default().placement_group(&group, Some(0))).remote(&rt, 2);
    let err = rt.get(&late).await.unwrap_err();
    match err.failure::<TaskError>() {
        Some(TaskError::PlacementGroup {
            cause: PlacementGroupError::Removed(id),
            ..
        }) => assert_eq!(*id, group.id()),
        other => panic!("expected a removed group, got {other:?} ({err})"),
    }
    rt.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn work_in_a_bundle_never_uses_more_than_the_bundle_holds() {
    let rt = node(4.0).await;
    let group = rt
        .placement_group(PlacementGroupOptions::new(cpu_bundles(1, 1.0)))
        .unwrap();
    group.ready(READY).await.unwrap();
    RUNNING.store(0, Ordering::SeqCst);
    MOST.store(0, Ordering::SeqCst);
    let refs: Vec<_> = (0..4)
        .map(|_| {
            counted::options(TaskOptions::default().placement_group(&group, Some(0)))
                .remote(&rt, 30)
        })
        .collect();
    for r in &refs {
        rt.get(r).await.unwrap();
    }
    assert_eq!(
        MOST.load(Ordering::SeqCst),
        1,
        "one CPU in the bundle: one at a time"
    );

    // Too much for the bundle, or a bundle it does not have: a clear error.
    let big = square::options(
        TaskOptions::default()
            .num_cpus(2.0)
            .placement_group(&group, Some(0)),
    )
    .remote(&rt, 1);
    let err = rt.get(&big).await.unwrap_err();
    assert!(
        matches!(
            err.failure::<TaskError>(),
            Some(TaskError::PlacementGroup {
                cause: PlacementGroupError::DoesNotFit { .. },
                ..
            })
        ),
        "{err}"
    );
    let nowhere =
        square::options(TaskOptions::default().placement_group(&group, Some(5))).remote(&rt, 1);
    let err = rt.get(&nowhere).await.unwrap_err();
    assert!(err.to_string().contains("not a bundle 5"), "{err}");
    rt.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_that_does_not_fit_waits_and_its_tasks_with_it() {
    let rt = node(4.0).await;
    // An actor holds 2 of the 4 CPUs: 3 more do not fit yet.
    let hog = rt
        .spawn_actor(
            ActorOptions::new().resources(Resources::cpus(2.0)),
            Holder::new,
        )
        .await
        .unwrap();
    let group = rt
        .placement_group(
            PlacementGroupOptions::new(cpu_bundles(1, 3.0)).strategy(PlacementStrategy::StrictPack),
        )
        .unwrap();
    let err = group.ready(Duration::from_millis(200)).await.unwrap_err();
    assert!(matches!(err, PlacementGroupError::NotReady { .. }), "{err}");
    assert!(err.to_string().contains("STRICT_PACK"), "{err}");
    let queued =
        square::options(TaskOptions::default().placement_group(&group, Some(0))).remote(&rt, 5);
    // The hog goes: the group fits, and the task waiting for it runs.
    hog.stop().await;
    group.ready(READY).await.unwrap();
    let got = tokio::time::timeout(READY, rt.get(&queued))
        .await
        .expect("runs once the group is ready")
        .unwrap();
    assert_eq!(*got, 25);

    // STRICT_SPREAD over one node: two bundles can never both fit.
    let apart = rt
        .placement_group(
            PlacementGroupOptions::new(cpu_bundles(2, 0.5))
                .strategy(PlacementStrategy::StrictSpread),
        )
        .unwrap();
    let err = apart.ready(Duration::from_millis(200)).await.unwrap_err();
    assert!(err.to_string().contains("STRICT_SPREAD"), "{err}");
    rt.remove_placement_group(&apart).await;
    rt.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_a_group_cancels_its_tasks_and_kills_its_actors() {
    let rt = node(4.0).await;
    let group = rt
        .placement_group(PlacementGroupOptions::new(cpu_bundles(2, 1.0)))
        .unwrap();
    group.ready(READY).await.unwrap();
    let actor = rt
        .spawn_actor(
            ActorOptions::new()
                .resources(Resources::cpus(1.0))
                .placement_group(&group, Some(1)),
            Holder::new,
        )
        .await
        .unwrap();
    assert_eq!(actor.ping().await.unwrap(), 7);
    let stuck =
        forever::options(TaskOptions::default().placement_group(&group, Some(0))).remote(&rt);
    eventually("the task runs", || rt.task_counts().2 == 1).await;

    rt.remove_placement_group(&group).await;
    let err = tokio::time::timeout(READY, rt.get(&stuck))
        .await
        .expect("cancelled, not left hanging")
        .unwrap_err();
    assert!(
        matches!(
            err.failure::<TaskError>(),
            Some(TaskError::Cancelled { .. })
        ),
        "{err}"
    );
    let mut gone = false;
    for _ in 0..200 {
        if actor.ping().await.is_err() {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(gone, "the actor in the removed bundle was killed");
    eventually("every CPU back", || {
        rt.available_resources().num_cpus == 4.0
    })
    .await;
    rt.shutdown().await.unwrap();
}

#[tokio::test]
async fn invalid_groups_are_refused_with_a_reason() {
    let rt = node(2.0).await;
    let err = rt
        .placement_group(PlacementGroupOptions::new(vec![]))
        .unwrap_err();
    assert_eq!(err, PlacementGroupError::NoBundles);
    let err = rt
        .placement_group(PlacementGroupOptions::new(vec![Resources::cpus(f64::NAN)]))
        .unwrap_err();
    assert!(
        matches!(err, PlacementGroupError::InvalidBundle { index: 0, .. }),
        "{err}"
    );
    rt.shutdown().await.unwrap();
}
