//! PPO on troupe-tune (the `tune` feature): a `PpoTrainable` saves and
//! restores exactly (also into a trial of another config, as PBT's exploit
//! does), ASHA over a few configs stops the bad ones early and gives the
//! best, PBT's exploit goes on training from the donor's checkpoint, a
//! trial that panics resumes from its checkpoint, and a trial at its
//! target return ends the search.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rand::SeedableRng;
use rand_xoshiro::Xoshiro256PlusPlus;
use troupe::prelude::*;
use troupe_rl::tune::{ppo_config, trial_config, PpoTrainable};
use troupe_rl::{ActMode, CpuPolicy, EnvMaker, PolicyOutput, PpoConfig};
use troupe_test_kit::within_for;
use troupe_tune::{
    Asha, Metrics, Mode, Params, Pbt, Scheduler, SearchSpace, Trainable, TrainableError,
    TrialStatus, TuneOptions, Tuner,
};

/// The deadline for an experiment or a few PPO iterations (debug build).
const DEADLINE: Duration = Duration::from_secs(120);

/// A trial's config small enough for a debug build: 1 worker × 16
/// CartPoles × 32 steps (512 steps an iteration), 4 epochs.
fn config() -> PpoConfig {
    trial_config().update_epochs(4).seed(3)
}

/// Runs `f` where blocking is allowed (as a trial actor's methods run).
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    within_for(
        DEADLINE,
        "a trainable's calls",
        tokio::task::spawn_blocking(f),
    )
    .await
    .unwrap()
}

fn policies_agree(a: &mut CpuPolicy, b: &mut CpuPolicy) {
    let rows = 64;
    let rng = Xoshiro256PlusPlus::seed_from_u64(7);
    let obs: Vec<f32> = (0..rows * 4)
        .map(|i| ((i * 7919 % 1000) as f32 / 1000.0 - 0.5) * 0.4)
        .collect();
    let (mut out_a, mut out_b) = (PolicyOutput::default(), PolicyOutput::default());
    a.act(&obs, rows, ActMode::Sample, &mut rng.clone(), &mut out_a);
    b.act(&obs, rows, ActMode::Sample, &mut rng.clone(), &mut out_b);
    assert_eq!(out_a, out_b, "actions, log-probs and values");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ppo_trainable_saves_and_restores_exactly() {
    let rt = troupe::init(Config::default()).await.unwrap();
    let rt2 = rt.clone();
    let (a, b, c, saved, m2) = blocking(move || {
        let rt = rt2;
        let mut a = PpoTrainable::new(&rt, EnvMaker::cart_pole(), config())
            .unwrap()
            .iterations_per_step(2);
        let m1 = a.step().unwrap();
        let m2 = a.step().unwrap();
        assert_eq!(m1.get("ppo_iteration"), Some(2.0));
        assert_eq!(m2.get("ppo_iteration"), Some(4.0));
        assert_eq!(m2.get("env_steps"), Some(4.0 * 512.0));
        assert!(m2.get("episode_return_mean").is_some_and(|r| r > 0.0));
        let saved = a.save().unwrap();

        // The same config: the restored trainable saves the same bytes
        // (model, Adam's moments, counters, recent episodes, config).
        let mut b = PpoTrainable::new(&rt, EnvMaker::cart_pole(), config()).unwrap();
        b.restore(&saved).unwrap();
        assert_eq!(
            b.save().unwrap(),
            saved,
            "a restored trial saves what it loaded"
        );

        // Another config (PBT's exploit): the weights and counters are
        // the checkpoint's, the config stays this trial's.
        let other = ppo_config(&config(), &Params::new().with("learning_rate", 1e-3)).unwrap();
        let mut c = PpoTrainable::new(&rt, EnvMaker::cart_pole(), other).unwrap();
        c.restore(&saved).unwrap();
        assert_eq!(c.config().learning_rate, 1e-3);
        (a, b, c, saved, m2)
    })
    .await;
    let (ta, tb, tc) = (
        a.trainer().unwrap(),
        b.trainer().unwrap(),
        c.trainer().unwrap(),
    );
    assert_eq!(tb.counters(), ta.counters());
    assert_eq!(tc.counters(), ta.counters());
    let mut pa = ta.policy().await.unwrap();
    policies_agree(&mut pa, &mut tb.policy().await.unwrap());
    policies_agree(&mut pa, &mut tc.policy().await.unwrap());
    assert!(saved.len() > 1_000);

    // The restored trial goes on from the checkpoint's iteration.
    let (b, m3) = blocking(move || {
        let mut b = b;
        let m3 = b.step().unwrap();
        (b, m3)
    })
    .await;
    assert_eq!(m3.get("ppo_iteration"), Some(5.0));
    assert_eq!(m3.get("env_steps"), m2.get("env_steps").map(|s| s + 512.0));
    drop((a, b, c));
    rt.shutdown().await.unwrap();
}

#[test]
fn tuning_configs_map_onto_ppo_configs_and_bad_ones_are_named() {
    let base = PpoConfig::default();
    let p = Params::new()
        .with("learning_rate", 2e-3)
        .with("clip_coef", 0.1)
        .with("num_minibatches", 4)
        .with("gamma", 0.99);
    let c = ppo_config(&base, &p).unwrap();
    assert_eq!(
        (c.learning_rate, c.clip_coef, c.num_minibatches, c.gamma),
        (2e-3, 0.1, 4, 0.99)
    );
    assert_eq!(
        c.update_epochs, base.update_epochs,
        "the rest is the base's"
    );
    let err = ppo_config(&base, &Params::new().with("learnig_rate", 1e-3)).unwrap_err();
    assert!(err.to_string().contains("learnig_rate"), "{err}");
    let err = ppo_config(&base, &Params::new().with("update_epochs", -1)).unwrap_err();
    assert!(err.to_string().contains("update_epochs"), "{err}");
    let err = ppo_config(&base, &Params::new().with("num_minibatches", 0)).unwrap_err();
    assert!(err.to_string().contains("num_minibatches"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asha_over_ppo_configs_stops_the_bad_ones_and_gives_the_best() {
    let rt = troupe::init(Config::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    // One good learning rate, then three that barely move the policy. One
    // trial at a time, so that ASHA's rung (at iteration 2: the mean
    // return of the last 100 episodes lags, and after one step it still
    // holds mostly the random policy's episodes) sees them in this order:
    // the first sets the bar, the others fall below it.
    let space = SearchSpace::new().grid("learning_rate", [1e-2, 1e-7, 2e-7, 3e-7]);
    let options = TuneOptions::new("episode_return_mean", Mode::Max)
        .max_concurrent(1)
        .max_iterations(3)
        .scheduler(Scheduler::Asha(
            Asha::new().max_t(3).grace_period(2).reduction_factor(4.0),
        ))
        .dir(dir.path())
        .progress(false)
        .plots(false);
    let factory_rt = rt.clone();
    let tuner = Tuner::new(rt.clone(), space, options, move |p: &Params| {
        Ok(
            PpoTrainable::from_params(&factory_rt, EnvMaker::cart_pole(), &config(), p)?
                .iterations_per_step(4),
        )
    });
    let results = within_for(DEADLINE, "the experiment", tuner.fit())
        .await
        .unwrap();
    let trials = results.trials();
    for t in trials {
        eprintln!(
            "trial {} ({}): {:?}, returns {:?}",
            t.id,
            t.params,
            t.status,
            t.history
                .iter()
                .map(|r| r.metrics.get("episode_return_mean"))
                .collect::<Vec<_>>()
        );
    }
    assert_eq!(trials[0].status, TrialStatus::Terminated);
    assert_eq!(trials[0].iteration(), 3);
    let stopped: Vec<_> = trials
        .iter()
        .filter(|t| t.status == TrialStatus::Stopped)
        .collect();
    assert!(!stopped.is_empty(), "ASHA stopped no trial");
    assert!(stopped.iter().all(|t| t.iteration() == 2));
    let best = results.best().unwrap();
    assert_eq!(best.id, 0);
    assert_eq!(best.params.f64("learning_rate").unwrap(), 1e-2);
    assert!(best.checkpoint.is_some(), "the best trial's checkpoint");
    rt.shutdown().await.unwrap();
}

/// A PPO trial that panics once, after its step that takes the trainer to
/// `at` PPO iterations (before the tuner records it).
struct PanicsOnce {
    inner: PpoTrainable,
    at: f64,
    armed: Arc<AtomicBool>,
}

impl Trainable for PanicsOnce {
    fn step(&mut self) -> Result<Metrics, TrainableError> {
        let m = self.inner.step()?;
        if m.get("ppo_iteration") == Some(self.at) && self.armed.swap(false, Ordering::SeqCst) {
            panic!("injected failure at PPO iteration {}", self.at);
        }
        Ok(m)
    }
    fn save(&mut self) -> Result<Vec<u8>, TrainableError> {
        self.inner.save()
    }
    fn restore(&mut self, checkpoint: &[u8]) -> Result<(), TrainableError> {
        self.inner.restore(checkpoint)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ppo_trial_that_panics_resumes_from_its_checkpoint() {
    let rt = troupe::init(Config::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let armed = Arc::new(AtomicBool::new(true));
    let options = TuneOptions::new("episode_return_mean", Mode::Max)
        .max_iterations(3)
        .max_failures(1)
        .dir(dir.path())
        .progress(false)
        .plots(false);
    let (factory_rt, factory_armed) = (rt.clone(), armed.clone());
    let tuner = Tuner::new(
        rt.clone(),
        SearchSpace::new(),
        options,
        move |p: &Params| {
            Ok(PanicsOnce {
                inner: PpoTrainable::from_params(&factory_rt, EnvMaker::cart_pole(), &config(), p)?
                    .iterations_per_step(2),
                at: 4.0,
                armed: factory_armed.clone(),
            })
        },
    );
    let results = within_for(DEADLINE, "the experiment", tuner.fit())
        .await
        .unwrap();
    assert!(!armed.load(Ordering::SeqCst), "the failure was injected");
    let t = &results.trials()[0];
    assert_eq!(t.status, TrialStatus::Terminated, "{:?}", t.error);
    assert_eq!(t.failures, 1);
    // Tune iteration 2 ran again from the checkpoint of iteration 1 (PPO
    // iteration 2): a trainer started afresh would report 2, not 4.
    let ppo: Vec<_> = t
        .history
        .iter()
        .map(|r| (r.iteration, r.metrics.get("ppo_iteration")))
        .collect();
    assert_eq!(ppo, vec![(1, Some(2.0)), (2, Some(4.0)), (3, Some(6.0))]);
    assert_eq!(t.checkpoint.as_ref().map(|c| c.iteration), Some(3));
    rt.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trial_at_its_target_return_ends_and_stops_the_search() {
    let rt = troupe::init(Config::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let space = SearchSpace::new().grid("learning_rate", [1e-2, 4e-3, 2e-3]);
    let options = TuneOptions::new("episode_return_mean", Mode::Max)
        .max_concurrent(1)
        .max_iterations(40)
        .dir(dir.path())
        .progress(false)
        .plots(false);
    let stop = Arc::new(std::sync::OnceLock::new());
    let (factory_rt, factory_stop) = (rt.clone(), stop.clone());
    let tuner = Tuner::new(rt.clone(), space, options, move |p: &Params| {
        let trial = PpoTrainable::from_params(&factory_rt, EnvMaker::cart_pole(), &config(), p)?
            .iterations_per_step(2)
            .stop_at_return(30.0);
        Ok(match factory_stop.get() {
            Some(handle) => trial.stop_experiment_at_target(troupe_tune::StopHandle::clone(handle)),
            None => trial,
        })
    });
    assert!(stop.set(tuner.stop_handle()).is_ok());
    let results = within_for(DEADLINE, "the experiment", tuner.fit())
        .await
        .unwrap();
    let first = &results.trials()[0];
    let last = first.last().unwrap();
    assert_eq!(first.status, TrialStatus::Terminated);
    assert!(first.iteration() < 40, "ended by its target, not the limit");
    assert!(last.is_done());
    assert!(last.get("episode_return_mean").unwrap() >= 30.0);
    assert!(
        last.get("episodes").unwrap() >= 100.0,
        "a mean over 100 episodes"
    );
    // The search stopped there: the other trials never ran.
    assert!(results.interrupted());
    assert!(results.trials()[1..].iter().all(|t| t.history.is_empty()));
    rt.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pbt_exploits_by_training_on_from_the_donors_ppo_checkpoint() {
    let rt = troupe::init(Config::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    // One trial at a time: the good one runs to its end; the bad one, at
    // its first perturbation, ranks below it and takes its checkpoint.
    let mutations = SearchSpace::new().log_uniform("learning_rate", 1e-3, 1e-2);
    let options = TuneOptions::new("episode_return_mean", Mode::Max)
        .max_concurrent(1)
        .max_iterations(4)
        .scheduler(Scheduler::Pbt(
            Pbt::new(mutations, 1).perturbation_interval(1),
        ))
        .dir(dir.path())
        .progress(false)
        .plots(false);
    let space = SearchSpace::new().grid("learning_rate", [1e-2, 1e-7]);
    let factory_rt = rt.clone();
    let tuner = Tuner::new(rt.clone(), space, options, move |p: &Params| {
        Ok(
            PpoTrainable::from_params(&factory_rt, EnvMaker::cart_pole(), &config(), p)?
                .iterations_per_step(4),
        )
    });
    let results = within_for(DEADLINE, "the experiment", tuner.fit())
        .await
        .unwrap();
    let (good, bad) = (&results.trials()[0], &results.trials()[1]);
    assert_eq!(good.iteration(), 4);
    assert_eq!(bad.status, TrialStatus::Terminated, "{:?}", bad.error);
    // After its first iteration the bad trial took the donor's last
    // checkpoint (iteration 4, its end): its next report is iteration 5
    // (past max_iterations, so its last), and its trainer went on from the
    // donor's 16 PPO iterations to 20, not from its own 4 to 8.
    let reports: Vec<_> = bad
        .history
        .iter()
        .map(|r| (r.iteration, r.metrics.get("ppo_iteration")))
        .collect();
    assert_eq!(reports, vec![(1, Some(4.0)), (5, Some(20.0))]);
    // With the donor's learning rate, perturbed, not its own.
    let lr = bad.params.f64("learning_rate").unwrap();
    assert!(lr > 1e-4, "learning rate {lr}");
    rt.shutdown().await.unwrap();
}
