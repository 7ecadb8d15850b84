//! Training: N workers follow one worker's loss curve on N times the
//! batch; a failing worker restarts the group from the last checkpoint;
//! a new fit resumes from a checkpoint directory; best-K retention.

mod common;

use std::sync::Arc;

use common::{losses, mlp_loop, Break, Mlp};
use troupe_train::data::SyntheticClassification;
use troupe_train::{latest_checkpoint, Mode, TrainError, Trainer, TrainerConfig};

fn data() -> Arc<SyntheticClassification> {
    Arc::new(SyntheticClassification::new(512, 8, 3, 5))
}

/// Float sums in another order differ in the last bits; over 40 SGD steps
/// that stays far below this.
const TOLERANCE: f64 = 1e-4;

fn assert_close(a: &[f64], b: &[f64], what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: as many steps");
    let worst = a
        .iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max);
    eprintln!(
        "{what}: largest difference {worst:e} over {} steps",
        a.len()
    );
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!(
            (x - y).abs() <= TOLERANCE * (1.0 + y.abs()),
            "{what}: step {i}: {x} vs {y}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_follow_one_worker_with_twice_the_batch() {
    let rt = common::runtime(2.0).await;
    let steps = 40; // 2.5 epochs of 512 points in batches of 32: reshuffles too
    let one = Trainer::new(&rt, TrainerConfig::new(1).seed(3))
        .fit(mlp_loop(
            data(),
            Mlp {
                steps,
                batch: 32,
                checkpoint_every: 0,
                fault: None,
                pace_ms: 0,
            },
        ))
        .await
        .unwrap();
    let two = Trainer::new(&rt, TrainerConfig::new(2).seed(3))
        .fit(mlp_loop(
            data(),
            Mlp {
                steps,
                batch: 16,
                checkpoint_every: 0,
                fault: None,
                pace_ms: 0,
            },
        ))
        .await
        .unwrap();
    let (l1, l2) = (losses(&one), losses(&two));
    assert_close(&l2, &l1, "2 workers x 16 vs 1 x 32");
    assert!(
        l1[steps as usize - 1] < 0.7 * l1[0],
        "it learns: {} -> {}",
        l1[0],
        l1[steps as usize - 1]
    );
    rt.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_worker_restarts_the_group_from_the_last_checkpoint() {
    let rt = common::runtime(2.0).await;
    let dir = tempfile::tempdir().unwrap();
    let p = Mlp {
        steps: 20,
        batch: 16,
        checkpoint_every: 5,
        fault: None,
        pace_ms: 0,
    };
    let clean = Trainer::new(
        &rt,
        TrainerConfig::new(2).storage_path(dir.path().join("clean")),
    )
    .fit(mlp_loop(data(), p))
    .await
    .unwrap();
    assert_eq!(clean.restarts, 0);
    for (i, fault) in [
        Break::Panic { rank: 1, step: 12 },
        Break::Error { rank: 0, step: 7 },
    ]
    .into_iter()
    .enumerate()
    {
        let config = TrainerConfig::new(2)
            .max_failures(1)
            .storage_path(dir.path().join(format!("broken{i}")));
        let result = Trainer::new(&rt, config)
            .fit(mlp_loop(
                data(),
                Mlp {
                    fault: Some(fault),
                    pace_ms: 0,
                    ..p
                },
            ))
            .await
            .unwrap_or_else(|e| panic!("{fault:?}: recovers: {e}"));
        assert_eq!(result.restarts, 1, "{fault:?}");
        assert_eq!(result.failures.len(), 1);
        assert!(
            result.failures[0].contains("injected"),
            "{:?}",
            result.failures
        );
        let iterations: Vec<u64> = result.history.iter().map(|r| r.iteration).collect();
        assert_eq!(
            iterations,
            (1..=20).collect::<Vec<_>>(),
            "{fault:?}: every step once"
        );
        // From the checkpoint, the same model and data: the same curve.
        assert_close(
            &losses(&result),
            &losses(&clean),
            &format!("{fault:?} vs clean"),
        );
        assert_eq!(
            result.checkpoints.len(),
            4,
            "{fault:?}: steps 5, 10, 15, 20"
        );
    }

    // Past the budget, fit fails and says why.
    let err = Trainer::new(
        &rt,
        TrainerConfig::new(2).storage_path(dir.path().join("spent")),
    )
    .fit(mlp_loop(
        data(),
        Mlp {
            fault: Some(Break::Panic { rank: 1, step: 3 }),
            pace_ms: 0,
            ..p
        },
    ))
    .await
    .expect_err("no failures allowed");
    match err {
        TrainError::Failed {
            failures: 1,
            max_failures: 0,
            rank: 1,
            message,
        } => {
            assert!(message.contains("injected failure at step 3"), "{message}")
        }
        other => panic!("expected Failed, got {other}"),
    }
    rt.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_fit_resumes_from_a_checkpoint_and_keeps_the_best() {
    let rt = common::runtime(2.0).await;
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let p = Mlp {
        steps: 24,
        batch: 16,
        checkpoint_every: 4,
        fault: None,
        pace_ms: 0,
    };
    let whole = Trainer::new(
        &rt,
        TrainerConfig::new(2).storage_path(dir.path().join("whole")),
    )
    .fit(mlp_loop(data(), p))
    .await
    .unwrap();

    let first = Trainer::new(&rt, TrainerConfig::new(2).storage_path(&run))
        .fit(mlp_loop(data(), Mlp { steps: 12, ..p }))
        .await
        .unwrap();
    assert_eq!(first.history.len(), 12);
    let latest = latest_checkpoint(&run)
        .unwrap()
        .expect("a checkpoint was written");
    assert!(
        latest.ends_with("checkpoint_000012"),
        "{}",
        latest.display()
    );

    let config = TrainerConfig::new(2)
        .storage_path(&run)
        .resume_from(&latest)
        .keep_best(2, "loss", Mode::Min);
    let second = Trainer::new(&rt, config)
        .fit(mlp_loop(data(), p))
        .await
        .unwrap();
    let iterations: Vec<u64> = second.history.iter().map(|r| r.iteration).collect();
    assert_eq!(
        iterations,
        (1..=24).collect::<Vec<_>>(),
        "the history goes on from 12"
    );
    assert_eq!(
        losses(&second),
        losses(&whole),
        "resumed vs whole, bit for bit"
    );

    // Best 2 by loss, plus the latest: at most 3 of the 3 written here.
    assert!(second.checkpoints.len() <= 3, "{:?}", second.checkpoints);
    let best = second.best_checkpoint.clone().expect("a best checkpoint");
    let best_loss = best.metrics["loss"];
    for c in &second.checkpoints {
        assert!(c.path.is_dir(), "kept on disk: {}", c.path.display());
        assert!(c.metrics["loss"] >= best_loss);
    }
    let written: Vec<_> = [16u64, 20, 24]
        .iter()
        .map(|i| run.join(format!("checkpoint_{i:06}")))
        .collect();
    let on_disk = written.iter().filter(|p| p.is_dir()).count();
    assert_eq!(
        on_disk,
        second.checkpoints.len(),
        "dropped checkpoints are removed"
    );

    // A directory that is not a checkpoint: a clear error.
    let err = Trainer::new(&rt, TrainerConfig::new(1).resume_from(dir.path()))
        .fit(mlp_loop(data(), p))
        .await
        .expect_err("not a checkpoint");
    assert!(matches!(err, TrainError::BadCheckpoint { .. }), "{err}");
    rt.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_read_their_shards_of_object_refs() {
    let rt = common::runtime(2.0).await;
    let mut refs = Vec::new();
    for i in 0..10u64 {
        refs.push(rt.put(vec![i; 3]).await.unwrap());
    }
    let refs = Arc::new(refs);
    let seen: Arc<std::sync::Mutex<Vec<(usize, u64, u64)>>> = Arc::default();
    let out = seen.clone();
    Trainer::new(&rt, TrainerConfig::new(2).seed(11))
        .fit(move |ctx| {
            for epoch in 0..2 {
                for r in ctx.shard(&refs, epoch) {
                    let values = ctx.runtime().get_blocking(&r)?;
                    out.lock().unwrap().push((ctx.rank(), epoch, values[0]));
                }
            }
            Ok(())
        })
        .await
        .unwrap();
    let seen = seen.lock().unwrap().clone();
    for epoch in 0..2 {
        let mut all: Vec<u64> = seen.iter().filter(|s| s.1 == epoch).map(|s| s.2).collect();
        assert_eq!(all.len(), 10);
        all.sort_unstable();
        assert_eq!(
            all,
            (0..10).collect::<Vec<_>>(),
            "epoch {epoch}: each ref once"
        );
        for rank in 0..2 {
            assert_eq!(
                seen.iter().filter(|s| s.0 == rank && s.1 == epoch).count(),
                5
            );
        }
    }
    let order = |rank, epoch| -> Vec<u64> {
        seen.iter()
            .filter(|s| s.0 == rank && s.1 == epoch)
            .map(|s| s.2)
            .collect()
    };
    assert_ne!(order(0, 0), order(0, 1), "reshuffled each epoch");
    rt.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_that_cannot_be_placed_fails_with_what_it_needs() {
    let rt = common::runtime(2.0).await;
    let config = TrainerConfig::new(3).restart_timeout(std::time::Duration::from_millis(500));
    let err = Trainer::new(&rt, config)
        .fit(|_| Ok(()))
        .await
        .expect_err("3 workers of 1 CPU do not fit 2 CPUs");
    assert!(matches!(err, TrainError::Start(_)), "{err}");
    assert!(err.to_string().contains("placing 3 workers"), "{err}");
    assert_eq!(
        rt.available_resources().num_cpus,
        2.0,
        "nothing is held after"
    );
    rt.shutdown().await.unwrap();
}
