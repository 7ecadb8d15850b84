//! GPU resources without libtorch: a node declares GPUs in its config (as
//! `ray.init(num_gpus=2)` does on any machine), and the scheduler gives
//! tasks and actors specific device ordinals, packs fractions, holds an
//! actor's GPUs for its life, and refuses what can never fit.

mod common;

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use common::{eventually, within};
use troupe::prelude::*;

fn node_with_gpus(gpus: f64) -> Config {
    Config::default().resources(Resources::cpus(4.0).with_gpus(gpus))
}

#[troupe::remote]
fn gpu_ids() -> Vec<u32> {
    troupe::task::current()
        .map(|c| c.gpu_ids)
        .unwrap_or_default()
}

/// Holds its GPU until told to go, and says which one it had.
#[troupe::remote]
async fn hold_gpu(release: ObjectRef<()>) -> Vec<u32> {
    let ids = troupe::task::current()
        .map(|c| c.gpu_ids)
        .unwrap_or_default();
    let rt = troupe::task::runtime().expect("inside a task");
    rt.get(&release).await.expect("release");
    ids
}

#[tokio::test]
async fn tasks_get_ordinals_and_fractions_pack_onto_one_device() {
    let rt = troupe::init(node_with_gpus(2.0)).await.unwrap();
    assert_eq!(rt.gpus().len(), 2);
    assert_eq!(rt.gpus()[1].ordinal, 1);

    // No GPUs asked, none given.
    assert_eq!(
        *rt.get(&gpu_ids::remote(&rt)).await.unwrap(),
        Vec::<u32>::new()
    );
    // Two whole GPUs: both devices.
    let both = gpu_ids::options(TaskOptions::default().num_gpus(2.0)).remote(&rt);
    assert_eq!(*rt.get(&both).await.unwrap(), vec![0, 1]);

    // Four quarter-GPU tasks held at once pack onto one device; a whole-GPU
    // task then still finds the other device idle.
    let (release, done) = rt.objects().pending::<()>();
    let quarters: Vec<_> = (0..4)
        .map(|_| {
            hold_gpu::options(TaskOptions::default().num_gpus(0.25)).remote(&rt, release.clone())
        })
        .collect();
    eventually("four quarter tasks running", || rt.task_counts().2 == 4).await;
    let whole = gpu_ids::options(TaskOptions::default().num_gpus(1.0)).remote(&rt);
    let whole_ids = within("the whole-GPU task", rt.get(&whole)).await.unwrap();
    done.complete(()).unwrap();
    let quarter_ids = within("the quarter tasks", rt.get_many(&quarters, None))
        .await
        .unwrap();
    let device = quarter_ids[0][0];
    assert!(quarter_ids.iter().all(|ids| **ids == vec![device]));
    assert_eq!(*whole_ids, vec![1 - device]);
    rt.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_task_waits_for_a_busy_gpu_and_then_gets_it() {
    let rt = troupe::init(node_with_gpus(1.0)).await.unwrap();
    let (release, done) = rt.objects().pending::<()>();
    let first =
        hold_gpu::options(TaskOptions::default().num_gpus(1.0)).remote(&rt, release.clone());
    eventually("the first task running", || rt.task_counts().2 == 1).await;
    let second = gpu_ids::options(TaskOptions::default().num_gpus(0.5)).remote(&rt);
    // Queued, not failed: the GPU exists, it is only busy.
    let waited = rt.get_timeout(&second, Duration::from_millis(50)).await;
    assert!(
        matches!(waited, Err(ObjectError::Timeout { .. })),
        "{waited:?}"
    );
    done.complete(()).unwrap();
    assert_eq!(*within("first", rt.get(&first)).await.unwrap(), vec![0]);
    assert_eq!(*within("second", rt.get(&second)).await.unwrap(), vec![0]);
    rt.shutdown().await.unwrap();
}

#[tokio::test]
async fn more_gpus_than_the_node_has_fail_at_once() {
    let rt = troupe::init(node_with_gpus(2.0)).await.unwrap();
    let three = gpu_ids::options(TaskOptions::default().num_gpus(3.0)).remote(&rt);
    let err = within("infeasible", rt.get(&three)).await.unwrap_err();
    let err = err.failure::<TaskError>().expect("a task error").clone();
    assert!(matches!(err, TaskError::Infeasible { .. }), "{err}");
    assert!(err.to_string().contains("add a node that fits"), "{err}");

    let mixed = gpu_ids::options(TaskOptions::default().num_gpus(1.5)).remote(&rt);
    let err = within("invalid", rt.get(&mixed)).await.unwrap_err();
    let err = err.failure::<TaskError>().expect("a task error").clone();
    assert!(matches!(err, TaskError::InvalidResources { .. }), "{err}");
    rt.shutdown().await.unwrap();

    // A node with no GPU at all.
    let rt = troupe::init(Config::default()).await.unwrap();
    let one = gpu_ids::options(TaskOptions::default().num_gpus(1.0)).remote(&rt);
    let err = within("no GPU", rt.get(&one)).await.unwrap_err();
    assert!(
        matches!(
            err.failure::<TaskError>(),
            Some(TaskError::Infeasible { .. })
        ),
        "{err}"
    );
    let actor = rt
        .spawn_actor(
            ActorOptions::new().resources(Resources::default().with_gpus(0.5)),
            || Device,
        )
        .await;
    assert!(
        matches!(actor, Err(SpawnError::Infeasible { .. })),
        "{actor:?}"
    );
    rt.shutdown().await.unwrap();
}

#[tokio::test]
async fn an_invalid_node_config_does_not_start() {
    let err = troupe::init(node_with_gpus(1.5)).await.unwrap_err();
    assert!(matches!(err, SpawnError::InvalidResources(_)), "{err}");
}

static BUILT_ON: AtomicU32 = AtomicU32::new(u32::MAX);

/// An actor that records which GPU its constructor saw.
struct Device;

#[troupe::actor]
impl Device {
    pub fn gpu_ids(&self) -> Vec<u32> {
        troupe::actor::current()
            .map(|a| a.gpu_ids.clone())
            .unwrap_or_default()
    }

    pub fn crash(&mut self) {
        panic!("device lost");
    }
}

fn device_built() -> Device {
    let ids = troupe::actor::current()
        .map(|a| a.gpu_ids.clone())
        .unwrap_or_default();
    BUILT_ON.store(ids.first().copied().unwrap_or(u32::MAX), Ordering::SeqCst);
    Device
}

fn one_gpu() -> ActorOptions {
    ActorOptions::new().resources(Resources::default().with_gpus(1.0))
}

#[tokio::test]
async fn actors_hold_their_gpu_for_life_and_across_restarts() {
    let rt = troupe::init(node_with_gpus(2.0)).await.unwrap();
    let a = rt
        .spawn_actor(one_gpu().max_restarts(2), device_built)
        .await
        .unwrap();
    let b = rt.spawn_actor(one_gpu(), || Device).await.unwrap();
    let a_ids = a.gpu_ids().await.unwrap();
    let b_ids = b.gpu_ids().await.unwrap();
    assert_eq!(a_ids.len(), 1);
    assert_ne!(a_ids, b_ids);
    assert_eq!(a.info().gpu_ids, a_ids);
    assert_eq!(BUILT_ON.load(Ordering::SeqCst), a_ids[0]);

    // A crash restarts it onto its device again; the constructor sees it.
    BUILT_ON.store(u32::MAX, Ordering::SeqCst);
    assert!(a.crash().await.is_err());
    assert_eq!(within("restarted", a.gpu_ids()).await.unwrap(), a_ids);
    assert_eq!(BUILT_ON.load(Ordering::SeqCst), a_ids[0]);

    // Both GPUs are held: a task asking for one waits; so does a third actor.
    let task = gpu_ids::options(TaskOptions::default().num_gpus(1.0)).remote(&rt);
    let rt2 = rt.clone();
    let third = tokio::spawn(async move { rt2.spawn_actor(one_gpu(), || Device).await });
    assert!(rt
        .get_timeout(&task, Duration::from_millis(50))
        .await
        .is_err());
    assert!(!third.is_finished());
    // A tree of your own cannot wait: it is told the GPUs are busy.
    let busy = rt.actor_child(one_gpu(), || Device);
    assert!(
        matches!(busy, Err(SpawnError::ResourcesBusy { .. })),
        "{:?}",
        busy.err()
    );

    // Dropping b (collected with its last handle) frees its GPU: the actor
    // that asked first gets it, then the task once the actor is gone too.
    drop(b);
    let third = within("third actor placed", third).await.unwrap().unwrap();
    assert_eq!(third.gpu_ids().await.unwrap(), b_ids);
    third.kill(true).await;
    assert_eq!(*within("task placed", rt.get(&task)).await.unwrap(), b_ids);
    rt.shutdown().await.unwrap();
}

#[tokio::test]
async fn spawning_waits_in_order_and_a_dropped_wait_loses_nothing() {
    let rt = troupe::init(node_with_gpus(1.0)).await.unwrap();
    let holder = rt.spawn_actor(one_gpu(), || Device).await.unwrap();
    // A spawn that gives up while waiting must not keep the GPU afterwards.
    let gave_up = tokio::time::timeout(
        Duration::from_millis(20),
        rt.spawn_actor(one_gpu(), || Device),
    )
    .await;
    assert!(gave_up.is_err());
    drop(holder);
    let next = within(
        "placed after the drop",
        rt.spawn_actor(one_gpu(), || Device),
    )
    .await
    .unwrap();
    assert_eq!(next.gpu_ids().await.unwrap(), vec![0]);
    rt.shutdown().await.unwrap();
}
