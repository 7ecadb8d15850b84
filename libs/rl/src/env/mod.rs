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
/// Serializable: a rollout worker on another node sends it back as it is.
#[derive(Debug, Clone, thiserror::Error, Serialize, Deserialize)]
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

/// How a registered environment is made: its name and a plain function of
/// the environment's index. Made by [`register_env!`](crate::register_env);
/// collected when the program is linked, so that every node of a cluster
/// (all running the same program) knows the same names.
#[doc(hidden)]
pub struct EnvRegistration {
    name: &'static str,
    make: fn(usize) -> Result<Box<dyn Env>, EnvError>,
}

impl EnvRegistration {
    #[doc(hidden)]
    pub const fn new(
        name: &'static str,
        make: fn(usize) -> Result<Box<dyn Env>, EnvError>,
    ) -> EnvRegistration {
        EnvRegistration { name, make }
    }
}

inventory::collect!(EnvRegistration);

/// Boxes a registered maker's environment (used by `register_env!`).
#[doc(hidden)]
pub fn boxed_env<E: Env>(made: Result<E, EnvError>) -> Result<Box<dyn Env>, EnvError> {
    made.map(|env| Box::new(env) as Box<dyn Env>)
}

/// The built-in environments' ids, in the order [`EnvMaker::registered_ids`]
/// lists them first.
const BUILT_IN: [&str; 2] = ["CartPole-v1", "Pendulum-v1"];

/// Registers an environment under a name, when the program is linked, so
/// that [`EnvMaker::by_id`] makes it on any node: what rollout workers on
/// other nodes of a cluster need ([`PpoConfig::workers_on_cluster`]), since
/// a closure cannot travel between processes but a name can (every node
/// runs the same program).
///
/// The maker is a closure of the environment's index (`0..` over all
/// workers) that captures nothing, returning `Result<E, EnvError>` for any
/// `E: Env`. Write it at the top level of a module (as any `static`); the
/// name must be unique and not a built-in's (`CartPole-v1`, `Pendulum-v1`):
/// [`EnvMaker::by_id`] refuses a name registered twice.
///
/// ```
/// use troupe_rl::{CartPole, EnvMaker};
///
/// troupe_rl::register_env!("LongCartPole-v0", |_index| {
///     Ok(CartPole::new().max_episode_steps(1000))
/// });
///
/// let maker = EnvMaker::by_id("LongCartPole-v0")?;
/// assert_eq!(maker.name(), "LongCartPole-v0");
/// assert!(maker.is_registered());
/// assert!(EnvMaker::registered_ids().contains(&"LongCartPole-v0"));
/// # Ok::<(), troupe_rl::EnvError>(())
/// ```
///
/// [`PpoConfig::workers_on_cluster`]: crate::PpoConfig::workers_on_cluster
#[macro_export]
macro_rules! register_env {
    ($name:expr, $make:expr $(,)?) => {
        const _: () = {
            fn __troupe_rl_make_env(
                index: usize,
            ) -> ::std::result::Result<::std::boxed::Box<dyn $crate::Env>, $crate::EnvError> {
                let make = $make;
                $crate::__private::boxed_env(make(index))
            }
            $crate::__private::inventory::submit! {
                $crate::__private::EnvRegistration::new($name, __troupe_rl_make_env)
            }
        };
    };
}

/// Builds environments by index: what each rollout worker calls (again
/// after a restart) to make its own copies. Cheap to clone.
///
/// A maker is either *registered*, known by its name on every node (the
/// built-ins, and environments registered with
/// [`register_env!`](crate::register_env), made with [`EnvMaker::by_id`]),
/// or built from a closure ([`EnvMaker::new`]), which works in this
/// process only: rollout workers on other nodes
/// ([`PpoConfig::workers_on_cluster`](crate::PpoConfig::workers_on_cluster))
/// need a registered one.
///
/// ```
/// use troupe_rl::{CartPole, EnvMaker};
/// let cart_pole = EnvMaker::cart_pole();
/// assert_eq!(cart_pole.name(), "CartPole-v1");
/// let same = EnvMaker::by_id("CartPole-v1").unwrap();
/// assert!(same.is_registered());
/// let custom = EnvMaker::new("LongCartPole", |_index| {
///     Ok(CartPole::new().max_episode_steps(1000))
/// });
/// assert!(!custom.is_registered()); // a closure: this process only
/// # let _ = (same, custom);
/// ```
#[derive(Clone)]
pub struct EnvMaker {
    name: Arc<str>,
    make: Arc<MakeFn>,
    /// Made by name ([`EnvMaker::by_id`]): any node can make it again.
    registered: bool,
}

impl EnvMaker {
    /// A maker called `name` (checkpoints record it) from a function of the
    /// environment's index (`0..` over all workers). It works in this
    /// process only; register the environment with
    /// [`register_env!`](crate::register_env) for workers on other nodes.
    pub fn new<E, F>(name: impl Into<Arc<str>>, make: F) -> EnvMaker
    where
        E: Env,
        F: Fn(usize) -> Result<E, EnvError> + Send + Sync + 'static,
    {
        EnvMaker {
            name: name.into(),
            make: Arc::new(move |index| make(index).map(|env| Box::new(env) as Box<dyn Env>)),
            registered: false,
        }
    }

    /// Gymnasium's `CartPole-v1`.
    pub fn cart_pole() -> EnvMaker {
        EnvMaker {
            registered: true,
            ..EnvMaker::new(BUILT_IN[0], |_| Ok(CartPole::new()))
        }
    }

    /// Gymnasium's `Pendulum-v1`.
    pub fn pendulum() -> EnvMaker {
        EnvMaker {
            registered: true,
            ..EnvMaker::new(BUILT_IN[1], |_| Ok(Pendulum::new()))
        }
    }

    /// An environment by its id: a built-in one (Gymnasium's
    /// `CartPole-v1`, `Pendulum-v1`) or one registered with
    /// [`register_env!`](crate::register_env). An unknown id, or one
    /// registered twice, is an [`EnvError::Make`] that lists the known ids.
    pub fn by_id(id: &str) -> Result<EnvMaker, EnvError> {
        let mut registered = inventory::iter::<EnvRegistration>().filter(|r| r.name == id);
        let first = registered.next();
        let built_in = BUILT_IN.contains(&id);
        if (built_in && first.is_some()) || registered.next().is_some() {
            return Err(EnvError::Make {
                env: id.to_owned(),
                reason: "this id is registered more than once (with register_env!, or over a built-in's id); give each environment a name of its own".into(),
            });
        }
        match (id, first) {
            ("CartPole-v1", _) => Ok(EnvMaker::cart_pole()),
            ("Pendulum-v1", _) => Ok(EnvMaker::pendulum()),
            (_, Some(registration)) => {
                let make = registration.make;
                Ok(EnvMaker {
                    name: Arc::from(registration.name),
                    make: Arc::new(make),
                    registered: true,
                })
            }
            (other, None) => Err(EnvError::Make {
                env: other.to_owned(),
                reason: format!(
                    "no environment has this id (known: {}); register yours with troupe_rl::register_env!, or use EnvMaker::new for one used in this process only",
                    EnvMaker::registered_ids().join(", ")
                ),
            }),
        }
    }

    /// Every id [`EnvMaker::by_id`] knows: the built-ins, then the
    /// registered environments sorted by name.
    pub fn registered_ids() -> Vec<&'static str> {
        let mut user: Vec<&'static str> = inventory::iter::<EnvRegistration>()
            .map(|r| r.name)
            .collect();
        user.sort_unstable();
        user.dedup();
        BUILT_IN.iter().copied().chain(user).collect()
    }

    /// The environment's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether any node can make this environment from its name alone
    /// ([`EnvMaker::by_id`]: a built-in or a
    /// [`register_env!`](crate::register_env) one), as rollout workers on
    /// other nodes must; `false` for a maker built from a closure
    /// ([`EnvMaker::new`]).
    pub fn is_registered(&self) -> bool {
        self.registered
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
            .field("registered", &self.registered)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    crate::register_env!("RegistryTest-LongCartPole", |_index| {
        Ok(CartPole::new().max_episode_steps(7))
    });
    crate::register_env!("RegistryTest-Twice", |_| Ok(CartPole::new()));
    crate::register_env!("RegistryTest-Twice", |_| Ok(Pendulum::new()));
    crate::register_env!("Pendulum-v1", |_| Ok(CartPole::new()));

    #[test]
    fn registered_envs_are_made_by_name() {
        let maker = EnvMaker::by_id("RegistryTest-LongCartPole").unwrap();
        assert_eq!(maker.name(), "RegistryTest-LongCartPole");
        assert!(maker.is_registered());
        let mut env = maker.make(3).unwrap();
        let mut obs = [0.0; 4];
        env.reset(Some(0), &mut obs).unwrap();
        let mut steps = 0;
        loop {
            steps += 1;
            let t = env.step(crate::Action::Discrete(0), &mut obs).unwrap();
            if t.terminated || t.truncated {
                break;
            }
        }
        assert!(
            steps <= 7,
            "the registered maker's time limit, not CartPole's 500"
        );
        let ids = EnvMaker::registered_ids();
        assert_eq!(&ids[..2], &["CartPole-v1", "Pendulum-v1"]);
        assert!(ids.contains(&"RegistryTest-LongCartPole"));
    }

    #[test]
    fn built_ins_are_registered_and_closures_are_not() {
        assert!(EnvMaker::by_id("CartPole-v1").unwrap().is_registered());
        assert!(EnvMaker::cart_pole().is_registered());
        let closure = EnvMaker::new("CartPole-v1", |_| Ok(CartPole::new()));
        assert!(!closure.is_registered(), "a closure is never made by name");
    }

    #[test]
    fn an_unknown_id_is_a_clear_error_listing_the_known_ones() {
        let err = EnvMaker::by_id("NoSuchEnv-v9").unwrap_err();
        match &err {
            EnvError::Make { env, reason } => {
                assert_eq!(env, "NoSuchEnv-v9");
                assert!(reason.contains("CartPole-v1"), "{reason}");
                assert!(reason.contains("RegistryTest-LongCartPole"), "{reason}");
                assert!(reason.contains("register_env!"), "{reason}");
            }
            other => panic!("expected Make, got {other:?}"),
        }
    }

    #[test]
    fn a_name_registered_twice_or_over_a_built_in_is_refused() {
        for id in ["RegistryTest-Twice", "Pendulum-v1"] {
            match EnvMaker::by_id(id) {
                Err(EnvError::Make { env, reason }) => {
                    assert_eq!(env, id);
                    assert!(reason.contains("more than once"), "{reason}");
                }
                other => panic!("{id}: expected Make, got {other:?}"),
            }
        }
    }

    #[test]
    fn env_errors_survive_the_wire() {
        let err = EnvError::InvalidAction {
            action: "7".into(),
            space: Space::discrete(2),
        }
        .in_batch(3);
        let bytes = postcard::to_allocvec(&err).unwrap();
        let back: EnvError = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(back.to_string(), err.to_string());
    }
}
