//! Tunes PPO on CartPole-v1 with troupe-tune: ASHA over 16 configs (or PBT
//! with `--pbt`), 2 trials at a time, until some trial's mean return over
//! its last 100 episodes reaches 475. Prints the best config and its
//! checkpoint, then restores that checkpoint and evaluates it.
//!
//! ```text
//! cargo run --release -p troupe-rl --features tune --example tune_ppo_cartpole
//! cargo run --release -p troupe-rl --features tune --example tune_ppo_cartpole -- --pbt
//! options: --samples N (default 16 for ASHA, 8 for PBT), --seed S, --dir DIR
//! ```
//!
//! The search space is [`troupe_rl::tune::ppo_search_space`]; a tune
//! iteration is [`ITERATIONS_PER_STEP`] PPO updates of 512 env steps, and
//! ASHA uses Ray's grace period 1 and reduction factor 4 with `max_t` 40
//! such iterations (about 205,000 env steps, over which the learning rate
//! anneals), so its rungs are at 1, 4 and 16.

use std::path::PathBuf;
use std::time::Instant;

use troupe::prelude::*;
use troupe_rl::tune::{ppo_search_space, trial_config, PpoTrainable};
use troupe_rl::{EnvMaker, Trainer};
use troupe_tune::{Asha, Mode, Params, Pbt, Scheduler, TrialStatus, TuneOptions, Tuner};

/// PPO updates per tune iteration.
const ITERATIONS_PER_STEP: u64 = 10;
/// Tune iterations a trial may run (ASHA's `max_t`).
const MAX_T: u64 = 40;
const TARGET: f64 = 475.0;

struct Args {
    pbt: bool,
    samples: Option<usize>,
    seed: u64,
    dir: Option<PathBuf>,
}

fn args() -> Result<Args, String> {
    let mut args = Args {
        pbt: false,
        samples: None,
        seed: 7,
        dir: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = |name: &str| it.next().ok_or(format!("{name} needs a value"));
        match a.as_str() {
            "--pbt" => args.pbt = true,
            "--samples" => {
                let v = value("--samples")?;
                args.samples = Some(
                    v.parse()
                        .map_err(|_| format!("--samples {v}: not a count"))?,
                );
            }
            "--seed" => {
                let v = value("--seed")?;
                args.seed = v.parse().map_err(|_| format!("--seed {v}: not a number"))?;
            }
            "--dir" => args.dir = Some(PathBuf::from(value("--dir")?)),
            other => {
                return Err(format!(
                    "unknown argument {other}; use --pbt, --samples N, --seed S, --dir DIR"
                ))
            }
        }
    }
    Ok(args)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = args()?;
    let rt = Runtime::start(Config::default())?;
    let samples = args.samples.unwrap_or(if args.pbt { 8 } else { 16 });
    let dir = args.dir.unwrap_or_else(|| {
        std::env::temp_dir().join(format!(
            "tune_ppo_cartpole_{}_{}",
            if args.pbt { "pbt" } else { "asha" },
            std::process::id()
        ))
    });
    let space = ppo_search_space();
    let scheduler = if args.pbt {
        // Mutate the real-valued knobs only: PBT's 0.8 factor would take
        // an integer such as num_minibatches 1 to 0.
        let mutations = troupe_tune::SearchSpace::new()
            .log_uniform("learning_rate", 1e-3, 1e-2)
            .choice("clip_coef", [0.1, 0.2, 0.3])
            .choice("entropy_coef", [0.0, 0.001, 0.01])
            .choice("gae_lambda", [0.8, 0.9, 0.95]);
        Scheduler::Pbt(Pbt::new(mutations, args.seed).perturbation_interval(2))
    } else {
        Scheduler::Asha(
            Asha::new()
                .max_t(MAX_T)
                .grace_period(1)
                .reduction_factor(4.0),
        )
    };
    let options = TuneOptions::new("episode_return_mean", Mode::Max)
        .num_samples(samples)
        .seed(args.seed)
        .max_concurrent(2)
        .max_failures(2)
        .max_iterations(MAX_T)
        .scheduler(scheduler)
        .dir(&dir);
    // The learning rate anneals to 0 over a trial's whole budget.
    let base = trial_config().total_env_steps(MAX_T * ITERATIONS_PER_STEP * 512);
    let factory_rt = rt.clone();
    let stop = std::sync::Arc::new(std::sync::OnceLock::new());
    let stop_for_trials = stop.clone();
    let tuner = Tuner::new(rt.clone(), space, options, move |params: &Params| {
        let mut trial =
            PpoTrainable::from_params(&factory_rt, EnvMaker::cart_pole(), &base, params)?
                .iterations_per_step(ITERATIONS_PER_STEP)
                .stop_at_return(TARGET);
        if let Some(handle) = stop_for_trials.get() {
            trial = trial.stop_experiment_at_target(troupe_tune::StopHandle::clone(handle));
        }
        Ok(trial)
    });
    let _ = stop.set(tuner.stop_handle());

    println!(
        "tuning PPO on CartPole-v1 with {} over {samples} configs, 2 at a time, until a mean return of {TARGET} (results in {})",
        if args.pbt { "PBT" } else { "ASHA" },
        dir.display()
    );
    let began = Instant::now();
    let results = rt.block_on(tuner.fit())?;
    let seconds = began.elapsed().as_secs_f64();

    let count = |s: TrialStatus| results.trials().iter().filter(|t| t.status == s).count();
    let ran = results
        .trials()
        .iter()
        .filter(|t| !t.history.is_empty())
        .count();
    let ended =
        count(TrialStatus::Stopped) + count(TrialStatus::Terminated) + count(TrialStatus::Errored);
    println!(
        "{seconds:.1} s: {ran} trials ran: {} stopped early by the scheduler, {} finished, {} errored, {} cut short when the search ended; {} not started",
        count(TrialStatus::Stopped),
        count(TrialStatus::Terminated),
        count(TrialStatus::Errored),
        ran.saturating_sub(ended),
        results.trials().len() - ran,
    );
    for t in results.errors() {
        println!(
            "trial {} errored: {}",
            t.id,
            t.error.as_deref().unwrap_or("?")
        );
    }
    let best = results.best()?;
    let last = best.last().cloned().unwrap_or_default();
    let get = |k: &str| last.get(k).unwrap_or(f64::NAN);
    println!(
        "best: trial {} ({}): mean return {:.1} after {} env steps, {} tune iterations",
        best.id,
        best.params,
        get("episode_return_mean"),
        get("env_steps"),
        best.iteration()
    );
    let reached = get("episode_return_mean") >= TARGET;
    println!(
        "{}",
        if reached {
            format!("a trial reached {TARGET} in {seconds:.1} s")
        } else {
            format!("no trial reached {TARGET} within the budget")
        }
    );
    let Some(checkpoint) = &best.checkpoint else {
        println!("the best trial has no checkpoint");
        rt.block_on(rt.shutdown())?;
        return Ok(());
    };
    // The trial's checkpoint is troupe-rl's own format: write it as a
    // plain checkpoint file and load it back into a trainer.
    let path = dir.join("best.ckpt");
    std::fs::write(&path, checkpoint.bytes.as_slice())?;
    println!(
        "its checkpoint (iteration {}): {} (also {}, with the tuner's header)",
        checkpoint.iteration,
        path.display(),
        best.dir.join("checkpoint.bin").display()
    );
    let eval = rt.block_on(async {
        let trainer = Trainer::from_checkpoint(&rt, EnvMaker::cart_pole(), &path).await?;
        let eval = trainer.evaluate(10, 1_000).await?;
        trainer.shutdown().await;
        Ok::<_, troupe_rl::RlError>(eval)
    })?;
    println!(
        "restored from it, the policy returns {:.1} on average over 10 evaluation episodes",
        eval.mean_return()
    );
    rt.block_on(rt.shutdown())?;
    Ok(())
}
