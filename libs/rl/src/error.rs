//! The library's error type: each variant says what went wrong and, where
//! it helps, what to do.

use std::path::PathBuf;
use std::time::Duration;

use troupe::{ActorError, ObjectError, SpawnError};

use crate::checkpoint::CheckpointError;
use crate::env::EnvError;

/// Everything that can go wrong while building, training, saving or
/// restoring a trainer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RlError {
    /// An environment failed (a bad action, a NaN observation, an error of
    /// a user's env). Retrying would fail the same way, so training stops.
    #[error("rollout worker {worker}: {source}")]
    Env {
        /// The worker whose environment failed.
        worker: usize,
        /// What went wrong, naming the environment.
        #[source]
        source: EnvError,
    },
    /// A configuration value makes no sense.
    #[error("invalid PPO config: {field} {reason}")]
    Config {
        /// The `PpoConfig` field at fault.
        field: &'static str,
        /// What is allowed, or why the value cannot work.
        reason: String,
    },
    /// The environment's action space is one no policy here can act in.
    #[error("unsupported action space {space}: {reason}")]
    UnsupportedSpace {
        /// The space, as the environment describes it.
        space: String,
        /// Why, and what is supported.
        reason: String,
    },
    /// Weights that do not fit the policy's shape.
    #[error("the weights do not fit the policy: {0}")]
    WeightsMismatch(String),
    /// libtorch reported an error.
    #[error("libtorch: {0}")]
    Torch(String),
    /// The object store refused or lost an object.
    #[error("object store: {0}")]
    Object(#[from] ObjectError),
    /// A worker failed more often than its restart intensity allows
    /// (`max_worker_restarts` within `worker_restart_window`), or died.
    #[error("rollout worker {worker} failed and could not be recovered after {attempts} attempts: {cause}; training stopped (fix what makes it fail, or raise max_worker_restarts or shorten worker_restart_window)")]
    WorkerFailed {
        /// Which worker.
        worker: usize,
        /// Sampling attempts made for this fragment.
        attempts: u32,
        /// The last error.
        cause: String,
    },
    /// The learner actor failed.
    #[error("the learner failed: {0}")]
    Learner(String),
    /// A call took longer than allowed.
    #[error("{what} did not answer within {after:?}; training stopped instead of hanging (raise sample_timeout if fragments are slow)")]
    Timeout {
        /// What was waited for.
        what: String,
        /// How long.
        after: Duration,
    },
    /// Spawning the workers or the learner failed.
    #[error("could not start the trainer's actors: {0}")]
    Spawn(#[from] SpawnError),
    /// A checkpoint could not be written or read.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// A file could not be written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// Rollout workers on other nodes were asked for with an environment
    /// made from a closure, which cannot travel between processes.
    #[error("rollout workers on other nodes (workers_on_cluster) make their environments by name, and {env:?} was made from a closure (EnvMaker::new), which cannot reach another process; register it with troupe_rl::register_env!({env:?}, |index| ...) and make it with EnvMaker::by_id({env:?}), or leave workers_on_cluster off")]
    EnvNotRegistered {
        /// The environment's name.
        env: String,
    },
    /// The rollout workers could not be placed on the cluster: no cluster,
    /// a placement group that does not fit, a spawn that did not finish.
    #[error("rollout workers on the cluster: {reason}")]
    Placement {
        /// What did not fit or failed, and what to do.
        reason: String,
    },
    /// The learning-curve image could not be drawn.
    #[error("could not draw {path}: {reason}")]
    Plot {
        /// The image file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

impl From<troupe::gpu::tch::TchError> for RlError {
    fn from(err: troupe::gpu::tch::TchError) -> Self {
        RlError::Torch(err.to_string())
    }
}

impl From<troupe::gpu::GpuError> for RlError {
    fn from(err: troupe::gpu::GpuError) -> Self {
        RlError::Torch(err.to_string())
    }
}

impl From<ActorError> for RlError {
    fn from(err: ActorError) -> Self {
        RlError::Learner(err.to_string())
    }
}
