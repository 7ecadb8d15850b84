//! Objects through the runtime: put/get/wait, pending objects, spilling by
//! the object store actor, and that actor's restart without loss.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{eventually, next_event, within};
use get_size2::GetSize;
use troupe::prelude::*;
use troupe::supervisor::SupervisionEvent;

#[derive(serde::Serialize, serde::Deserialize, GetSize, Debug, PartialEq)]
struct Batch {
    step: u64,
    observations: Vec<f32>,
}

fn spill_dir(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("troupe-it-{}-{name}", std::process::id()))
}

async fn small_runtime(name: &str) -> Runtime {
    let objects = StoreConfig {
        memory_budget: 256 * 1024,
        spill_threshold: 0.5,
        spill_dir: spill_dir(name),
        ..StoreConfig::default()
    };
    troupe::init(Config::default().objects(objects))
        .await
        .unwrap()
}

#[tokio::test]
async fn put_and_get_share_one_value() {
    let rt = troupe::init(Config::default()).await.unwrap();
    let batch = Batch {
        step: 3,
        observations: vec![0.25; 1000],
    };
    let r = rt.put(batch).await.unwrap();
    let a = rt.get(&r).await.unwrap();
    let b = rt.get(&r).await.unwrap();
    assert!(Arc::ptr_eq(&a, &b));
    assert_eq!(a.step, 3);
    assert_eq!(r.id().node, rt.node_id());
    drop(r);
    assert!(rt.objects().is_empty());
    rt.shutdown().await.unwrap();
}

#[tokio::test]
async fn actors_can_produce_objects_that_others_wait_for() {
    struct Producer;
    #[troupe::actor]
    impl Producer {
        pub fn make(&self, rt: Runtime, step: u64) -> ObjectRef<Batch> {
            rt.try_put(Batch {
                step,
                observations: vec![step as f32; 10],
            })
            .unwrap()
        }
    }
    let rt = troupe::init(Config::default()).await.unwrap();
    let p = rt
        .spawn_actor(ActorOptions::new(), || Producer)
        .await
        .unwrap();
    let mut refs = Vec::new();
    for step in 0..10 {
        refs.push(p.make(rt.clone(), step).await.unwrap());
    }
    let (ready, not_ready) = rt
        .wait(refs.clone(), 10, Some(Duration::from_secs(5)))
        .await;
    assert_eq!((ready.len(), not_ready.len()), (10, 0));
    let batches = rt
        .get_many(&refs, Some(Duration::from_secs(5)))
        .await
        .unwrap();
    assert!(batches.iter().enumerate().all(|(i, b)| b.step == i as u64));
    rt.shutdown().await.unwrap();
}

#[tokio::test]
async fn pending_objects_time_out_then_complete() {
    let rt = troupe::init(Config::default()).await.unwrap();
    let (r, done) = rt.objects().pending::<String>();
    let err = rt
        .get_timeout(&r, Duration::from_millis(20))
        .await
        .unwrap_err();
    assert!(matches!(err, ObjectError::Timeout { .. }), "{err}");
    done.complete("finally".to_owned()).unwrap();
    assert_eq!(*rt.get(&r).await.unwrap(), "finally");
    rt.shutdown().await.unwrap();
}

#[tokio::test]
async fn the_object_store_actor_spills_over_budget_and_get_restores() {
    let rt = small_runtime("spill").await;
    let mut refs = Vec::new();
    for step in 0..40u64 {
        let observations: Vec<f32> = (0..2048).map(|i| (i as f32) * 0.5 + step as f32).collect();
        refs.push(rt.put(Batch { step, observations }).await.unwrap());
    }
    let threshold = 128 * 1024;
    eventually("the actor spilled down to the threshold", || {
        rt.objects().in_memory_bytes() <= threshold
    })
    .await;
    for (step, r) in refs.iter().enumerate() {
        let b = rt.get(r).await.unwrap();
        let expected: Vec<f32> = (0..2048).map(|i| (i as f32) * 0.5 + step as f32).collect();
        assert_eq!(b.observations, expected, "step {step} came back different");
    }
    drop(refs);
    rt.shutdown().await.unwrap();
}

#[tokio::test]
async fn an_object_store_actor_restart_loses_nothing() {
    let rt = small_runtime("restart").await;
    let mut events = rt.subscribe();
    let kept: Vec<_> = (0..10u64)
        .map(|step| {
            rt.try_put(Batch {
                step,
                observations: vec![1.0; 100],
            })
            .unwrap()
        })
        .collect();
    let system = rt.system_supervisor().unwrap();
    let store_actor = system
        .which_children()
        .await
        .unwrap()
        .into_iter()
        .find(|c| &*c.id == "object_store")
        .and_then(|c| c.actor)
        .expect("object store actor runs");
    store_actor.kill();
    next_event(&mut events, |e| {
        matches!(e, SupervisionEvent::ChildRestarted { child, .. } if &**child == "object_store")
    })
    .await;
    for (step, r) in kept.iter().enumerate() {
        assert_eq!(
            within("get after restart", rt.get(r)).await.unwrap().step,
            step as u64
        );
    }
    // The new incarnation still spills.
    let mut more = Vec::new();
    for step in 0..40u64 {
        // Over the budget, a put waits while the (new) actor spills.
        let batch = Batch {
            step,
            observations: vec![2.0; 2048],
        };
        more.push(
            within("put with backpressure", rt.put(batch))
                .await
                .unwrap(),
        );
    }
    eventually("the restarted actor spills", || {
        rt.objects().in_memory_bytes() <= 128 * 1024
    })
    .await;
    assert_eq!(
        rt.get(&more[0]).await.unwrap().observations,
        vec![2.0; 2048]
    );
    rt.shutdown().await.unwrap();
}

#[tokio::test]
async fn oversize_objects_are_refused_with_a_clear_error() {
    let rt = small_runtime("oversize").await;
    let err = rt.put(vec![0u8; 1 << 20]).await.unwrap_err();
    assert!(matches!(err, ObjectError::TooLarge { .. }), "{err}");
    assert!(rt.objects().is_empty());
    rt.shutdown().await.unwrap();
}

/// `put` has backpressure: with a 50 MB budget, 40 puts of 10 MB never
/// hold several times the budget in memory; a put waits for the spiller.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn puts_never_take_the_store_far_over_its_budget() {
    let budget = 640 << 10;
    let objects = StoreConfig {
        memory_budget: budget,
        spill_threshold: 0.8,
        spill_dir: spill_dir("backpressure"),
        ..StoreConfig::default()
    };
    let rt = troupe::init(Config::default().objects(objects))
        .await
        .unwrap();
    let mut refs = Vec::new();
    let mut peak = 0;
    for i in 0..40u8 {
        refs.push(within("put", rt.put(vec![i; 64 << 10])).await.unwrap());
        peak = peak.max(rt.objects().in_memory_bytes());
    }
    assert!(peak <= budget, "peak {peak} over the budget {budget}");
    for (i, r) in refs.iter().enumerate() {
        assert_eq!(rt.get(r).await.unwrap()[7], i as u8);
    }
    // Without room and with nothing to spill, try_put refuses at once.
    assert!(matches!(
        rt.try_put(vec![0u8; budget as usize - 100]),
        Err(ObjectError::StoreFull { .. }) | Err(ObjectError::TooLarge { .. })
    ));
    drop(refs);
    rt.shutdown().await.unwrap();
}

/// A put larger than what the budget has left, while memory is still under
/// the spill threshold, makes the spiller run until the waiting put fits
/// (it does not wait for the threshold to be crossed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_put_that_does_not_fit_under_the_threshold_makes_room() {
    let budget: u64 = 1 << 20;
    let objects = StoreConfig {
        memory_budget: budget,
        spill_threshold: 0.8,
        spill_dir: spill_dir("under-threshold"),
        ..StoreConfig::default()
    };
    let rt = troupe::init(Config::default().objects(objects))
        .await
        .unwrap();
    // 70% of the budget: under the threshold, so nothing spills on its own.
    let held = rt.put(vec![1u8; (budget * 7 / 10) as usize]).await.unwrap();
    assert!(!rt.objects().over_threshold());
    // 40% more does not fit until something is spilled.
    let big = within(
        "a put needing a spill",
        rt.put(vec![2u8; (budget * 4 / 10) as usize]),
    )
    .await
    .unwrap();
    assert!(rt.objects().in_memory_bytes() <= budget);
    assert_eq!(rt.get(&held).await.unwrap()[0], 1);
    assert_eq!(rt.get(&big).await.unwrap()[0], 2);
    drop((held, big));
    rt.shutdown().await.unwrap();
}

/// Byte objects live in buffers the store reuses; read back, spilled and
/// restored, they are the same bytes.
#[tokio::test]
async fn byte_objects_put_read_and_spill() {
    let rt = small_runtime("blobs").await;
    let data: Vec<u8> = (0..100_000u32).map(|i| (i % 253) as u8).collect();
    let r = rt.put_bytes(&data).await.unwrap();
    assert_eq!(&rt.get(&r).await.unwrap()[..], &data[..]);
    let mut others = Vec::new();
    for i in 0..3u8 {
        others.push(within("put", rt.put(vec![i; 60_000])).await.unwrap());
    }
    eventually("spilled", || rt.objects().in_memory_bytes() <= 128 * 1024).await;
    assert_eq!(&rt.get(&r).await.unwrap()[..], &data[..]);
    drop(others);
    rt.shutdown().await.unwrap();
}
