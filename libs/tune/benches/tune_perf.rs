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
//!   wall time / trials. Each trial spawns its actor, runs one step,
//!   writes its result (JSON and CSV) and its checkpoint (fsynced), and
//!   the state file is written at most every 250 ms; no progress table,
//!   no plots. Ray Tune's side is `benches/ray/tune_bench.py`.
//!
//! 3 rounds (1 of 200 trials with `TROUPE_PERF_QUICK=1`); the median is
//! printed and each round goes to stderr. The experiment directories are
//! under the system's temporary directory, removed after each round.

use std::time::Instant;

use troupe::prelude::*;
use troupe_tune::{Metrics, Mode, Params, SearchSpace, TuneOptions, Tuner};

fn quick() -> bool {
    std::env::var_os("TROUPE_PERF_QUICK").is_some_and(|v| v != "0")
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (trials, rounds) = if quick() { (200, 1) } else { (1_000, 3) };
    let rt = Runtime::start(Config::default().resources(Resources::cpus(2.0)))?;
    let mut per_trial_ms = Vec::new();
    for round in 0..rounds {
        let dir =
            std::env::temp_dir().join(format!("troupe-tune-perf-{}-{round}", std::process::id()));
        let options = TuneOptions::new("score", Mode::Max)
            .num_samples(trials)
            .max_concurrent(2)
            .resources_per_trial(Resources::cpus(1.0))
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
        std::fs::remove_dir_all(&dir)?;
        let ms = elapsed.as_secs_f64() * 1e3 / trials as f64;
        eprintln!(
            "round {round}: {trials} trials in {:.2} s: {ms:.3} ms per trial",
            elapsed.as_secs_f64()
        );
        per_trial_ms.push(ms);
    }
    per_trial_ms.sort_by(f64::total_cmp);
    println!(
        "trial_overhead_ms {:.3} ms",
        per_trial_ms[per_trial_ms.len() / 2]
    );
    rt.block_on(rt.shutdown())?;
    Ok(())
}
