//! troupe-tune's overhead per trial, one `metric value unit` line on
//! stdout (details on stderr):
//!
//! ```text
//! cargo bench -p troupe-tune --bench tune_perf
//! TROUPE_PERF_QUICK=1 cargo bench -p troupe-tune --bench tune_perf   # short runs
//! ```
//!
//! - `trial_overhead_ms`: 1,000 trials of a trainable that reports once
//!   and returns, 2 at a time (1 CPU each on a runtime of 2 CPUs), FIFO:
//!   wall time / trials. Each trial spawns its actor, runs one step and
//!   writes its result (JSON and CSV); the state file is written (fsynced)
//!   at most every 250 ms; no checkpoint (`checkpoint_every(0)` and no
//!   `checkpoint_at_end`, as Ray's side, whose trainable
//!   reports none), no progress table, no plots. Ray Tune's side is
//!   `benches/ray/tune_bench.py`.
//! - `trial_overhead_checkpointed_ms`: the same with the default
//!   checkpoint at each trial's end (a file written atomically: two
//!   fsyncs per trial, which dominate on a busy disk).
//!
//! 3 rounds of each, taken in turn (1 of 200 trials with
//! `TROUPE_PERF_QUICK=1`); medians are printed and each round goes to
//! stderr. The experiment directories are under the system's temporary
//! directory (`TMPDIR` moves them, e.g. to a tmpfs, to leave the disk
//! out), removed after each round.

use std::time::Instant;

use troupe::prelude::*;
use troupe_tune::{Metrics, Mode, Params, SearchSpace, TuneOptions, Tuner};

fn quick() -> bool {
    std::env::var_os("TROUPE_PERF_QUICK").is_some_and(|v| v != "0")
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (trials, rounds) = if quick() { (200, 1) } else { (1_000, 3) };
    let rt = Runtime::start(Config::default().resources(Resources::cpus(2.0)))?;
    let metrics = [
        ("trial_overhead_ms", false),
        ("trial_overhead_checkpointed_ms", true),
    ];
    let mut samples: Vec<Vec<f64>> = vec![Vec::new(); metrics.len()];
    for round in 0..rounds {
        for (i, (metric, checkpoint)) in metrics.iter().enumerate() {
            let ms = run(&rt, trials, *checkpoint, round)?;
            eprintln!("round {round}: {metric} {ms:.3} ms ({trials} trials)");
            samples[i].push(ms);
        }
    }
    for ((metric, _), mut values) in metrics.iter().zip(samples) {
        values.sort_by(f64::total_cmp);
        println!("{metric} {:.3} ms", values[values.len() / 2]);
    }
    rt.block_on(rt.shutdown())?;
    Ok(())
}

/// One experiment of `trials` one-report trials; milliseconds per trial.
fn run(
    rt: &Runtime,
    trials: usize,
    checkpoint: bool,
    round: usize,
) -> Result<f64, Box<dyn std::error::Error>> {
    let dir = std::env::temp_dir().join(format!(
        "troupe-tune-perf-{}-{round}-{checkpoint}",
        std::process::id()
    ));
    let options = TuneOptions::new("score", Mode::Max)
        .num_samples(trials)
        .max_concurrent(2)
        .resources_per_trial(Resources::cpus(1.0))
        .checkpoint_every(0)
        .checkpoint_at_end(checkpoint)
        .progress(false)
        .plots(false)
        .dir(&dir);
    let space = SearchSpace::new().uniform("x", 0.0, 1.0);
    let started = Instant::now();
    let results = rt.block_on(async {
        Tuner::with_fn(rt.clone(), space, options, |p: &Params, _: &mut (), _| {
            Ok(Metrics::new().with("score", p.f64("x")?).done())
        })
        .fit()
        .await
    })?;
    let elapsed = started.elapsed();
    assert_eq!(results.trials().len(), trials);
    assert_eq!(
        results.trials().iter().all(|t| t.checkpoint.is_some()),
        checkpoint
    );
    std::fs::remove_dir_all(&dir)?;
    Ok(elapsed.as_secs_f64() * 1e3 / trials as f64)
}
