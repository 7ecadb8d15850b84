//! Reward normalization (Gymnasium's `NormalizeReward`, as CleanRL's
//! continuous-control PPO uses it): rewards are divided by the running
//! standard deviation of each environment's discounted return.
//!
//! The learner keeps the statistics, in fragment order: per environment
//! stream (worker, env), `G ← γ·G + r` at every trained row, `G ← 0` where
//! an episode ends, and every `G` goes into one running mean and variance
//! (Chan's parallel update, started like Gymnasium's `RunningMeanStd`:
//! count 1e-4, mean 0, variance 1). The statistics are part of the
//! learner's checkpointed state.

use get_size2::GetSize;
use serde::{Deserialize, Serialize};

use crate::fragment::Fragment;

/// Running statistics of discounted returns, and each stream's return so far.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, GetSize)]
#[serde(default)]
pub(crate) struct RewardScaler {
    count: f64,
    mean: f64,
    var: f64,
    /// `returns[worker][env]`: the discounted return so far.
    returns: Vec<Vec<f64>>,
}

impl Default for RewardScaler {
    fn default() -> Self {
        RewardScaler {
            count: 1e-4,
            mean: 0.0,
            var: 1.0,
            returns: Vec::new(),
        }
    }
}

impl RewardScaler {
    /// Updates the statistics with `f`'s rewards and returns the factor to
    /// multiply them by: `1 / sqrt(var + 1e-8)`.
    pub(crate) fn update(&mut self, f: &Fragment, gamma: f64) -> f32 {
        if self.returns.len() <= f.worker {
            self.returns.resize(f.worker + 1, Vec::new());
        }
        let returns = &mut self.returns[f.worker];
        returns.resize(f.num_envs, 0.0);
        let (mut n, mut sum, mut sum_sq) = (0.0f64, 0.0f64, 0.0f64);
        for t in 0..f.steps {
            for (e, g) in returns.iter_mut().enumerate() {
                let i = t * f.num_envs + e;
                if !f.valid[i] {
                    continue;
                }
                *g = *g * gamma + f64::from(f.rewards[i]);
                n += 1.0;
                sum += *g;
                sum_sq += *g * *g;
                if f.terminated[i] || f.truncated[i] {
                    *g = 0.0;
                }
            }
        }
        if n > 0.0 {
            let batch_mean = sum / n;
            let batch_var = (sum_sq / n - batch_mean * batch_mean).max(0.0);
            let total = self.count + n;
            let delta = batch_mean - self.mean;
            let m2 = self.var * self.count + batch_var * n + delta * delta * self.count * n / total;
            self.mean += delta * n / total;
            self.var = m2 / total;
            self.count = total;
        }
        (1.0 / (self.var + 1e-8).sqrt()) as f32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fragment(worker: usize, rewards: Vec<f32>, ends: Vec<bool>) -> Fragment {
        let rows = rewards.len();
        Fragment {
            worker,
            policy_version: 0,
            num_envs: 1,
            steps: rows,
            obs_len: 1,
            action_len: 1,
            observations: vec![0.0; rows],
            actions: vec![0.0; rows],
            log_probs: vec![0.0; rows],
            values: vec![0.0; rows],
            rewards,
            terminated: ends,
            truncated: vec![false; rows],
            valid: vec![true; rows],
            last_values: vec![0.0],
            episodes: vec![],
        }
    }

    #[test]
    fn the_scale_is_the_inverse_std_of_discounted_returns() {
        let mut s = RewardScaler::default();
        // γ = 0.5, rewards 1, 1, 1 (episode ends), 1: returns 1, 1.5, 1.75, 1.
        let scale = s.update(
            &fragment(0, vec![1.0; 4], vec![false, false, true, false]),
            0.5,
        );
        let g = [1.0, 1.5, 1.75, 1.0];
        let n = 4.0 + 1e-4;
        let mean = g.iter().sum::<f64>() / 4.0;
        let var_b = g.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / 4.0;
        // Merged with the prior (count 1e-4, mean 0, var 1).
        let m2 = 1e-4 + var_b * 4.0 + mean * mean * 1e-4 * 4.0 / n;
        let want = 1.0 / (m2 / n + 1e-8).sqrt();
        assert!((f64::from(scale) - want).abs() < 1e-5, "{scale} vs {want}");
        // Streams are kept per worker: worker 1 starts from 0.
        let before = s.clone();
        s.update(&fragment(1, vec![2.0], vec![false]), 0.5);
        assert_eq!(s.returns[1], vec![2.0]);
        assert_eq!(s.returns[0], before.returns[0]);
        // Large rewards give a small scale.
        let mut big = RewardScaler::default();
        let scale = big.update(
            &fragment(0, vec![-100.0, -10.0, -50.0, -1.0], vec![false; 4]),
            0.9,
        );
        assert!(scale > 0.0 && scale < 0.1, "{scale}");
    }

    #[test]
    fn the_statistics_survive_a_checkpoint() {
        let mut s = RewardScaler::default();
        s.update(&fragment(0, vec![1.0, -2.0, 3.0], vec![false; 3]), 0.9);
        let mut bytes = Vec::new();
        ciborium::into_writer(&s, &mut bytes).unwrap();
        let back: RewardScaler = ciborium::from_reader(&bytes[..]).unwrap();
        assert_eq!(back, s);
        // A learner state without them (older file) starts afresh.
        let empty: RewardScaler = ciborium::from_reader(&[0xa0u8][..]).unwrap();
        assert_eq!(empty, RewardScaler::default());
    }
}
