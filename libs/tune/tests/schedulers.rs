//! The schedulers through a `Tuner`, on deterministic synthetic trainables
//! (`m = a + b × iteration`), one trial at a time so that the order of
//! results is fixed, against hand computations.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use support::{line, options, outcomes, runtime};
use troupe::Resources;
use troupe_tune::{
    Asha, MedianStopping, Metrics, Mode, Params, Pbt, Scheduler, SearchSpace, TrialStatus::*, Tuner,
};

fn ids(n: i64) -> SearchSpace {
    SearchSpace::new().grid("id", 0..n)
}

/// ASHA with max_t 9 and reduction factor 3: rungs at 1 and 3 (and 9,
/// where trials complete). Hand computation, in trial order:
///
/// | trial | m at 1 | rung 1 before it | cutoff (2/3 pct) | m at 3 | rung 3 before it | cutoff | outcome |
/// |---|---|---|---|---|---|---|---|
/// | 0 | 3   | —            | —     | 3 | —   | —     | completes at 9 |
/// | 1 | 1   | 3            | 3     |   |     |       | stops at 1 |
/// | 2 | 4   | 1 3          | 2.333 | 2 | 3   | 3     | stops at 3 |
/// | 3 | 3   | 1 3 4        | 3.333 |   |     |       | stops at 1 |
/// | 4 | 5   | 1 3 3 4      | 3     | 7 | 2 3 | 2.667 | completes at 9 |
/// | 5 | 3.5 | 1 3 3 4 5    | 3.667 |   |     |       | stops at 1 |
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asha_stops_exactly_the_trials_a_hand_computation_says() {
    static TABLE: [(f64, f64); 6] = [
        (3.0, 0.0),
        (1.0, 0.0),
        (5.0, -1.0),
        (2.0, 1.0),
        (4.0, 1.0),
        (3.5, 0.0),
    ];
    let rt = runtime().await;
    let dir = tempfile::tempdir().unwrap();
    let asha = Asha::new().max_t(9).grace_period(1).reduction_factor(3.0);
    let opts = options(dir.path(), "m", Mode::Max).scheduler(Scheduler::Asha(asha));
    let results = Tuner::with_fn(rt.clone(), ids(6), opts, line(&TABLE))
        .fit()
        .await
        .unwrap();
    assert_eq!(
        outcomes(results.trials()),
        vec![
            (Terminated, 9),
            (Stopped, 1),
            (Stopped, 3),
            (Stopped, 1),
            (Terminated, 9),
            (Stopped, 1)
        ]
    );
    let best = results.best().unwrap();
    assert_eq!(best.id, 4, "m = 4 + 9 at the end");
    assert_eq!(best.last().unwrap().get("m"), Some(13.0));
    rt.shutdown().await.unwrap();
}

/// The median stopping rule (grace 1, 2 other trials needed), 4
/// iterations. Hand computation, in trial order:
///
/// - trials 0 (m = 1 + i) and 1 (m = i) have fewer than 2 others: they run to the end;
/// - trial 2 (m = 0): at 1, running means of 0 and 1 are 2 and 1, median 1.5 > 0: stops at 1;
/// - trial 3 (m = 1.4): at 1, means 2, 1, 0 (median 1) let it go on; at 2, means 2.5 and
///   1.5 (median 2) > 1.4: stops at 2;
/// - trial 4 (m = 3): medians 1.2, 1.5, 2.5 and 3 at 1 to 4, never above 3: runs to the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn median_stopping_stops_exactly_the_trials_a_hand_computation_says() {
    static TABLE: [(f64, f64); 5] = [(1.0, 1.0), (0.0, 1.0), (0.0, 0.0), (1.4, 0.0), (3.0, 0.0)];
    let rt = runtime().await;
    let dir = tempfile::tempdir().unwrap();
    let rule = MedianStopping::new()
        .grace_period(1)
        .min_samples_required(2);
    let opts = options(dir.path(), "m", Mode::Max)
        .scheduler(Scheduler::MedianStopping(rule))
        .max_iterations(4);
    let results = Tuner::with_fn(rt.clone(), ids(5), opts, line(&TABLE))
        .fit()
        .await
        .unwrap();
    assert_eq!(
        outcomes(results.trials()),
        vec![
            (Terminated, 4),
            (Terminated, 4),
            (Stopped, 1),
            (Stopped, 2),
            (Terminated, 4)
        ]
    );
    rt.shutdown().await.unwrap();
}

/// The state of the PBT trainable: where it started, and what it summed.
#[derive(Default, Serialize, Deserialize)]
struct Acc {
    origin: Option<i64>,
    sum: f64,
}

/// PBT over 4 trials run together, summing their `lr` each iteration:
/// trial 0 (the smallest lr) is the bottom quantile at its first
/// perturbation, so it takes a better trial's checkpoint (its state then
/// says it started as that trial) and that trial's lr times 1.2 or 0.8
/// (resampling off). Which trial is on top at that moment depends on
/// timing (the exact choice is the `pbt` module's unit test).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pbt_copies_a_top_trials_checkpoint_and_perturbs_its_config() {
    let rt = runtime().await;
    let dir = tempfile::tempdir().unwrap();
    let space = SearchSpace::new().grid("lr", [0.01, 0.02, 1.0, 2.0]);
    let pbt = Pbt::new(SearchSpace::new().uniform("lr", 0.001, 3.0), 5)
        .perturbation_interval(4)
        .resample_probability(0.0);
    let opts = options(dir.path(), "sum", Mode::Max)
        .scheduler(Scheduler::Pbt(pbt))
        .max_concurrent(4)
        .resources_per_trial(Resources::cpus(0.5))
        .max_iterations(12);
    // Loose lockstep: a step waits (with a deadline) until the others are
    // at most about one iteration behind, so that the population has
    // scores when a trial reaches a perturbation.
    let steps = Arc::new(AtomicUsize::new(0));
    let step = move |p: &Params, s: &mut Acc, i: u64| {
        let deadline = Instant::now() + Duration::from_secs(5);
        while steps.load(Ordering::SeqCst) < 3 * (i as usize - 1) && Instant::now() < deadline {
            std::thread::yield_now();
        }
        steps.fetch_add(1, Ordering::SeqCst);
        let lr = p.f64("lr")?;
        let origin = *s.origin.get_or_insert((lr * 100.0) as i64);
        s.sum += lr;
        Ok(Metrics::new()
            .with("sum", s.sum)
            .with("lr", lr)
            .with("origin", origin as f64))
    };
    let results = Tuner::with_fn(rt.clone(), space, opts, step)
        .fit()
        .await
        .unwrap();
    let trial0 = &results.trials()[0];
    let first = trial0
        .history
        .iter()
        .find(|r| r.metrics.get("origin") != Some(1.0))
        .expect("trial 0 (the smallest lr) exploited another trial");
    // The donor's state: it started as another trial (its lr × 100).
    let origin = first.metrics.get("origin").unwrap();
    assert!([2.0, 100.0, 200.0].contains(&origin), "origin {origin}");
    // Its config: the donor's lr (its starting one, perhaps already
    // perturbed by exploits of its own) times factors of 1.2 and 0.8, at
    // least one: lr = start × 1.2^a × 0.8^b with a + b ≥ 1.
    let (lr, start) = (first.metrics.get("lr").unwrap(), origin / 100.0);
    let perturbed = (0..6).any(|a| {
        (0..6).any(|b| a + b >= 1 && (lr - start * 1.2f64.powi(a) * 0.8f64.powi(b)).abs() < 1e-9)
    });
    assert!(perturbed, "lr {lr} is not {start} × 1.2^a × 0.8^b");
    assert!(
        first.metrics.get("sum").unwrap() > start + 0.01 * first.iteration as f64,
        "the sum is the donor's, continued: {first:?}"
    );
    assert!(results.trials().iter().all(|t| t.status == Terminated));
    rt.shutdown().await.unwrap();
}
