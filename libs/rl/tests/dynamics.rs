//! CartPole-v1 and Pendulum-v1 against trajectories recorded from
//! Gymnasium itself (fixtures/record_gymnasium.sh): from each recorded
//! initial state, the recorded actions must give the same states (to
//! 1e-9), observations, rewards, and termination and truncation steps.

use serde::Deserialize;
use troupe_rl::{Action, CartPole, Env, Pendulum, Transition};

#[derive(Deserialize)]
struct Fixture {
    gymnasium: String,
    cartpole: Vec<Trajectory<u64>>,
    pendulum: Vec<Trajectory<Vec<f32>>>,
}

#[derive(Deserialize)]
struct Trajectory<A> {
    seed: u64,
    initial_state: Vec<f64>,
    initial_obs: Vec<f64>,
    actions: Vec<A>,
    states: Vec<Vec<f64>>,
    observations: Vec<Vec<f64>>,
    rewards: Vec<f64>,
    terminated: Vec<bool>,
    truncated: Vec<bool>,
}

fn fixture() -> Fixture {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/fixtures/gymnasium_trajectories.json"
    );
    let text = std::fs::read_to_string(path).expect("the fixture is committed");
    serde_json::from_str(&text).expect("the fixture parses")
}

fn assert_close(what: &str, got: &[f64], want: &[f64], tolerance: f64) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= tolerance,
            "{what}[{i}]: {g} vs Gymnasium's {w}"
        );
    }
}

fn as_f64(obs: &[f32]) -> Vec<f64> {
    obs.iter().map(|v| f64::from(*v)).collect()
}

/// Replays `t`'s actions through `step` (which steps the env, set to the
/// recorded initial state, and returns the transition and the new state),
/// checking every state to 1e-9, observation, reward and flag.
fn replay<A>(
    t: &Trajectory<A>,
    obs: &mut [f32],
    mut step: impl FnMut(&A, &mut [f32]) -> (Transition, Vec<f64>),
) {
    for (i, action) in t.actions.iter().enumerate() {
        let what = format!("seed {} step {}", t.seed, i + 1);
        let (out, state) = step(action, obs);
        assert_close(&format!("{what} state"), &state, &t.states[i], 1e-9);
        // Observations are the f32 casts of states equal to 1e-9.
        assert_close(
            &format!("{what} obs"),
            &as_f64(obs),
            &t.observations[i],
            1e-6,
        );
        assert!(
            (out.reward - t.rewards[i]).abs() <= 1e-9,
            "{what} reward {} vs {}",
            out.reward,
            t.rewards[i]
        );
        assert_eq!(out.terminated, t.terminated[i], "{what} terminated");
        assert_eq!(out.truncated, t.truncated[i], "{what} truncated");
    }
}

#[test]
fn cartpole_follows_gymnasium_step_for_step() {
    let fixture = fixture();
    assert_eq!(fixture.gymnasium, "1.4.0");
    let mut truncated_once = false;
    for t in &fixture.cartpole {
        let mut env = CartPole::new();
        let mut obs = [0.0f32; 4];
        env.reset(Some(t.seed), &mut obs).unwrap();
        let initial: [f64; 4] = t.initial_state.clone().try_into().unwrap();
        env.set_state(initial);
        assert_close(
            "initial obs",
            &as_f64(&initial.map(|s| s as f32)),
            &t.initial_obs,
            0.0,
        );
        replay(t, &mut obs, |action, obs| {
            let out = env.step(Action::Discrete(*action), obs).unwrap();
            (out, env.state().to_vec())
        });
        truncated_once |= t.truncated.last() == Some(&true);
        assert_eq!(env.elapsed_steps() as usize, t.actions.len());
    }
    assert!(
        truncated_once,
        "the fixture has an episode truncated at 500 steps"
    );
}

#[test]
fn pendulum_follows_gymnasium_step_for_step() {
    let fixture = fixture();
    for t in &fixture.pendulum {
        let mut env = Pendulum::new();
        let mut obs = [0.0f32; 3];
        env.reset(Some(t.seed), &mut obs).unwrap();
        env.set_state(t.initial_state.clone().try_into().unwrap());
        replay(t, &mut obs, |action, obs| {
            let out = env.step(Action::Continuous(action), obs).unwrap();
            (out, env.state().to_vec())
        });
        assert_eq!(
            t.actions.len(),
            200,
            "Pendulum-v1 is truncated at 200 steps"
        );
    }
}

/// One step from each recorded state (no error carried over from earlier
/// steps) must agree to rounding: this catches a term computed in `f64`
/// where Gymnasium computes in `float32` (a difference near 1e-12).
#[test]
fn one_step_from_every_recorded_state_agrees_to_rounding() {
    let fixture = fixture();
    for t in &fixture.cartpole {
        let mut env = CartPole::new();
        let mut obs = [0.0f32; 4];
        env.reset(Some(0), &mut obs).unwrap();
        for (i, action) in t.actions.iter().enumerate() {
            let before = if i == 0 {
                &t.initial_state
            } else {
                &t.states[i - 1]
            };
            env.set_state(before.clone().try_into().unwrap());
            let out = env.step(Action::Discrete(*action), &mut obs).unwrap();
            assert_close(
                &format!("seed {} step {}", t.seed, i + 1),
                &env.state(),
                &t.states[i],
                1e-12,
            );
            assert_eq!(out.reward, t.rewards[i]);
        }
    }
    for t in &fixture.pendulum {
        let mut env = Pendulum::new();
        let mut obs = [0.0f32; 3];
        env.reset(Some(0), &mut obs).unwrap();
        for (i, action) in t.actions.iter().enumerate() {
            let before = if i == 0 {
                &t.initial_state
            } else {
                &t.states[i - 1]
            };
            env.set_state(before.clone().try_into().unwrap());
            let out = env.step(Action::Continuous(action), &mut obs).unwrap();
            let what = format!("seed {} step {}", t.seed, i + 1);
            assert_close(&what, &env.state(), &t.states[i], 1e-12);
            assert!(
                (out.reward - t.rewards[i]).abs() <= 1e-13,
                "{what}: reward {} vs {}",
                out.reward,
                t.rewards[i]
            );
        }
    }
}
