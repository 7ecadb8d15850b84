//! Environments: the [`Env`] trait users implement, the built-in
//! [`CartPole`] and [`Pendulum`] (Gymnasium's, exactly), and [`EnvMaker`],
//! which rollout workers call to build their own copies.

mod cartpole;
mod pendulum;

pub use cartpole::CartPole;
pub use pendulum::Pendulum;

use std::fmt;
use std::sync::Arc;

use get_size2::GetSize;
use serde::{Deserialize, Serialize};

use crate::space::{Action, Space};

/// A reinforcement-learning environment (Gymnasium's `Env`).
///
/// Observations are written into a buffer the caller owns (`observation`,
/// of `observation_space().flat_len()` floats) rather than returned: a
/// vectorised env passes each environment its row of one batch buffer, so
/// stepping allocates nothing.
///
/// ```
/// use troupe_rl::{Action, Env, EnvError, Info, Space, Transition};
///
/// /// Walk right to reach 10; each step costs 1.
/// struct Corridor { at: u32, steps: u32 }
///
/// impl Env for Corridor {
///     fn observation_space(&self) -> Space { Space::bounded(vec![0.0], vec![10.0]).unwrap() }
///     fn action_space(&self) -> Space { Space::discrete(2) }
///     fn reset(&mut self, _seed: Option<u64>, obs: &mut [f32]) -> Result<Info, EnvError> {
///         (self.at, self.steps) = (0, 0);
///         obs[0] = 0.0;
///         Ok(Info::default())
///     }
///     fn step(&mut self, action: Action<'_>, obs: &mut [f32]) -> Result<Transition, EnvError> {
///         self.action_space().check(action)?;
///         if action == Action::Discrete(1) { self.at += 1 } else { self.at = self.at.saturating_sub(1) }
///         self.steps += 1;
///         obs[0] = self.at as f32;
///         Ok(Transition::new(-1.0, self.at == 10, self.steps == 100))
///     }
/// }
///
/// let mut env = Corridor { at: 0, steps: 0 };
/// let mut obs = [0.0];
/// env.reset(Some(0), &mut obs)?;
/// let t = env.step(Action::Discrete(1), &mut obs)?;
/// assert_eq!((obs[0], t.reward, t.terminated), (1.0, -1.0, false));
/// assert!(env.step(Action::Discrete(7), &mut obs).is_err());
/// # Ok::<(), EnvError>(())
/// ```
pub trait Env: Send + 'static {
    /// What observations look like; must not change over the env's life.
    fn observation_space(&self) -> Space;

    /// Which actions are valid; must not change over the env's life.
    fn action_space(&self) -> Space;

    /// Starts an episode and writes its first observation. With a seed, the
    /// env's random generator is seeded first (the same seed gives the same
    /// episode); without one it goes on from where it was.
    fn reset(&mut self, seed: Option<u64>, observation: &mut [f32]) -> Result<Info, EnvError>;

    /// Takes one action and writes the next observation. An action outside
    /// the action space is an [`EnvError::InvalidAction`], never a panic.
    fn step(&mut self, action: Action<'_>, observation: &mut [f32])
        -> Result<Transition, EnvError>;
}

/// What one step gave besides the observation.
#[derive(Clone, Debug, PartialEq)]
pub struct Transition {
    /// The reward for this step.
    pub reward: f64,
    /// The episode reached a terminal state (the MDP's end: no bootstrap).
    pub terminated: bool,
    /// The episode was cut short (a time limit): the value of the last
    /// observation is bootstrapped.
    pub truncated: bool,
    /// Anything else the env reports.
    pub info: Info,
}

impl Transition {
    /// A transition without info.
    pub fn new(reward: f64, terminated: bool, truncated: bool) -> Transition {
        Transition {
            reward,
            terminated,
            truncated,
            info: Info::default(),
        }
    }
}

/// Extra numbers an env reports (Gymnasium's `info` dict, numbers only).
/// Empty by default, and then it allocates nothing.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Info {
    entries: Vec<(String, f64)>,
}

impl Info {
    /// Sets `key` (replacing an earlier value).
    pub fn insert(&mut self, key: impl Into<String>, value: f64) {
        let key = key.into();
        match self.entries.iter_mut().find(|(k, _)| *k == key) {
            Some(entry) => entry.1 = value,
            None => self.entries.push((key, value)),
        }
    }

    /// The value of `key`, if set.
    pub fn get(&self, key: &str) -> Option<f64> {
        self.entries.iter().find(|(k, _)| k == key).map(|(_, v)| *v)
    }

    /// All entries, in insertion order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, f64)> {
        self.entries.iter().map(|(k, v)| (k.as_str(), *v))
    }

    /// No entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// The return and length of one finished episode.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize, GetSize)]
pub struct EpisodeStats {
    /// Sum of its rewards (undiscounted).
    pub episode_return: f64,
    /// How many steps it took.
    pub length: u64,
}

/// What went wrong in an environment. Each message names what is wrong.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum EnvError {
    /// The action is not an element of the action space.
    #[error("action {action} is outside the action space {space}; the policy or caller must only send actions the space contains")]
    InvalidAction {
        /// The action, printed.
        action: String,
        /// The env's action space.
        space: Space,
    },
    /// An observation contains NaN or an infinity.
    #[error("the observation {observation:?} contains NaN or an infinity; fix the environment's step/reset (a policy cannot learn from it)")]
    NonFiniteObservation {
        /// The observation as written.
        observation: Vec<f32>,
    },
    /// A reward is NaN or infinite.
    #[error("the reward {reward} is NaN or infinite; fix the environment's step")]
    NonFiniteReward {
        /// The reward returned.
        reward: f64,
    },
    /// `step` before `reset`, or after the episode ended without a reset.
    #[error("step called on an environment whose episode has ended (or never started); call reset first")]
    NeedsReset,
    /// A space that makes no sense, or envs of one batch that disagree.
    #[error("invalid space: {0}")]
    InvalidSpace(String),
    /// An error of one environment of a vectorised batch.
    #[error("environment {index}: {source}")]
    InBatch {
        /// Which environment of the batch (its global index for a worker).
        index: usize,
        /// What went wrong.
        #[source]
        source: Box<EnvError>,
    },
    /// The maker could not build an environment.
    #[error("could not make environment {env:?}: {reason}")]
    Make {
        /// The env's name.
        env: String,
        /// Why.
        reason: String,
    },
    /// An error of a user's environment.
    #[error("{0}")]
    Custom(String),
}

impl EnvError {
    /// An error of your own environment, with your message.
    pub fn custom(message: impl fmt::Display) -> EnvError {
        EnvError::Custom(message.to_string())
    }

    pub(crate) fn in_batch(self, index: usize) -> EnvError {
        match self {
            already @ EnvError::InBatch { .. } => already,
            other => EnvError::InBatch {
                index,
                source: Box::new(other),
            },
        }
    }
}

type MakeFn = dyn Fn(usize) -> Result<Box<dyn Env>, EnvError> + Send + Sync;

/// Builds environments by index: what each rollout worker calls (again
/// after a restart) to make its own copies. Cheap to clone.
///
/// ```
/// use troupe_rl::{CartPole, EnvMaker};
/// let cart_pole = EnvMaker::cart_pole();
/// assert_eq!(cart_pole.name(), "CartPole-v1");
/// let same = EnvMaker::by_id("CartPole-v1").unwrap();
/// let custom = EnvMaker::new("LongCartPole", |_index| {
///     Ok(CartPole::new().max_episode_steps(1000))
/// });
/// # let _ = (same, custom);
/// ```
#[derive(Clone)]
pub struct EnvMaker {
    name: Arc<str>,
    make: Arc<MakeFn>,
}

impl EnvMaker {
    /// A maker called `name` (checkpoints record it) from a function of the
    /// environment's index (`0..` over all workers).
    pub fn new<E, F>(name: impl Into<Arc<str>>, make: F) -> EnvMaker
    where
        E: Env,
        F: Fn(usize) -> Result<E, EnvError> + Send + Sync + 'static,
    {
        EnvMaker {
            name: name.into(),
            make: Arc::new(move |index| make(index).map(|env| Box::new(env) as Box<dyn Env>)),
        }
    }

    /// Gymnasium's `CartPole-v1`.
    pub fn cart_pole() -> EnvMaker {
        EnvMaker::new("CartPole-v1", |_| Ok(CartPole::new()))
    }

    /// Gymnasium's `Pendulum-v1`.
    pub fn pendulum() -> EnvMaker {
        EnvMaker::new("Pendulum-v1", |_| Ok(Pendulum::new()))
    }

    /// A built-in environment by its Gymnasium id.
    pub fn by_id(id: &str) -> Result<EnvMaker, EnvError> {
        match id {
            "CartPole-v1" => Ok(EnvMaker::cart_pole()),
            "Pendulum-v1" => Ok(EnvMaker::pendulum()),
            other => Err(EnvError::Make {
                env: other.to_owned(),
                reason: "no built-in environment has this id (built in: CartPole-v1, Pendulum-v1); use EnvMaker::new for your own".into(),
            }),
        }
    }

    /// The environment's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Builds environment number `index`.
    pub fn make(&self, index: usize) -> Result<Box<dyn Env>, EnvError> {
        (self.make)(index)
    }
}

impl fmt::Debug for EnvMaker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EnvMaker")
            .field("name", &self.name)
            .finish()
    }
}
