//! The crate's errors: each says what went wrong and what to do.

use std::path::PathBuf;

use troupe::SpawnError;

/// An error of the tuner or of an experiment directory.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TuneError {
    /// The search space or an option cannot be used.
    #[error("invalid {what}: {reason}; fix it and run again")]
    Invalid {
        /// Which dimension or option.
        what: String,
        /// Why it was refused.
        reason: String,
    },
    /// A file of the experiment could not be read or written.
    #[error("{path}: {source}; check that the directory exists, is writable and has space")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// An experiment's state file is missing or unreadable.
    #[error("{path} is not a resumable experiment ({reason}); pass the directory a `Tuner` wrote")]
    State {
        /// The state file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A trial's actor could not be spawned (its resources can never fit,
    /// or the runtime is shut down).
    #[error("trial {trial} could not start: {source}; lower TuneOptions::resources_per_trial or start a runtime with more")]
    Spawn {
        /// The trial.
        trial: usize,
        /// The runtime's answer (boxed: it is large).
        #[source]
        source: Box<SpawnError>,
    },
    /// No trial reported the metric asked for.
    #[error("no trial reported metric `{metric}`; check the name your trainable reports")]
    NoResults {
        /// The metric.
        metric: String,
    },
    /// A plot could not be drawn.
    #[error("cannot draw {path}: {reason}")]
    Plot {
        /// The image's path.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

impl TuneError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        TuneError::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn invalid(what: impl Into<String>, reason: impl Into<String>) -> Self {
        TuneError::Invalid {
            what: what.into(),
            reason: reason.into(),
        }
    }
}

/// An error a trainable returns (a returned error fails the trial at once;
/// a panic is retried up to `max_failures`).
#[derive(Clone, Debug, PartialEq, thiserror::Error, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub enum TrainableError {
    /// A hyperparameter is missing or of another type.
    #[error("parameter `{name}`: wanted {wanted}, found {found}; add it to the search space")]
    Param {
        /// Its name.
        name: String,
        /// The type asked for.
        wanted: String,
        /// What the config holds.
        found: String,
    },
    /// A checkpoint could not be made or read.
    #[error("checkpoint: {0}")]
    Checkpoint(String),
    /// The trainable's own failure.
    #[error("{0}")]
    Failed(String),
}
