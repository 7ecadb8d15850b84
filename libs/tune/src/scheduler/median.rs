//! The median stopping rule (Ray's `MedianStoppingRule`, with the
//! iteration as its time): after `grace_period` iterations, a trial stops
//! when its best score so far is below the median of the other trials'
//! running means (the mean of each one's scores up to the same
//! iteration), counting only trials that have reached that iteration, and
//! only when at least `min_samples_required` of them have.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::Decision;

/// The median stopping rule's settings and the scores seen. Defaults:
/// `grace_period` 1 iteration, `min_samples_required` 3 (Ray's).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MedianStopping {
    grace_period: u64,
    min_samples_required: usize,
    /// Trial → (iteration, score), in order.
    results: BTreeMap<usize, Vec<(u64, f64)>>,
    stopped: Vec<usize>,
}

impl Default for MedianStopping {
    fn default() -> Self {
        MedianStopping {
            grace_period: 1,
            min_samples_required: 3,
            results: BTreeMap::new(),
            stopped: Vec::new(),
        }
    }
}

impl MedianStopping {
    /// The defaults.
    pub fn new() -> Self {
        Self::default()
    }

    /// Iterations before a trial may be stopped.
    pub fn grace_period(mut self, grace_period: u64) -> Self {
        self.grace_period = grace_period;
        self
    }

    /// Other trials needed at an iteration before comparing with them.
    pub fn min_samples_required(mut self, n: usize) -> Self {
        self.min_samples_required = n;
        self
    }

    pub(crate) fn rewind(&mut self, trial: usize, iteration: u64) {
        if let Some(r) = self.results.get_mut(&trial) {
            r.retain(|(i, _)| *i <= iteration);
        }
    }

    pub(crate) fn on_result(&mut self, trial: usize, iteration: u64, score: f64) -> Decision {
        if self.stopped.contains(&trial) {
            return Decision::Stop;
        }
        self.results
            .entry(trial)
            .or_default()
            .push((iteration, score));
        if iteration < self.grace_period {
            return Decision::Continue;
        }
        let means: Vec<f64> = self
            .results
            .iter()
            .filter(|(t, r)| **t != trial && r.last().is_some_and(|(i, _)| *i >= iteration))
            .map(|(_, r)| {
                let upto: Vec<f64> = r
                    .iter()
                    .filter(|(i, _)| *i <= iteration)
                    .map(|(_, s)| *s)
                    .collect();
                upto.iter().sum::<f64>() / upto.len().max(1) as f64
            })
            .collect();
        if means.len() < self.min_samples_required {
            return Decision::Continue;
        }
        let median = median(means);
        let best = self.results[&trial]
            .iter()
            .map(|(_, s)| *s)
            .fold(f64::NEG_INFINITY, f64::max);
        if best < median {
            self.stopped.push(trial);
            Decision::Stop
        } else {
            Decision::Continue
        }
    }
}

/// numpy's median.
fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stops_below_the_median_of_running_means() {
        let mut s = MedianStopping::new().min_samples_required(2);
        // Two trials ahead: running means at iteration 2 are 2.0 and 4.0.
        for (t, a, b) in [(0, 1.0, 3.0), (1, 3.0, 5.0)] {
            assert_eq!(s.on_result(t, 1, a), Decision::Continue);
            assert_eq!(s.on_result(t, 2, b), Decision::Continue);
        }
        assert_eq!(
            s.on_result(2, 1, 0.0),
            Decision::Stop,
            "0 < median(1, 3) = 2"
        );
        assert_eq!(
            s.on_result(3, 1, 2.0),
            Decision::Continue,
            "2 is not below median(1, 3, 0) = 1"
        );
        assert_eq!(
            s.on_result(3, 2, 2.5),
            Decision::Stop,
            "best 2.5 < median(2, 4) = 3"
        );
    }
}
