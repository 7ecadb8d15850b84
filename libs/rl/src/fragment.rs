//! Fragments: what a rollout worker samples in one call, and the advantage
//! estimates (GAE) computed from them.

use get_size2::GetSize;
use serde::{Deserialize, Serialize};

use crate::env::EpisodeStats;

/// `steps` consecutive steps of each of a worker's `num_envs`
/// environments, time-major: row `t * num_envs + e` is step `t` of
/// environment `e`.
///
/// Rows where the environment was reset instead of stepped (Gymnasium's
/// `NEXT_STEP` autoreset, see [`VecEnv`](crate::VecEnv)) have
/// `valid = false`: their action was ignored and they are not trained on,
/// but their `value` is the value of the previous episode's final
/// observation, which bootstraps a truncated episode.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, GetSize)]
pub struct Fragment {
    /// The worker that sampled it.
    pub worker: usize,
    /// The version of the weights that acted.
    pub policy_version: u64,
    /// Environments of the worker.
    pub num_envs: usize,
    /// Steps per environment.
    pub steps: usize,
    /// Floats per observation.
    pub obs_len: usize,
    /// Floats per action.
    pub action_len: usize,
    /// Observations the actions were taken in, `[steps * num_envs, obs_len]`.
    pub observations: Vec<f32>,
    /// Actions as learned (an index as `f32`, or an unclipped sample),
    /// `[steps * num_envs, action_len]`.
    pub actions: Vec<f32>,
    /// Log-probability of each action under the acting policy.
    pub log_probs: Vec<f32>,
    /// The critic's value of each observation.
    pub values: Vec<f32>,
    /// The reward each step gave.
    pub rewards: Vec<f32>,
    /// The step ended the episode in a terminal state.
    pub terminated: Vec<bool>,
    /// The step ended the episode by truncation.
    pub truncated: Vec<bool>,
    /// False for autoreset rows (not trained on).
    pub valid: Vec<bool>,
    /// Values of the observations after the last step, `[num_envs]`.
    pub last_values: Vec<f32>,
    /// Episodes that finished during the fragment.
    pub episodes: Vec<EpisodeStats>,
}

impl Fragment {
    /// Rows (`steps * num_envs`).
    pub fn rows(&self) -> usize {
        self.steps * self.num_envs
    }

    /// Rows that are trained on.
    pub fn valid_rows(&self) -> usize {
        self.valid.iter().filter(|v| **v).count()
    }

    /// Checks that every buffer has the length the header says.
    pub fn check(&self) -> Result<(), String> {
        let rows = self.rows();
        let lengths = [
            ("observations", self.observations.len(), rows * self.obs_len),
            ("actions", self.actions.len(), rows * self.action_len),
            ("log_probs", self.log_probs.len(), rows),
            ("values", self.values.len(), rows),
            ("rewards", self.rewards.len(), rows),
            ("terminated", self.terminated.len(), rows),
            ("truncated", self.truncated.len(), rows),
            ("valid", self.valid.len(), rows),
            ("last_values", self.last_values.len(), self.num_envs),
        ];
        for (name, got, want) in lengths {
            if got != want {
                return Err(format!(
                    "fragment of worker {}: {name} has {got} entries, expected {want}",
                    self.worker
                ));
            }
        }
        Ok(())
    }

    /// Generalised advantage estimates and returns (advantage + value) for
    /// every row (0 for invalid rows).
    ///
    /// Per environment, backwards in time: a terminated step does not
    /// bootstrap; a truncated one bootstraps with the value of its final
    /// observation (the next row's value, or `last_values` at the end); and
    /// neither passes advantages back across the episode boundary.
    pub fn advantages(&self, gamma: f32, lambda: f32) -> (Vec<f32>, Vec<f32>) {
        self.advantages_scaled(gamma, lambda, 1.0)
    }

    /// [`Fragment::advantages`] with every reward multiplied by `scale`
    /// (reward normalization).
    pub(crate) fn advantages_scaled(
        &self,
        gamma: f32,
        lambda: f32,
        scale: f32,
    ) -> (Vec<f32>, Vec<f32>) {
        let (n, rows) = (self.num_envs, self.rows());
        let mut advantages = vec![0.0f32; rows];
        let mut returns = vec![0.0f32; rows];
        for e in 0..n {
            let mut next_value = self.last_values[e];
            let mut next_advantage = 0.0f32;
            for t in (0..self.steps).rev() {
                let i = t * n + e;
                if !self.valid[i] {
                    next_value = self.values[i];
                    next_advantage = 0.0;
                    continue;
                }
                let ended = self.terminated[i] || self.truncated[i];
                let bootstrap = if self.terminated[i] {
                    0.0
                } else {
                    gamma * next_value
                };
                let delta = self.rewards[i] * scale + bootstrap - self.values[i];
                let advantage = if ended {
                    delta
                } else {
                    delta + gamma * lambda * next_advantage
                };
                advantages[i] = advantage;
                returns[i] = advantage + self.values[i];
                next_value = self.values[i];
                next_advantage = advantage;
            }
        }
        (advantages, returns)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One environment, hand-written rows.
    fn fragment(
        rewards: &[f32],
        values: &[f32],
        terminated: &[bool],
        truncated: &[bool],
        valid: &[bool],
        last: f32,
    ) -> Fragment {
        let steps = rewards.len();
        Fragment {
            worker: 0,
            policy_version: 0,
            num_envs: 1,
            steps,
            obs_len: 1,
            action_len: 1,
            observations: vec![0.0; steps],
            actions: vec![0.0; steps],
            log_probs: vec![0.0; steps],
            values: values.to_vec(),
            rewards: rewards.to_vec(),
            terminated: terminated.to_vec(),
            truncated: truncated.to_vec(),
            valid: valid.to_vec(),
            last_values: vec![last],
            episodes: vec![],
        }
    }

    #[test]
    fn gae_matches_the_recursion_without_episode_ends() {
        let f = fragment(
            &[1.0, 1.0, 1.0],
            &[0.5, 0.4, 0.3],
            &[false; 3],
            &[false; 3],
            &[true; 3],
            0.2,
        );
        let (g, l) = (0.9f32, 0.8f32);
        let d2 = 1.0 + g * 0.2 - 0.3;
        let d1 = 1.0 + g * 0.3 - 0.4;
        let d0 = 1.0 + g * 0.4 - 0.5;
        let a2 = d2;
        let a1 = d1 + g * l * a2;
        let a0 = d0 + g * l * a1;
        let (adv, ret) = f.advantages(g, l);
        for (got, want) in adv.iter().zip([a0, a1, a2]) {
            assert!((got - want).abs() < 1e-6, "{got} vs {want}");
        }
        assert!((ret[0] - (a0 + 0.5)).abs() < 1e-6);
    }

    #[test]
    fn termination_cuts_and_truncation_bootstraps_from_the_final_observation() {
        // Row 1 ends an episode, row 2 is the autoreset row whose value is
        // V(final observation) = 7.
        let values = [0.5, 0.4, 7.0, 0.3];
        let valid = [true, true, false, true];
        let terminated = [false, true, false, false];
        let f = fragment(&[1.0; 4], &values, &terminated, &[false; 4], &valid, 0.0);
        let (adv, _) = f.advantages(0.9, 0.8);
        assert!(
            (adv[1] - (1.0 - 0.4)).abs() < 1e-6,
            "terminated: no bootstrap"
        );
        assert_eq!(adv[2], 0.0);
        let truncated = [false, true, false, false];
        let f = fragment(&[1.0; 4], &values, &[false; 4], &truncated, &valid, 0.0);
        let (adv, _) = f.advantages(0.9, 0.8);
        assert!(
            (adv[1] - (1.0 + 0.9 * 7.0 - 0.4)).abs() < 1e-5,
            "truncated: V(final obs)"
        );
        // Nothing flows back from the next episode into row 0 beyond row 1.
        let d0 = 1.0 + 0.9 * 0.4 - 0.5;
        assert!((adv[0] - (d0 + 0.9 * 0.8 * adv[1])).abs() < 1e-5);
    }
}
