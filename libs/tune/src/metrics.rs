//! The crate's counters (through the `metrics` facade; install a recorder
//! to read them):
//!
//! | Name | Kind | Meaning |
//! |---|---|---|
//! | `troupe_tune_trials_started_total` | counter | trial runs started (a resumed trial counts again) |
//! | `troupe_tune_trials_finished_total` | counter | trials that ran to their end |
//! | `troupe_tune_trials_stopped_total` | counter | trials stopped early by the scheduler |
//! | `troupe_tune_trials_errored_total` | counter | trials that errored |
//! | `troupe_tune_trial_failures_total` | counter | panics retried from a checkpoint |
//! | `troupe_tune_checkpoint_bytes_total` | counter | bytes of checkpoints written |
//! | `troupe_tune_exploits_total` | counter | PBT exploits |

use metrics::counter;

pub(crate) fn started() {
    counter!("troupe_tune_trials_started_total").increment(1);
}

pub(crate) fn finished() {
    counter!("troupe_tune_trials_finished_total").increment(1);
}

pub(crate) fn stopped() {
    counter!("troupe_tune_trials_stopped_total").increment(1);
}

pub(crate) fn errored() {
    counter!("troupe_tune_trials_errored_total").increment(1);
}

pub(crate) fn failure() {
    counter!("troupe_tune_trial_failures_total").increment(1);
}

pub(crate) fn checkpoint_bytes(n: usize) {
    counter!("troupe_tune_checkpoint_bytes_total").increment(n as u64);
}

/// Checkpoint bytes carried between the tuner's node and a trial's on
/// another node (both ways).
pub(crate) fn checkpoint_transferred(n: usize) {
    counter!("troupe_tune_checkpoint_transferred_bytes_total").increment(n as u64);
}

pub(crate) fn exploit() {
    counter!("troupe_tune_exploits_total").increment(1);
}
