//! The [`Tuner`]: runs an experiment's trials, at most `max_concurrent` at
//! once, each as a supervised actor, and gathers their results.

use std::collections::VecDeque;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use futures::stream::{FuturesUnordered, StreamExt};
use serde::de::DeserializeOwned;
use serde::Serialize;
use troupe::Runtime;

use crate::error::{TrainableError, TuneError};
use crate::experiment::{Experiment, StateWriter};
use crate::lock::lock;
use crate::options::TuneOptions;
use crate::params::Params;
use crate::progress::Progress;
use crate::registry;
use crate::results::ResultGrid;
use crate::run::{run_trial, Shared};
use crate::space::SearchSpace;
use crate::store;
use crate::trainable::{Factory, FnTrainable, Metrics, Trainable};

/// Stops an experiment: each running trial ends after its current
/// iteration (unfinished: a resume restarts it from its checkpoint), no
/// new trial starts, and [`Tuner::fit`] returns a [`ResultGrid`] whose
/// [`interrupted`](ResultGrid::interrupted) is true. Cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct StopHandle(Arc<AtomicBool>);

impl StopHandle {
    /// Asks the experiment to stop.
    pub fn stop(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    /// Whether it was asked to.
    pub fn is_stopped(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// Where the trials come from.
#[derive(Debug)]
enum Source {
    Space(SearchSpace),
    Resume,
}

/// Runs trials of a trainable over a search space (Ray's `tune.Tuner`).
///
/// ```
/// use troupe::prelude::*;
/// use troupe_tune::{Asha, Metrics, Mode, Params, Scheduler, SearchSpace, TuneOptions, Tuner};
///
/// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let rt = troupe::init(Config::default()).await?;
/// let dir = std::env::temp_dir().join(format!("tune-doc-{}", std::process::id()));
/// let space = SearchSpace::new().uniform("x", -2.0, 2.0);
/// let options = TuneOptions::new("loss", Mode::Min)
///     .num_samples(8)
///     .max_iterations(5)
///     .scheduler(Scheduler::Asha(Asha::new().max_t(5)))
///     .dir(&dir)
///     .plots(false);
/// // A step function over a state (here, nothing): loss = x² / iteration.
/// let tuner = Tuner::with_fn(rt.clone(), space, options, |p: &Params, _: &mut (), i: u64| {
///     let x = p.f64("x")?;
///     Ok(Metrics::new().with("loss", x * x / i as f64))
/// });
/// let results = tuner.fit().await?;
/// let best = results.best()?;
/// assert!(best.params.f64("x")?.abs() < 2.0);
/// # std::fs::remove_dir_all(&dir)?;
/// rt.shutdown().await?;
/// # Ok(()) }
/// ```
pub struct Tuner {
    rt: Runtime,
    factory: Factory,
    /// The trainable's registered name (`Tuner::registered`).
    registered: Option<String>,
    options: TuneOptions,
    source: Source,
    stop: StopHandle,
}

impl std::fmt::Debug for Tuner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tuner")
            .field("options", &self.options)
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

impl Tuner {
    /// Trials of the trainable `factory` builds from each config of
    /// `space` (it is called again after each failure, and on PBT's
    /// exploits, with the trial's config then).
    pub fn new<T, F>(rt: Runtime, space: SearchSpace, options: TuneOptions, factory: F) -> Self
    where
        T: Trainable,
        F: Fn(&Params) -> Result<T, TrainableError> + Send + Sync + 'static,
    {
        Tuner {
            rt,
            factory: erase(factory),
            registered: None,
            options,
            source: Source::Space(space),
            stop: StopHandle::default(),
        }
    }

    /// Trials of a step function over a serde state (an [`FnTrainable`]).
    pub fn with_fn<S, F>(rt: Runtime, space: SearchSpace, options: TuneOptions, step: F) -> Self
    where
        S: Default + Serialize + DeserializeOwned + Send + 'static,
        F: Fn(&Params, &mut S, u64) -> Result<Metrics, TrainableError> + Send + Sync + 'static,
    {
        let step: crate::trainable::StepFn<S> = Arc::new(step);
        Tuner::new(rt, space, options, move |p: &Params| {
            Ok(FnTrainable::from_arc(p.clone(), step.clone()))
        })
    }

    /// Goes on with the experiment in `options`' directory: finished
    /// trials are kept, unfinished ones restart from their last
    /// checkpoint. The metric, mode and scheduler state come from the
    /// directory; pass the other options as the first run did.
    pub fn resume<T, F>(rt: Runtime, options: TuneOptions, factory: F) -> Self
    where
        T: Trainable,
        F: Fn(&Params) -> Result<T, TrainableError> + Send + Sync + 'static,
    {
        Tuner {
            rt,
            factory: erase(factory),
            registered: None,
            options,
            source: Source::Resume,
            stop: StopHandle::default(),
        }
    }

    /// Trials of the trainable registered as `name` with
    /// [`register_trainable!`](crate::register_trainable): what
    /// [`TuneOptions::trials_on_cluster`] needs (every node builds it by
    /// name). Fails at once on a name not registered, or registered twice.
    pub fn registered(
        rt: Runtime,
        space: SearchSpace,
        options: TuneOptions,
        name: &str,
    ) -> Result<Self, TuneError> {
        Ok(Tuner {
            rt,
            factory: registry::registered(name)
                .map_err(|e| TuneError::invalid("trainable", e.to_string()))?,
            registered: Some(name.to_owned()),
            options,
            source: Source::Space(space),
            stop: StopHandle::default(),
        })
    }

    /// [`resume`](Self::resume) of an experiment of the trainable
    /// registered as `name` (see [`registered`](Self::registered)).
    pub fn resume_registered(
        rt: Runtime,
        options: TuneOptions,
        name: &str,
    ) -> Result<Self, TuneError> {
        let mut tuner = Tuner::registered(rt, SearchSpace::new(), options, name)?;
        tuner.source = Source::Resume;
        Ok(tuner)
    }

    /// Whether `dir` holds an experiment to resume.
    pub fn can_resume(dir: impl AsRef<Path>) -> bool {
        dir.as_ref().join(store::STATE_FILE).is_file()
    }

    /// A handle that stops the experiment.
    pub fn stop_handle(&self) -> StopHandle {
        self.stop.clone()
    }

    /// Runs the experiment to its end (or until stopped), and gives every
    /// trial's result. A trial that errors does not end the experiment;
    /// an experiment directory that cannot be written, or trial resources
    /// that can never fit, do. A new experiment refuses a directory that
    /// holds one already ([`Tuner::resume`] continues it).
    pub async fn fit(self) -> Result<ResultGrid, TuneError> {
        let mut options = self.options;
        options.validate()?;
        if options.on_cluster && self.registered.is_none() {
            return Err(TuneError::invalid(
                "trials_on_cluster",
                "trials on other nodes build their trainable by name, and this tuner's is a closure, which cannot reach another process; register it with troupe_tune::register_trainable!(\"name\", |params| ...) and build the tuner with Tuner::registered, or leave trials_on_cluster off",
            ));
        }
        let dir = options.dir.clone();
        store::create_dir(&dir)?;
        let experiment = match self.source {
            Source::Space(space) => {
                if Tuner::can_resume(&dir) {
                    return Err(TuneError::invalid(
                        "dir",
                        format!(
                            "{} holds an experiment already; continue it with Tuner::resume, or choose another directory",
                            dir.display()
                        ),
                    ));
                }
                let configs = space.generate(options.num_samples, options.seed)?;
                Experiment::new(
                    &options.metric,
                    options.mode,
                    options.scheduler.clone(),
                    configs,
                )
            }
            Source::Resume => Experiment::load(&dir)?,
        };
        // A resumed experiment tunes what it tuned before.
        options.metric.clone_from(&experiment.metric);
        options.mode = experiment.mode;
        let queue: VecDeque<usize> = experiment
            .trials
            .iter()
            .filter(|t| !t.state.status.is_finished())
            .map(|t| t.state.id)
            .collect();
        let progress = Progress::new(
            options.progress,
            experiment.trials.len(),
            experiment.finished(),
        );
        tracing::info!(dir = %dir.display(), trials = experiment.trials.len(), to_run = queue.len(), scheduler = experiment.scheduler.name(), "experiment started");
        let shared = Arc::new(Shared {
            rt: self.rt,
            factory: self.factory,
            registered: self.registered,
            writer: StateWriter::new(&dir),
            options,
            dir,
            experiment: Mutex::new(experiment),
            stop: self.stop,
            progress,
        });
        shared.writer.write_now(&shared.experiment).await?;
        let all = run_all(&shared, queue);
        tokio::pin!(all);
        let failed = tokio::select! {
            done = &mut all => done,
            error = shared.writer.run(&shared.experiment) => {
                // The state cannot be saved: stop, and say why.
                shared.stop.stop();
                let _ = all.await;
                Err(error)
            }
        };
        shared.progress.finish();
        shared.writer.write_now(&shared.experiment).await?;
        failed?;
        let interrupted = shared.stop.is_stopped();
        let results = lock(&shared.experiment).results(&shared.dir, interrupted);
        if shared.options.plots {
            plot_all(&results)?;
        }
        tracing::info!(
            interrupted,
            errored = results.errors().count(),
            "experiment ended"
        );
        Ok(results)
    }
}

fn erase<T, F>(factory: F) -> Factory
where
    T: Trainable,
    F: Fn(&Params) -> Result<T, TrainableError> + Send + Sync + 'static,
{
    Arc::new(move |p: &Params| factory(p).map(|t| Box::new(t) as Box<dyn Trainable>))
}

/// Runs the queued trials, at most `max_concurrent` at once; the first
/// experiment-level error stops the others (after their current
/// iteration) and is returned.
async fn run_all(shared: &Arc<Shared>, mut queue: VecDeque<usize>) -> Result<(), TuneError> {
    let mut running = FuturesUnordered::new();
    let mut failed = None;
    loop {
        while running.len() < shared.options.max_concurrent
            && !shared.stop.is_stopped()
            && failed.is_none()
        {
            let Some(id) = queue.pop_front() else { break };
            running.push(run_trial(shared.clone(), id));
        }
        match running.next().await {
            None => break,
            Some(Ok(())) => {}
            Some(Err(e)) => {
                tracing::error!(error = %e, "experiment failing");
                failed.get_or_insert(e);
                shared.stop.stop();
            }
        }
    }
    failed.map_or(Ok(()), Err)
}

fn plot_all(results: &ResultGrid) -> Result<(), TuneError> {
    let series: Vec<crate::plot::Series> = results
        .trials()
        .iter()
        .map(|t| {
            let points = t
                .history
                .iter()
                .filter_map(|r| {
                    r.metrics
                        .get(&results.metric)
                        .map(|v| (r.iteration as f64, v))
                })
                .collect();
            (t.id, points)
        })
        .collect();
    let path = results.dir().join("curves.png");
    crate::plot::plot_curves(&path, "trials", &results.metric, &series)
}
