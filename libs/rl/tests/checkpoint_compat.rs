//! Checkpoints across formats and configs: a format-1 file (written by the
//! format-1 code, `fixtures/checkpoint_v1.ckpt`) restores a trainer whose
//! policy gives the values recorded beside it, and a checkpoint resumes
//! with another worker count and budget.

use std::path::Path;

use troupe::prelude::*;
use troupe_rl::{CheckpointError, EnvMaker, RlError, Stop, Trainer};
use troupe_test_kit::within_for;

mod common;
use common::{small, TRAINING};

fn fixture(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_format_1_checkpoint_restores_a_trainer_that_acts_as_recorded_and_trains_on() {
    let recorded: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixture("checkpoint_v1.json")).unwrap()).unwrap();
    let floats = |key: &str| -> Vec<f32> {
        recorded[key]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect()
    };
    let rt = troupe::init(Config::default()).await.unwrap();
    let mut trainer =
        Trainer::from_checkpoint(&rt, EnvMaker::cart_pole(), fixture("checkpoint_v1.ckpt"))
            .await
            .unwrap();
    assert_eq!(trainer.config().hidden, vec![8]);
    assert_eq!(
        trainer.counters().iteration,
        recorded["iteration"].as_u64().unwrap()
    );
    assert_eq!(
        trainer.counters().env_steps,
        recorded["env_steps"].as_u64().unwrap()
    );
    let mut policy = trainer.policy().await.unwrap();
    let mut values = Vec::new();
    policy.values(&floats("observations"), 8, &mut values);
    assert_eq!(values, floats("values"), "the restored critic");
    let m = within_for(TRAINING, "training on", trainer.train())
        .await
        .unwrap();
    assert_eq!(m.iteration, 3);
    // Saved again, it is the current format, and reads back.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("again.ckpt");
    trainer.save(&path).await.unwrap();
    let again = Trainer::from_checkpoint(&rt, EnvMaker::cart_pole(), &path)
        .await
        .unwrap();
    assert_eq!(again.counters(), trainer.counters());
    trainer.shutdown().await;
    again.shutdown().await;
    rt.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkpoint_resumes_with_another_worker_count_and_budget_but_not_another_shape() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("run.ckpt");
    let rt = troupe::init(Config::default()).await.unwrap();
    let mut trainer = Trainer::new(&rt, EnvMaker::cart_pole(), small().seed(4))
        .await
        .unwrap();
    within_for(TRAINING, "training", trainer.train())
        .await
        .unwrap();
    trainer.save(&path).await.unwrap();
    let saved = trainer.policy().await.unwrap();

    // Three workers and a longer budget.
    let bigger = small().seed(4).num_workers(3).total_env_steps(1_000_000);
    let mut resumed =
        Trainer::from_checkpoint_with(&rt, EnvMaker::cart_pole(), &path, bigger.clone())
            .await
            .unwrap();
    assert_eq!(resumed.config(), &bigger);
    assert_eq!(resumed.workers().len(), 3);
    assert_eq!(resumed.counters(), trainer.counters());
    let obs: Vec<f32> = (0..16 * 4).map(|i| (i as f32 * 0.61).cos() * 0.1).collect();
    let (mut a, mut b) = (Vec::new(), Vec::new());
    saved.clone().values(&obs, 16, &mut a);
    resumed.policy().await.unwrap().values(&obs, 16, &mut b);
    assert_eq!(a, b, "the same critic");
    let summary = within_for(
        TRAINING,
        "resumed training",
        resumed.train_until(&Stop::default().or_iterations(3), &mut ()),
    )
    .await
    .unwrap();
    assert_eq!(summary.last.iteration, 3);
    assert_eq!(
        summary.last.env_steps,
        small().batch_size() as u64 + 2 * bigger.batch_size() as u64
    );

    // Loading into a trainer of another worker count works too.
    let mut one = Trainer::new(&rt, EnvMaker::cart_pole(), small().num_workers(1))
        .await
        .unwrap();
    one.load(&path).await.unwrap();
    assert_eq!(one.counters().iteration, 1);

    // Another network shape is refused, naming the field.
    let err = Trainer::from_checkpoint_with(
        &rt,
        EnvMaker::cart_pole(),
        &path,
        small().hidden(vec![16, 16]),
    )
    .await
    .err()
    .expect("refused");
    assert!(
        matches!(&err, RlError::Checkpoint(CheckpointError::ConfigMismatch { field, .. }) if field == "hidden"),
        "{err}"
    );
    trainer.shutdown().await;
    resumed.shutdown().await;
    one.shutdown().await;
    rt.shutdown().await.unwrap();
}
