//! Gymnasium's `CartPole-v1`, equation for equation.

use rand::{Rng, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;

use super::{Env, EnvError, Info, Transition};
use crate::space::{Action, Space};

// Gymnasium 1.x `CartPoleEnv`, same names and values.
const GRAVITY: f64 = 9.8;
const MASSCART: f64 = 1.0;
const MASSPOLE: f64 = 0.1;
const TOTAL_MASS: f64 = MASSPOLE + MASSCART;
/// Half the pole's length.
const LENGTH: f64 = 0.5;
const POLEMASS_LENGTH: f64 = MASSPOLE * LENGTH;
const FORCE_MAG: f64 = 10.0;
/// Seconds between state updates.
const TAU: f64 = 0.02;
const THETA_THRESHOLD_RADIANS: f64 = 12.0 * 2.0 * std::f64::consts::PI / 360.0;
const X_THRESHOLD: f64 = 2.4;

/// A pole balanced on a cart (Gymnasium's `CartPole-v1`): the same
/// equations and constants, an `f64` state `[x, x_dot, theta, theta_dot]`,
/// the explicit Euler integrator (`kinematics_integrator = "euler"`), a
/// reward of 1 per step including the last, termination when `|x| > 2.4` or
/// `|theta| > 12°`, truncation after 500 steps (`gym.make`'s time limit).
/// Resets draw each state variable uniformly from `[-0.05, 0.05)` with the
/// env's own generator (seeded by `reset(Some(seed))`; the draws are not
/// numpy's).
///
/// The one difference: stepping an episode that has ended is an
/// [`EnvError::NeedsReset`] (Gymnasium warns and returns reward 0).
#[derive(Clone, Debug)]
pub struct CartPole {
    state: [f64; 4],
    rng: Xoshiro256PlusPlus,
    elapsed_steps: u32,
    max_episode_steps: u32,
    running: bool,
}

impl Default for CartPole {
    fn default() -> Self {
        CartPole::new()
    }
}

impl CartPole {
    /// A cart pole truncated after 500 steps, as `gym.make("CartPole-v1")`.
    /// Reset it before stepping.
    pub fn new() -> CartPole {
        CartPole {
            state: [0.0; 4],
            rng: Xoshiro256PlusPlus::seed_from_u64(0),
            elapsed_steps: 0,
            max_episode_steps: 500,
            running: false,
        }
    }

    /// Truncates episodes after `steps` steps instead of 500.
    pub fn max_episode_steps(mut self, steps: u32) -> CartPole {
        self.max_episode_steps = steps;
        self
    }

    /// The physical state `[x, x_dot, theta, theta_dot]`.
    pub fn state(&self) -> [f64; 4] {
        self.state
    }

    /// Sets the physical state exactly (the episode goes on from it: its
    /// step count is kept, and an ended episode runs again).
    pub fn set_state(&mut self, state: [f64; 4]) {
        self.state = state;
        self.running = true;
    }

    /// Steps taken since the last reset.
    pub fn elapsed_steps(&self) -> u32 {
        self.elapsed_steps
    }

    fn observe(&self, observation: &mut [f32]) {
        for (o, s) in observation.iter_mut().zip(self.state) {
            *o = s as f32;
        }
    }
}

impl Env for CartPole {
    fn observation_space(&self) -> Space {
        let high = [
            (X_THRESHOLD * 2.0) as f32,
            f32::INFINITY,
            (THETA_THRESHOLD_RADIANS * 2.0) as f32,
            f32::INFINITY,
        ];
        Space::Box {
            low: high.iter().map(|h| -h).collect(),
            high: high.to_vec(),
        }
    }

    fn action_space(&self) -> Space {
        Space::discrete(2)
    }

    fn reset(&mut self, seed: Option<u64>, observation: &mut [f32]) -> Result<Info, EnvError> {
        if let Some(seed) = seed {
            self.rng = Xoshiro256PlusPlus::seed_from_u64(seed);
        }
        for s in &mut self.state {
            *s = self.rng.random_range(-0.05..0.05);
        }
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
        let push_right = match action {
            Action::Discrete(1) => true,
            Action::Discrete(0) => false,
            other => {
                return Err(EnvError::InvalidAction {
                    action: other.to_string(),
                    space: self.action_space(),
                })
            }
        };
        if !self.running {
            return Err(EnvError::NeedsReset);
        }
        let [mut x, mut x_dot, mut theta, mut theta_dot] = self.state;
        let force = if push_right { FORCE_MAG } else { -FORCE_MAG };
        let costheta = theta.cos();
        let sintheta = theta.sin();
        // Operation order as in Gymnasium, so results match bit for bit.
        let temp = (force + POLEMASS_LENGTH * (theta_dot * theta_dot) * sintheta) / TOTAL_MASS;
        let thetaacc = (GRAVITY * sintheta - costheta * temp)
            / (LENGTH * (4.0 / 3.0 - MASSPOLE * (costheta * costheta) / TOTAL_MASS));
        let xacc = temp - POLEMASS_LENGTH * thetaacc * costheta / TOTAL_MASS;
        // kinematics_integrator == "euler"
        x += TAU * x_dot;
        x_dot += TAU * xacc;
        theta += TAU * theta_dot;
        theta_dot += TAU * thetaacc;
        self.state = [x, x_dot, theta, theta_dot];

        // Gymnasium's comparisons, as written there.
        #[allow(clippy::manual_range_contains)]
        let terminated = x < -X_THRESHOLD
            || x > X_THRESHOLD
            || theta < -THETA_THRESHOLD_RADIANS
            || theta > THETA_THRESHOLD_RADIANS;
        self.elapsed_steps += 1;
        let truncated = self.elapsed_steps >= self.max_episode_steps;
        self.running = !(terminated || truncated);
        self.observe(observation);
        Ok(Transition::new(1.0, terminated, truncated))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resets_are_seeded_and_within_bounds() {
        let (mut a, mut b) = (CartPole::new(), CartPole::new());
        let (mut oa, mut ob) = ([0.0; 4], [0.0; 4]);
        a.reset(Some(3), &mut oa).unwrap();
        b.reset(Some(3), &mut ob).unwrap();
        assert_eq!(oa, ob);
        for _ in 0..1000 {
            a.reset(None, &mut oa).unwrap();
            assert!(a.state().iter().all(|s| (-0.05..0.05).contains(s)));
        }
    }

    #[test]
    fn bad_actions_and_steps_after_the_end_are_errors() {
        let mut env = CartPole::new();
        let mut obs = [0.0; 4];
        assert!(matches!(
            env.step(Action::Discrete(0), &mut obs),
            Err(EnvError::NeedsReset)
        ));
        env.reset(Some(0), &mut obs).unwrap();
        let err = env.step(Action::Discrete(2), &mut obs).unwrap_err();
        assert!(err.to_string().contains("action 2 is outside"), "{err}");
        let err = env.step(Action::Continuous(&[1.0]), &mut obs).unwrap_err();
        assert!(matches!(err, EnvError::InvalidAction { .. }), "{err}");
        // Always pushing right ends the episode; then a step is an error.
        let mut steps = 0;
        loop {
            steps += 1;
            let t = env.step(Action::Discrete(1), &mut obs).unwrap();
            if t.terminated {
                break;
            }
        }
        assert!(steps < 500);
        assert!(matches!(
            env.step(Action::Discrete(1), &mut obs),
            Err(EnvError::NeedsReset)
        ));
    }
}
