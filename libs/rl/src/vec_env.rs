//! Many environments stepped in one call, with Gymnasium 1.x's default
//! autoreset rule (`AutoresetMode.NEXT_STEP`).

use crate::env::{Env, EnvError, EnvMaker, EpisodeStats, Info};
use crate::space::{Action, Actions, Space};

/// `N` environments of one kind stepped together, their observations in one
/// `[N, obs_len]` buffer.
///
/// **Autoreset: Gymnasium 1.x's default, `NEXT_STEP`.** When environment
/// `i` ends an episode (terminated or truncated) in a step, that step
/// returns its real final observation, reward and flags. In the *next* call
/// to [`step`](Self::step), environment `i` is reset instead of stepped: its
/// action is ignored (not even checked), it returns the first observation of
/// the new episode with reward 0 and both flags false, and
/// [`autoreset`](Self::autoreset)`[i]` is true. Learners must skip those
/// rows (the rollout workers mark them invalid). Why this mode: it is
/// Gymnasium's default, and the final observation stays in the batch buffer
/// for one step, so a worker computes its value (to bootstrap a truncated
/// episode) in the same batched forward pass as every other observation.
///
/// Every observation and reward is checked to be finite, and every action
/// to be in the action space before any environment steps: a bad action
/// changes nothing.
///
/// ```
/// use troupe_rl::{Actions, EnvMaker, VecEnv};
/// let mut envs = VecEnv::from_maker(&EnvMaker::cart_pole(), 0, 4)?;
/// envs.reset(Some(7))?;
/// let mut steps = 0;
/// while envs.episodes().is_empty() {
///     envs.step(Actions::Discrete(&[1, 1, 1, 1]))?; // always right: falls soon
///     steps += 1;
/// }
/// assert!(steps < 100 && envs.terminated().iter().any(|t| *t));
/// envs.step(Actions::Discrete(&[0; 4]))?;          // the ended ones reset now
/// assert!(envs.autoreset().iter().any(|r| *r));
/// # Ok::<(), troupe_rl::EnvError>(())
/// ```
pub struct VecEnv {
    envs: Vec<Box<dyn Env>>,
    first_index: usize,
    observation_space: Space,
    action_space: Space,
    obs_len: usize,
    act_len: usize,
    observations: Vec<f32>,
    rewards: Vec<f64>,
    terminated: Vec<bool>,
    truncated: Vec<bool>,
    autoreset: Vec<bool>,
    infos: Vec<Info>,
    /// The previous step ended environment i's episode.
    needs_reset: Vec<bool>,
    /// Set by reset, cleared by an error in the middle of a step.
    ready: bool,
    episode_return: Vec<f64>,
    episode_length: Vec<u64>,
    finished: Vec<EpisodeStats>,
}

impl VecEnv {
    /// Batches `envs`, whose spaces must all be equal. `first_index` is the
    /// index of the first one in errors (a worker's envs are numbered
    /// globally).
    pub fn new(envs: Vec<Box<dyn Env>>, first_index: usize) -> Result<VecEnv, EnvError> {
        let first = envs.first().ok_or_else(|| {
            EnvError::InvalidSpace("a VecEnv needs at least one environment".into())
        })?;
        let observation_space = first.observation_space();
        let action_space = first.action_space();
        observation_space.validate()?;
        action_space.validate()?;
        for (i, env) in envs.iter().enumerate().skip(1) {
            if env.observation_space() != observation_space || env.action_space() != action_space {
                return Err(EnvError::InvalidSpace(format!(
                    "environment {} has spaces {} / {}, but environment {first_index} has {observation_space} / {action_space}; a batch needs one kind of environment",
                    first_index + i,
                    env.observation_space(),
                    env.action_space()
                )));
            }
        }
        let n = envs.len();
        let obs_len = observation_space.flat_len();
        let act_len = action_space.action_len();
        Ok(VecEnv {
            envs,
            first_index,
            observation_space,
            action_space,
            obs_len,
            act_len,
            observations: vec![0.0; n * obs_len],
            rewards: vec![0.0; n],
            terminated: vec![false; n],
            truncated: vec![false; n],
            autoreset: vec![false; n],
            infos: vec![Info::default(); n],
            needs_reset: vec![false; n],
            ready: false,
            episode_return: vec![0.0; n],
            episode_length: vec![0; n],
            finished: Vec::new(),
        })
    }

    /// `count` environments from `maker`, numbered from `first_index`.
    pub fn from_maker(
        maker: &EnvMaker,
        first_index: usize,
        count: usize,
    ) -> Result<VecEnv, EnvError> {
        let envs = (first_index..first_index + count)
            .map(|i| maker.make(i).map_err(|e| e.in_batch(i)))
            .collect::<Result<Vec<_>, _>>()?;
        VecEnv::new(envs, first_index)
    }

    /// How many environments.
    pub fn len(&self) -> usize {
        self.envs.len()
    }

    /// Never true (a `VecEnv` has at least one environment).
    pub fn is_empty(&self) -> bool {
        self.envs.is_empty()
    }

    /// The environments' observation space.
    pub fn observation_space(&self) -> &Space {
        &self.observation_space
    }

    /// The environments' action space.
    pub fn action_space(&self) -> &Space {
        &self.action_space
    }

    /// Resets every environment; with a seed, environment `i` (counted
    /// from 0 in this batch) gets `seed + i`, as Gymnasium's vector envs do.
    pub fn reset(&mut self, seed: Option<u64>) -> Result<&[f32], EnvError> {
        self.ready = false;
        for (i, env) in self.envs.iter_mut().enumerate() {
            let row = &mut self.observations[i * self.obs_len..(i + 1) * self.obs_len];
            let info = env
                .reset(seed.map(|s| s.wrapping_add(i as u64)), row)
                .map_err(|e| e.in_batch(self.first_index + i))?;
            check_observation(row).map_err(|e| e.in_batch(self.first_index + i))?;
            self.infos[i] = info;
        }
        self.rewards.fill(0.0);
        self.terminated.fill(false);
        self.truncated.fill(false);
        self.autoreset.fill(false);
        self.needs_reset.fill(false);
        self.episode_return.fill(0.0);
        self.episode_length.fill(0);
        self.ready = true;
        Ok(&self.observations)
    }

    /// Steps every environment (resetting those whose episode ended in the
    /// previous step, see the type's docs). On an error the batch needs a
    /// [`reset`](Self::reset): some environments may have stepped.
    pub fn step(&mut self, actions: Actions<'_>) -> Result<(), EnvError> {
        if !self.ready {
            return Err(EnvError::NeedsReset);
        }
        let n = self.envs.len();
        let expected = n * self.act_len;
        let given = match actions {
            Actions::Discrete(a) => a.len(),
            Actions::Continuous(a) => a.len(),
        };
        if given != expected {
            return Err(EnvError::InvalidAction {
                action: format!("a batch of {given} numbers for {n} environments"),
                space: self.action_space.clone(),
            });
        }
        // Check every action first, so that a bad one steps nothing.
        for i in 0..n {
            if !self.needs_reset[i] {
                self.action_space
                    .check(action_of(actions, i, self.act_len))
                    .map_err(|e| e.in_batch(self.first_index + i))?;
            }
        }
        for i in 0..n {
            let row = &mut self.observations[i * self.obs_len..(i + 1) * self.obs_len];
            let index = self.first_index + i;
            let result = if self.needs_reset[i] {
                self.envs[i].reset(None, row).map(|info| {
                    self.autoreset[i] = true;
                    self.rewards[i] = 0.0;
                    self.terminated[i] = false;
                    self.truncated[i] = false;
                    self.needs_reset[i] = false;
                    self.infos[i] = info;
                })
            } else {
                self.envs[i]
                    .step(action_of(actions, i, self.act_len), row)
                    .and_then(|t| {
                        if !t.reward.is_finite() {
                            return Err(EnvError::NonFiniteReward { reward: t.reward });
                        }
                        self.autoreset[i] = false;
                        self.rewards[i] = t.reward;
                        self.terminated[i] = t.terminated;
                        self.truncated[i] = t.truncated;
                        self.infos[i] = t.info;
                        self.episode_return[i] += t.reward;
                        self.episode_length[i] += 1;
                        if t.terminated || t.truncated {
                            self.needs_reset[i] = true;
                            self.finished.push(EpisodeStats {
                                episode_return: self.episode_return[i],
                                length: self.episode_length[i],
                            });
                            self.episode_return[i] = 0.0;
                            self.episode_length[i] = 0;
                        }
                        Ok(())
                    })
            };
            if let Err(err) = result.and_then(|()| check_observation(row)) {
                self.ready = false;
                return Err(err.in_batch(index));
            }
        }
        Ok(())
    }

    /// The observations, `[len(), obs_len]` row-major.
    pub fn observations(&self) -> &[f32] {
        &self.observations
    }

    /// The rewards of the last step.
    pub fn rewards(&self) -> &[f64] {
        &self.rewards
    }

    /// Which environments terminated in the last step.
    pub fn terminated(&self) -> &[bool] {
        &self.terminated
    }

    /// Which environments were truncated in the last step.
    pub fn truncated(&self) -> &[bool] {
        &self.truncated
    }

    /// Which environments were reset (not stepped) in the last step.
    pub fn autoreset(&self) -> &[bool] {
        &self.autoreset
    }

    /// The infos of the last step.
    pub fn infos(&self) -> &[Info] {
        &self.infos
    }

    /// Episodes finished since the last [`take_episodes`](Self::take_episodes).
    pub fn episodes(&self) -> &[EpisodeStats] {
        &self.finished
    }

    /// Takes the finished episodes' statistics.
    pub fn take_episodes(&mut self) -> Vec<EpisodeStats> {
        std::mem::take(&mut self.finished)
    }
}

fn action_of<'a>(actions: Actions<'a>, i: usize, act_len: usize) -> Action<'a> {
    match actions {
        Actions::Discrete(a) => Action::Discrete(a[i]),
        Actions::Continuous(a) => Action::Continuous(&a[i * act_len..(i + 1) * act_len]),
    }
}

fn check_observation(row: &[f32]) -> Result<(), EnvError> {
    if row.iter().all(|v| v.is_finite()) {
        Ok(())
    } else {
        Err(EnvError::NonFiniteObservation {
            observation: row.to_vec(),
        })
    }
}
