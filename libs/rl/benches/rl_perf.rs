//! troupe-rl's headline speeds, as `metric value unit` lines:
//!
//! ```text
//! cargo bench -p troupe-rl --bench rl_perf            # everything
//! cargo bench -p troupe-rl --bench rl_perf -- sampling  # metrics whose name contains "sampling"
//! RL_PERF_SEEDS=5 cargo bench -p troupe-rl --bench rl_perf -- ppo
//! cargo bench -p troupe-rl --features tune --bench rl_perf -- asha pbt  # the tuning searches
//! ```
//!
//! - `cartpole_env_steps_per_s`: a `VecEnv` of 64 CartPoles stepped on one
//!   thread, actions from a cheap counter (the environment alone).
//! - `sampling_env_steps_per_s`: 2 supervised rollout workers (one per
//!   core), 64 environments each, sampling 128-step fragments with policy
//!   inference (the default 64-64 network) into the object store.
//! - `policy_inference_steps_per_s`: the workers' CPU policy alone, batches
//!   of 64 observations on one thread.
//! - `ppo_cartpole_seconds_to_475`, `ppo_cartpole_env_steps_to_475`:
//!   medians over seeds 0..3 (`RL_PERF_SEEDS`) of `PpoConfig::default()`
//!   trained until the mean return of the last 100 episodes reaches 475,
//!   timed from building the trainer; the same to 450 (the figure quoted
//!   for RLlib), then each seed's figures.
//! - `asha_cartpole_seconds_to_475`, `pbt_cartpole_seconds_to_475` (with
//!   `--features tune`): the `tune_ppo_cartpole` example's search, ASHA
//!   over 16 configs of [`troupe_rl::tune::ppo_search_space`] (and PBT over
//!   8, exploiting by copying a checkpoint), 2 trials at a time: wall time
//!   from `Tuner::fit` until some trial's mean return reaches 475, median
//!   over search seeds 0..3 (`RL_PERF_SEEDS`), then each seed's figure and
//!   the trials it started.

use std::time::{Duration, Instant};

use troupe::prelude::*;
use troupe_rl::{Actions, EnvMaker, PpoConfig, Stop, Trainer, VecEnv};

fn wanted(name: &str) -> bool {
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    filters.is_empty() || filters.iter().any(|f| name.contains(f.as_str()))
}

fn cartpole_env_steps_per_s() -> Result<f64, Box<dyn std::error::Error>> {
    let n = 64;
    let mut envs = VecEnv::from_maker(&EnvMaker::cart_pole(), 0, n)?;
    envs.reset(Some(0))?;
    let mut actions = vec![0u64; n];
    let mut counter = 0u64;
    let mut step = |envs: &mut VecEnv| -> Result<(), troupe_rl::EnvError> {
        for a in actions.iter_mut() {
            // A cheap, varied pattern: episodes of mixed lengths.
            counter = counter
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            *a = counter >> 63;
        }
        envs.step(Actions::Discrete(&actions))
    };
    for _ in 0..10_000 {
        step(&mut envs)?;
    }
    let rounds = 200_000;
    let began = Instant::now();
    for _ in 0..rounds {
        step(&mut envs)?;
    }
    Ok((rounds * n) as f64 / began.elapsed().as_secs_f64())
}

/// The workers' CPU policy alone: `act` on batches of 64 CartPole
/// observations on one thread.
fn policy_inference_steps_per_s() -> Result<f64, Box<dyn std::error::Error>> {
    use rand::SeedableRng;
    let rt = Runtime::start(Config::default())?;
    let policy = rt.block_on(async {
        let trainer = Trainer::new(&rt, EnvMaker::cart_pole(), PpoConfig::default()).await?;
        let policy = trainer.policy().await?;
        trainer.shutdown().await;
        Ok::<_, troupe_rl::RlError>(policy)
    })?;
    rt.block_on(rt.shutdown())?;
    let mut policy = policy;
    let rows = 64;
    let obs: Vec<f32> = (0..rows * 4)
        .map(|i| ((i % 17) as f32 - 8.0) * 0.01)
        .collect();
    let mut rng = rand_xoshiro::Xoshiro256PlusPlus::seed_from_u64(0);
    let mut out = troupe_rl::PolicyOutput::default();
    let rounds = 20_000;
    let began = Instant::now();
    for _ in 0..rounds {
        policy.act(&obs, rows, troupe_rl::ActMode::Sample, &mut rng, &mut out);
    }
    Ok((rounds * rows) as f64 / began.elapsed().as_secs_f64())
}

async fn sampling_env_steps_per_s(rt: &Runtime) -> Result<f64, Box<dyn std::error::Error>> {
    let config = PpoConfig::default()
        .num_workers(2)
        .envs_per_worker(64)
        .fragment_len(128);
    let trainer = Trainer::new(rt, EnvMaker::cart_pole(), config).await?;
    let weights = trainer.weights().clone();
    let round = || async {
        let calls: Vec<_> = trainer
            .workers()
            .iter()
            .map(|w| w.sample(weights.clone(), 0))
            .collect();
        let mut steps = 0;
        for call in calls {
            let fragment = call.await??;
            steps += rt.get(&fragment).await?.rows();
        }
        Ok::<usize, Box<dyn std::error::Error>>(steps)
    };
    for _ in 0..5 {
        round().await?;
    }
    let began = Instant::now();
    let mut steps = 0;
    while began.elapsed() < Duration::from_secs(5) {
        steps += round().await?;
    }
    let rate = steps as f64 / began.elapsed().as_secs_f64();
    trainer.shutdown().await;
    Ok(rate)
}

/// Seconds and env steps until the mean return first reaches 450 and 475.
struct Solved {
    at_450: (f64, u64),
    at_475: (f64, u64),
}

async fn ppo_to_475(rt: &Runtime, seed: u64) -> Result<Solved, Box<dyn std::error::Error>> {
    let began = Instant::now();
    let mut trainer =
        Trainer::new(rt, EnvMaker::cart_pole(), PpoConfig::default().seed(seed)).await?;
    let setup = began.elapsed().as_secs_f64();
    let summary = trainer
        .train_until(&Stop::at_return(475.0).or_env_steps(2_000_000), &mut ())
        .await?;
    let seconds = began.elapsed().as_secs_f64();
    let at_450 = trainer
        .history()
        .iter()
        .find(|m| m.episodes >= 100 && m.episode_return_mean >= 450.0)
        .map(|m| (setup + m.wall_seconds, m.env_steps));
    trainer.shutdown().await;
    match (summary.reached_target, at_450) {
        (true, Some(at_450)) => Ok(Solved {
            at_450,
            at_475: (seconds, summary.last.env_steps),
        }),
        _ => Err(format!(
            "seed {seed} did not reach 475 within 2,000,000 steps (mean return {:.1})",
            summary.last.episode_return_mean
        )
        .into()),
    }
}

/// The tuning example's search, timed to the first trial at 475.
#[cfg(feature = "tune")]
mod tuning {
    use std::sync::{Arc, OnceLock};
    use std::time::Instant;

    use troupe::prelude::*;
    use troupe_rl::tune::{ppo_search_space, trial_config, PpoTrainable};
    use troupe_rl::EnvMaker;
    use troupe_tune::{
        Asha, Metrics, Mode, Params, Pbt, Scheduler, SearchSpace, StopHandle, Trainable,
        TrainableError, TuneOptions, Tuner,
    };

    /// As in the example: 10 PPO updates per tune iteration, 40 at most.
    const ITERATIONS_PER_STEP: u64 = 10;
    const MAX_T: u64 = 40;

    /// A PPO trial that notes when it reached the target (its step said
    /// done), and then stops the experiment.
    struct Timed {
        inner: PpoTrainable,
        reached: Arc<OnceLock<Instant>>,
        stop: StopHandle,
    }

    impl Trainable for Timed {
        fn step(&mut self) -> Result<Metrics, TrainableError> {
            let m = self.inner.step()?;
            if m.is_done() && m.get("episode_return_mean").is_some_and(|r| r >= 475.0) {
                let _ = self.reached.set(Instant::now());
                self.stop.stop();
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

    /// Seconds from `fit` to the first trial at 475, and the trials
    /// started by then.
    pub(crate) fn seconds_to_475(
        rt: &Runtime,
        pbt: bool,
        seed: u64,
    ) -> Result<(f64, usize), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let scheduler = if pbt {
            let mutations = SearchSpace::new()
                .log_uniform("learning_rate", 1e-3, 1e-2)
                .choice("clip_coef", [0.1, 0.2, 0.3])
                .choice("entropy_coef", [0.0, 0.001, 0.01])
                .choice("gae_lambda", [0.8, 0.9, 0.95]);
            Scheduler::Pbt(Pbt::new(mutations, seed).perturbation_interval(2))
        } else {
            Scheduler::Asha(
                Asha::new()
                    .max_t(MAX_T)
                    .grace_period(1)
                    .reduction_factor(4.0),
            )
        };
        let options = TuneOptions::new("episode_return_mean", Mode::Max)
            .num_samples(if pbt { 8 } else { 16 })
            .seed(seed)
            .max_concurrent(2)
            .max_failures(2)
            .max_iterations(MAX_T)
            .scheduler(scheduler)
            .dir(dir.path())
            .progress(false)
            .plots(false);
        let base = trial_config().total_env_steps(MAX_T * ITERATIONS_PER_STEP * 512);
        let reached = Arc::new(OnceLock::new());
        let stop = Arc::new(OnceLock::<StopHandle>::new());
        let (factory_rt, factory_reached, factory_stop) =
            (rt.clone(), reached.clone(), stop.clone());
        let tuner = Tuner::new(
            rt.clone(),
            ppo_search_space(),
            options,
            move |p: &Params| {
                Ok(Timed {
                    inner: PpoTrainable::from_params(&factory_rt, EnvMaker::cart_pole(), &base, p)?
                        .iterations_per_step(ITERATIONS_PER_STEP)
                        .stop_at_return(475.0),
                    reached: factory_reached.clone(),
                    stop: factory_stop.get().cloned().unwrap_or_default(),
                })
            },
        );
        let _ = stop.set(tuner.stop_handle());
        let began = Instant::now();
        let results = rt.block_on(tuner.fit())?;
        let started = results
            .trials()
            .iter()
            .filter(|t| !t.history.is_empty())
            .count();
        match reached.get() {
            Some(at) => Ok((at.duration_since(began).as_secs_f64(), started)),
            None => Err(format!(
                "{} seed {seed}: no trial reached 475 within {MAX_T} iterations of {} trials",
                if pbt { "PBT" } else { "ASHA" },
                results.trials().len()
            )
            .into()),
        }
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    if wanted("cartpole_env_steps_per_s") {
        println!(
            "cartpole_env_steps_per_s {:.0} steps/s",
            cartpole_env_steps_per_s()?
        );
    }
    if wanted("policy_inference_steps_per_s") {
        println!(
            "policy_inference_steps_per_s {:.0} steps/s",
            policy_inference_steps_per_s()?
        );
    }
    let rt = Runtime::start(Config::default())?;
    if wanted("sampling_env_steps_per_s") {
        let rate = rt.block_on(sampling_env_steps_per_s(&rt))?;
        println!("sampling_env_steps_per_s {rate:.0} steps/s");
    }
    if wanted("ppo_cartpole_seconds_to_475") || wanted("ppo_cartpole_env_steps_to_475") {
        let seeds: u64 = std::env::var("RL_PERF_SEEDS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(3);
        let mut runs = Vec::new();
        for seed in 0..seeds {
            let run = rt.block_on(ppo_to_475(&rt, seed))?;
            eprintln!(
                "# seed {seed}: 475 after {:.2} s, {} env steps",
                run.at_475.0, run.at_475.1
            );
            runs.push(run);
        }
        for (target, pick) in [
            ("475", (|r: &Solved| r.at_475) as fn(&Solved) -> (f64, u64)),
            ("450", |r: &Solved| r.at_450),
        ] {
            let seconds: Vec<f64> = runs.iter().map(|r| pick(r).0).collect();
            let steps: Vec<f64> = runs.iter().map(|r| pick(r).1 as f64).collect();
            println!(
                "ppo_cartpole_seconds_to_{target} {:.2} s",
                median(seconds.clone())
            );
            println!(
                "ppo_cartpole_env_steps_to_{target} {:.0} steps",
                median(steps.clone())
            );
            for (seed, (s, n)) in seconds.iter().zip(&steps).enumerate() {
                println!("ppo_cartpole_seconds_to_{target}_seed{seed} {s:.2} s");
                println!("ppo_cartpole_env_steps_to_{target}_seed{seed} {n:.0} steps");
            }
        }
    }
    #[cfg(feature = "tune")]
    for (name, pbt) in [("asha", false), ("pbt", true)] {
        let metric = format!("{name}_cartpole_seconds_to_475");
        if !wanted(&metric) {
            continue;
        }
        let seeds: u64 = std::env::var("RL_PERF_SEEDS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(3);
        let mut runs = Vec::new();
        for seed in 0..seeds {
            let (seconds, trials) = tuning::seconds_to_475(&rt, pbt, seed)?;
            eprintln!("# {name} seed {seed}: 475 after {seconds:.2} s, {trials} trials started");
            runs.push((seconds, trials));
        }
        println!(
            "{metric} {:.2} s",
            median(runs.iter().map(|r| r.0).collect())
        );
        for (seed, (seconds, trials)) in runs.iter().enumerate() {
            println!("{metric}_seed{seed} {seconds:.2} s");
            println!("{name}_cartpole_trials_to_475_seed{seed} {trials} trials");
        }
    }
    rt.block_on(rt.shutdown())?;
    Ok(())
}
