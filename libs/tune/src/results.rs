//! What an experiment gives back: each trial's status, config, results and
//! last checkpoint, and the best trial by the experiment's metric.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::TuneError;
use crate::params::Params;
use crate::scheduler::Mode;
use crate::store::{Checkpoint, Report};
use crate::trainable::Metrics;

/// Where a trial stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum TrialStatus {
    /// Not started yet (or to be restarted from its checkpoint on resume).
    Pending,
    /// Running (in a state file: it was running when the experiment
    /// stopped, and is restarted from its checkpoint on resume).
    Running,
    /// Ran to its end (its trainable said done, or it reached the last
    /// iteration).
    Terminated,
    /// Stopped early by the scheduler.
    Stopped,
    /// Failed: its trainable returned an error, or panicked more than
    /// `max_failures` times.
    Errored,
}

impl TrialStatus {
    /// Whether the trial will not run again.
    pub fn is_finished(self) -> bool {
        matches!(
            self,
            TrialStatus::Terminated | TrialStatus::Stopped | TrialStatus::Errored
        )
    }
}

/// One trial's outcome.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct TrialResult {
    /// The trial's number (its directory is `trial_<id>`).
    pub id: usize,
    /// Its last config (PBT changes it).
    pub params: Params,
    /// Where it stands.
    pub status: TrialStatus,
    /// The error (a panic message, or the trainable's error), if it errored.
    pub error: Option<String>,
    /// Failures retried from a checkpoint (panics, its node's death).
    pub failures: u32,
    /// The node its actor ran its last iteration on (this node unless
    /// trials run on the cluster; `None` before its first iteration).
    pub node: Option<troupe::NodeId>,
    /// Every iteration's report, in order.
    pub history: Vec<Report>,
    /// Its last checkpoint, if it made one.
    pub checkpoint: Option<Checkpoint>,
    /// Its directory.
    pub dir: PathBuf,
}

impl TrialResult {
    /// The last iteration's metrics.
    pub fn last(&self) -> Option<&Metrics> {
        self.history.last().map(|r| &r.metrics)
    }

    /// The iteration of its last report (0 before any).
    pub fn iteration(&self) -> u64 {
        self.history.last().map_or(0, |r| r.iteration)
    }
}

/// The outcome of [`Tuner::fit`](crate::Tuner::fit): every trial, and the
/// best one by the metric's last reported value (Ray's `ResultGrid`,
/// scope `"last"`).
#[derive(Clone, Debug)]
pub struct ResultGrid {
    pub(crate) dir: PathBuf,
    pub(crate) metric: String,
    pub(crate) mode: Mode,
    pub(crate) trials: Vec<TrialResult>,
    pub(crate) interrupted: bool,
}

impl ResultGrid {
    /// Every trial, by id.
    pub fn trials(&self) -> &[TrialResult] {
        &self.trials
    }

    /// The experiment directory (pass it to
    /// [`Tuner::resume`](crate::Tuner::resume)).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether [`StopHandle::stop`](crate::StopHandle::stop) ended the
    /// experiment before all its trials finished.
    pub fn interrupted(&self) -> bool {
        self.interrupted
    }

    /// The trials that errored.
    pub fn errors(&self) -> impl Iterator<Item = &TrialResult> {
        self.trials
            .iter()
            .filter(|t| t.status == TrialStatus::Errored)
    }

    /// The trial whose last value of the metric is best (ties: the lowest
    /// id).
    pub fn best(&self) -> Result<&TrialResult, TuneError> {
        let value = |t: &TrialResult| {
            t.last()
                .and_then(|m| m.get(&self.metric))
                .filter(|v| !v.is_nan())
        };
        self.trials
            .iter()
            .filter_map(|t| value(t).map(|v| (t, v)))
            .fold(
                None,
                |best: Option<(&TrialResult, f64)>, (t, v)| match best {
                    Some((_, b)) if !self.mode.better(v, b) => best,
                    _ => Some((t, v)),
                },
            )
            .map(|(t, _)| t)
            .ok_or_else(|| TuneError::NoResults {
                metric: self.metric.clone(),
            })
    }
}
