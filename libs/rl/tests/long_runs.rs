//! What long runs need: a learning rate that lasts the run's budget,
//! workers whose restarts are limited per time window rather than over the
//! trainer's life, and hung workers replaced instead of stalling training.

use troupe::prelude::*;
use troupe_rl::{EnvMaker, Stop, Trainer};
use troupe_test_kit::within_for;

mod common;
use common::{small, TRAINING};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_learning_rate_anneals_over_the_stop_budget_and_never_reaches_zero_inside_it() {
    let rt = troupe::init(Config::default()).await.unwrap();
    let batch = small().batch_size() as u64;
    // total_env_steps would end the annealing after the first update.
    let config = small().total_env_steps(batch);
    let lr0 = config.learning_rate;
    let mut trainer = Trainer::new(&rt, EnvMaker::cart_pole(), config)
        .await
        .unwrap();
    within_for(
        TRAINING,
        "four iterations",
        trainer.train_until(&Stop::default().or_env_steps(4 * batch), &mut ()),
    )
    .await
    .unwrap();
    let lrs: Vec<f64> = trainer.history().iter().map(|m| m.learning_rate).collect();
    assert_eq!(lrs.len(), 4);
    for (i, lr) in lrs.iter().enumerate() {
        let want = lr0 * (1.0 - i as f64 / 4.0);
        assert!(
            (lr - want).abs() < 1e-12,
            "iteration {i}: lr {lr}, want {want} ({lrs:?})"
        );
    }
    // Resumed for two more iterations: the rate anneals over the new budget.
    within_for(
        TRAINING,
        "two more",
        trainer.train_until(&Stop::default().or_iterations(6), &mut ()),
    )
    .await
    .unwrap();
    let more: Vec<f64> = trainer.history()[4..]
        .iter()
        .map(|m| m.learning_rate)
        .collect();
    assert!(more[0] > more[1] && more[1] > 0.0, "{more:?}");
    // A bare train() anneals over total_env_steps, long spent: rate 0.
    let m = within_for(TRAINING, "one more", trainer.train())
        .await
        .unwrap();
    assert_eq!(m.learning_rate, 0.0);
    trainer.shutdown().await;
    rt.shutdown().await.unwrap();
}
