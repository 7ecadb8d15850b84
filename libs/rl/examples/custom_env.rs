//! Training an environment written right here: a cart on a line that must
//! stop on a target. Observations are the position, the velocity and the
//! target; actions push left, coast, or push right; each step costs the
//! distance to the target; the episode ends when the cart rests on the
//! target, or after 100 steps.
//!
//! ```text
//! cargo run --release -p troupe-rl --example custom_env
//! ```

use rand::{Rng, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;
use troupe::prelude::*;
use troupe_rl::{
    Action, Env, EnvError, EnvMaker, Info, PpoConfig, Progress, Space, Stop, Trainer, Transition,
};

struct Docking {
    position: f64,
    velocity: f64,
    target: f64,
    steps: u32,
    rng: Xoshiro256PlusPlus,
}

impl Docking {
    fn new(index: usize) -> Docking {
        Docking {
            position: 0.0,
            velocity: 0.0,
            target: 0.0,
            steps: 0,
            rng: Xoshiro256PlusPlus::seed_from_u64(index as u64),
        }
    }

    fn observe(&self, obs: &mut [f32]) {
        obs.copy_from_slice(&[
            self.position as f32,
            self.velocity as f32,
            self.target as f32,
        ]);
    }
}

impl Env for Docking {
    fn observation_space(&self) -> Space {
        Space::bounded(vec![-10.0, -5.0, -5.0], vec![10.0, 5.0, 5.0]).expect("valid bounds")
    }

    fn action_space(&self) -> Space {
        Space::discrete(3)
    }

    fn reset(&mut self, seed: Option<u64>, obs: &mut [f32]) -> Result<Info, EnvError> {
        if let Some(seed) = seed {
            self.rng = Xoshiro256PlusPlus::seed_from_u64(seed);
        }
        self.position = 0.0;
        self.velocity = 0.0;
        // At least 1 away, on either side.
        let side = if self.rng.random::<bool>() { 1.0 } else { -1.0 };
        self.target = side * self.rng.random_range(1.0..4.0);
        self.steps = 0;
        self.observe(obs);
        Ok(Info::default())
    }

    fn step(&mut self, action: Action<'_>, obs: &mut [f32]) -> Result<Transition, EnvError> {
        // Never trust the caller: an action outside the space is an error.
        self.action_space().check(action)?;
        let Action::Discrete(push) = action else {
            return Err(EnvError::custom("Docking takes discrete actions"));
        };
        self.velocity = (self.velocity * 0.9 + (push as f64 - 1.0) * 0.1).clamp(-5.0, 5.0);
        self.position = (self.position + self.velocity).clamp(-10.0, 10.0);
        self.steps += 1;
        self.observe(obs);
        let distance = (self.position - self.target).abs();
        let docked = distance < 0.2 && self.velocity.abs() < 0.05;
        let mut info = Info::default();
        info.insert("distance", distance);
        Ok(Transition {
            reward: if docked { 10.0 } else { -distance * 0.1 },
            terminated: docked,
            truncated: self.steps >= 100,
            info,
        })
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let rt = Runtime::start(Config::default())?;
    rt.block_on(async {
        let env = EnvMaker::new("Docking", |index| Ok(Docking::new(index)));
        let config = PpoConfig::default()
            .envs_per_worker(8)
            .gamma(0.99)
            .gae_lambda(0.95)
            .entropy_coef(0.01)
            .total_env_steps(300_000);
        let mut trainer = Trainer::new(&rt, env, config).await?;
        let before = trainer.evaluate(20, 7).await?.mean_return();
        let summary = trainer
            .train_until(&Stop::at_return(8.5).or_env_steps(300_000), &mut Progress::new(300_000))
            .await?;
        let after = trainer.evaluate(20, 7).await?.mean_return();
        println!(
            "Docking: training mean return {:.2} after {} steps in {:.1} s; evaluation return {before:.2} -> {after:.2}",
            summary.last.episode_return_mean, summary.last.env_steps, summary.seconds
        );
        trainer.shutdown().await;
        Ok::<_, Box<dyn std::error::Error>>(())
    })?;
    rt.block_on(rt.shutdown())?;
    Ok(())
}
