//! PPO on CartPole-v1 until the mean return of the last 100 episodes
//! reaches 475: prints the time it took, saves the learning curve (PNG),
//! the CSV log and a checkpoint, then restores the checkpoint and evaluates.
//!
//! ```text
//! cargo run --release -p troupe-rl --example ppo_cartpole [OUTPUT_DIR] [SEED]
//! ```
//!
//! Output goes to `target/ppo_cartpole/` unless OUTPUT_DIR is given. A
//! progress bar shows the live return on a terminal; elsewhere, log lines.

use std::path::PathBuf;
use std::time::Instant;

use troupe::prelude::*;
use troupe_rl::{
    plot_learning_curve, CsvLog, EnvMaker, PpoConfig, Progress, Reporter, Stop, Trainer,
};

const TARGET: f64 = 475.0;
const BUDGET: u64 = 1_000_000;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let out = PathBuf::from(args.next().unwrap_or_else(|| "target/ppo_cartpole".into()));
    let seed: u64 = args.next().map(|s| s.parse()).transpose()?.unwrap_or(0);
    std::fs::create_dir_all(&out)?;

    let rt = Runtime::start(Config::default())?;
    rt.block_on(async {
        let began = Instant::now();
        let config = PpoConfig::default().seed(seed);
        let mut trainer = Trainer::new(&rt, EnvMaker::cart_pole(), config).await?;
        println!(
            "PPO on CartPole-v1: {} workers × {} envs, learner on {}",
            trainer.config().num_workers,
            trainer.config().envs_per_worker,
            trainer.learner_device().await?
        );
        let mut reporters: Vec<Box<dyn Reporter + Send>> =
            vec![Box::new(Progress::new(BUDGET)), Box::new(CsvLog::create(out.join("log.csv"))?)];
        let summary = trainer
            .train_until(&Stop::at_return(TARGET).or_env_steps(BUDGET), &mut reporters)
            .await?;
        let took = began.elapsed().as_secs_f64();
        if summary.reached_target {
            println!(
                "mean return {:.1} over the last 100 episodes after {:.2} s and {} env steps ({} iterations)",
                summary.last.episode_return_mean, took, summary.last.env_steps, summary.last.iteration
            );
        } else {
            println!(
                "did not reach {TARGET} within {BUDGET} steps: mean return {:.1} after {took:.2} s",
                summary.last.episode_return_mean
            );
        }
        plot_learning_curve(out.join("curve.png"), "PPO on CartPole-v1 (troupe-rl)", trainer.history(), Some(TARGET))?;
        let checkpoint = out.join("cartpole.ckpt");
        trainer.save(&checkpoint).await?;
        trainer.shutdown().await;

        // A trainer restored from the checkpoint acts as the saved one did.
        let restored = Trainer::from_checkpoint(&rt, EnvMaker::cart_pole(), &checkpoint).await?;
        let eval = restored.evaluate(10, 1_000).await?;
        println!(
            "restored from {}: 10 evaluation episodes, mean return {:.1}",
            checkpoint.display(),
            eval.mean_return()
        );
        restored.shutdown().await;
        println!("wrote {}, {} and {}", out.join("curve.png").display(), out.join("log.csv").display(), checkpoint.display());
        Ok::<_, Box<dyn std::error::Error>>(())
    })?;
    rt.block_on(rt.shutdown())?;
    Ok(())
}
