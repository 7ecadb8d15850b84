//! Whole experiments: failures retried from checkpoints within a budget,
//! a stopped experiment resumed from its directory, and the concurrency
//! limit.

mod support;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use support::{options, runtime};
use troupe_tune::{
    Asha, Metrics, Mode, Params, Scheduler, SearchSpace, StopHandle, TrialStatus, Tuner, STATE_FILE,
};

/// Calls of each (trial key, iteration), shared with the step function.
type Calls = Arc<Mutex<BTreeMap<(i64, u64), usize>>>;

/// Trial 0 panics at iteration 3 on its first two tries, trial 1 at every
/// try, trial 2 never; `max_failures` is 2. Trial 0 goes on from its
/// checkpoint of iteration 2 (iterations 1 and 2 ran once, its sum is
/// right) and ends with 2 failures; trial 1 errors after its third panic,
/// with the panic's message; trial 2 and the experiment are unaffected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_trial_is_retried_from_its_checkpoint_then_errored() {
    let rt = runtime().await;
    let dir = tempfile::tempdir().unwrap();
    let calls: Calls = Arc::default();
    let seen = calls.clone();
    let step = move |p: &Params, sum: &mut f64, i: u64| {
        let id = p.i64("id")?;
        let tries = {
            let mut c = seen.lock().unwrap();
            let n = c.entry((id, i)).or_insert(0);
            *n += 1;
            *n
        };
        if i == 3 && (id == 1 || (id == 0 && tries <= 2)) {
            panic!("trial {id} breaks at iteration 3 (try {tries})");
        }
        *sum += i as f64;
        Ok(Metrics::new().with("sum", *sum))
    };
    let opts = options(dir.path(), "sum", Mode::Max)
        .max_failures(2)
        .max_iterations(5);
    let space = SearchSpace::new().grid("id", 0..3);
    let results = Tuner::with_fn(rt.clone(), space, opts, step)
        .fit()
        .await
        .unwrap();
    let [t0, t1, t2] = results.trials() else {
        panic!("3 trials")
    };

    assert_eq!(t0.status, TrialStatus::Terminated);
    assert_eq!(t0.failures, 2);
    let iterations: Vec<u64> = t0.history.iter().map(|r| r.iteration).collect();
    assert_eq!(iterations, [1, 2, 3, 4, 5]);
    assert_eq!(
        t0.last().unwrap().get("sum"),
        Some(15.0),
        "1+2+3+4+5: restored, not restarted"
    );
    let c = calls.lock().unwrap().clone();
    assert_eq!((c[&(0, 1)], c[&(0, 2)], c[&(0, 3)]), (1, 1, 3));

    assert_eq!(t1.status, TrialStatus::Errored);
    assert_eq!(t1.failures, 3);
    let error = t1.error.as_deref().unwrap();
    assert!(
        error.contains("trial 1 breaks at iteration 3 (try 3)"),
        "{error}"
    );
    assert_eq!(t1.iteration(), 2, "its results stop at its last checkpoint");
    assert_eq!(c[&(1, 3)], 3, "1 try and 2 retries");

    assert_eq!(t2.status, TrialStatus::Terminated);
    assert_eq!(t2.failures, 0);
    // The files agree with the history.
    let csv = std::fs::read_to_string(t0.dir.join("progress.csv")).unwrap();
    assert_eq!(csv.lines().count(), 6, "a header and 5 rows:\n{csv}");
    rt.shutdown().await.unwrap();
}

fn asha_options(dir: &std::path::Path) -> troupe_tune::TuneOptions {
    let asha = Asha::new().max_t(9).reduction_factor(3.0);
    options(dir, "m", Mode::Max)
        .scheduler(Scheduler::Asha(asha))
        .num_samples(8)
        .seed(11)
}

/// `m` as a function of the config and the iteration: curves that cross.
fn m(p: &Params, i: u64) -> Result<f64, troupe_tune::TrainableError> {
    let (a, b) = (p.f64("a")?, p.f64("b")?);
    Ok(a + b * (i as f64).ln())
}

fn space() -> SearchSpace {
    SearchSpace::new()
        .uniform("a", 0.0, 4.0)
        .uniform("b", -1.0, 1.0)
}

/// An experiment stopped midway (after half its steps) and
/// resumed from its directory ends with the same best trial and value as
/// one run through; the trials finished before the stop do not run again,
/// and the interrupted one goes on from its checkpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_experiment_resumes_from_its_directory_to_the_same_best() {
    let rt = runtime().await;
    let whole = tempfile::tempdir().unwrap();
    let through = Tuner::with_fn(
        rt.clone(),
        space(),
        asha_options(whole.path()),
        |p: &Params, _: &mut (), i| Ok(Metrics::new().with("m", m(p, i)?)),
    )
    .fit()
    .await
    .unwrap();
    let expected = through.best().unwrap();
    let total: u64 = through.trials().iter().map(|t| t.iteration()).sum();
    let stop_at = (total / 2) as usize;

    let dir = tempfile::tempdir().unwrap();
    let handle: Arc<OnceLock<StopHandle>> = Arc::default();
    let (steps, stopper) = (Arc::new(AtomicUsize::new(0)), handle.clone());
    let counted = steps.clone();
    let step = move |p: &Params, _: &mut (), i: u64| {
        if counted.fetch_add(1, Ordering::SeqCst) + 1 == stop_at {
            stopper.get().expect("set before fit").stop();
        }
        Ok(Metrics::new().with("m", m(p, i)?))
    };
    let tuner = Tuner::with_fn(rt.clone(), space(), asha_options(dir.path()), step);
    handle.set(tuner.stop_handle()).unwrap();
    let first = tuner.fit().await.unwrap();
    assert!(first.interrupted());
    assert!(dir.path().join(STATE_FILE).is_file());
    let finished: Vec<usize> = first
        .trials()
        .iter()
        .filter(|t| t.status.is_finished())
        .map(|t| t.id)
        .collect();
    let unfinished = first
        .trials()
        .iter()
        .find(|t| t.status == TrialStatus::Pending && t.iteration() > 0);
    assert!(
        !finished.is_empty() && finished.len() < 8,
        "stopped midway: {finished:?}"
    );
    let resumed_from = unfinished.map(|t| (t.id, t.iteration()));

    assert!(Tuner::can_resume(dir.path()));
    let ran: Calls = Arc::default();
    let log = ran.clone();
    let resumed = Tuner::resume(rt.clone(), asha_options(dir.path()), move |p: &Params| {
        let (p, log) = (p.clone(), log.clone());
        Ok(troupe_tune::FnTrainable::new(
            p,
            move |p: &Params, _: &mut (), i: u64| {
                let key = (p.f64("a")?.to_bits() as i64, i);
                *log.lock().unwrap().entry(key).or_insert(0) += 1;
                Ok(Metrics::new().with("m", m(p, i)?))
            },
        ))
    })
    .fit()
    .await
    .unwrap();
    assert!(!resumed.interrupted());
    let best = resumed.best().unwrap();
    assert_eq!((best.id, best.last()), (expected.id, expected.last()));
    assert_eq!(best.params, expected.params);
    let ran = ran.lock().unwrap().clone();
    for id in &finished {
        let a = first.trials()[*id].params.f64("a").unwrap().to_bits() as i64;
        assert!(
            !ran.keys().any(|(k, _)| *k == a),
            "finished trial {id} ran again"
        );
    }
    if let Some((id, at)) = resumed_from {
        let a = first.trials()[id].params.f64("a").unwrap().to_bits() as i64;
        let first_iteration = ran.keys().filter(|(k, _)| *k == a).map(|(_, i)| *i).min();
        assert_eq!(
            first_iteration,
            Some(at + 1),
            "trial {id} restarted from its checkpoint"
        );
    }
    // Every trial ends as the uninterrupted run's did.
    let statuses = |r: &troupe_tune::ResultGrid| {
        r.trials()
            .iter()
            .map(|t| (t.status, t.iteration()))
            .collect::<Vec<_>>()
    };
    assert_eq!(statuses(&resumed), statuses(&through));
    rt.shutdown().await.unwrap();
}

/// With `max_concurrent(2)` and resources for 8, no more than 2 trials
/// are ever inside a step at once, and 2 are: each step waits (up to
/// 500 ms) for a third to join it, which only a broken limit lets in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_more_trials_run_at_once_than_the_limit() {
    let rt = runtime().await;
    let dir = tempfile::tempdir().unwrap();
    let (active, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (a, m) = (active.clone(), most.clone());
    let step = move |_: &Params, _: &mut (), _: u64| {
        let now = a.fetch_add(1, Ordering::SeqCst) + 1;
        m.fetch_max(now, Ordering::SeqCst);
        let deadline = Instant::now() + Duration::from_millis(500);
        while a.load(Ordering::SeqCst) < 3 && Instant::now() < deadline {
            std::thread::yield_now();
        }
        a.fetch_sub(1, Ordering::SeqCst);
        Ok(Metrics::new().with("m", 1.0))
    };
    let opts = options(dir.path(), "m", Mode::Max)
        .max_concurrent(2)
        .resources_per_trial(troupe::Resources::cpus(0.5))
        .max_iterations(2);
    let space = SearchSpace::new().grid("id", 0..4);
    let results = Tuner::with_fn(rt.clone(), space, opts, step)
        .fit()
        .await
        .unwrap();
    assert!(results
        .trials()
        .iter()
        .all(|t| t.status == TrialStatus::Terminated));
    assert_eq!(most.load(Ordering::SeqCst), 2);
    rt.shutdown().await.unwrap();
}

/// A returned error errors its trial at once (no retry), as does a result
/// without the metric; the other trials go on. A new experiment refuses
/// the directory of an old one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_fail_their_trial_at_once_and_a_used_directory_is_refused() {
    let rt = runtime().await;
    let dir = tempfile::tempdir().unwrap();
    let step = |p: &Params, _: &mut (), _: u64| match p.i64("id")? {
        0 => Err(troupe_tune::TrainableError::Failed("diverged".into())),
        1 => Ok(Metrics::new().with("other", 1.0)),
        _ => Ok(Metrics::new().with("m", 1.0)),
    };
    let opts = || {
        options(dir.path(), "m", Mode::Max)
            .max_failures(3)
            .max_iterations(2)
    };
    let space = SearchSpace::new().grid("id", 0..3);
    let results = Tuner::with_fn(rt.clone(), space.clone(), opts(), step)
        .fit()
        .await
        .unwrap();
    let [t0, t1, t2] = results.trials() else {
        panic!("3 trials")
    };
    assert_eq!((t0.status, t0.failures), (TrialStatus::Errored, 0));
    assert_eq!(t0.error.as_deref(), Some("diverged"));
    assert_eq!(t1.status, TrialStatus::Errored);
    assert!(
        t1.error.as_deref().unwrap().contains("no metric `m`"),
        "{:?}",
        t1.error
    );
    assert_eq!(t2.status, TrialStatus::Terminated);
    assert_eq!(results.best().unwrap().id, 2);

    let again = Tuner::with_fn(rt.clone(), space, opts(), step).fit().await;
    assert!(
        matches!(again, Err(troupe_tune::TuneError::Invalid { .. })),
        "{again:?}"
    );
    rt.shutdown().await.unwrap();
}

/// Trials asking for more than the node has fail the experiment at once,
/// saying which trial and what to do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trial_resources_the_node_can_never_fit_fail_the_experiment() {
    let rt = runtime().await;
    let dir = tempfile::tempdir().unwrap();
    let opts =
        options(dir.path(), "m", Mode::Max).resources_per_trial(troupe::Resources::cpus(64.0));
    let step = |_: &Params, _: &mut (), _: u64| Ok(Metrics::new().with("m", 1.0).done());
    let fit = Tuner::with_fn(rt.clone(), SearchSpace::new(), opts, step).fit();
    let outcome = troupe_test_kit::within("the refusal", fit).await;
    match outcome {
        Err(e @ troupe_tune::TuneError::Spawn { trial: 0, .. }) => {
            assert!(e.to_string().contains("resources_per_trial"), "{e}")
        }
        other => panic!("{other:?}"),
    }
    rt.shutdown().await.unwrap();
}
