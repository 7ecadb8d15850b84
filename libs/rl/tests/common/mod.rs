//! Helpers shared by the integration tests: a small config and CartPole
//! with a hook after each step (to make it panic, hang, slow or broken).

#![allow(dead_code)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use troupe_rl::{Action, CartPole, Env, EnvError, EnvMaker, Info, PpoConfig, Space, Transition};

/// The deadline for anything in training that could hang.
pub const TRAINING: Duration = Duration::from_secs(120);

/// A small trainer; a quarter CPU per worker, so that several trainers
/// fit one runtime at once.
pub fn small() -> PpoConfig {
    PpoConfig::default()
        .num_workers(2)
        .envs_per_worker(2)
        .fragment_len(16)
        .num_cpus_per_worker(0.25)
}

/// CartPole with a hook that runs after each step, given the env's step
/// count and the observation: to make it panic, slow or broken.
pub struct Hooked<H> {
    inner: CartPole,
    steps: u32,
    hook: H,
}

impl<H: FnMut(u32, &mut [f32]) + Send + 'static> Env for Hooked<H> {
    fn observation_space(&self) -> Space {
        self.inner.observation_space()
    }
    fn action_space(&self) -> Space {
        self.inner.action_space()
    }
    fn reset(&mut self, seed: Option<u64>, obs: &mut [f32]) -> Result<Info, EnvError> {
        self.inner.reset(seed, obs)
    }
    fn step(&mut self, action: Action<'_>, obs: &mut [f32]) -> Result<Transition, EnvError> {
        let t = self.inner.step(action, obs)?;
        self.steps += 1;
        (self.hook)(self.steps, obs);
        Ok(t)
    }
}

/// Environments from `make_hook(index)`.
pub fn hooked<H, F>(name: &str, make_hook: F) -> EnvMaker
where
    H: FnMut(u32, &mut [f32]) + Send + 'static,
    F: Fn(usize) -> H + Send + Sync + 'static,
{
    EnvMaker::new(name.to_owned(), move |index| {
        Ok(Hooked {
            inner: CartPole::new(),
            steps: 0,
            hook: make_hook(index),
        })
    })
}

/// CartPole that panics in the middle of an episode when `trigger` is set
/// (once: it clears the trigger), or at every step for env `always_for_env`.
pub fn fragile(trigger: Arc<AtomicBool>, always_for_env: Option<usize>) -> EnvMaker {
    hooked("FragileCartPole", move |index| {
        let trigger = trigger.clone();
        move |steps, _: &mut [f32]| {
            if always_for_env == Some(index) || (steps > 5 && trigger.swap(false, Ordering::AcqRel))
            {
                panic!("the simulator crashed");
            }
        }
    })
}

/// A gate a hung environment waits at until the test opens it (or a
/// minute passes, so that a failed test still ends).
#[derive(Clone, Default)]
pub struct Gate(Arc<(std::sync::Mutex<bool>, std::sync::Condvar)>);

impl Gate {
    /// Blocks until the gate is open.
    pub fn wait(&self) {
        let (open, changed) = &*self.0;
        let guard = open.lock().unwrap_or_else(|e| e.into_inner());
        let _ = changed
            .wait_timeout_while(guard, Duration::from_secs(30), |open| !*open)
            .unwrap_or_else(|e| e.into_inner());
    }

    /// Opens it for good.
    pub fn open(&self) {
        let (open, changed) = &*self.0;
        *open.lock().unwrap_or_else(|e| e.into_inner()) = true;
        changed.notify_all();
    }
}

/// CartPole that hangs at the gate in the middle of an episode when
/// `trigger` is set (once: it clears the trigger).
pub fn hanging(trigger: Arc<AtomicBool>, gate: Gate) -> EnvMaker {
    hooked("HangingCartPole", move |_| {
        let (trigger, gate) = (trigger.clone(), gate.clone());
        move |steps, _: &mut [f32]| {
            if steps > 5 && trigger.swap(false, Ordering::AcqRel) {
                gate.wait();
            }
        }
    })
}
