//! The crate's counters, read through a recorder installed for this test
//! binary alone (its own process): exact counts for a run with one restart.

mod common;

use std::sync::Arc;

use common::{mlp_loop, Break, Mlp};
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use troupe_train::data::SyntheticClassification;
use troupe_train::{Trainer, TrainerConfig};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn steps_bytes_restarts_and_checkpoints_are_counted() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder
        .install()
        .expect("the only recorder of this process");
    let rt = common::runtime(2.0).await;
    let dir = tempfile::tempdir().unwrap();
    let data = Arc::new(SyntheticClassification::new(256, 8, 3, 5));
    // 6 steps, a checkpoint after steps 3 and 6; rank 1 panics before the
    // 5th step of the first attempt: reports 1-4, then 4-6 again from the
    // checkpoint of report 3.
    let p = Mlp {
        steps: 6,
        batch: 16,
        checkpoint_every: 3,
        fault: Some(Break::Panic { rank: 1, step: 4 }),
        pace_ms: 0,
    };
    let config = TrainerConfig::new(2)
        .max_failures(1)
        .storage_path(dir.path());
    let result = Trainer::new(&rt, config)
        .fit(mlp_loop(data, p))
        .await
        .unwrap();
    assert_eq!(result.history.len(), 6);

    let snapshot = snapshotter.snapshot().into_vec();
    let counter = |name: &str| {
        snapshot
            .iter()
            .find(|(key, ..)| key.key().name() == name)
            .map(|(.., value)| match value {
                DebugValue::Counter(n) => *n,
                other => panic!("{name} is {other:?}"),
            })
            .unwrap_or(0)
    };
    assert_eq!(counter("troupe_train_steps_total"), 4 + 3);
    assert_eq!(counter("troupe_train_restarts_total"), 1);
    assert_eq!(counter("troupe_train_checkpoints_total"), 2);
    // Each completed step, on each of 2 ranks: the gradients of the MLP
    // (8*32+32 + 32*3+3 = 387 f32 in one bucket) and the loss (1 f32).
    assert_eq!(
        counter("troupe_train_allreduce_bytes_total"),
        7 * 2 * (387 + 1) * 4
    );
    let timed = snapshot.iter().find_map(|(key, .., value)| {
        let k = key.key();
        let path = k
            .labels()
            .find(|l| l.key() == "path")
            .map(|l| l.value().to_owned());
        match value {
            DebugValue::Histogram(v) if k.name() == "troupe_train_allreduce_seconds" => {
                Some((path, v.len()))
            }
            _ => None,
        }
    });
    // At least the 7 completed steps' two all-reduces on each rank.
    assert!(
        timed
            .as_ref()
            .is_some_and(|(path, n)| path.as_deref() == Some("shared_memory") && *n >= 7 * 2 * 2),
        "{timed:?}"
    );
    rt.shutdown().await.unwrap();
}
