//! What each remote function's tasks did: counts for the state API's
//! summary, `metrics` handles registered once per function (its name is
//! the label: a fixed set per binary, so the cardinality is bounded), and
//! how long its bodies take (see `timing`).
//!
//! Per task, with a recorder installed: three counter additions and one
//! histogram sample (the scheduling latency). What runs now is a gauge
//! set when metrics are sampled, from the count kept here, rather than
//! two more atomic updates per task on a value every core touches.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use metrics::{Counter, Gauge, Histogram};
use serde::{Deserialize, Serialize};

use super::Timing;
use crate::spec::FunctionName;

/// One function's tasks so far, for the state API's summary.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FunctionSummary {
    /// The function's registered name.
    pub function: String,
    /// Tasks submitted.
    pub submitted: u64,
    /// Tasks not ended yet that are not running (queued, waiting for
    /// arguments, unplaced or on another node).
    pub pending: u64,
    /// Attempts running on this node now.
    pub running: u64,
    /// Tasks whose results are stored.
    pub finished: u64,
    /// Tasks that failed for good.
    pub failed: u64,
    /// Tasks cancelled.
    pub cancelled: u64,
    /// Attempts that failed and were tried again.
    pub retried: u64,
    /// Tasks other nodes sent here that waited for resources and went
    /// back to their owner for a node with room (spillback).
    #[serde(default)]
    pub spilled: u64,
}

/// The handles of one function's metrics.
struct Handles {
    submitted: Counter,
    attempts: Counter,
    finished: Counter,
    failed: Counter,
    cancelled: Counter,
    retried: Counter,
    spilled: Counter,
    running: Gauge,
    scheduling_latency: Histogram,
}

impl Handles {
    fn new(function: &FunctionName) -> Self {
        let label = function.to_string();
        Self {
            submitted: metrics::counter!("troupe_tasks_submitted_total", "function" => label.clone()),
            attempts: metrics::counter!("troupe_task_attempts_total", "function" => label.clone()),
            finished: metrics::counter!("troupe_tasks_finished_total", "function" => label.clone()),
            failed: metrics::counter!("troupe_tasks_failed_total", "function" => label.clone()),
            cancelled: metrics::counter!("troupe_tasks_cancelled_total", "function" => label.clone()),
            retried: metrics::counter!("troupe_task_retries_total", "function" => label.clone()),
            spilled: metrics::counter!("troupe_tasks_spilled_away_total", "function" => label.clone()),
            running: metrics::gauge!("troupe_tasks_running", "function" => label.clone()),
            scheduling_latency: metrics::histogram!(
                "troupe_task_scheduling_latency_seconds",
                "function" => label
            ),
        }
    }
}

/// One function's record, shared by its tasks.
pub(crate) struct FunctionStats {
    pub(crate) name: FunctionName,
    /// How long its sync bodies take (whether a waiter may run one).
    pub(crate) timing: Timing,
    submitted: AtomicU64,
    finished: AtomicU64,
    failed: AtomicU64,
    cancelled: AtomicU64,
    retried: AtomicU64,
    spilled: AtomicU64,
    running: AtomicI64,
    metrics: Handles,
}

impl FunctionStats {
    /// A record whose metrics register with the recorder installed now
    /// (made at a function's first submission).
    pub(crate) fn new(name: FunctionName) -> Self {
        Self {
            metrics: Handles::new(&name),
            name,
            timing: Timing::default(),
            submitted: AtomicU64::new(0),
            finished: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            cancelled: AtomicU64::new(0),
            retried: AtomicU64::new(0),
            spilled: AtomicU64::new(0),
            running: AtomicI64::new(0),
        }
    }

    pub(crate) fn submitted(&self) {
        self.submitted.fetch_add(1, Ordering::Relaxed);
        self.metrics.submitted.increment(1);
    }

    /// An attempt starts; `waited` is how long since submission (first
    /// attempts only: a retry's wait is not the scheduler's latency).
    pub(crate) fn attempt_started(&self, waited: Option<Duration>) {
        self.running.fetch_add(1, Ordering::Relaxed);
        self.metrics.attempts.increment(1);
        if let Some(waited) = waited {
            self.metrics.scheduling_latency.record(waited.as_secs_f64());
        }
    }

    pub(crate) fn attempt_ended(&self) {
        self.running.fetch_sub(1, Ordering::Relaxed);
    }

    /// Sets the gauges kept here rather than on the hot path.
    pub(crate) fn sample_metrics(&self) {
        let running = self.running.load(Ordering::Relaxed).max(0);
        self.metrics.running.set(running as f64);
    }

    pub(crate) fn finished(&self) {
        self.finished.fetch_add(1, Ordering::Relaxed);
        self.metrics.finished.increment(1);
    }

    pub(crate) fn failed(&self) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        self.metrics.failed.increment(1);
    }

    pub(crate) fn cancelled(&self) {
        self.cancelled.fetch_add(1, Ordering::Relaxed);
        self.metrics.cancelled.increment(1);
    }

    pub(crate) fn retried(&self) {
        self.retried.fetch_add(1, Ordering::Relaxed);
        self.metrics.retried.increment(1);
    }

    pub(crate) fn spilled(&self) {
        self.spilled.fetch_add(1, Ordering::Relaxed);
        self.metrics.spilled.increment(1);
    }

    pub(crate) fn summary(&self) -> FunctionSummary {
        let load = |n: &AtomicU64| n.load(Ordering::Relaxed);
        let submitted = load(&self.submitted);
        let finished = load(&self.finished);
        let failed = load(&self.failed);
        let cancelled = load(&self.cancelled);
        let spilled = load(&self.spilled);
        let running = self.running.load(Ordering::Relaxed).max(0) as u64;
        FunctionSummary {
            function: self.name.to_string(),
            submitted,
            pending: submitted
                .saturating_sub(finished + failed + cancelled + spilled)
                .saturating_sub(running),
            running,
            finished,
            failed,
            cancelled,
            retried: load(&self.retried),
            spilled,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_summary_adds_up() {
        let stats = FunctionStats::new("app::f".into());
        for _ in 0..5 {
            stats.submitted();
        }
        stats.attempt_started(Some(Duration::from_micros(3)));
        stats.attempt_ended();
        stats.retried();
        stats.attempt_started(None);
        stats.attempt_ended();
        stats.finished();
        stats.attempt_started(Some(Duration::ZERO));
        stats.attempt_ended();
        stats.failed();
        stats.cancelled();
        stats.submitted();
        stats.spilled();
        stats.attempt_started(Some(Duration::ZERO));
        let summary = stats.summary();
        assert_eq!(
            summary,
            FunctionSummary {
                function: "app::f".to_owned(),
                submitted: 6,
                pending: 1,
                running: 1,
                finished: 1,
                failed: 1,
                cancelled: 1,
                retried: 1,
                spilled: 1,
            }
        );
    }
}
