//! The crate's counters, read through a recorder installed for this test
//! binary alone (its own process).

mod support;

use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use support::{options, runtime};
use troupe_tune::{Asha, Metrics, Mode, Params, Scheduler, SearchSpace, TrialStatus, Tuner};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trials_and_checkpoints_are_counted() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder
        .install()
        .expect("the only recorder of this process");
    let rt = runtime().await;
    let dir = tempfile::tempdir().unwrap();
    // Trial 0 completes (at max_t 3), trial 1 is stopped at the first
    // rung, trial 2 panics at every try: 1 retry, then it errors.
    let step = |p: &Params, _: &mut (), i: u64| {
        let id = p.i64("id")?;
        if id == 2 {
            panic!("always");
        }
        Ok(Metrics::new().with("m", if id == 0 { 3.0 } else { 1.0 } + i as f64 * 0.0))
    };
    let opts = options(dir.path(), "m", Mode::Max)
        .scheduler(Scheduler::Asha(Asha::new().max_t(3).reduction_factor(3.0)))
        .max_failures(1);
    let results = Tuner::with_fn(rt.clone(), SearchSpace::new().grid("id", 0..3), opts, step)
        .fit()
        .await
        .unwrap();
    let statuses: Vec<_> = results.trials().iter().map(|t| t.status).collect();
    assert_eq!(
        statuses,
        [
            TrialStatus::Terminated,
            TrialStatus::Stopped,
            TrialStatus::Errored
        ]
    );

    // One snapshot: taking it drains the counters.
    let snapshot = snapshotter.snapshot().into_vec();
    let counter = |name: &str| {
        snapshot
            .iter()
            .find(|(key, ..)| key.key().name() == name)
            .map(|(.., value)| match value {
                DebugValue::Counter(n) => *n,
                other => panic!("{name} is {other:?}"),
            })
            .unwrap_or(0)
    };
    assert_eq!(counter("troupe_tune_trials_started_total"), 3);
    assert_eq!(counter("troupe_tune_trials_finished_total"), 1);
    assert_eq!(counter("troupe_tune_trials_stopped_total"), 1);
    assert_eq!(counter("troupe_tune_trials_errored_total"), 1);
    assert_eq!(counter("troupe_tune_trial_failures_total"), 1);
    // Trial 0: 3 checkpoints, trial 1: 1, each `{"iteration":n,"state":null}`.
    let bytes = counter("troupe_tune_checkpoint_bytes_total");
    assert_eq!(bytes, 4 * r#"{"iteration":1,"state":null}"#.len() as u64);
    rt.shutdown().await.unwrap();
}
