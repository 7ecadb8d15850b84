//! Errors of troupe-train, each saying what to do about it.

use std::path::PathBuf;

/// What a training loop returns on failure: any error (`?` converts
/// [`TrainError`], [`tch::TchError`], `std::io::Error`, ...). A loop that
/// returns one fails its attempt like a panic does: the group restarts from
/// the last checkpoint while the failure budget lasts.
pub type LoopError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Why training, a collective or a checkpoint failed.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// The configuration cannot be run.
    #[error("invalid trainer configuration: {0}")]
    Config(String),
    /// Another worker of the group failed, or the group was stopped, while
    /// this one waited in a collective or a report. Return it from the
    /// training loop (`?` does): the trainer restarts the group.
    #[error("the worker group was aborted ({0}); return this error from the training loop")]
    Aborted(String),
    /// A collective waited longer than `TrainerConfig::collective_timeout`
    /// for the other workers: one of them is stuck or skipped the call
    /// (every rank must make the same collective calls in the same order).
    #[error("a collective waited more than {0:?} for the other workers; every rank must make the same collective calls in the same order")]
    CollectiveTimeout(std::time::Duration),
    /// The ranks of a collective passed tensors that do not match.
    #[error("collective mismatch: {0}; every rank must pass tensors of the same shape and kind")]
    Mismatch(String),
    /// A message between workers on different nodes could not be sent or
    /// read (a node died, or the cluster's links failed): the group
    /// restarts from its last checkpoint while the failure budget lasts.
    #[error("a message between workers failed: {0}")]
    Transport(String),
    /// An operation on a tensor failed in libtorch.
    #[error("tensor operation failed: {0}")]
    Tensor(#[from] tch::TchError),
    /// Reading or writing the storage directory failed.
    #[error("{what} {path}: {source}; check that the storage directory is writable and has space")]
    Io {
        /// What was done.
        what: &'static str,
        /// Where.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A checkpoint directory is incomplete or not a troupe-train checkpoint.
    #[error("{path} is not a valid checkpoint: {reason}; pass a `checkpoint_NNNNNN` directory that fit() wrote")]
    BadCheckpoint {
        /// The directory.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A report carried a checkpoint but the trainer has no storage.
    #[error("a report carried a checkpoint but no storage directory is set; call TrainerConfig::storage_path")]
    NoStorage,
    /// The worker group could not be started.
    #[error("starting the worker group failed: {0}; check that the runtime has the resources per worker times the number of workers")]
    Start(String),
    /// Workers failed more often than `TrainerConfig::max_failures` allows.
    #[error("training failed {failures} times (max_failures {max_failures}); last failure, rank {rank}: {message}")]
    Failed {
        /// Failures so far, this one included.
        failures: u32,
        /// The budget.
        max_failures: u32,
        /// The rank that failed last.
        rank: usize,
        /// Its error or panic message.
        message: String,
    },
}

impl TrainError {
    pub(crate) fn io(what: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        TrainError::Io {
            what,
            path: path.into(),
            source,
        }
    }
}
