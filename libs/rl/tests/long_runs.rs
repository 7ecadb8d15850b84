//! What long runs need: a learning rate that lasts the run's budget,
//! workers whose restarts are limited per time window rather than over the
//! trainer's life, and hung workers replaced instead of stalling training.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use troupe::prelude::*;
use troupe_rl::{EnvMaker, Stop, Trainer};
use troupe_test_kit::within_for;

mod common;
use common::{fragile, hanging, small, Gate, TRAINING};

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_whose_env_hangs_is_replaced_and_training_goes_on() {
    let rt = troupe::init(Config::default()).await.unwrap();
    let mut events = rt.subscribe();
    let (trigger, gate) = (Arc::new(AtomicBool::new(false)), Gate::default());
    let config = small().sample_timeout(Duration::from_millis(500));
    let mut trainer = Trainer::new(&rt, hanging(trigger.clone(), gate.clone()), config.clone())
        .await
        .unwrap();
    within_for(TRAINING, "a healthy iteration", trainer.train())
        .await
        .unwrap();
    trigger.store(true, Ordering::Release);
    let m = within_for(TRAINING, "the iteration with a hung env", trainer.train())
        .await
        .unwrap();
    assert!(!trigger.load(Ordering::Acquire), "an env hung");
    assert_eq!(
        m.worker_restarts, 1,
        "the hung worker's fragment was sampled again"
    );
    assert_eq!(
        m.env_steps,
        2 * config.batch_size() as u64,
        "no fragment lost"
    );
    let mut restarted = false;
    while let Ok(event) = events.try_recv() {
        restarted |= matches!(event, SupervisionEvent::ChildRestarted { .. });
    }
    assert!(restarted, "the hung worker was replaced");
    within_for(TRAINING, "the next iteration", trainer.train())
        .await
        .unwrap();
    // The hung thread ends once its env does.
    gate.open();
    trainer.shutdown().await;
    rt.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_fails_more_often_than_its_budget_but_spread_over_time_keeps_training() {
    let rt = troupe::init(Config::default()).await.unwrap();
    let trigger = Arc::new(AtomicBool::new(false));
    // One failure per 300 ms window is allowed.
    let window = Duration::from_millis(300);
    let config = small().max_worker_restarts(1).worker_restart_window(window);
    let mut trainer = Trainer::new(&rt, fragile(trigger.clone(), None), config)
        .await
        .unwrap();
    for crash in 1..=4u64 {
        trigger.store(true, Ordering::Release);
        let m = within_for(TRAINING, "an iteration with a crash", trainer.train())
            .await
            .unwrap();
        assert!(!trigger.load(Ordering::Acquire), "crash {crash} happened");
        assert_eq!(m.worker_restarts, crash);
        // Train on until the window has passed since this crash.
        let crashed = Instant::now();
        within_for(TRAINING, "training past the window", async {
            while crashed.elapsed() <= window {
                trainer.train().await.unwrap();
            }
        })
        .await;
    }
    trainer.shutdown().await;
    rt.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn evaluation_cuts_episodes_at_the_step_cap() {
    let rt = troupe::init(Config::default()).await.unwrap();
    // No CartPole episode ends within 5 steps (the pole cannot fall that fast).
    let trainer = Trainer::new(
        &rt,
        EnvMaker::cart_pole(),
        small().eval_max_episode_steps(5),
    )
    .await
    .unwrap();
    let eval = within_for(TRAINING, "evaluation", trainer.evaluate(3, 0))
        .await
        .unwrap();
    assert_eq!(eval.capped, 3);
    assert_eq!(eval.lengths, vec![5, 5, 5]);
    assert_eq!(eval.returns, vec![5.0, 5.0, 5.0]);
    trainer.shutdown().await;
    rt.shutdown().await.unwrap();
}
