//! The driver: [`Trainer`] builds the learner and the supervised rollout
//! workers, runs PPO iterations, and saves and restores checkpoints.

use std::collections::VecDeque;
use std::path::Path;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::SeedableRng;
use rand_xoshiro::Xoshiro256PlusPlus;
use tracing::Instrument;
use troupe::gpu::Weights;
use troupe::prelude::*;
use troupe::ObjectRef;

use crate::checkpoint::{Checkpoint, Counters};
use crate::config::PpoConfig;
use crate::config::WorkerPlacement;
use crate::env::{EnvMaker, EpisodeStats};
use crate::error::RlError;
use crate::fragment::Fragment;
use crate::learner::{Learner, LearnerHandle, UpdateStats};
use crate::policy::{ActMode, ActionHead, CpuPolicy, PolicyOutput, PolicyShape};
use crate::report::{IterationMetrics, Reporter};
use crate::sampling::{sample_one, spawn_on_cluster, RemoteSlot, RestartWindow};
use crate::schedule::{self, LrSchedule};
use crate::space::{Actions, Space};
use crate::worker::{LocalSetup, RolloutWorker, RolloutWorkerHandle, WorkerSetup};
use crate::{mix_seed, VecEnv};

mod workers;

use workers::{sample_all, stop_all, Batch};

/// Episodes the running mean return is taken over (as RLlib and CleanRL do).
pub const RETURN_WINDOW: usize = 100;

/// When [`Trainer::train_until`] stops: at the first condition met.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Stop {
    /// The mean return over the last 100 episodes reaches this (only once
    /// 100 episodes have finished, so that it is a mean over 100).
    pub mean_return: Option<f64>,
    /// This many environment steps were sampled.
    pub env_steps: Option<u64>,
    /// This many iterations ran.
    pub iterations: Option<u64>,
    /// Training took this long.
    pub wall_time: Option<Duration>,
}

impl Stop {
    /// Stop when the mean return reaches `target`.
    pub fn at_return(target: f64) -> Stop {
        Stop {
            mean_return: Some(target),
            ..Stop::default()
        }
    }

    /// Also stop after `steps` environment steps.
    pub fn or_env_steps(mut self, steps: u64) -> Stop {
        self.env_steps = Some(steps);
        self
    }

    /// Also stop after `iterations` iterations.
    pub fn or_iterations(mut self, iterations: u64) -> Stop {
        self.iterations = Some(iterations);
        self
    }

    /// Also stop after `wall_time` of training.
    pub fn or_wall_time(mut self, wall_time: Duration) -> Stop {
        self.wall_time = Some(wall_time);
        self
    }

    fn reached(&self, m: &IterationMetrics) -> bool {
        m.episodes >= RETURN_WINDOW as u64
            && self.mean_return.is_some_and(|t| m.episode_return_mean >= t)
    }

    fn done(&self, m: &IterationMetrics, elapsed: Duration) -> bool {
        self.reached(m)
            || self.env_steps.is_some_and(|s| m.env_steps >= s)
            || self.iterations.is_some_and(|i| m.iteration >= i)
            || self.wall_time.is_some_and(|w| elapsed >= w)
    }
}

/// How a [`Trainer::train_until`] run ended.
#[derive(Clone, Debug, PartialEq)]
pub struct TrainSummary {
    /// Whether the mean-return target was reached.
    pub reached_target: bool,
    /// The last iteration's metrics.
    pub last: IterationMetrics,
    /// Wall time of this run.
    pub seconds: f64,
}

/// Results of [`Trainer::evaluate`].
#[derive(Clone, Debug, PartialEq)]
pub struct Evaluation {
    /// Return of each episode.
    pub returns: Vec<f64>,
    /// Length of each episode.
    pub lengths: Vec<u64>,
    /// Episodes cut at `eval_max_episode_steps` (their return is what they
    /// had gathered by then).
    pub capped: usize,
}

impl Evaluation {
    /// Mean return.
    pub fn mean_return(&self) -> f64 {
        self.returns.iter().sum::<f64>() / self.returns.len().max(1) as f64
    }
}

/// The name an in-memory checkpoint has in error messages.
const IN_MEMORY: &str = "<checkpoint in memory>";

/// A PPO trainer: a learner actor (on `troupe::gpu::device()`) and
/// `num_workers` rollout worker actors under a supervisor of their own,
/// on a Troupe runtime.
///
/// ```no_run
/// use troupe::prelude::*;
/// use troupe_rl::{EnvMaker, PpoConfig, Progress, Stop, Trainer};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let rt = troupe::init(Config::default()).await?;
/// let mut trainer = Trainer::new(&rt, EnvMaker::cart_pole(), PpoConfig::default()).await?;
/// let one = trainer.train().await?;                 // one iteration
/// println!("return {:.1}", one.episode_return_mean);
/// let summary = trainer
///     .train_until(&Stop::at_return(475.0).or_env_steps(300_000), &mut Progress::new(300_000))
///     .await?;
/// trainer.save("cartpole.ckpt").await?;
/// trainer.shutdown().await;
/// # Ok(()) }
/// ```
pub struct Trainer {
    rt: Runtime,
    config: PpoConfig,
    env: EnvMaker,
    observation_space: Space,
    action_space: Space,
    shape: PolicyShape,
    /// The local workers' supervisor; `None` with workers on the cluster.
    supervisor: Option<SupervisorRef>,
    workers: Vec<RolloutWorkerHandle>,
    /// How to respawn each worker on the cluster (empty for local ones).
    remote: Vec<RemoteSlot>,
    /// The placement group the cluster workers live in, if any.
    group: Option<PlacementGroup>,
    /// With `async_sampling`: the batch sampled during the last update.
    next_batch: Option<Batch>,
    learner: LearnerHandle,
    weights: ObjectRef<Weights>,
    version: u64,
    counters: Counters,
    recent: VecDeque<EpisodeStats>,
    history: Vec<IterationMetrics>,
    lr: LrSchedule,
    /// Each worker's recent failures (its restart intensity).
    restarts: Vec<RestartWindow>,
}

impl Trainer {
    /// Starts the learner and the workers for environments from `env`.
    /// Fails if the config is invalid, the environment cannot be made or
    /// its spaces are unusable, or the node lacks the resources asked for.
    pub async fn new(rt: &Runtime, env: EnvMaker, config: PpoConfig) -> Result<Trainer, RlError> {
        config.validate()?;
        let probe = env
            .make(0)
            .map_err(|source| RlError::Env { worker: 0, source })?;
        let observation_space = probe.observation_space();
        let action_space = probe.action_space();
        drop(probe);
        for space in [&observation_space, &action_space] {
            space
                .validate()
                .map_err(|source| RlError::Env { worker: 0, source })?;
        }
        let shape = PolicyShape {
            obs_len: observation_space.flat_len(),
            hidden: config.hidden.clone(),
            head: ActionHead::for_space(&action_space)?,
        };

        let gpus = config
            .learner_gpus
            .unwrap_or(if rt.gpus().is_empty() { 0.0 } else { 1.0 });
        let learner = {
            let (rt2, config, shape) = (rt.clone(), config.clone(), shape.clone());
            rt.spawn_actor_with(
                ActorOptions::new().resources(Resources::default().with_gpus(gpus)),
                move || {
                    let (rt, config, shape) = (rt2.clone(), config.clone(), shape.clone());
                    async move { Learner::new(rt, config, shape) }
                },
            )
            .await?
        };

        let worker_resources = if config.num_cpus_per_worker > 0.0 {
            Resources::cpus(config.num_cpus_per_worker)
        } else {
            Resources::default()
        };
        let (supervisor, workers, remote, group) = if config.workers_on_cluster {
            let (workers, remote, group) =
                Self::spawn_on_cluster(rt, &env, &config, &shape, worker_resources).await?;
            (None, workers, remote, group)
        } else {
            let (supervisor, workers) =
                Self::spawn_local(rt, &env, &config, &shape, worker_resources).await?;
            (Some(supervisor), workers, Vec::new(), None)
        };
        let weights = learner.publish().await??;
        tracing::info!(
            env = env.name(),
            workers = config.num_workers,
            envs = config.num_workers * config.envs_per_worker,
            device = %learner.device().await??,
            "PPO trainer started"
        );
        let config_workers = config.num_workers;
        Ok(Trainer {
            rt: rt.clone(),
            config,
            env,
            observation_space,
            action_space,
            shape,
            supervisor,
            workers,
            remote,
            group,
            next_batch: None,
            learner,
            weights,
            version: 0,
            counters: Counters::default(),
            recent: VecDeque::with_capacity(RETURN_WINDOW),
            history: Vec::new(),
            lr: LrSchedule::default(),
            restarts: (0..config_workers)
                .map(|_| RestartWindow::default())
                .collect(),
        })
    }

    /// A trainer restored from a checkpoint, with the checkpoint's config.
    pub async fn from_checkpoint(
        rt: &Runtime,
        env: EnvMaker,
        path: impl AsRef<Path>,
    ) -> Result<Trainer, RlError> {
        let path = path.as_ref();
        let checkpoint = Checkpoint::read(path)?;
        let mut trainer = Trainer::new(rt, env, checkpoint.config.clone()).await?;
        trainer.apply(checkpoint, path).await?;
        Ok(trainer)
    }

    /// A trainer restored from a checkpoint with a config of its own: to
    /// resume with another worker count, budget or hyperparameters. Only
    /// what fixes the model's shape must match the checkpoint
    /// ([`checkpoint::SHAPE_FIELDS`](crate::checkpoint::SHAPE_FIELDS)); the
    /// error names the first that differs.
    ///
    /// ```no_run
    /// # use troupe::prelude::*;
    /// # use troupe_rl::{EnvMaker, PpoConfig, Trainer};
    /// # async fn run(rt: &Runtime) -> Result<(), troupe_rl::RlError> {
    /// let config = PpoConfig::default().num_workers(8).total_env_steps(2_000_000);
    /// let trainer = Trainer::from_checkpoint_with(rt, EnvMaker::cart_pole(), "run.ckpt", config).await?;
    /// # Ok(()) }
    /// ```
    pub async fn from_checkpoint_with(
        rt: &Runtime,
        env: EnvMaker,
        path: impl AsRef<Path>,
        config: PpoConfig,
    ) -> Result<Trainer, RlError> {
        let path = path.as_ref();
        let checkpoint = Checkpoint::read(path)?;
        let mut trainer = Trainer::new(rt, env, config).await?;
        trainer.apply(checkpoint, path).await?;
        Ok(trainer)
    }

    /// Loads a checkpoint into this trainer, which keeps its own config:
    /// the environment, spaces and hidden layers must match the
    /// checkpoint's (the error names the first difference); the worker
    /// count, budget and other settings may differ.
    pub async fn load(&mut self, path: impl AsRef<Path>) -> Result<(), RlError> {
        let path = path.as_ref();
        let checkpoint = Checkpoint::read(path)?;
        self.apply(checkpoint, path).await
    }

    async fn apply(&mut self, checkpoint: Checkpoint, path: &Path) -> Result<(), RlError> {
        checkpoint.check_matches(
            path,
            self.env.name(),
            &self.observation_space,
            &self.action_space,
            &self.config,
        )?;
        self.learner.load_state(checkpoint.learner).await??;
        // A batch sampled in the background acted with the old policy.
        self.next_batch = None;
        self.weights = self.learner.publish().await??;
        self.version += 1;
        self.counters = checkpoint.counters;
        self.recent = checkpoint.recent_episodes.into_iter().collect();
        Ok(())
    }

    /// Loads a checkpoint held in memory (the bytes of a checkpoint file,
    /// or of [`save_to_bytes`](Self::save_to_bytes)), as
    /// [`load`](Self::load) does: this trainer keeps its config.
    pub async fn load_from_bytes(&mut self, bytes: &[u8]) -> Result<(), RlError> {
        let path = Path::new(IN_MEMORY);
        let checkpoint = Checkpoint::decode(bytes, path)?;
        self.apply(checkpoint, path).await
    }

    /// Saves model, optimizer, config, counters and the recent episodes.
    pub async fn save(&self, path: impl AsRef<Path>) -> Result<(), RlError> {
        self.checkpoint().await?.write(path.as_ref())?;
        Ok(())
    }

    /// What [`save`](Self::save) writes, as bytes (the same format: header,
    /// CRC and CBOR payload), for a checkpoint kept elsewhere than in a
    /// file of its own, such as a tuning trial's.
    pub async fn save_to_bytes(&self) -> Result<Vec<u8>, RlError> {
        Ok(self.checkpoint().await?.encode(Path::new(IN_MEMORY))?)
    }

    async fn checkpoint(&self) -> Result<Checkpoint, RlError> {
        Ok(Checkpoint {
            env: self.env.name().to_owned(),
            observation_space: self.observation_space.clone(),
            action_space: self.action_space.clone(),
            config: self.config.clone(),
            counters: self.counters.clone(),
            recent_episodes: self.recent.iter().copied().collect(),
            learner: self.learner.state().await??,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &PpoConfig {
        &self.config
    }

    /// Where training stands.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Every iteration's metrics since this trainer was built.
    pub fn history(&self) -> &[IterationMetrics] {
        &self.history
    }

    /// The device the learner trains on (`Cpu`, `Cuda(0)`, ...).
    pub async fn learner_device(&self) -> Result<String, RlError> {
        self.learner.device().await?
    }

    /// The rollout workers' handles (to watch or kill them). With workers
    /// on the cluster, a respawned worker's handle replaces the lost one;
    /// `workers()[i].info().node` is where worker `i` runs now.
    pub fn workers(&self) -> &[RolloutWorkerHandle] {
        &self.workers
    }

    /// The current weights, in the object store.
    pub fn weights(&self) -> &ObjectRef<Weights> {
        &self.weights
    }

    /// A CPU copy of the current policy (what the workers act with).
    pub async fn policy(&self) -> Result<CpuPolicy, RlError> {
        let weights = self.rt.get(&self.weights).await?;
        CpuPolicy::from_weights(&self.shape, &weights)
    }

    /// Asks every worker for a fragment with the current weights (see
    /// [`sample_all`]).
    async fn sample(&mut self) -> Result<Batch, RlError> {
        sample_all(
            &self.rt,
            &mut self.workers,
            &mut self.remote,
            &mut self.restarts,
            &self.weights,
            self.version,
            &self.config,
        )
        .await
    }

    /// One iteration: every worker samples a fragment with the current
    /// weights, the learner updates on them, and the new weights go to the
    /// store for the next one. With `anneal_lr`, the learning rate anneals
    /// over [`PpoConfig::total_env_steps`]; [`Trainer::train_until`]
    /// anneals over its [`Stop`]'s budget instead.
    pub async fn train(&mut self) -> Result<IterationMetrics, RlError> {
        self.train_within(self.config.total_env_steps).await
    }

    /// One iteration whose learning rate reaches 0 at `horizon` env steps.
    async fn train_within(&mut self, horizon: u64) -> Result<IterationMetrics, RlError> {
        let span = tracing::info_span!(
            "ppo_iteration",
            iteration = self.counters.iteration + 1,
            env = self.env.name()
        );
        self.iterate(horizon).instrument(span).await
    }

    async fn iterate(&mut self, horizon: u64) -> Result<IterationMetrics, RlError> {
        let began = Instant::now();
        let Batch {
            fragments,
            resampled,
            sampled_in,
            version: sampled_with,
        } = match self.next_batch.take() {
            Some(batch) => batch,
            None => self.sample().await?,
        };
        let mut steps = 0u64;
        let mut finished = 0u64;
        for fragment in &fragments {
            let f = self.rt.get(fragment).await?;
            steps += f.rows() as u64;
            finished += f.episodes.len() as u64;
            for e in &f.episodes {
                if self.recent.len() == RETURN_WINDOW {
                    self.recent.pop_front();
                }
                self.recent.push_back(*e);
            }
        }
        let lr = self.lr.rate(&self.config, self.counters.env_steps, horizon);
        metrics::gauge!("troupe_rl_learning_rate").set(lr);
        let policy_lag = self.version - sampled_with;
        let stats: UpdateStats = if self.config.async_sampling {
            // The next batch, with the weights from before this update,
            // while the learner updates.
            let update = self.learner.update(fragments, lr);
            let next = sample_all(
                &self.rt,
                &mut self.workers,
                &mut self.remote,
                &mut self.restarts,
                &self.weights,
                self.version,
                &self.config,
            );
            let (stats, next) = tokio::join!(update, next);
            let stats = stats??;
            self.next_batch = Some(next?);
            stats
        } else {
            self.learner.update(fragments, lr).await??
        };
        self.weights = self.learner.publish().await??;
        self.version += 1;

        let took = began.elapsed();
        self.counters.iteration += 1;
        self.counters.env_steps += steps;
        self.counters.episodes += finished;
        self.counters.worker_restarts += resampled;
        self.counters.train_seconds += took.as_secs_f64();
        let (mean_return, mean_length) = if self.recent.is_empty() {
            (f64::NAN, f64::NAN)
        } else {
            let n = self.recent.len() as f64;
            (
                self.recent.iter().map(|e| e.episode_return).sum::<f64>() / n,
                self.recent.iter().map(|e| e.length as f64).sum::<f64>() / n,
            )
        };
        let m = IterationMetrics {
            iteration: self.counters.iteration,
            env_steps: self.counters.env_steps,
            episodes: self.counters.episodes,
            episode_return_mean: mean_return,
            episode_length_mean: mean_length,
            steps_per_second: steps as f64 / took.as_secs_f64(),
            sampling_steps_per_second: steps as f64 / sampled_in.as_secs_f64(),
            policy_loss: stats.policy_loss,
            value_loss: stats.value_loss,
            entropy: stats.entropy,
            approx_kl: stats.approx_kl,
            clip_fraction: stats.clip_fraction,
            explained_variance: stats.explained_variance,
            learning_rate: stats.learning_rate,
            wall_seconds: self.counters.train_seconds,
            worker_restarts: self.counters.worker_restarts,
            policy_lag,
        };
        metrics::counter!("troupe_rl_iterations_total").increment(1);
        metrics::histogram!("troupe_rl_iteration_seconds").record(took.as_secs_f64());
        metrics::gauge!("troupe_rl_episode_return_mean").set(mean_return);
        tracing::debug!(
            iteration = m.iteration,
            env_steps = m.env_steps,
            mean_return,
            "PPO iteration"
        );
        self.history.push(m.clone());
        Ok(m)
    }

    /// Trains until `stop` says so, reporting each iteration. With
    /// `anneal_lr`, the learning rate anneals to 0 at the stop's env-step
    /// or iteration budget (the nearer one; counted like the stop, from
    /// the trainer's counters), never before its last update; a stop
    /// without either (a return target or wall time alone) anneals over
    /// [`PpoConfig::total_env_steps`].
    pub async fn train_until(
        &mut self,
        stop: &Stop,
        reporter: &mut dyn Reporter,
    ) -> Result<TrainSummary, RlError> {
        let began = Instant::now();
        let horizon = schedule::horizon(
            &self.config,
            stop.env_steps,
            stop.iterations,
            (self.counters.env_steps, self.counters.iteration),
        );
        let result = loop {
            let m = match self.train_within(horizon).await {
                Ok(m) => m,
                Err(err) => break Err(err),
            };
            if let Err(err) = reporter.report(&m) {
                break Err(err);
            }
            if stop.done(&m, began.elapsed()) {
                break Ok(TrainSummary {
                    reached_target: stop.reached(&m),
                    last: m,
                    seconds: began.elapsed().as_secs_f64(),
                });
            }
        };
        reporter.finish(self.history.last())?;
        result
    }

    /// Runs `episodes` evaluation episodes with the current policy acting
    /// deterministically (argmax or mean) on fresh environments seeded
    /// `seed`, `seed + 1`, ... (on a blocking thread). An episode still
    /// running after `eval_max_episode_steps` steps is cut there (as a time
    /// limit would) and counted in [`Evaluation::capped`].
    pub async fn evaluate(&self, episodes: usize, seed: u64) -> Result<Evaluation, RlError> {
        let mut policy = self.policy().await?;
        let maker = self.env.clone();
        let cap = self.config.eval_max_episode_steps;
        let run = move || -> Result<Evaluation, RlError> {
            let env_error = |source| RlError::Env { worker: 0, source };
            let mut eval = Evaluation {
                returns: Vec::with_capacity(episodes),
                lengths: Vec::with_capacity(episodes),
                capped: 0,
            };
            let mut rng = Xoshiro256PlusPlus::seed_from_u64(mix_seed(seed, &[5]));
            let mut out = PolicyOutput::default();
            for episode in 0..episodes {
                let mut env = VecEnv::from_maker(&maker, 0, 1).map_err(env_error)?;
                env.reset(Some(seed.wrapping_add(episode as u64)))
                    .map_err(env_error)?;
                let (mut steps, mut total) = (0u64, 0.0);
                while env.episodes().is_empty() {
                    if steps == cap {
                        eval.capped += 1;
                        break;
                    }
                    policy.act(
                        env.observations(),
                        1,
                        ActMode::Deterministic,
                        &mut rng,
                        &mut out,
                    );
                    let actions = if out.discrete.is_empty() {
                        Actions::Continuous(&out.continuous)
                    } else {
                        Actions::Discrete(&out.discrete)
                    };
                    env.step(actions).map_err(env_error)?;
                    steps += 1;
                    total += env.rewards()[0];
                }
                let (episode_return, length) = match env.episodes().first() {
                    Some(e) => (e.episode_return, e.length),
                    None => (total, steps),
                };
                eval.returns.push(episode_return);
                eval.lengths.push(length);
            }
            Ok(eval)
        };
        tokio::task::spawn_blocking(run)
            .await
            .map_err(|e| RlError::Learner(format!("evaluation thread failed: {e}")))?
    }

    /// Stops the workers: the local workers' supervisor, or the workers
    /// on the cluster and their placement group (the learner stops with
    /// the last handle to it).
    pub async fn shutdown(mut self) {
        if let Some(supervisor) = self.supervisor.take() {
            supervisor.stop(Duration::from_secs(5)).await;
        }
        if !self.remote.is_empty() {
            stop_all(&std::mem::take(&mut self.workers)).await;
        }
        if let Some(group) = self.group.take() {
            self.rt.remove_placement_group(&group).await;
        }
    }
}

impl Drop for Trainer {
    fn drop(&mut self) {
        // A trainer dropped without shutdown() still stops its workers.
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if let Some(supervisor) = self.supervisor.take().filter(|s| s.is_alive()) {
            handle.spawn(async move { supervisor.stop(Duration::from_secs(5)).await });
        }
        if !self.remote.is_empty() {
            let (workers, group, rt) = (
                std::mem::take(&mut self.workers),
                self.group.take(),
                self.rt.clone(),
            );
            handle.spawn(async move {
                stop_all(&workers).await;
                if let Some(group) = group {
                    rt.remove_placement_group(&group).await;
                }
            });
        }
    }
}
