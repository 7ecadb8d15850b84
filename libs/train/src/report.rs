//! Metrics, the history of reports, and the trainer's result.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::checkpoint::CheckpointInfo;
use crate::config::Mode;

/// Named numbers a training loop reports (a loss, an accuracy).
///
/// ```
/// let m = troupe_train::Metrics::new().with("loss", 0.25).with("epoch", 1.0);
/// assert_eq!(m.get("loss"), Some(0.25));
/// ```
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Metrics(pub BTreeMap<String, f64>);

impl Metrics {
    /// No metrics.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `name = value`.
    pub fn with(mut self, name: impl Into<String>, value: f64) -> Self {
        self.0.insert(name.into(), value);
        self
    }

    /// The value of `name`.
    pub fn get(&self, name: &str) -> Option<f64> {
        self.0.get(name).copied()
    }
}

/// One report of rank 0: its iteration (1 for the first report of a run,
/// counting on from a checkpoint after a restart or resume) and metrics.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// The report's number, from 1.
    pub iteration: u64,
    /// What rank 0 reported.
    pub metrics: Metrics,
    /// The checkpoint saved with it, if any.
    pub checkpoint: Option<PathBuf>,
}

/// What [`Trainer::fit`](crate::Trainer::fit) returns.
#[derive(Clone, Debug)]
pub struct TrainResult {
    /// Every report of the run that led to the end (reports of attempts
    /// rolled back by a restart are dropped), in order.
    pub history: Vec<Report>,
    /// The checkpoints kept on disk, oldest first.
    pub checkpoints: Vec<CheckpointInfo>,
    /// The best kept checkpoint by the `keep_best` metric (without
    /// `keep_best`: the latest).
    pub best_checkpoint: Option<CheckpointInfo>,
    /// How many times the group was restarted after a failure.
    pub restarts: u32,
    /// The failures the group recovered from, in order: `rank N: message`.
    pub failures: Vec<String>,
}

impl TrainResult {
    /// The last reported metrics.
    pub fn last_metrics(&self) -> Option<&Metrics> {
        self.history.last().map(|r| &r.metrics)
    }
}

/// Whether `a` is better than `b` under `mode` (a missing metric is worst).
pub(crate) fn better(a: Option<f64>, b: Option<f64>, mode: Mode) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => match mode {
            Mode::Min => a < b,
            Mode::Max => a > b,
        },
        (Some(_), None) => true,
        _ => false,
    }
}

/// The best of `checkpoints` by `metric`, ties to the later one.
pub(crate) fn best(
    checkpoints: &[CheckpointInfo],
    keep: Option<&(usize, String, Mode)>,
) -> Option<CheckpointInfo> {
    let Some((_, metric, mode)) = keep else {
        return checkpoints.last().cloned();
    };
    let mut best: Option<&CheckpointInfo> = None;
    for c in checkpoints {
        let v = c.metrics.get(metric).copied();
        if best.is_none_or(|b| !better(b.metrics.get(metric).copied(), v, *mode)) {
            best = Some(c);
        }
    }
    best.cloned()
}

/// The checkpoints the best-K policy drops from `checkpoints` (the latest
/// is always kept).
pub(crate) fn to_drop(
    checkpoints: &[CheckpointInfo],
    keep: &(usize, String, Mode),
) -> Vec<CheckpointInfo> {
    let (k, metric, mode) = keep;
    let Some((latest, older)) = checkpoints.split_last() else {
        return Vec::new();
    };
    let mut ranked: Vec<&CheckpointInfo> = checkpoints.iter().collect();
    // Best first; a stable sort keeps the later one first among equals
    // once reversed order is applied below.
    ranked.sort_by(|a, b| {
        let (va, vb) = (
            a.metrics.get(metric).copied(),
            b.metrics.get(metric).copied(),
        );
        if better(va, vb, *mode) {
            std::cmp::Ordering::Less
        } else if better(vb, va, *mode) {
            std::cmp::Ordering::Greater
        } else {
            b.iteration.cmp(&a.iteration)
        }
    });
    let kept: Vec<u64> = ranked.iter().take(*k).map(|c| c.iteration).collect();
    older
        .iter()
        .filter(|c| c.iteration != latest.iteration && !kept.contains(&c.iteration))
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(iteration: u64, loss: f64) -> CheckpointInfo {
        CheckpointInfo {
            path: PathBuf::from(format!("c{iteration}")),
            iteration,
            metrics: [("loss".to_owned(), loss)].into_iter().collect(),
        }
    }

    #[test]
    fn best_k_keeps_the_best_and_the_latest() {
        let cs = vec![info(1, 0.5), info(2, 0.1), info(3, 0.3), info(4, 0.9)];
        let keep = (2, "loss".to_owned(), Mode::Min);
        let dropped: Vec<u64> = to_drop(&cs, &keep).iter().map(|c| c.iteration).collect();
        assert_eq!(dropped, vec![1], "keeps 2 (0.1), 3 (0.3) and the latest 4");
        assert_eq!(best(&cs, Some(&keep)).map(|c| c.iteration), Some(2));
        let max = (1, "loss".to_owned(), Mode::Max);
        assert_eq!(best(&cs, Some(&max)).map(|c| c.iteration), Some(4));
        assert_eq!(best(&cs, None).map(|c| c.iteration), Some(4));
    }
}
