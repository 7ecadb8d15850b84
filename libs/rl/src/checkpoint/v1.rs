//! Format 1, read only: postcard, fields by position, so its structs are
//! frozen here as they were written. `Space`, `EpisodeStats` and
//! `NamedTensor` are shared with format 2; their postcard layout is part
//! of format 1 (`fixtures/checkpoint_v1.ckpt` and its test guard it).

use std::time::Duration;

use serde::Deserialize;

use super::{Checkpoint, Counters};
use crate::config::PpoConfig;
use crate::env::EpisodeStats;
use crate::learner::{LearnerState, NamedTensor};
use crate::space::Space;

#[derive(Deserialize)]
struct CheckpointV1 {
    env: String,
    observation_space: Space,
    action_space: Space,
    config: ConfigV1,
    counters: CountersV1,
    recent_episodes: Vec<EpisodeStats>,
    learner: LearnerStateV1,
}

#[derive(Deserialize)]
struct LearnerStateV1 {
    variables: Vec<NamedTensor>,
    adam_m: Vec<f32>,
    adam_v: Vec<f32>,
    adam_steps: u64,
    updates: u64,
}

#[derive(Deserialize)]
struct CountersV1 {
    iteration: u64,
    env_steps: u64,
    episodes: u64,
    worker_restarts: u64,
    train_seconds: f64,
}

/// `PpoConfig` as format 1 wrote it, field for field.
#[derive(Deserialize)]
struct ConfigV1 {
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
    clip_coef: f64,
    clip_value_loss: bool,
    entropy_coef: f64,
    value_coef: f64,
    max_grad_norm: f64,
    target_kl: Option<f64>,
    adam_eps: f64,
    num_cpus_per_worker: f64,
    learner_gpus: Option<f64>,
    max_worker_restarts: u32,
    sample_timeout: Duration,
    learner_threads: usize,
}

impl From<ConfigV1> for PpoConfig {
    fn from(c: ConfigV1) -> PpoConfig {
        PpoConfig {
            seed: c.seed,
            num_workers: c.num_workers,
            envs_per_worker: c.envs_per_worker,
            fragment_len: c.fragment_len,
            hidden: c.hidden,
            learning_rate: c.learning_rate,
            anneal_lr: c.anneal_lr,
            total_env_steps: c.total_env_steps,
            gamma: c.gamma,
            gae_lambda: c.gae_lambda,
            update_epochs: c.update_epochs,
            num_minibatches: c.num_minibatches,
            normalize_advantages: c.normalize_advantages,
            clip_coef: c.clip_coef,
            clip_value_loss: c.clip_value_loss,
            entropy_coef: c.entropy_coef,
            value_coef: c.value_coef,
            max_grad_norm: c.max_grad_norm,
            target_kl: c.target_kl,
            adam_eps: c.adam_eps,
            num_cpus_per_worker: c.num_cpus_per_worker,
            learner_gpus: c.learner_gpus,
            max_worker_restarts: c.max_worker_restarts,
            sample_timeout: c.sample_timeout,
            learner_threads: c.learner_threads,
            ..PpoConfig::default()
        }
    }
}

/// Decodes a format-1 payload into the current checkpoint.
pub(super) fn decode(payload: &[u8]) -> Result<Checkpoint, postcard::Error> {
    let c: CheckpointV1 = postcard::from_bytes(payload)?;
    Ok(Checkpoint {
        env: c.env,
        observation_space: c.observation_space,
        action_space: c.action_space,
        config: c.config.into(),
        counters: Counters {
            iteration: c.counters.iteration,
            env_steps: c.counters.env_steps,
            episodes: c.counters.episodes,
            worker_restarts: c.counters.worker_restarts,
            train_seconds: c.counters.train_seconds,
        },
        recent_episodes: c.recent_episodes,
        learner: LearnerState {
            variables: c.learner.variables,
            adam_m: c.learner.adam_m,
            adam_v: c.learner.adam_v,
            adam_steps: c.learner.adam_steps,
            updates: c.learner.updates,
            reward_scaler: Default::default(),
        },
    })
}
