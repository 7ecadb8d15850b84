//! Gymnasium's `Pendulum-v1`, equation for equation.

use std::f64::consts::PI;

use rand::{Rng, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;

use super::{Env, EnvError, Info, Transition};
use crate::space::{Action, Space};

// Gymnasium 1.x `PendulumEnv`, same names and values.
const MAX_SPEED: f64 = 8.0;
const MAX_TORQUE: f32 = 2.0;
const DT: f64 = 0.05;
const M: f64 = 1.0;
const L: f64 = 1.0;
/// Reset bounds for theta and theta_dot (`DEFAULT_X`, `DEFAULT_Y`).
const DEFAULT_X: f64 = PI;
const DEFAULT_Y: f64 = 1.0;

/// An inverted pendulum to swing up (Gymnasium's `Pendulum-v1`): the same
/// equations and constants, an `f64` state `[theta, theta_dot]`,
/// observations `[cos θ, sin θ, θ̇]` as `f32`, the reward
/// `-(normalize(θ)² + 0.1 θ̇² + 0.001 u²)`, never terminated, truncated
/// after 200 steps. Where Gymnasium computes in `float32` (the torque `u` is
/// a `float32` action, and NumPy 2 keeps `float32` when it meets a Python
/// float), this does too, so the numbers are the same. Resets draw
/// `θ ~ U[-π, π)`, `θ̇ ~ U[-1, 1)` with the env's own generator.
///
/// Differences: an action outside `[-2, 2]` is an
/// [`EnvError::InvalidAction`] (Gymnasium clips it silently), and stepping
/// an ended episode is an [`EnvError::NeedsReset`].
#[derive(Clone, Debug)]
pub struct Pendulum {
    state: [f64; 2],
    g: f64,
    rng: Xoshiro256PlusPlus,
    elapsed_steps: u32,
    max_episode_steps: u32,
    running: bool,
}

impl Default for Pendulum {
    fn default() -> Self {
        Pendulum::new()
    }
}

impl Pendulum {
    /// A pendulum with `g = 10`, truncated after 200 steps, as
    /// `gym.make("Pendulum-v1")`. Reset it before stepping.
    pub fn new() -> Pendulum {
        Pendulum {
            state: [0.0; 2],
            g: 10.0,
            rng: Xoshiro256PlusPlus::seed_from_u64(0),
            elapsed_steps: 0,
            max_episode_steps: 200,
            running: false,
        }
    }

    /// Another gravity (Gymnasium's `g` argument).
    pub fn gravity(mut self, g: f64) -> Pendulum {
        self.g = g;
        self
    }

    /// Truncates episodes after `steps` steps instead of 200.
    pub fn max_episode_steps(mut self, steps: u32) -> Pendulum {
        self.max_episode_steps = steps;
        self
    }

    /// The physical state `[theta, theta_dot]`.
    pub fn state(&self) -> [f64; 2] {
        self.state
    }

    /// Sets the physical state exactly (the episode goes on from it).
    pub fn set_state(&mut self, state: [f64; 2]) {
        self.state = state;
        self.running = true;
    }

    fn observe(&self, observation: &mut [f32]) {
        let [theta, theta_dot] = self.state;
        observation[0] = theta.cos() as f32;
        observation[1] = theta.sin() as f32;
        observation[2] = theta_dot as f32;
    }
}

/// Python's `((x + pi) % (2 * pi)) - pi`: `%` is floored, like `rem_euclid`
/// for a positive divisor.
fn angle_normalize(x: f64) -> f64 {
    (x + PI).rem_euclid(2.0 * PI) - PI
}

impl Env for Pendulum {
    fn observation_space(&self) -> Space {
        let high = vec![1.0, 1.0, MAX_SPEED as f32];
        Space::Box {
            low: high.iter().map(|h| -h).collect(),
            high,
        }
    }

    fn action_space(&self) -> Space {
        Space::Box {
            low: vec![-MAX_TORQUE],
            high: vec![MAX_TORQUE],
        }
    }

    fn reset(&mut self, seed: Option<u64>, observation: &mut [f32]) -> Result<Info, EnvError> {
        if let Some(seed) = seed {
            self.rng = Xoshiro256PlusPlus::seed_from_u64(seed);
        }
        self.state = [
            self.rng.random_range(-DEFAULT_X..DEFAULT_X),
            self.rng.random_range(-DEFAULT_Y..DEFAULT_Y),
        ];
        self.elapsed_steps = 0;
        self.running = true;
        self.observe(observation);
        Ok(Info::default())
    }

    fn step(
        &mut self,
        action: Action<'_>,
        observation: &mut [f32],
    ) -> Result<Transition, EnvError> {
        self.action_space().check(action)?;
        let Action::Continuous(&[u]) = action else {
            // check() accepted only a one-float box action.
            return Err(EnvError::InvalidAction {
                action: action.to_string(),
                space: self.action_space(),
            });
        };
        if !self.running {
            return Err(EnvError::NeedsReset);
        }
        let [th, thdot] = self.state;
        let u = u.clamp(-MAX_TORQUE, MAX_TORQUE);
        // float32 where NumPy 2 computes in float32: `.001 * (u**2)` and
        // `3.0 / (m * l**2) * u`.
        let torque_cost = f64::from(0.001f32 * (u * u));
        let costs = angle_normalize(th) * angle_normalize(th) + 0.1 * (thdot * thdot) + torque_cost;
        let torque_acc = f64::from((3.0 / (M * L * L)) as f32 * u);
        let newthdot = thdot + (3.0 * self.g / (2.0 * L) * th.sin() + torque_acc) * DT;
        let newthdot = newthdot.clamp(-MAX_SPEED, MAX_SPEED);
        let newth = th + newthdot * DT;
        self.state = [newth, newthdot];
        self.elapsed_steps += 1;
        let truncated = self.elapsed_steps >= self.max_episode_steps;
        self.running = !truncated;
        self.observe(observation);
        Ok(Transition::new(-costs, false, truncated))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn angles_normalize_as_python_does() {
        assert!((angle_normalize(3.0 * PI / 2.0) + PI / 2.0).abs() < 1e-12);
        assert!((angle_normalize(-3.0 * PI / 2.0) - PI / 2.0).abs() < 1e-12);
        assert_eq!(angle_normalize(0.5), 0.5);
    }

    #[test]
    fn torques_outside_the_box_are_errors() {
        let mut env = Pendulum::new();
        let mut obs = [0.0; 3];
        env.reset(Some(1), &mut obs).unwrap();
        let err = env.step(Action::Continuous(&[2.5]), &mut obs).unwrap_err();
        assert!(err.to_string().contains("[2.5]"), "{err}");
        assert!(env.step(Action::Continuous(&[f32::NAN]), &mut obs).is_err());
        assert!(env.step(Action::Discrete(0), &mut obs).is_err());
        assert!(env.step(Action::Continuous(&[2.0]), &mut obs).is_ok());
    }

    #[test]
    fn episodes_are_truncated_after_200_steps() {
        let mut env = Pendulum::new();
        let mut obs = [0.0; 3];
        env.reset(Some(1), &mut obs).unwrap();
        for step in 1..=200 {
            let t = env.step(Action::Continuous(&[0.0]), &mut obs).unwrap();
            assert!(!t.terminated);
            assert_eq!(t.truncated, step == 200);
        }
        assert!(matches!(
            env.step(Action::Continuous(&[0.0]), &mut obs),
            Err(EnvError::NeedsReset)
        ));
    }
}
