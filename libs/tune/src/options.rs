//! How an experiment runs ([`TuneOptions`], Ray's `TuneConfig` and
//! `RunConfig` together).

use std::path::PathBuf;

use troupe::Resources;

use crate::error::TuneError;
use crate::scheduler::{Mode, Scheduler};

/// An experiment's settings.
///
/// ```
/// use troupe_tune::{Asha, Mode, Scheduler, TuneOptions};
/// let options = TuneOptions::new("loss", Mode::Min)
///     .num_samples(16)
///     .seed(42)
///     .max_concurrent(2)
///     .max_failures(2)
///     .scheduler(Scheduler::Asha(Asha::new().max_t(20)))
///     .dir("/tmp/my_experiment")
///     .progress(false);
/// # let _ = options;
/// ```
#[derive(Clone, Debug)]
pub struct TuneOptions {
    pub(crate) metric: String,
    pub(crate) mode: Mode,
    pub(crate) num_samples: usize,
    pub(crate) seed: u64,
    pub(crate) max_concurrent: usize,
    pub(crate) resources: Resources,
    pub(crate) max_failures: u32,
    pub(crate) max_iterations: Option<u64>,
    pub(crate) checkpoint_every: u64,
    pub(crate) checkpoint_at_end: bool,
    pub(crate) scheduler: Scheduler,
    pub(crate) dir: PathBuf,
    pub(crate) progress: bool,
    pub(crate) plots: bool,
    pub(crate) on_cluster: bool,
}

impl TuneOptions {
    /// Tunes for `metric` (a name the trainable reports) in `mode`. The
    /// rest: 1 sample, seed 0, as many trials at once as the machine has
    /// cores (and resources allow), 1 CPU per trial, no retries, no
    /// iteration limit, a checkpoint after every iteration and at the
    /// end, FIFO, the
    /// directory `tune_results`, a progress table and plots.
    pub fn new(metric: impl Into<String>, mode: Mode) -> Self {
        TuneOptions {
            metric: metric.into(),
            mode,
            num_samples: 1,
            seed: 0,
            max_concurrent: std::thread::available_parallelism().map_or(1, |n| n.get()),
            resources: Resources::cpus(1.0),
            max_failures: 0,
            max_iterations: None,
            checkpoint_every: 1,
            checkpoint_at_end: true,
            scheduler: Scheduler::Fifo,
            dir: PathBuf::from("tune_results"),
            progress: true,
            plots: true,
            on_cluster: false,
        }
    }

    /// Samples of the search space (each over its whole grid).
    pub fn num_samples(mut self, n: usize) -> Self {
        self.num_samples = n;
        self
    }

    /// The seed of the random dimensions (and of PBT's draws, unless it
    /// has its own).
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// The most trials running at once (Ray's `max_concurrent_trials`).
    pub fn max_concurrent(mut self, n: usize) -> Self {
        self.max_concurrent = n;
        self
    }

    /// What each trial's actor holds from the node while it runs (Ray's
    /// `resources_per_trial`); trials wait for them.
    pub fn resources_per_trial(mut self, resources: Resources) -> Self {
        self.resources = resources;
        self
    }

    /// How many panics of a trial are retried from its last checkpoint
    /// before it is marked errored (Ray's `FailureConfig.max_failures`).
    pub fn max_failures(mut self, n: u32) -> Self {
        self.max_failures = n;
        self
    }

    /// Ends each trial after this many iterations (Ray's
    /// `stop={"training_iteration": n}`).
    pub fn max_iterations(mut self, n: u64) -> Self {
        self.max_iterations = Some(n);
        self
    }

    /// A checkpoint every `n` iterations (Ray's `checkpoint_frequency`);
    /// 0: none but the one at the end. A failure goes back to the last
    /// checkpoint (to the start without one), and PBT exploits a donor's
    /// last checkpoint, so keep 1 there.
    pub fn checkpoint_every(mut self, n: u64) -> Self {
        self.checkpoint_every = n;
        self
    }

    /// Whether a trial that ends (done, or at `max_iterations`) saves a
    /// checkpoint (Ray's `checkpoint_at_end`; default true). A checkpoint
    /// costs a `save` call and a file written atomically (two fsyncs).
    pub fn checkpoint_at_end(mut self, on: bool) -> Self {
        self.checkpoint_at_end = on;
        self
    }

    /// The trial scheduler.
    pub fn scheduler(mut self, scheduler: Scheduler) -> Self {
        self.scheduler = scheduler;
        self
    }

    /// The experiment directory (created if missing).
    pub fn dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.dir = dir.into();
        self
    }

    /// Whether to draw the progress table (only ever on a terminal).
    pub fn progress(mut self, on: bool) -> Self {
        self.progress = on;
        self
    }

    /// Whether to draw PNG curves at the end (`curves.png`, and each
    /// trial's `curve.png`).
    pub fn plots(mut self, on: bool) -> Self {
        self.plots = on;
        self
    }

    /// Runs each trial on a node of the cluster this runtime joined (Ray
    /// Tune on a Ray cluster): the cluster places each trial's actor by
    /// [`resources_per_trial`](Self::resources_per_trial), on any node
    /// with room (this one included, if it offers them). Default false:
    /// every trial on this node.
    ///
    /// Needs a trainable registered by name
    /// ([`register_trainable!`](crate::register_trainable), run with
    /// [`Tuner::registered`](crate::Tuner::registered)), since a closure
    /// cannot reach another process, and a runtime that joined a cluster
    /// (Troupe's `cluster` feature). Checkpoints come back to this node (the
    /// experiment directory is here). A trial whose node dies is a failure
    /// of that trial: it starts again on another node from its last
    /// checkpoint, within [`max_failures`](Self::max_failures).
    pub fn trials_on_cluster(mut self, on: bool) -> Self {
        self.on_cluster = on;
        self
    }

    pub(crate) fn validate(&self) -> Result<(), TuneError> {
        if self.metric.is_empty() {
            return Err(TuneError::invalid("metric", "name the metric to tune"));
        }
        if self.max_concurrent == 0 {
            return Err(TuneError::invalid("max_concurrent", "must be at least 1"));
        }
        if self.max_iterations == Some(0) {
            return Err(TuneError::invalid("max_iterations", "must be at least 1"));
        }
        self.scheduler.validate()
    }
}
