//! The vectorised env: Gymnasium 1.x's NEXT_STEP autoreset, episode
//! statistics, and bad input (actions outside the space, NaN observations,
//! mismatched spaces) as errors that change nothing.

use troupe_rl::{
    Action, Actions, CartPole, Env, EnvError, EnvMaker, Info, Space, Transition, VecEnv,
};

/// Counts its steps; the episode terminates after `length` steps. The
/// observation is `[steps, resets]`; the reward is the step number.
struct Counter {
    length: u32,
    steps: u32,
    resets: u32,
    nan_at: Option<u32>,
}

impl Counter {
    fn new(length: u32) -> Counter {
        Counter {
            length,
            steps: 0,
            resets: 0,
            nan_at: None,
        }
    }
}

impl Env for Counter {
    fn observation_space(&self) -> Space {
        Space::unbounded(2)
    }
    fn action_space(&self) -> Space {
        Space::discrete(2)
    }
    fn reset(&mut self, _seed: Option<u64>, obs: &mut [f32]) -> Result<Info, EnvError> {
        self.steps = 0;
        self.resets += 1;
        obs.copy_from_slice(&[0.0, self.resets as f32]);
        Ok(Info::default())
    }
    fn step(&mut self, action: Action<'_>, obs: &mut [f32]) -> Result<Transition, EnvError> {
        self.action_space().check(action)?;
        self.steps += 1;
        obs.copy_from_slice(&[self.steps as f32, self.resets as f32]);
        if self.nan_at == Some(self.steps) {
            obs[0] = f32::NAN;
        }
        Ok(Transition::new(
            f64::from(self.steps),
            self.steps == self.length,
            false,
        ))
    }
}

fn counters(lengths: &[u32]) -> VecEnv {
    let envs: Vec<Box<dyn Env>> = lengths
        .iter()
        .map(|l| Box::new(Counter::new(*l)) as Box<dyn Env>)
        .collect();
    VecEnv::new(envs, 0).unwrap()
}

#[test]
fn an_ended_episode_is_reset_in_the_next_step_with_its_action_ignored() {
    let mut envs = counters(&[2, 3]);
    envs.reset(Some(0)).unwrap();
    assert_eq!(envs.observations(), &[0.0, 1.0, 0.0, 1.0]);

    envs.step(Actions::Discrete(&[0, 0])).unwrap();
    envs.step(Actions::Discrete(&[0, 0])).unwrap();
    // Env 0 ended at step 2 with its real final observation and reward.
    assert_eq!(envs.terminated(), &[true, false]);
    assert_eq!(&envs.observations()[..2], &[2.0, 1.0]);
    assert_eq!(envs.rewards(), &[2.0, 2.0]);
    assert_eq!(envs.episodes().len(), 1);
    assert_eq!(envs.episodes()[0].episode_return, 3.0);
    assert_eq!(envs.episodes()[0].length, 2);

    // Next step: env 0 is reset (its action, even an invalid one, is not
    // used): first observation of episode 2, reward 0, flags false.
    envs.step(Actions::Discrete(&[9, 0])).unwrap();
    assert_eq!(envs.autoreset(), &[true, false]);
    assert_eq!(&envs.observations()[..2], &[0.0, 2.0]);
    assert_eq!(envs.rewards()[0], 0.0);
    assert_eq!(envs.terminated(), &[false, true]);
    assert_eq!(envs.truncated(), &[false, false]);

    // And it steps normally after that.
    envs.step(Actions::Discrete(&[1, 1])).unwrap();
    assert_eq!(envs.autoreset(), &[false, true]);
    assert_eq!(&envs.observations()[..2], &[1.0, 2.0]);
    let episodes = envs.take_episodes();
    assert_eq!(episodes.len(), 2);
    assert_eq!((episodes[1].episode_return, episodes[1].length), (6.0, 3));
    assert!(envs.episodes().is_empty());
}

#[test]
fn truncated_cartpoles_autoreset_too() {
    let maker = EnvMaker::new(
        "ShortCartPole",
        |_| Ok(CartPole::new().max_episode_steps(5)),
    );
    let mut envs = VecEnv::from_maker(&maker, 0, 3).unwrap();
    envs.reset(Some(1)).unwrap();
    let balance = |obs: &[f32]| -> Vec<u64> {
        obs.chunks(4)
            .map(|o| u64::from(o[2] + 0.5 * o[3] > 0.0))
            .collect()
    };
    for _ in 0..5 {
        let actions = balance(envs.observations());
        envs.step(Actions::Discrete(&actions)).unwrap();
    }
    assert_eq!(envs.truncated(), &[true, true, true]);
    assert_eq!(envs.episodes().len(), 3);
    let actions = balance(envs.observations());
    envs.step(Actions::Discrete(&actions)).unwrap();
    assert_eq!(envs.autoreset(), &[true, true, true]);
    assert!(
        envs.observations().iter().all(|v| v.abs() < 0.05),
        "fresh episodes"
    );
}

#[test]
fn seeds_give_each_env_its_own_reproducible_episode() {
    let mut a = VecEnv::from_maker(&EnvMaker::cart_pole(), 0, 2).unwrap();
    let mut b = VecEnv::from_maker(&EnvMaker::cart_pole(), 0, 2).unwrap();
    a.reset(Some(5)).unwrap();
    b.reset(Some(5)).unwrap();
    assert_eq!(a.observations(), b.observations());
    assert_ne!(a.observations()[..4], a.observations()[4..]);
}

#[test]
fn an_action_outside_the_space_is_an_error_naming_it_and_steps_nothing() {
    let mut envs = VecEnv::from_maker(&EnvMaker::cart_pole(), 10, 2).unwrap();
    envs.reset(Some(0)).unwrap();
    let before = envs.observations().to_vec();
    let err = envs.step(Actions::Discrete(&[1, 5])).unwrap_err();
    let message = err.to_string();
    assert!(message.contains("environment 11"), "{message}");
    assert!(
        message.contains("action 5 is outside the action space Discrete(2)"),
        "{message}"
    );
    assert_eq!(envs.observations(), &before[..], "nothing stepped");
    // The batch is still usable.
    envs.step(Actions::Discrete(&[1, 0])).unwrap();
    // Wrong batch sizes and kinds are errors too.
    assert!(envs.step(Actions::Discrete(&[1])).is_err());
    assert!(envs.step(Actions::Continuous(&[1.0, 0.0])).is_err());
}

#[test]
fn a_nan_observation_is_an_error_naming_the_env_and_the_values() {
    let mut bad = Counter::new(100);
    bad.nan_at = Some(3);
    let envs: Vec<Box<dyn Env>> = vec![Box::new(Counter::new(100)), Box::new(bad)];
    let mut envs = VecEnv::new(envs, 0).unwrap();
    envs.reset(None).unwrap();
    envs.step(Actions::Discrete(&[0, 0])).unwrap();
    envs.step(Actions::Discrete(&[0, 0])).unwrap();
    let err = envs.step(Actions::Discrete(&[0, 0])).unwrap_err();
    assert!(
        matches!(&err, EnvError::InBatch { index: 1, source } if matches!(**source, EnvError::NonFiniteObservation { .. })),
        "{err}"
    );
    assert!(err.to_string().contains("NaN"), "{err}");
    // Until a reset, the batch refuses to step.
    assert!(matches!(
        envs.step(Actions::Discrete(&[0, 0])),
        Err(EnvError::NeedsReset)
    ));
    envs.reset(None).unwrap();
}

#[test]
fn envs_with_different_spaces_cannot_share_a_batch() {
    let envs: Vec<Box<dyn Env>> = vec![Box::new(Counter::new(3)), Box::new(CartPole::new())];
    let err = VecEnv::new(envs, 0).err().expect("refused");
    assert!(err.to_string().contains("one kind of environment"), "{err}");
    assert!(VecEnv::new(Vec::new(), 0).is_err());
}
