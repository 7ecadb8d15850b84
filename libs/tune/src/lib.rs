//! # troupe-tune
//!
//! Hyperparameter tuning on Troupe, in the manner of Ray Tune: a
//! [`SearchSpace`] gives trials' configs; a [`Tuner`] runs each trial as a
//! supervised actor (holding [`TuneOptions::resources_per_trial`], at most
//! [`TuneOptions::max_concurrent`] at once), records its results and
//! checkpoints in an experiment directory, and asks a [`Scheduler`] after
//! each result whether it goes on: FIFO, [`Asha`], [`MedianStopping`] or
//! [`Pbt`]. The [`ResultGrid`] gives the best trial.
//!
//! ```text
//! SearchSpace ──generate(num_samples, seed)──▶ configs ──▶ Tuner::fit
//!   for each trial (≤ max_concurrent at once), a driver task:
//!     spawn TrialActor (supervised, resources held) ── step ──▶ Metrics
//!       record (result.json, progress.csv) → checkpoint (checkpoint.bin)
//!       → Scheduler::on_result → Continue | Stop | Complete | Exploit
//!     a panic: the actor restarts, the driver restores the last checkpoint
//!   experiment_state.json written atomically → Tuner::resume
//! ```
//!
//! - **Trainables** implement [`Trainable`] (step, save, restore), or are a
//!   step function over a serde state ([`Tuner::with_fn`]).
//! - **Clusters**: with [`TuneOptions::trials_on_cluster`], trials run on
//!   any node with room, their trainable built there from the name it was
//!   registered under ([`register_trainable!`], [`Tuner::registered`]).
//! - **Failures**: a panic (or the death of a trial's node) is retried
//!   from the last checkpoint up to [`TuneOptions::max_failures`] times,
//!   then the trial is errored with the panic message; the experiment goes
//!   on.
//! - **Resuming**: [`StopHandle::stop`] (or a crash) leaves a directory
//!   that [`Tuner::resume`] continues: finished trials are kept,
//!   unfinished ones restart from their last checkpoint.
//!
//! Spans: each trial's driver runs in a `trial` span with a `trial` field
//! (its id). Counters: see the private `metrics` module's table in the
//! crate's README.

#![deny(unsafe_code)]
#![warn(missing_docs, unreachable_pub, missing_debug_implementations)]
#![warn(clippy::dbg_macro, clippy::todo)]
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

mod actor;
mod error;
mod experiment;
mod lock;
mod metrics;
mod options;
mod params;
mod plot;
mod progress;
mod registry;
mod results;
mod run;
mod scheduler;
mod space;
mod store;
mod trainable;
mod tuner;

/// The README's Rust snippet, compiled and run as a doctest.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

pub use error::{TrainableError, TuneError};
pub use options::TuneOptions;
pub use params::{Params, Value};
pub use registry::registered_trainables;
pub use results::{ResultGrid, TrialResult, TrialStatus};
pub use scheduler::{Asha, MedianStopping, Mode, Pbt, Scheduler};
pub use space::{Domain, SearchSpace};
pub use store::{Checkpoint, Report, STATE_FILE};
pub use trainable::{FnTrainable, Metrics, StepFn, Trainable};
pub use tuner::{StopHandle, Tuner};

/// What `register_trainable!` expands to; not part of the API.
#[doc(hidden)]
pub mod __private {
    pub use crate::registry::{boxed_trainable, TrainableRegistration};
    pub use inventory;
}
