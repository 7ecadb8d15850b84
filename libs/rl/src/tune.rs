//! PPO on [troupe-tune](troupe_tune) (the `tune` feature):
//! [`PpoTrainable`] runs a [`Trainer`] as a [`troupe_tune::Trainable`], and
//! [`ppo_config`] maps a trial's config onto a [`PpoConfig`].
//!
//! ```no_run
//! use troupe::prelude::*;
//! use troupe_rl::tune::{trial_config, PpoTrainable};
//! use troupe_rl::EnvMaker;
//! use troupe_tune::{Asha, Mode, Params, Scheduler, SearchSpace, TuneOptions, Tuner};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let rt = Runtime::start(Config::default())?;
//! let space = SearchSpace::new()
//!     .log_uniform("learning_rate", 1e-3, 1e-2)
//!     .choice("clip_coef", [0.1, 0.2, 0.3]);
//! let options = TuneOptions::new("episode_return_mean", Mode::Max)
//!     .num_samples(16)
//!     .max_concurrent(2)
//!     .scheduler(Scheduler::Asha(Asha::new().max_t(40)));
//! let base = trial_config();
//! let factory_rt = rt.clone();
//! let tuner = Tuner::new(rt.clone(), space, options, move |params: &Params| {
//!     Ok(PpoTrainable::from_params(&factory_rt, EnvMaker::cart_pole(), &base, params)?
//!         .iterations_per_step(10)
//!         .stop_at_return(475.0))
//! });
//! let results = rt.block_on(tuner.fit())?;
//! println!("best: {}", results.best()?.params);
//! # Ok(()) }
//! ```
//!
//! How it maps onto troupe-tune:
//!
//! - **A step** is `iterations_per_step` calls of [`Trainer::train`] (fewer
//!   when the trial reaches its target return; more, up to
//!   [`MAX_ITERATIONS_PER_STEP`], while no episode has ended yet, so that
//!   every report has a mean return). Its [`Metrics`] are the last
//!   iteration's [`IterationMetrics`] by their
//!   names (`episode_return_mean`, `env_steps`, `policy_loss`, ...), with
//!   the trainer's own iteration count as `ppo_iteration`; values that are
//!   not finite are left out.
//! - **Checkpoints** are troupe-rl's own ([`Trainer::save_to_bytes`]:
//!   model, Adam's moments, counters, the last 100 episodes), so a panic
//!   retried by the tuner resumes training where the checkpoint left it,
//!   and PBT's exploit copies a real trainer: [`Trainable::restore`] loads
//!   the bytes into a trainer built with *this* trial's config (the
//!   donor's, perturbed), which keeps that config. Only the model's shape
//!   ([`checkpoint::SHAPE_FIELDS`](crate::checkpoint::SHAPE_FIELDS): the
//!   environment and `hidden`) must match, so do not mutate `hidden`
//!   under PBT.
//! - **Threads**: the trainer is async; the trainable drives it with
//!   [`Runtime::block_on`], so its methods must run where blocking is
//!   allowed: a trial actor's `#[blocking]` methods (as the tuner calls
//!   them), or a thread outside the runtime. The trainer (its learner and
//!   workers) is built at the first step or restore, not in the factory,
//!   which the tuner calls inside an actor's async start.
//! - **Resources**: the tuner's trial actor holds the trial's CPUs
//!   (`TuneOptions::resources_per_trial`, 1 by default); the trainer's
//!   workers then ask for none of their own ([`trial_config`] sets
//!   `num_cpus_per_worker` to 0), or a node of 2 cores could not run two
//!   trials of 2 workers at once.

use troupe::Runtime;
use troupe_tune::{Metrics, Params, SearchSpace, StopHandle, Trainable, TrainableError, Value};

use crate::config::PpoConfig;
use crate::env::EnvMaker;
use crate::error::RlError;
use crate::report::IterationMetrics;
use crate::trainer::{Trainer, RETURN_WINDOW};

/// The most [`Trainer::train`] calls one step makes while waiting for a
/// first finished episode.
pub const MAX_ITERATIONS_PER_STEP: u64 = 100;

/// The names [`ppo_config`] maps, each onto the [`PpoConfig`] field of
/// the same name (`lr` is also accepted for `learning_rate`). Numbers:
/// `learning_rate`, `gamma`, `gae_lambda`, `clip_coef`, `entropy_coef`,
/// `value_coef`, `max_grad_norm`, `target_kl`, `adam_eps`; integers:
/// `update_epochs`, `num_minibatches`, `fragment_len`, `envs_per_worker`,
/// `num_workers`, `seed`, `total_env_steps`; `hidden`: a string of widths
/// such as `"64x64"`.
pub const TUNABLE: &[&str] = &[
    "learning_rate",
    "lr",
    "gamma",
    "gae_lambda",
    "clip_coef",
    "entropy_coef",
    "value_coef",
    "max_grad_norm",
    "target_kl",
    "adam_eps",
    "update_epochs",
    "num_minibatches",
    "fragment_len",
    "envs_per_worker",
    "num_workers",
    "seed",
    "total_env_steps",
    "hidden",
];

/// A [`PpoConfig`] for one trial among others on the same node: 1 worker
/// of 16 environments (the default batch of 512 steps), workers asking
/// for no CPUs of their own (the trial holds them), and the learner on
/// the CPU (`learner_gpus` 0: a CartPole-sized model is faster there, and
/// concurrent trials would otherwise queue for one GPU). The rest is
/// [`PpoConfig::default`].
pub fn trial_config() -> PpoConfig {
    PpoConfig::default()
        .num_workers(1)
        .envs_per_worker(16)
        .num_cpus_per_worker(0.0)
        .learner_gpus(Some(0.0))
}

/// The search space of the `tune_ppo_cartpole` example and of the
/// `asha_cartpole_seconds_to_475` bench (and of Ray's side in
/// `benches/ray/`): `learning_rate` log-uniform in [1e-3, 1e-2),
/// `clip_coef` in {0.1, 0.2, 0.3}, `entropy_coef` in {0, 0.001, 0.01},
/// `gamma` in {0.98, 0.99}, `gae_lambda` in {0.8, 0.9, 0.95},
/// `update_epochs` in {4, 10} and `num_minibatches` in {1, 2, 4}, all
/// drawn at random (no grid).
pub fn ppo_search_space() -> SearchSpace {
    SearchSpace::new()
        .log_uniform("learning_rate", 1e-3, 1e-2)
        .choice("clip_coef", [0.1, 0.2, 0.3])
        .choice("entropy_coef", [0.0, 0.001, 0.01])
        .choice("gamma", [0.98, 0.99])
        .choice("gae_lambda", [0.8, 0.9, 0.95])
        .choice("update_epochs", [4i64, 10])
        .choice("num_minibatches", [1i64, 2, 4])
}

/// `base` with the values `params` names ([`TUNABLE`]), validated. A name
/// that is not tunable, a value of the wrong type (an integer field given
/// a float, a negative count) or a config [`PpoConfig::validate`] refuses
/// is an error naming it.
///
/// ```
/// use troupe_rl::{tune::ppo_config, PpoConfig};
/// use troupe_tune::Params;
/// let params = Params::new().with("lr", 1e-3).with("update_epochs", 4).with("hidden", "32x32");
/// let config = ppo_config(&PpoConfig::default(), &params)?;
/// assert_eq!((config.learning_rate, config.update_epochs), (1e-3, 4));
/// assert_eq!(config.hidden, vec![32, 32]);
/// assert!(ppo_config(&PpoConfig::default(), &Params::new().with("update_epochs", 2.5)).is_err());
/// # Ok::<(), troupe_tune::TrainableError>(())
/// ```
pub fn ppo_config(base: &PpoConfig, params: &Params) -> Result<PpoConfig, TrainableError> {
    let mut c = base.clone();
    for (name, _) in params.iter() {
        match name {
            "learning_rate" | "lr" => c.learning_rate = params.f64(name)?,
            "gamma" => c.gamma = params.f64(name)?,
            "gae_lambda" => c.gae_lambda = params.f64(name)?,
            "clip_coef" => c.clip_coef = params.f64(name)?,
            "entropy_coef" => c.entropy_coef = params.f64(name)?,
            "value_coef" => c.value_coef = params.f64(name)?,
            "max_grad_norm" => c.max_grad_norm = params.f64(name)?,
            "target_kl" => c.target_kl = Some(params.f64(name)?),
            "adam_eps" => c.adam_eps = params.f64(name)?,
            "update_epochs" => c.update_epochs = count(params, name)?,
            "num_minibatches" => c.num_minibatches = count(params, name)?,
            "fragment_len" => c.fragment_len = count(params, name)?,
            "envs_per_worker" => c.envs_per_worker = count(params, name)?,
            "num_workers" => c.num_workers = count(params, name)?,
            "seed" => c.seed = count(params, name)? as u64,
            "total_env_steps" => c.total_env_steps = count(params, name)? as u64,
            "hidden" => c.hidden = widths(params, name)?,
            other => {
                return Err(TrainableError::Param {
                    name: other.to_owned(),
                    wanted: "a name troupe_rl::tune::TUNABLE lists".into(),
                    found: format!("{:?}", params.get(other)),
                })
            }
        }
    }
    c.validate()
        .map_err(|e| TrainableError::Failed(e.to_string()))?;
    Ok(c)
}

/// A non-negative integer parameter.
fn count(params: &Params, name: &str) -> Result<usize, TrainableError> {
    let v = params.i64(name)?;
    usize::try_from(v).map_err(|_| TrainableError::Param {
        name: name.to_owned(),
        wanted: "a non-negative integer".into(),
        found: v.to_string(),
    })
}

/// Hidden layer widths written `"64x64"` (or `"64,64"`).
fn widths(params: &Params, name: &str) -> Result<Vec<usize>, TrainableError> {
    let text = params.str(name)?;
    text.split(['x', ','])
        .map(|w| w.trim().parse::<usize>())
        .collect::<Result<Vec<_>, _>>()
        .ok()
        .filter(|w| !w.is_empty())
        .ok_or_else(|| TrainableError::Param {
            name: name.to_owned(),
            wanted: "layer widths such as \"64x64\"".into(),
            found: format!("{:?}", Value::Str(text.to_owned())),
        })
}

/// PPO as a tuning trial: a [`Trainer`] on `env` with a [`PpoConfig`],
/// stepped `iterations_per_step` iterations at a time, saved and restored
/// through troupe-rl's checkpoint format (see the [module](self) docs).
pub struct PpoTrainable {
    rt: Runtime,
    env: EnvMaker,
    config: PpoConfig,
    iterations_per_step: u64,
    target_return: Option<f64>,
    stop_experiment: Option<StopHandle>,
    trainer: Option<Trainer>,
}

impl std::fmt::Debug for PpoTrainable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PpoTrainable")
            .field("env", &self.env.name())
            .field("iterations_per_step", &self.iterations_per_step)
            .field("target_return", &self.target_return)
            .field("started", &self.trainer.is_some())
            .field("counters", &self.trainer.as_ref().map(Trainer::counters))
            .finish_non_exhaustive()
    }
}

impl PpoTrainable {
    /// A trial training on `env` with `config` (validated here; the trainer
    /// itself starts at the first step or restore), one iteration a step.
    pub fn new(rt: &Runtime, env: EnvMaker, config: PpoConfig) -> Result<Self, TrainableError> {
        config
            .validate()
            .map_err(|e| TrainableError::Failed(e.to_string()))?;
        Ok(PpoTrainable {
            rt: rt.clone(),
            env,
            config,
            iterations_per_step: 1,
            target_return: None,
            stop_experiment: None,
            trainer: None,
        })
    }

    /// A trial with `base` changed by a tuning config ([`ppo_config`]).
    pub fn from_params(
        rt: &Runtime,
        env: EnvMaker,
        base: &PpoConfig,
        params: &Params,
    ) -> Result<Self, TrainableError> {
        PpoTrainable::new(rt, env, ppo_config(base, params)?)
    }

    /// [`Trainer::train`] calls per step (at least 1; default 1).
    pub fn iterations_per_step(mut self, n: u64) -> Self {
        self.iterations_per_step = n.max(1);
        self
    }

    /// Ends the trial (its step reports done, at once, mid-step) when the
    /// mean return of the last 100 episodes reaches `target` (once 100
    /// have finished, as [`Stop::at_return`](crate::Stop::at_return)).
    pub fn stop_at_return(mut self, target: f64) -> Self {
        self.target_return = Some(target);
        self
    }

    /// Stops the whole experiment (through the tuner's
    /// [`StopHandle`]) when this trial reaches
    /// its target return: the search ends at its first solution.
    pub fn stop_experiment_at_target(mut self, handle: StopHandle) -> Self {
        self.stop_experiment = Some(handle);
        self
    }

    /// The trial's config.
    pub fn config(&self) -> &PpoConfig {
        &self.config
    }

    /// The trainer, once a step or restore has started it.
    pub fn trainer(&self) -> Option<&Trainer> {
        self.trainer.as_ref()
    }

    /// The trainer, started (blocking on the runtime) if need be.
    fn started(&mut self) -> Result<&mut Trainer, TrainableError> {
        if self.trainer.is_none() {
            let trainer = self
                .rt
                .block_on(Trainer::new(
                    &self.rt,
                    self.env.clone(),
                    self.config.clone(),
                ))
                .map_err(failed)?;
            self.trainer = Some(trainer);
        }
        self.trainer
            .as_mut()
            .ok_or_else(|| TrainableError::Failed("the trainer did not start".to_owned()))
    }
}

/// Whether the mean return reached `target`, over a full window of
/// episodes (as [`Stop::at_return`](crate::Stop::at_return) counts).
fn at_target(m: &IterationMetrics, target: Option<f64>) -> bool {
    target.is_some_and(|t| m.episodes >= RETURN_WINDOW as u64 && m.episode_return_mean >= t)
}

fn failed(e: RlError) -> TrainableError {
    TrainableError::Failed(e.to_string())
}

/// The metrics of one report: the last iteration's, finite values only.
fn report(m: &IterationMetrics, step_seconds: f64, steps: u64) -> Metrics {
    let values = [
        ("episode_return_mean", m.episode_return_mean),
        ("episode_length_mean", m.episode_length_mean),
        ("env_steps", m.env_steps as f64),
        ("episodes", m.episodes as f64),
        ("ppo_iteration", m.iteration as f64),
        ("steps_per_second", steps as f64 / step_seconds),
        ("policy_loss", m.policy_loss),
        ("value_loss", m.value_loss),
        ("entropy", m.entropy),
        ("approx_kl", m.approx_kl),
        ("clip_fraction", m.clip_fraction),
        ("explained_variance", m.explained_variance),
        ("learning_rate", m.learning_rate),
        ("train_seconds", m.wall_seconds),
        ("worker_restarts", m.worker_restarts as f64),
    ];
    values
        .into_iter()
        .filter(|(_, v)| v.is_finite())
        .fold(Metrics::new(), |metrics, (k, v)| metrics.with(k, v))
}

impl Trainable for PpoTrainable {
    fn step(&mut self) -> Result<Metrics, TrainableError> {
        let (n, target) = (self.iterations_per_step, self.target_return);
        let rt = self.rt.clone();
        let trainer = self.started()?;
        let began = std::time::Instant::now();
        let first_steps = trainer.counters().env_steps;
        let last = rt
            .block_on(async {
                let mut done = 0;
                loop {
                    let m = trainer.train().await?;
                    done += 1;
                    let reached = at_target(&m, target);
                    let no_episode = m.episode_return_mean.is_nan();
                    if reached
                        || (done >= n && !no_episode)
                        || done >= n.max(MAX_ITERATIONS_PER_STEP)
                    {
                        return Ok::<_, RlError>(m);
                    }
                }
            })
            .map_err(failed)?;
        let steps = last.env_steps - first_steps;
        let mut metrics = report(&last, began.elapsed().as_secs_f64(), steps);
        if at_target(&last, target) {
            metrics = metrics.done();
            if let Some(handle) = &self.stop_experiment {
                handle.stop();
            }
        }
        Ok(metrics)
    }

    fn save(&mut self) -> Result<Vec<u8>, TrainableError> {
        let rt = self.rt.clone();
        let trainer = self.started()?;
        rt.block_on(trainer.save_to_bytes())
            .map_err(|e| TrainableError::Checkpoint(e.to_string()))
    }

    fn restore(&mut self, checkpoint: &[u8]) -> Result<(), TrainableError> {
        let rt = self.rt.clone();
        let trainer = self.started()?;
        rt.block_on(trainer.load_from_bytes(checkpoint))
            .map_err(|e| TrainableError::Checkpoint(e.to_string()))
    }
}

impl Drop for PpoTrainable {
    fn drop(&mut self) {
        // Stop the workers' supervisor now, wherever the trial is dropped
        // (an actor's task, a blocking thread, a plain thread).
        if let Some(trainer) = self.trainer.take() {
            self.rt.tokio_handle().spawn(trainer.shutdown());
        }
    }
}
