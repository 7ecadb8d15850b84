//! Shared by the tests: a runtime, options writing into a temporary
//! directory, and synthetic trainables whose metric is a function of the
//! config and the iteration.

#![allow(dead_code)]

use std::path::Path;

use troupe::{Config, Resources, Runtime};
use troupe_tune::{Metrics, Mode, Params, TrialResult, TrialStatus, TuneOptions};

/// A runtime offering 4 CPUs (trials ask for less, so that resources
/// never bound concurrency unless a test says so).
pub async fn runtime() -> Runtime {
    troupe::init(Config::default().resources(Resources::cpus(4.0)))
        .await
        .expect("a runtime starts")
}

/// Options for `metric` in `mode`, quiet, in `dir`, one trial at a time.
pub fn options(dir: &Path, metric: &str, mode: Mode) -> TuneOptions {
    TuneOptions::new(metric, mode)
        .dir(dir)
        .progress(false)
        .plots(false)
        .max_concurrent(1)
        .resources_per_trial(Resources::cpus(0.5))
}

/// `m = a + b × iteration`, with (a, b) the row `id` of `table`.
pub fn line(
    table: &'static [(f64, f64)],
) -> impl Fn(&Params, &mut (), u64) -> Result<Metrics, troupe_tune::TrainableError> + Send + Sync + 'static
{
    move |p: &Params, _: &mut (), i: u64| {
        let (a, b) = table[p.i64("id")? as usize];
        Ok(Metrics::new().with("m", a + b * i as f64))
    }
}

/// Each trial's (status, last iteration), by id.
pub fn outcomes(trials: &[TrialResult]) -> Vec<(TrialStatus, u64)> {
    trials.iter().map(|t| (t.status, t.iteration())).collect()
}
