//! Trial schedulers: pure state machines that the tuner asks, after each
//! result, whether a trial goes on, stops early, or (PBT) takes a better
//! trial's checkpoint and config.
//!
//! Every scheduler sees a *score*: the metric as is for [`Mode::Max`],
//! negated for [`Mode::Min`], so that higher is always better. A result
//! whose metric is missing or not finite is not scored (the trial goes
//! on). The schedulers' state is saved with the experiment, so a resumed
//! experiment decides as the interrupted one would have.

mod asha;
mod median;
mod pbt;

pub use asha::Asha;
pub use median::MedianStopping;
pub use pbt::Pbt;

use serde::{Deserialize, Serialize};

use crate::params::Params;

/// Whether the metric is to be maximised or minimised.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Mode {
    /// Higher is better (a reward, an accuracy).
    Max,
    /// Lower is better (a loss).
    Min,
}

impl Mode {
    /// The metric as a score (higher is better).
    pub(crate) fn score(self, metric: f64) -> f64 {
        match self {
            Mode::Max => metric,
            Mode::Min => -metric,
        }
    }

    /// Whether `a` is better than `b`.
    pub(crate) fn better(self, a: f64, b: f64) -> bool {
        self.score(a) > self.score(b)
    }
}

/// What a trial does after a result.
#[derive(Clone, Debug, PartialEq)]
#[must_use]
pub(crate) enum Decision {
    /// Runs its next iteration.
    Continue,
    /// Stops early (ASHA, median stopping).
    Stop,
    /// Has run as long as the scheduler lets any trial run (ASHA's
    /// `max_t`): it ends as complete, not stopped.
    Complete,
    /// Restores `donor`'s last checkpoint, with `params` (the donor's,
    /// perturbed) as its config (PBT).
    Exploit {
        /// The better trial.
        donor: usize,
        /// The new config.
        params: Params,
    },
}

/// How trials are scheduled (Ray's `scheduler=`).
///
/// ```
/// use troupe_tune::{Asha, Scheduler};
/// let s = Scheduler::Asha(Asha::new().max_t(27).grace_period(1).reduction_factor(3.0));
/// # let _ = s;
/// ```
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Scheduler {
    /// Every trial runs to its end, in order (Ray's `FIFOScheduler`).
    #[default]
    Fifo,
    /// Asynchronous successive halving (Ray's `ASHAScheduler`).
    Asha(Asha),
    /// Median stopping rule (Ray's `MedianStoppingRule`).
    MedianStopping(MedianStopping),
    /// Population based training (Ray's `PopulationBasedTraining`).
    Pbt(Pbt),
}

impl Scheduler {
    /// The decision after `trial` reported `score` at `iteration` (from 1),
    /// with `params` its config.
    pub(crate) fn on_result(
        &mut self,
        trial: usize,
        iteration: u64,
        score: f64,
        params: &Params,
    ) -> Decision {
        if !score.is_finite() {
            return Decision::Continue;
        }
        match self {
            Scheduler::Fifo => Decision::Continue,
            Scheduler::Asha(s) => s.on_result(trial, iteration, score),
            Scheduler::MedianStopping(s) => s.on_result(trial, iteration, score),
            Scheduler::Pbt(s) => s.on_result(trial, iteration, score, params),
        }
    }

    /// Forgets what `trial` reported after `iteration` (it is restarted
    /// from a checkpoint at `iteration`, on resume).
    pub(crate) fn rewind(&mut self, trial: usize, iteration: u64) {
        if let Scheduler::MedianStopping(s) = self {
            s.rewind(trial, iteration);
        }
    }

    /// A short name for logs and tables.
    pub fn name(&self) -> &'static str {
        match self {
            Scheduler::Fifo => "fifo",
            Scheduler::Asha(_) => "asha",
            Scheduler::MedianStopping(_) => "median_stopping",
            Scheduler::Pbt(_) => "pbt",
        }
    }

    pub(crate) fn validate(&self) -> Result<(), crate::TuneError> {
        match self {
            Scheduler::Asha(s) => s.validate(),
            Scheduler::Pbt(s) => s.validate(),
            _ => Ok(()),
        }
    }
}
