//! Training end to end on a Troupe runtime: PPO improves CartPole, a worker
//! that panics mid-fragment is healed and the iteration completes, a dead
//! worker fails training instead of hanging, checkpoints round-trip (same
//! actions, training continues) and bad checkpoints and environments are
//! clear errors.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rand::SeedableRng;
use rand_xoshiro::Xoshiro256PlusPlus;
use troupe::prelude::*;
use troupe_rl::{
    ActMode, CartPole, CheckpointError, EnvError, EnvMaker, PolicyOutput, PpoConfig, RlError, Stop,
    Trainer,
};

use troupe_test_kit::within_for;

mod common;
use common::{fragile, hooked, small, TRAINING};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_seeded_ppo_run_improves_cartpole() {
    let rt = troupe::init(Config::default()).await.unwrap();
    let mut trainer = Trainer::new(&rt, EnvMaker::cart_pole(), PpoConfig::default().seed(1))
        .await
        .unwrap();
    let first = within_for(TRAINING, "the first iteration", trainer.train())
        .await
        .unwrap();
    let summary = within_for(
        TRAINING,
        "training",
        trainer.train_until(&Stop::at_return(100.0).or_env_steps(40_000), &mut ()),
    )
    .await
    .unwrap();
    let start = trainer.history()[..4]
        .iter()
        .map(|m| m.episode_return_mean)
        .find(|r| r.is_finite())
        .unwrap_or(first.episode_return_mean);
    let end = summary.last.episode_return_mean;
    eprintln!(
        "mean return {start:.1} -> {end:.1} in {} steps",
        summary.last.env_steps
    );
    // A random policy averages about 22; the bound is generous on purpose.
    assert!(
        end > 2.0 * start && end > 60.0,
        "mean return went from {start:.1} to {end:.1}"
    );
    assert!(summary.last.entropy.is_finite() && summary.last.approx_kl.is_finite());
    // Evaluation episodes with the deterministic policy.
    let eval = trainer.evaluate(3, 99).await.unwrap();
    assert_eq!(eval.returns.len(), 3);
    assert!(eval.mean_return() > 0.0);
    trainer.shutdown().await;
    rt.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_panics_mid_fragment_is_restarted_and_the_iteration_completes() {
    let rt = troupe::init(Config::default()).await.unwrap();
    let mut events = rt.subscribe();
    let trigger = Arc::new(AtomicBool::new(false));
    let mut trainer = Trainer::new(&rt, fragile(trigger.clone(), None), small())
        .await
        .unwrap();
    within_for(TRAINING, "a healthy iteration", trainer.train())
        .await
        .unwrap();
    trigger.store(true, Ordering::Release);
    let m = within_for(TRAINING, "the iteration with a crash", trainer.train())
        .await
        .unwrap();
    assert!(!trigger.load(Ordering::Acquire), "the crash happened");
    assert_eq!(m.worker_restarts, 1, "one fragment sampled again");
    assert_eq!(
        m.env_steps,
        2 * small().batch_size() as u64,
        "no fragment lost"
    );
    // The supervisor reported the restart.
    let mut restarted = false;
    while let Ok(event) = events.try_recv() {
        restarted |= matches!(event, SupervisionEvent::ChildRestarted { .. });
    }
    assert!(restarted, "a ChildRestarted event");
    // And training goes on.
    within_for(TRAINING, "the next iteration", trainer.train())
        .await
        .unwrap();
    trainer.shutdown().await;
    rt.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_rollout_is_healed_and_the_iteration_completes() {
    let rt = troupe::init(Config::default()).await.unwrap();
    let mut events = rt.subscribe();
    let steps = Arc::new(AtomicU32::new(0));
    let counted = steps.clone();
    // A slow simulator: a millisecond a step; all copies count their steps.
    let maker = hooked("SlowCartPole", move |_| {
        let counted = counted.clone();
        move |_, _: &mut [f32]| {
            counted.fetch_add(1, Ordering::Relaxed);
            std::thread::sleep(Duration::from_millis(1));
        }
    });
    // Fragments of 400 ms: the kill lands well inside one.
    let config = small().envs_per_worker(1).fragment_len(400);
    let mut trainer = Trainer::new(&rt, maker, config.clone()).await.unwrap();
    let victim = trainer.workers()[0].clone();
    let iteration = tokio::spawn(async move {
        let result = trainer.train().await;
        (trainer, result)
    });
    // Kill a worker once the fragments are under way.
    within_for(TRAINING, "rollouts to start", async {
        while steps.load(Ordering::Relaxed) < 20 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await;
    victim.kill(false).await;
    let (mut trainer, result) = within_for(TRAINING, "the iteration", iteration)
        .await
        .unwrap();
    let m = result.unwrap();
    assert_eq!(
        m.env_steps,
        config.batch_size() as u64,
        "every fragment arrived"
    );
    assert_eq!(
        m.worker_restarts, 1,
        "the interrupted fragment was sampled again"
    );
    let mut restarted = false;
    while let Ok(event) = events.try_recv() {
        restarted |= matches!(event, SupervisionEvent::ChildRestarted { .. });
    }
    assert!(restarted, "the killed worker was restarted");
    assert!(!victim.is_dead());
    // The restarted worker samples the next iteration.
    within_for(TRAINING, "the next iteration", trainer.train())
        .await
        .unwrap();
    trainer.shutdown().await;
    rt.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_keeps_panicking_fails_training_instead_of_hanging() {
    let rt = troupe::init(Config::default()).await.unwrap();
    let maker = fragile(Arc::new(AtomicBool::new(false)), Some(2));
    let mut trainer = Trainer::new(&rt, maker, small().max_worker_restarts(2))
        .await
        .unwrap();
    let err = within_for(TRAINING, "a doomed iteration", trainer.train())
        .await
        .unwrap_err();
    assert!(
        matches!(err, RlError::WorkerFailed { worker: 1, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("the simulator crashed"), "{err}");
    trainer.shutdown().await;
    rt.shutdown().await.unwrap();
}

fn policies_agree(a: &mut troupe_rl::CpuPolicy, b: &mut troupe_rl::CpuPolicy) {
    let rows = 256;
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(7);
    let obs: Vec<f32> = (0..rows * 4)
        .map(|i| ((i * 7919 % 1000) as f32 / 1000.0 - 0.5) * 0.4)
        .collect();
    for mode in [ActMode::Deterministic, ActMode::Sample] {
        let (mut out_a, mut out_b) = (PolicyOutput::default(), PolicyOutput::default());
        a.act(&obs, rows, mode, &mut rng.clone(), &mut out_a);
        b.act(&obs, rows, mode, &mut rng, &mut out_b);
        assert_eq!(out_a, out_b, "{mode:?} actions, log-probs and values");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkpoint_round_trip_acts_identically_and_training_continues() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cartpole.ckpt");
    let rt = troupe::init(Config::default()).await.unwrap();
    let config = small().seed(3);
    let mut trainer = Trainer::new(&rt, EnvMaker::cart_pole(), config.clone())
        .await
        .unwrap();
    for _ in 0..3 {
        within_for(TRAINING, "training", trainer.train())
            .await
            .unwrap();
    }
    trainer.save(&path).await.unwrap();

    let mut restored = Trainer::from_checkpoint(&rt, EnvMaker::cart_pole(), &path)
        .await
        .unwrap();
    assert_eq!(restored.config(), &config);
    assert_eq!(restored.counters(), trainer.counters());
    policies_agree(
        &mut trainer.policy().await.unwrap(),
        &mut restored.policy().await.unwrap(),
    );

    // Both continue from the same model and optimizer state.
    let a = within_for(TRAINING, "training on", trainer.train())
        .await
        .unwrap();
    let b = within_for(TRAINING, "training on", restored.train())
        .await
        .unwrap();
    assert_eq!(b.iteration, 4);
    assert_eq!(b.env_steps, a.env_steps);
    assert!(b.learning_rate == a.learning_rate && b.policy_loss.is_finite());

    // Loading into a trainer of the same config works too.
    let mut same = Trainer::new(&rt, EnvMaker::cart_pole(), config.clone())
        .await
        .unwrap();
    same.load(&path).await.unwrap();
    assert_eq!(same.counters().iteration, 3);

    trainer.shutdown().await;
    restored.shutdown().await;
    same.shutdown().await;
    rt.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoints_of_another_config_or_cut_short_are_clear_errors_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("small.ckpt");
    let rt = troupe::init(Config::default()).await.unwrap();
    let mut trainer = Trainer::new(&rt, EnvMaker::cart_pole(), small())
        .await
        .unwrap();
    within_for(TRAINING, "training", trainer.train())
        .await
        .unwrap();
    trainer.save(&path).await.unwrap();

    let mut other = Trainer::new(&rt, EnvMaker::cart_pole(), small().hidden(vec![32]))
        .await
        .unwrap();
    let before = other.policy().await.unwrap();
    let err = other.load(&path).await.unwrap_err();
    assert!(
        matches!(&err, RlError::Checkpoint(CheckpointError::ConfigMismatch { field, .. }) if field == "hidden"),
        "{err}"
    );
    assert!(err.to_string().contains("hidden = [64, 64]"), "{err}");
    policies_agree(&mut before.clone(), &mut other.policy().await.unwrap());

    let bytes = std::fs::read(&path).unwrap();
    let cut = dir.path().join("cut.ckpt");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let err = trainer.load(&cut).await.unwrap_err();
    assert!(
        matches!(&err, RlError::Checkpoint(CheckpointError::Truncated { .. })),
        "{err}"
    );
    assert!(err.to_string().contains("truncated"), "{err}");
    let err = Trainer::from_checkpoint(&rt, EnvMaker::cart_pole(), &cut)
        .await
        .err()
        .expect("refused");
    assert!(
        matches!(&err, RlError::Checkpoint(CheckpointError::Truncated { .. })),
        "{err}"
    );
    let err = Trainer::from_checkpoint(&rt, EnvMaker::pendulum(), &path)
        .await
        .err()
        .expect("refused");
    assert!(
        matches!(&err, RlError::Checkpoint(CheckpointError::ConfigMismatch { field, .. }) if field == "env"),
        "{err}"
    );
    // The trainer that refused the files trains on.
    within_for(TRAINING, "training after refusals", trainer.train())
        .await
        .unwrap();
    trainer.shutdown().await;
    other.shutdown().await;
    rt.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nan_observation_from_a_user_env_stops_training_with_an_error_naming_it() {
    let rt = troupe::init(Config::default()).await.unwrap();
    // Environment 3's observation turns NaN at its 7th step.
    let maker = hooked("Broken", |index| {
        move |steps, obs: &mut [f32]| {
            if index == 3 && steps == 7 {
                obs[1] = f32::NAN;
            }
        }
    });
    let mut trainer = Trainer::new(&rt, maker, small()).await.unwrap();
    let err = within_for(TRAINING, "an iteration", trainer.train())
        .await
        .unwrap_err();
    let message = err.to_string();
    assert!(matches!(err, RlError::Env { worker: 1, .. }), "{message}");
    assert!(
        message.contains("environment 3") && message.contains("NaN"),
        "{message}"
    );
    // An error, not a panic: no worker was restarted, and they all answer.
    assert_eq!(trainer.counters().worker_restarts, 0);
    for worker in trainer.workers() {
        assert!(worker.is_alive());
    }
    trainer.shutdown().await;
    rt.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pendulum_trains_with_a_gaussian_policy() {
    let rt = troupe::init(Config::default()).await.unwrap();
    let mut trainer = Trainer::new(&rt, EnvMaker::pendulum(), small().fragment_len(100))
        .await
        .unwrap();
    let m = within_for(TRAINING, "pendulum iterations", async {
        trainer.train().await?;
        trainer.train().await
    })
    .await
    .unwrap();
    // Two 100-step fragments per env: every episode of 200 steps ended.
    assert_eq!(m.episodes, 4);
    assert!(
        m.episode_return_mean < 0.0 && m.episode_length_mean == 200.0,
        "{m:?}"
    );
    assert!(m.entropy.is_finite());
    trainer.shutdown().await;
    rt.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_configs_and_unusable_envs_are_refused_at_build_time() {
    let rt = troupe::init(Config::default()).await.unwrap();
    let err = Trainer::new(
        &rt,
        EnvMaker::cart_pole(),
        PpoConfig::default().num_workers(0),
    )
    .await
    .err()
    .unwrap();
    assert!(
        matches!(
            err,
            RlError::Config {
                field: "num_workers",
                ..
            }
        ),
        "{err}"
    );
    let err = Trainer::new(
        &rt,
        EnvMaker::cart_pole(),
        PpoConfig::default().num_cpus_per_worker(64.0),
    )
    .await
    .err()
    .unwrap();
    assert!(
        matches!(
            err,
            RlError::Config {
                field: "num_cpus_per_worker",
                ..
            }
        ),
        "{err}"
    );
    let failing = EnvMaker::new("Nope", |_| {
        Err::<CartPole, _>(EnvError::custom("no simulator licence"))
    });
    let err = Trainer::new(&rt, failing, small()).await.err().unwrap();
    assert!(err.to_string().contains("no simulator licence"), "{err}");
    rt.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_on_the_cluster_need_a_registered_env_and_a_cluster() {
    let rt = troupe::init(Config::default()).await.unwrap();
    // A closure cannot reach another process: a typed error that says to
    // register the environment, not a panic.
    let closure = EnvMaker::new("MyCartPole", |_| Ok(CartPole::new()));
    let config = small().workers_on_cluster(true);
    let err = Trainer::new(&rt, closure, config.clone())
        .await
        .err()
        .expect("refused");
    match &err {
        RlError::EnvNotRegistered { env } => assert_eq!(env, "MyCartPole"),
        other => panic!("expected EnvNotRegistered, got {other}"),
    }
    assert!(err.to_string().contains("register_env!"), "{err}");
    // A registered env on a runtime that is no cluster's: says to join one.
    let err = Trainer::new(&rt, EnvMaker::cart_pole(), config)
        .await
        .err()
        .expect("refused");
    match &err {
        RlError::Placement { reason } => {
            assert!(reason.contains("joined a cluster"), "{reason}")
        }
        other => panic!("expected Placement, got {other}"),
    }
    // The same config with local workers trains.
    let mut trainer = Trainer::new(&rt, EnvMaker::cart_pole(), small())
        .await
        .unwrap();
    trainer.train().await.unwrap();
    trainer.shutdown().await;
    rt.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_sampling_is_one_update_stale_and_still_learns() {
    let rt = troupe::init(Config::default()).await.unwrap();
    let config = PpoConfig::default().seed(1).async_sampling(true);
    let mut trainer = Trainer::new(&rt, EnvMaker::cart_pole(), config)
        .await
        .unwrap();
    let summary = within_for(
        TRAINING,
        "training with async sampling",
        trainer.train_until(&Stop::at_return(100.0).or_env_steps(40_000), &mut ()),
    )
    .await
    .unwrap();
    let lags: Vec<u64> = trainer.history().iter().map(|m| m.policy_lag).collect();
    assert_eq!(lags[0], 0, "the first batch is fresh");
    assert!(lags[1..].iter().all(|lag| *lag == 1), "lags {lags:?}");
    let batch = 2 * 8 * 32;
    assert_eq!(
        summary.last.env_steps,
        summary.last.iteration * batch,
        "each batch trained once"
    );
    let start = trainer.history()[..4]
        .iter()
        .map(|m| m.episode_return_mean)
        .find(|r| r.is_finite())
        .unwrap();
    let end = summary.last.episode_return_mean;
    eprintln!(
        "async: mean return {start:.1} -> {end:.1} in {} steps",
        summary.last.env_steps
    );
    assert!(
        end > 2.0 * start && end > 60.0,
        "mean return went from {start:.1} to {end:.1}"
    );
    // A checkpoint loaded in between discards the batch sampled with the
    // old policy: the next one is fresh.
    let bytes = trainer.save_to_bytes().await.unwrap();
    trainer.load_from_bytes(&bytes).await.unwrap();
    let next = trainer.train().await.unwrap();
    assert_eq!(next.policy_lag, 0);
    trainer.shutdown().await;
    // Synchronous sampling is never stale.
    let mut sync = Trainer::new(&rt, EnvMaker::cart_pole(), small())
        .await
        .unwrap();
    for _ in 0..3 {
        assert_eq!(sync.train().await.unwrap().policy_lag, 0);
    }
    sync.shutdown().await;
    rt.shutdown().await.unwrap();
}
