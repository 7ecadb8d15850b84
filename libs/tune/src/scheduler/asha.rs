//! Asynchronous successive halving (Ray's `AsyncHyperBandScheduler` with
//! one bracket, as `ASHAScheduler`).
//!
//! Rungs sit at `grace_period × reduction_factor^k` iterations below
//! `max_t` (Ray's defaults 1, 4, 16, 64). When a trial first reaches a
//! rung (the highest it has reached and not yet reported at), its score
//! is compared with the scores recorded there before it: if it is below
//! their `(1 − 1/reduction_factor)` percentile (numpy's linear
//! interpolation, as Ray), the trial stops; either way its score is
//! recorded. A trial at `max_t` stops (it is complete).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::Decision;
use crate::error::TuneError;

/// ASHA's settings and its rungs. Defaults are Ray's: `max_t` 100,
/// `grace_period` 1, `reduction_factor` 4.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Asha {
    max_t: u64,
    grace_period: u64,
    reduction_factor: f64,
    /// Milestone → (trial → score recorded there).
    rungs: BTreeMap<u64, BTreeMap<usize, f64>>,
}

impl Default for Asha {
    fn default() -> Self {
        Asha {
            max_t: 100,
            grace_period: 1,
            reduction_factor: 4.0,
            rungs: BTreeMap::new(),
        }
    }
}

impl Asha {
    /// Ray's defaults.
    pub fn new() -> Self {
        Self::default()
    }

    /// The most iterations a trial runs.
    pub fn max_t(mut self, max_t: u64) -> Self {
        self.max_t = max_t;
        self
    }

    /// The iterations before the first rung.
    pub fn grace_period(mut self, grace_period: u64) -> Self {
        self.grace_period = grace_period;
        self
    }

    /// One trial in this many goes on at each rung.
    pub fn reduction_factor(mut self, reduction_factor: f64) -> Self {
        self.reduction_factor = reduction_factor;
        self
    }

    pub(crate) fn validate(&self) -> Result<(), TuneError> {
        if self.grace_period == 0 || self.max_t < self.grace_period {
            return Err(TuneError::invalid(
                "ASHA",
                format!(
                    "needs 1 <= grace_period <= max_t, got grace_period {} and max_t {}",
                    self.grace_period, self.max_t
                ),
            ));
        }
        if self.reduction_factor.is_nan() || self.reduction_factor <= 1.0 {
            return Err(TuneError::invalid(
                "ASHA",
                "reduction_factor must be above 1",
            ));
        }
        Ok(())
    }

    /// The rungs' iterations, highest first (Ray's `_rungs`).
    pub fn milestones(&self) -> Vec<u64> {
        let ratio = self.max_t as f64 / self.grace_period as f64;
        let count = (ratio.ln() / self.reduction_factor.ln() + 1.0 + 1e-9).floor() as u32;
        (0..count)
            .rev()
            .map(|k| (self.grace_period as f64 * self.reduction_factor.powi(k as i32)) as u64)
            .collect()
    }

    pub(crate) fn on_result(&mut self, trial: usize, iteration: u64, score: f64) -> Decision {
        if iteration >= self.max_t {
            return Decision::Complete;
        }
        for milestone in self.milestones() {
            let recorded = self.rungs.entry(milestone).or_default();
            if iteration < milestone || recorded.contains_key(&trial) {
                continue;
            }
            let cutoff = percentile(
                recorded.values().copied(),
                1.0 - 1.0 / self.reduction_factor,
            );
            recorded.insert(trial, score);
            return match cutoff {
                Some(cutoff) if score < cutoff => Decision::Stop,
                _ => Decision::Continue,
            };
        }
        Decision::Continue
    }
}

/// numpy's `percentile(values, q × 100)` with linear interpolation; `None`
/// when there are no values.
pub(crate) fn percentile(values: impl Iterator<Item = f64>, q: f64) -> Option<f64> {
    let mut v: Vec<f64> = values.collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let pos = q * (v.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    Some(v[lo] + (v[hi] - v[lo]) * (pos - lo as f64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rays_default_rungs() {
        assert_eq!(Asha::new().milestones(), vec![64, 16, 4, 1]);
        assert_eq!(
            Asha::new().max_t(9).reduction_factor(3.0).milestones(),
            vec![9, 3, 1]
        );
    }

    #[test]
    fn percentile_matches_numpy() {
        // numpy.percentile([1, 2, 3, 4], 75) == 3.25
        assert_eq!(
            percentile([4.0, 1.0, 3.0, 2.0].into_iter(), 0.75),
            Some(3.25)
        );
        assert_eq!(percentile([5.0].into_iter(), 0.75), Some(5.0));
        assert_eq!(percentile(std::iter::empty(), 0.75), None);
    }

    #[test]
    fn a_trial_below_the_rungs_cutoff_stops() {
        let mut s = Asha::new().max_t(10).reduction_factor(2.0);
        // The first at a rung always goes on; the second is compared with it.
        assert_eq!(s.on_result(0, 1, 5.0), Decision::Continue);
        assert_eq!(s.on_result(1, 1, 4.0), Decision::Stop);
        assert_eq!(s.on_result(2, 1, 6.0), Decision::Continue);
        // Trial 0 is not judged twice at rung 1; at 2 it is the first.
        assert_eq!(s.on_result(0, 2, 1.0), Decision::Continue);
        assert_eq!(s.on_result(0, 10, 1.0), Decision::Complete, "max_t ends it");
    }
}
