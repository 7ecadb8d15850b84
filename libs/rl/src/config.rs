//! [`PpoConfig`]: every knob of the trainer, with documented defaults.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use troupe::prelude::PlacementStrategy;

use crate::error::RlError;

/// Where rollout workers on the cluster go
/// ([`PpoConfig::workers_on_cluster`]).
///
/// ```
/// use troupe::prelude::PlacementStrategy;
/// use troupe_rl::{PpoConfig, WorkerPlacement};
/// // One worker per node, or the trainer fails to start (after
/// // placement_timeout) rather than doubling workers up. The default
/// // spreads them as far as the nodes allow.
/// let config = PpoConfig::default()
///     .workers_on_cluster(true)
///     .worker_placement(WorkerPlacement::Group(PlacementStrategy::StrictSpread));
/// config.validate()?;
/// # Ok::<(), troupe_rl::RlError>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum WorkerPlacement {
    /// Into a placement group the trainer reserves when it starts
    /// (default: `Group(PlacementStrategy::Spread)`): one bundle of
    /// `num_cpus_per_worker` CPUs per worker, spread over the nodes by this
    /// strategy; worker `i` lives in bundle `i`, and a respawned worker
    /// goes back into its bundle (reserved again on a live node when its
    /// node died). The reservation asks each node, so workers never queue
    /// on a full node while another has room. The trainer removes the
    /// group at [`Trainer::shutdown`](crate::Trainer::shutdown).
    Group(PlacementStrategy),
    /// Each worker spawned on a node the cluster picks for its
    /// `num_cpus_per_worker` CPUs (the driver's own node included, if it
    /// offers CPUs), as any actor spawned on the cluster, one after
    /// another. The cluster picks by the free resources it last heard of
    /// (heartbeats, every 200 ms by default): a worker spawned right after
    /// another may queue on the same full node while another has room.
    /// Prefer a group, unless nodes have room to spare.
    Resources,
}

impl Default for WorkerPlacement {
    fn default() -> Self {
        WorkerPlacement::Group(PlacementStrategy::Spread)
    }
}

/// The configuration of a PPO [`Trainer`](crate::Trainer): a builder whose
/// setters have the fields' names.
///
/// The defaults solve `CartPole-v1` quickly in wall time. They start from
/// RL Baselines3 Zoo's tuned CartPole PPO (32 steps per environment per
/// update, one minibatch, γ = 0.98, λ = 0.8, no entropy bonus, linear
/// learning-rate annealing) with twice its environments (2 workers × 8),
/// half its epochs (10) and four times its learning rate (4e-3). On the
/// 2-core machine this was tuned on (8 seeds per setting), that needed
/// about 60% of the gradient steps of Zoo's settings for a few more env
/// steps: updates, not sampling, are where the time goes. The network and
/// optimizer are CleanRL `ppo.py`'s (64-64 `tanh`, orthogonal init; Adam
/// with ε = 1e-5, gradient norm clipped to 0.5, advantages normalised per
/// minibatch). [`PpoConfig::cleanrl`] gives CleanRL's own defaults.
///
/// ```
/// use troupe_rl::PpoConfig;
/// let config = PpoConfig::default()
///     .num_workers(2)
///     .envs_per_worker(8)
///     .learning_rate(3e-4)
///     .seed(7);
/// config.validate()?;
/// assert_eq!(config.batch_size(), 2 * 8 * 32);
/// # Ok::<(), troupe_rl::RlError>(())
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PpoConfig {
    /// Seeds the environments, the workers' sampling, the initial weights
    /// and the minibatch order (default 0). For runs that repeat bit for
    /// bit, also set `MKL_CBWR=COMPATIBLE`: libtorch's MKL otherwise picks
    /// kernels by memory alignment, which changes rounding.
    pub seed: u64,
    /// Rollout worker actors (default 2: one per core of a small machine).
    pub num_workers: usize,
    /// Environments each worker steps together (default 8).
    pub envs_per_worker: usize,
    /// Steps per environment in one fragment (default 32).
    pub fragment_len: usize,
    /// Hidden layer widths of actor and critic (default `[64, 64]`).
    pub hidden: Vec<usize>,
    /// Adam's learning rate (default 4e-3).
    pub learning_rate: f64,
    /// Anneal the learning rate linearly to 0 over the run's budget
    /// (default true): the env-step or iteration limit of the
    /// [`Stop`](crate::Stop) given to
    /// [`Trainer::train_until`](crate::Trainer::train_until), else
    /// `total_env_steps`. `false` keeps it constant.
    pub anneal_lr: bool,
    /// The step budget the annealing spans when the run has none of its
    /// own: bare [`Trainer::train`](crate::Trainer::train) calls, or a
    /// stop with only a return target or a wall time (default 200,000).
    /// Training past it goes on at a learning rate of 0, with a warning.
    pub total_env_steps: u64,
    /// Discount γ (default 0.98).
    pub gamma: f64,
    /// GAE's λ (default 0.8).
    pub gae_lambda: f64,
    /// Passes over each batch (default 10).
    pub update_epochs: usize,
    /// Minibatches per pass (default 1).
    pub num_minibatches: usize,
    /// Normalise advantages per minibatch (default true).
    pub normalize_advantages: bool,
    /// Divide rewards by the running standard deviation of the discounted
    /// return (Gymnasium's `NormalizeReward`, as CleanRL's continuous PPO;
    /// default false). The learner keeps the statistics, per environment,
    /// and scales each fragment's rewards after adding it to them; the
    /// reported episode returns stay unscaled. Helps where rewards are
    /// large, as in Pendulum-v1.
    pub normalize_rewards: bool,
    /// PPO's clip range ε for the ratio (default 0.2).
    pub clip_coef: f64,
    /// Clip the value loss around the old values with `clip_coef` (default
    /// false).
    pub clip_value_loss: bool,
    /// Entropy bonus coefficient (default 0).
    pub entropy_coef: f64,
    /// Value loss coefficient (default 0.5).
    pub value_coef: f64,
    /// Global gradient-norm clip (default 0.5).
    pub max_grad_norm: f64,
    /// Stop an update's epochs early once the approximate KL exceeds this
    /// (default none). As in CleanRL's `ppo.py`, the check comes after each
    /// whole epoch, on the approximate KL of its last minibatch: an epoch
    /// once begun is finished.
    pub target_kl: Option<f64>,
    /// Adam's ε (default 1e-5).
    pub adam_eps: f64,
    /// CPUs each worker asks the runtime for (default 1).
    pub num_cpus_per_worker: f64,
    /// Run the rollout workers on the nodes of the cluster the runtime
    /// belongs to (default false: on this node, children of a local
    /// supervisor). Each worker is an actor spawned through its registered
    /// constructor, placed by `num_cpus_per_worker` or into a placement
    /// group ([`worker_placement`](Self::worker_placement)); it builds its
    /// environments by name, so the [`EnvMaker`](crate::EnvMaker) must be
    /// a registered one (built in, or
    /// [`register_env!`](crate::register_env)). Weights reach the workers
    /// and fragments the learner through the object store. A worker lost
    /// with its node (or that panics, or hangs past `sample_timeout`) is
    /// respawned by the trainer on a live node, and its fragment sampled
    /// again, within the same `max_worker_restarts` per
    /// `worker_restart_window` as local workers. A worker samples the same
    /// wherever it runs, so without failures the training is the same as
    /// with local workers, iteration for iteration. Sampling stays
    /// synchronous unless [`async_sampling`](Self::async_sampling) is on.
    /// Needs a runtime that joined a cluster (Troupe's `cluster` feature;
    /// troupe-rl's `cluster` feature turns it on): see the `ppo_cluster`
    /// example.
    pub workers_on_cluster: bool,
    /// Sample the next batch while the learner updates on this one
    /// (default false). The workers then act with the weights from before
    /// the update: every batch but the first is exactly one update stale
    /// (`IterationMetrics::policy_lag` is 1), never more. PPO's ratio is
    /// taken against the log-probabilities the workers recorded, so the
    /// clip still bounds each step from the policy that acted. Sampling
    /// and learning overlap, which pays where they run on different
    /// cores or nodes (workers on the cluster, a GPU learner). The batch
    /// sampled during the last update is kept for the next iteration; a
    /// checkpoint loaded into the trainer discards it, as does
    /// [`Trainer::shutdown`](crate::Trainer::shutdown) (its steps are
    /// not counted).
    pub async_sampling: bool,
    /// Where workers on the cluster go (default: a placement group of one
    /// bundle per worker, [`PlacementStrategy::Spread`]); only with
    /// `workers_on_cluster`.
    pub worker_placement: WorkerPlacement,
    /// How long starting a worker on the cluster may take: reserving the
    /// placement group, and each spawn or respawn (default 60 s). Past it
    /// the trainer fails to start, or training stops, with an error that
    /// says what did not fit.
    pub placement_timeout: Duration,
    /// GPUs the learner asks for: `None` (default) means one if the node
    /// has any, else none; the learner runs on `troupe::gpu::device()`.
    pub learner_gpus: Option<f64>,
    /// Failures (panics, kills, hangs) each worker may have within
    /// `worker_restart_window` (default 3): each restarts the worker and
    /// samples its fragment again; one more within the window stops
    /// training with an error. OTP's restart intensity, per worker, so a
    /// long run survives occasional failures however many there are in
    /// all.
    pub max_worker_restarts: u32,
    /// The sliding window `max_worker_restarts` counts over (default 60 s).
    pub worker_restart_window: Duration,
    /// How long one fragment may take (default 60 s). A worker that has not
    /// answered by then is taken as hung: it is killed, its supervisor
    /// replaces it, and its fragment is sampled again (a failure counted
    /// against `max_worker_restarts`).
    pub sample_timeout: Duration,
    /// libtorch threads for the learner (default 1: the model is small and
    /// the workers have the other cores). libtorch's thread count is
    /// process-wide: the learner sets it when it starts.
    pub learner_threads: usize,
    /// Steps after which [`Trainer::evaluate`](crate::Trainer::evaluate)
    /// cuts an episode that has not ended (default 100,000), so that a
    /// policy that never ends an episode cannot hang it.
    pub eval_max_episode_steps: u64,
}

impl Default for PpoConfig {
    fn default() -> Self {
        PpoConfig {
            seed: 0,
            num_workers: 2,
            envs_per_worker: 8,
            fragment_len: 32,
            hidden: vec![64, 64],
            learning_rate: 4e-3,
            anneal_lr: true,
            total_env_steps: 200_000,
            gamma: 0.98,
            gae_lambda: 0.8,
            update_epochs: 10,
            num_minibatches: 1,
            normalize_advantages: true,
            normalize_rewards: false,
            clip_coef: 0.2,
            clip_value_loss: false,
            entropy_coef: 0.0,
            value_coef: 0.5,
            max_grad_norm: 0.5,
            target_kl: None,
            adam_eps: 1e-5,
            num_cpus_per_worker: 1.0,
            workers_on_cluster: false,
            async_sampling: false,
            worker_placement: WorkerPlacement::default(),
            placement_timeout: Duration::from_secs(60),
            learner_gpus: None,
            max_worker_restarts: 3,
            worker_restart_window: Duration::from_secs(60),
            sample_timeout: Duration::from_secs(60),
            learner_threads: 1,
            eval_max_episode_steps: 100_000,
        }
    }
}

macro_rules! setters {
    ($($name:ident: $ty:ty),* $(,)?) => {
        impl PpoConfig {
            $(
                #[doc = concat!("Sets [`", stringify!($name), "`](Self::", stringify!($name), ").")]
                pub fn $name(mut self, value: $ty) -> Self {
                    self.$name = value;
                    self
                }
            )*

            /// Every field as `(name, value)`, in declaration order.
            pub fn fields(&self) -> Vec<(&'static str, String)> {
                vec![$((stringify!($name), format!("{:?}", self.$name))),*]
            }
        }
    };
}

setters! {
    seed: u64,
    num_workers: usize,
    envs_per_worker: usize,
    fragment_len: usize,
    hidden: Vec<usize>,
    learning_rate: f64,
    anneal_lr: bool,
    total_env_steps: u64,
    gamma: f64,
    gae_lambda: f64,
    update_epochs: usize,
    num_minibatches: usize,
    normalize_advantages: bool,
    normalize_rewards: bool,
    clip_coef: f64,
    clip_value_loss: bool,
    entropy_coef: f64,
    value_coef: f64,
    max_grad_norm: f64,
    target_kl: Option<f64>,
    adam_eps: f64,
    num_cpus_per_worker: f64,
    workers_on_cluster: bool,
    async_sampling: bool,
    worker_placement: WorkerPlacement,
    placement_timeout: Duration,
    learner_gpus: Option<f64>,
    max_worker_restarts: u32,
    worker_restart_window: Duration,
    sample_timeout: Duration,
    learner_threads: usize,
    eval_max_episode_steps: u64,
}

impl PpoConfig {
    /// CleanRL `ppo.py`'s defaults for classic control: 4 environments ×
    /// 128 steps, 4 epochs of 4 minibatches, learning rate 2.5e-4 annealed
    /// over 500,000 steps, γ = 0.99, λ = 0.95, clipped value loss, entropy
    /// coefficient 0.01.
    pub fn cleanrl() -> PpoConfig {
        PpoConfig {
            num_workers: 2,
            envs_per_worker: 2,
            fragment_len: 128,
            learning_rate: 2.5e-4,
            total_env_steps: 500_000,
            gamma: 0.99,
            gae_lambda: 0.95,
            update_epochs: 4,
            num_minibatches: 4,
            clip_value_loss: true,
            entropy_coef: 0.01,
            ..PpoConfig::default()
        }
    }

    /// Environment steps per update: workers × envs × fragment length.
    pub fn batch_size(&self) -> usize {
        self.num_workers * self.envs_per_worker * self.fragment_len
    }

    /// Checks every value; the error names the field and says what is allowed.
    pub fn validate(&self) -> Result<(), RlError> {
        let bad = |field: &'static str, reason: &str| {
            Err(RlError::Config {
                field,
                reason: reason.to_owned(),
            })
        };
        for (field, n) in [
            ("num_workers", self.num_workers),
            ("envs_per_worker", self.envs_per_worker),
            ("fragment_len", self.fragment_len),
            ("update_epochs", self.update_epochs),
            ("num_minibatches", self.num_minibatches),
            ("learner_threads", self.learner_threads),
        ] {
            if n == 0 {
                return bad(field, "must be at least 1");
            }
        }
        if self.hidden.is_empty() || self.hidden.contains(&0) {
            return bad(
                "hidden",
                "must list at least one layer width, none of them 0",
            );
        }
        if !(self.learning_rate > 0.0 && self.learning_rate.is_finite()) {
            return bad("learning_rate", "must be positive and finite");
        }
        for (field, v) in [("gamma", self.gamma), ("gae_lambda", self.gae_lambda)] {
            if !(0.0..=1.0).contains(&v) {
                return bad(field, "must be in [0, 1]");
            }
        }
        if self.num_minibatches > self.batch_size() {
            return bad(
                "num_minibatches",
                "exceeds the batch size (num_workers × envs_per_worker × fragment_len)",
            );
        }
        if !(self.clip_coef > 0.0 && self.clip_coef.is_finite()) {
            return bad("clip_coef", "must be positive and finite");
        }
        for (field, v) in [
            ("entropy_coef", self.entropy_coef),
            ("value_coef", self.value_coef),
            ("max_grad_norm", self.max_grad_norm),
            ("adam_eps", self.adam_eps),
            ("num_cpus_per_worker", self.num_cpus_per_worker),
        ] {
            if !(v >= 0.0 && v.is_finite()) {
                return bad(field, &format!("must be finite and not negative, not {v}"));
            }
        }
        for (field, v) in [
            ("max_grad_norm", self.max_grad_norm),
            ("adam_eps", self.adam_eps),
        ] {
            if v == 0.0 {
                return bad(field, "must be positive");
            }
        }
        if let Some(kl) = self.target_kl {
            if !(kl > 0.0 && kl.is_finite()) {
                return bad("target_kl", "must be positive and finite");
            }
        }
        if let Some(gpus) = self.learner_gpus {
            if !(gpus >= 0.0 && gpus.is_finite()) {
                return bad("learner_gpus", "must be finite and not negative");
            }
        }
        if self.anneal_lr && self.total_env_steps == 0 {
            return bad("total_env_steps", "must be positive when anneal_lr is on");
        }
        if self.sample_timeout.is_zero() {
            return bad("sample_timeout", "must be positive");
        }
        if self.worker_restart_window.is_zero() {
            return bad("worker_restart_window", "must be positive");
        }
        if self.eval_max_episode_steps == 0 {
            return bad("eval_max_episode_steps", "must be at least 1");
        }
        if self.placement_timeout.is_zero() {
            return bad("placement_timeout", "must be positive");
        }
        if let (true, WorkerPlacement::Group(_)) = (self.workers_on_cluster, self.worker_placement)
        {
            if self.num_cpus_per_worker <= 0.0 {
                return bad(
                    "worker_placement",
                    "reserves num_cpus_per_worker CPUs per worker, which is 0: set num_cpus_per_worker above 0, or use WorkerPlacement::Resources",
                );
            }
        }
        Ok(())
    }

    /// The first field whose value differs from `other`'s: `(name, ours,
    /// theirs)`.
    pub fn first_difference(&self, other: &PpoConfig) -> Option<(&'static str, String, String)> {
        self.fields()
            .into_iter()
            .zip(other.fields())
            .find(|((_, a), (_, b))| a != b)
            .map(|((name, a), (_, b))| (name, a, b))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_bad_values_are_named() {
        PpoConfig::default().validate().unwrap();
        PpoConfig::cleanrl().validate().unwrap();
        let err = PpoConfig::default().gamma(1.5).validate().unwrap_err();
        assert!(
            matches!(err, RlError::Config { field: "gamma", .. }),
            "{err}"
        );
        let err = PpoConfig::default().hidden(vec![]).validate().unwrap_err();
        assert!(
            matches!(
                err,
                RlError::Config {
                    field: "hidden",
                    ..
                }
            ),
            "{err}"
        );
        let err = PpoConfig::default()
            .entropy_coef(f64::NAN)
            .validate()
            .unwrap_err();
        assert!(
            matches!(
                err,
                RlError::Config {
                    field: "entropy_coef",
                    ..
                }
            ),
            "{err}"
        );
        let err = PpoConfig::default().num_workers(0).validate().unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid PPO config: num_workers must be at least 1"
        );
    }

    #[test]
    fn a_placement_group_needs_cpus() {
        let group = WorkerPlacement::Group(PlacementStrategy::Spread);
        assert_eq!(PpoConfig::default().worker_placement, group);
        // Local workers take no group: any placement goes.
        PpoConfig::default()
            .num_cpus_per_worker(0.0)
            .validate()
            .unwrap();
        let err = PpoConfig::default()
            .workers_on_cluster(true)
            .worker_placement(group)
            .num_cpus_per_worker(0.0)
            .validate()
            .unwrap_err();
        assert!(err.to_string().contains("num_cpus_per_worker"), "{err}");
        PpoConfig::default()
            .workers_on_cluster(true)
            .worker_placement(WorkerPlacement::Resources)
            .num_cpus_per_worker(0.0)
            .validate()
            .unwrap();
        PpoConfig::default()
            .workers_on_cluster(true)
            .worker_placement(group)
            .validate()
            .unwrap();
    }

    #[test]
    fn differences_name_the_field() {
        let a = PpoConfig::default();
        assert_eq!(a.first_difference(&a.clone()), None);
        let (name, ours, theirs) = a.first_difference(&a.clone().hidden(vec![32])).unwrap();
        assert_eq!(
            (name, ours.as_str(), theirs.as_str()),
            ("hidden", "[64, 64]", "[32]")
        );
    }
}
