//! The trainer: a placement group with one bundle per worker, the workers
//! as children of a one-for-all supervisor, and the attempts loop that
//! restarts the group from its last checkpoint after a failure.
//!
//! A step: every worker runs the user's loop in its own actor (a blocking
//! method); gradients and reports meet in the group's shared-memory
//! collectives; rank 0's report is recorded (and its checkpoint written)
//! in the shared run state before any rank leaves `report`.
//!
//! A failure: the failing worker aborts the group (a panic through a drop
//! guard, an error on return), so the others leave their collectives with
//! `Aborted`; the trainer counts the failure, makes the supervisor restart
//! the whole group (a panicked actor is restarted by it already; a worker
//! that returned an error is killed so that it is), waits for every
//! worker's new incarnation, rolls the history back to the last
//! checkpoint, and runs the loop again with a fresh group.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tch::Device;
use tracing::Instrument;
use troupe::prelude::*;
use troupe::supervisor::SupervisorRef;
use troupe::ActorError;

use crate::checkpoint::{self, Checkpoint, CheckpointInfo, Meta};
use crate::collective::{Collectives, Group};
use crate::config::TrainerConfig;
use crate::context::{Reporter, StartFrom, WorkerContext};
use crate::error::{LoopError, TrainError};
use crate::report::{self, Metrics, Report, TrainResult};
use crate::{registry, remote};

pub(crate) type LoopFn = dyn Fn(&mut WorkerContext) -> Result<(), LoopError> + Send + Sync;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// What every worker of a run shares with the trainer.
pub(crate) struct RunState {
    config: TrainerConfig,
    inner: Mutex<RunInner>,
}

struct RunInner {
    history: Vec<Report>,
    checkpoints: Vec<CheckpointInfo>,
    last: Option<CheckpointInfo>,
    start_iteration: u64,
}

impl RunState {
    pub(crate) fn config(&self) -> &TrainerConfig {
        &self.config
    }

    /// Rank 0's report: into the history, its checkpoint onto disk.
    pub(crate) fn record(
        &self,
        iteration: u64,
        metrics: Metrics,
        checkpoint: Option<Checkpoint>,
    ) -> Result<(), TrainError> {
        crate::metrics::step();
        let mut inner = lock(&self.inner);
        inner.history.push(Report {
            iteration,
            metrics: metrics.clone(),
            checkpoint: None,
        });
        let Some(c) = checkpoint else {
            return Ok(());
        };
        let dir = self.config.storage.as_ref().ok_or(TrainError::NoStorage)?;
        let path = dir.join(format!("checkpoint_{iteration:06}"));
        if let Some(last) = inner.history.last_mut() {
            last.checkpoint = Some(path.clone());
        }
        let meta = Meta {
            iteration,
            values: c.values().clone(),
            history: inner.history.clone(),
        };
        let written = checkpoint::write(dir, &c, &meta)?;
        tracing::debug!(iteration, tensors = c.tensor_count(), path = %written.display(), "checkpoint written");
        let info = CheckpointInfo {
            path: written,
            iteration,
            metrics: metrics.0,
        };
        inner.checkpoints.retain(|k| k.iteration != iteration);
        inner.checkpoints.push(info.clone());
        inner.last = Some(info);
        if let Some(keep) = &self.config.keep {
            for gone in report::to_drop(&inner.checkpoints, keep) {
                checkpoint::remove(&gone.path)?;
                inner.checkpoints.retain(|k| k.iteration != gone.iteration);
            }
        }
        Ok(())
    }

    /// Back to the last checkpoint (or the start): its iteration and path.
    pub(crate) fn rollback(&self) -> (u64, Option<PathBuf>) {
        let mut inner = lock(&self.inner);
        let (iteration, path) = match &inner.last {
            Some(c) => (c.iteration, Some(c.path.clone())),
            None => (inner.start_iteration, self.config.resume.clone()),
        };
        inner.history.retain(|r| r.iteration <= iteration);
        (iteration, path)
    }
}

/// One worker of the group: runs the training loop when asked.
pub(crate) struct TrainWorker {
    rank: usize,
    train_loop: Arc<LoopFn>,
}

/// How a worker's attempt failed.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub(crate) struct Failure {
    pub(crate) message: String,
    /// Only because another worker failed first.
    pub(crate) aborted: bool,
}

/// Aborts the group if the training loop unwinds (a panic).
struct AbortOnUnwind(Collectives, usize);

impl Drop for AbortOnUnwind {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.abort(&format!("rank {} panicked", self.1));
        }
    }
}

#[troupe::actor]
impl TrainWorker {
    /// Runs the training loop once, to its end or its first failure.
    #[blocking]
    pub(crate) fn run(&mut self, mut ctx: WorkerContext) -> Result<(), Failure> {
        run_loop(self.rank, &mut ctx, &*self.train_loop)
    }
}

/// Runs `train_loop` as rank `rank` (on this worker's thread): its device
/// and libtorch threads set, the group aborted if it fails.
pub(crate) fn run_loop(
    rank: usize,
    ctx: &mut WorkerContext,
    train_loop: &LoopFn,
) -> Result<(), Failure> {
    ctx.device = device(ctx.settings.use_gpu, rank);
    let span = tracing::info_span!("train_worker", rank, attempt = ctx.attempt);
    let _entered = span.enter();
    let _guard = AbortOnUnwind(ctx.group.clone(), rank);
    // libtorch's OpenMP thread count is per thread: give this one the
    // worker's share and put the pool thread back as it was after.
    let threads = tch::get_num_threads();
    tch::set_num_threads(ctx.settings.threads as i32);
    let mut outcome = train_loop(ctx);
    tch::set_num_threads(threads);
    // Every report in the history before the worker answers (on failure
    // too: the trainer rolls the history back from there).
    let confirmed = ctx.confirm_reports();
    if let (Ok(()), Err(e)) = (&outcome, confirmed) {
        outcome = Err(e.into());
    }
    match outcome {
        Ok(()) => Ok(()),
        Err(e) => {
            let aborted = matches!(e.downcast_ref::<TrainError>(), Some(TrainError::Aborted(_)));
            if !aborted {
                ctx.group.abort(&format!("rank {rank} failed: {e}"));
            }
            Err(Failure {
                message: e.to_string(),
                aborted,
            })
        }
    }
}

/// The worker's device: the first GPU Troupe gave its actor (or GPU
/// `rank % count` when it was given none by ordinal), when it asked for
/// GPUs and libtorch sees CUDA; else the CPU.
fn device(use_gpu: bool, rank: usize) -> Device {
    if !use_gpu || !tch::Cuda::is_available() {
        return Device::Cpu;
    }
    let count = tch::Cuda::device_count().max(1) as usize;
    let given = troupe::actor::current().and_then(|a| a.gpu_ids.first().copied());
    match given {
        Some(id) if (id as usize) < count => Device::Cuda(id as usize),
        _ => Device::Cuda(rank % count),
    }
}

/// Runs a training loop on a supervised group of workers.
///
/// ```no_run
/// use troupe::prelude::*;
/// use troupe_train::{Metrics, Trainer, TrainerConfig};
///
/// # async fn f(rt: &Runtime) -> Result<(), troupe_train::TrainError> {
/// let result = Trainer::new(rt, TrainerConfig::new(2))
///     .fit(|ctx| {
///         for step in ctx.iteration()..10 {
///             let mut x = tch::Tensor::from(ctx.rank() as f32 + step as f32);
///             ctx.all_reduce(&mut x, troupe_train::ReduceOp::Sum)?;
///             ctx.report(Metrics::new().with("x", x.double_value(&[])), None)?;
///         }
///         Ok(())
///     })
///     .await?;
/// assert_eq!(result.history.len(), 10);
/// # Ok(()) }
/// ```
pub struct Trainer {
    rt: Runtime,
    config: TrainerConfig,
}

struct Started {
    group: PlacementGroup,
    supervisor: SupervisorRef,
    workers: Vec<TrainWorkerHandle>,
    /// The running attempt's group, for a cancelled `fit` to abort.
    current: Mutex<Option<Arc<Group>>>,
}

/// Tears the worker group down if `fit` is dropped before it ends: aborts
/// the running attempt's collectives (so the loops return at their next
/// one), stops the supervisor and removes the placement group.
struct Teardown {
    rt: Runtime,
    started: Option<Arc<Started>>,
}

impl Drop for Teardown {
    fn drop(&mut self) {
        let Some(started) = self.started.take() else {
            return;
        };
        if let Some(group) = lock(&started.current).as_ref() {
            group.abort("fit was cancelled");
        }
        tracing::debug!("fit was cancelled; stopping the worker group");
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            let rt = self.rt.clone();
            handle.spawn(async move {
                started.supervisor.stop(Duration::from_secs(10)).await;
                rt.remove_placement_group(&started.group).await;
            });
        }
    }
}

impl Trainer {
    /// A trainer running on `rt`.
    pub fn new(rt: &Runtime, config: TrainerConfig) -> Self {
        Trainer {
            rt: rt.clone(),
            config,
        }
    }

    /// Runs `train_loop` on every worker until all return, restarting the
    /// group from the last checkpoint after a failure while the failure
    /// budget lasts; the metrics history and the checkpoints.
    pub async fn fit<F>(&self, train_loop: F) -> Result<TrainResult, TrainError>
    where
        F: Fn(&mut WorkerContext) -> Result<(), LoopError> + Send + Sync + 'static,
    {
        self.fit_with(Arc::new(train_loop), None).await
    }

    /// Runs the training loop registered as `name`
    /// ([`register_train_loop!`](crate::register_train_loop)) as
    /// [`fit`](Self::fit) does. On a runtime that joined a cluster, the
    /// workers run on whichever nodes the placement group puts them (a
    /// closure cannot travel to another process; a name can), their
    /// collectives go over Troupe's transport, rank 0's reports and
    /// checkpoints come back to this process (checkpoints are written
    /// here, under [`storage_path`](TrainerConfig::storage_path)), and a
    /// node that dies fails its workers like a panic does: the group
    /// restarts from the last checkpoint. Without a cluster, the workers
    /// run here.
    ///
    /// ```no_run
    /// use troupe_train::{Metrics, Trainer, TrainerConfig};
    ///
    /// troupe_train::register_train_loop!("ten-steps", |ctx| {
    ///     for _ in ctx.iteration()..10 {
    ///         let mut x = tch::Tensor::from(ctx.rank() as f32);
    ///         ctx.all_reduce(&mut x, troupe_train::ReduceOp::Sum)?;
    ///         ctx.report(Metrics::new().with("x", x.double_value(&[])), None)?;
    ///     }
    ///     Ok::<_, troupe_train::TrainError>(())
    /// });
    ///
    /// # async fn f(rt: &troupe::Runtime) -> Result<(), troupe_train::TrainError> {
    /// let result = Trainer::new(rt, TrainerConfig::new(2)).fit_registered("ten-steps").await?;
    /// assert_eq!(result.history.len(), 10);
    /// # Ok(()) }
    /// ```
    pub async fn fit_registered(&self, name: &str) -> Result<TrainResult, TrainError> {
        self.registered(name, None).await
    }

    /// [`fit_registered`](Self::fit_registered) with a configuration for
    /// the loop (any serde type, sent as JSON; the loop reads it with
    /// [`WorkerContext::loop_config`]).
    pub async fn fit_registered_with<C: serde::Serialize>(
        &self,
        name: &str,
        loop_config: &C,
    ) -> Result<TrainResult, TrainError> {
        let json = serde_json::to_string(loop_config).map_err(|e| {
            TrainError::Config(format!("the loop's configuration does not encode: {e}"))
        })?;
        self.registered(name, Some(Arc::from(json))).await
    }

    async fn registered(
        &self,
        name: &str,
        loop_config: Option<Arc<str>>,
    ) -> Result<TrainResult, TrainError> {
        let train_loop = registry::lookup(name).map_err(TrainError::Config)?;
        if self.rt.cluster_inspector().is_none() {
            return self.fit_with(Arc::new(train_loop), loop_config).await;
        }
        let state = self.run_state()?;
        let outcome = remote::fit(&self.rt, &state, name, loop_config).await;
        Ok(self.result(&state, outcome?))
    }

    async fn fit_with(
        &self,
        train_loop: Arc<LoopFn>,
        loop_config: Option<Arc<str>>,
    ) -> Result<TrainResult, TrainError> {
        let state = self.run_state()?;
        let started = Arc::new(self.start(train_loop).await?);
        let mut teardown = Teardown {
            rt: self.rt.clone(),
            started: Some(started.clone()),
        };
        let outcome = self.attempts(&started, &state, loop_config).await;
        teardown.started = None; // it ended: tear down here, in order
        if !started.supervisor.stop(Duration::from_secs(10)).await {
            tracing::warn!("the worker group's supervisor did not stop within 10 s");
        }
        self.rt.remove_placement_group(&started.group).await;
        Ok(self.result(&state, outcome?))
    }

    /// The run's state: empty, or the history of the checkpoint to resume
    /// from.
    fn run_state(&self) -> Result<Arc<RunState>, TrainError> {
        let config = &self.config;
        if config.workers == 0 {
            return Err(TrainError::Config("workers must be at least 1".to_owned()));
        }
        let (history, start_iteration, last) = match &config.resume {
            Some(path) => {
                let meta = checkpoint::read_meta(path)?;
                let info = CheckpointInfo {
                    path: path.clone(),
                    iteration: meta.iteration,
                    metrics: meta
                        .history
                        .last()
                        .map(|r| r.metrics.0.clone())
                        .unwrap_or_default(),
                };
                (meta.history, meta.iteration, Some(info))
            }
            None => (Vec::new(), 0, None),
        };
        Ok(Arc::new(RunState {
            config: config.clone(),
            inner: Mutex::new(RunInner {
                history,
                checkpoints: Vec::new(),
                last,
                start_iteration,
            }),
        }))
    }

    fn result(&self, state: &RunState, failures: Vec<String>) -> TrainResult {
        let inner = lock(&state.inner);
        TrainResult {
            restarts: failures.len() as u32,
            failures,
            history: inner.history.clone(),
            checkpoints: inner.checkpoints.clone(),
            best_checkpoint: report::best(&inner.checkpoints, self.config.keep.as_ref()),
        }
    }

    /// The placement group, the workers and their supervisor.
    async fn start(&self, train_loop: Arc<LoopFn>) -> Result<Started, TrainError> {
        let config = &self.config;
        let bundles = vec![config.resources.clone(); config.workers];
        let group = self
            .rt
            .placement_group(PlacementGroupOptions::new(bundles).strategy(config.strategy))
            .map_err(|e| TrainError::Start(e.to_string()))?;
        if let Err(e) = group.ready(config.restart_timeout).await {
            self.rt.remove_placement_group(&group).await;
            return Err(TrainError::Start(format!(
                "placing {} workers: {e}",
                config.workers
            )));
        }
        // A closure cannot leave this process: on a cluster, every bundle
        // must have landed here.
        let here = self.rt.node_id();
        let elsewhere = (0..config.workers)
            .find_map(|i| group.bundle_node(i).filter(|n| *n != here).map(|n| (i, n)));
        if let Some((rank, node)) = elsewhere {
            self.rt.remove_placement_group(&group).await;
            return Err(TrainError::Start(format!(
                "the placement group put worker {rank} on node {node}, but fit runs a closure, which cannot leave this process; register the loop (register_train_loop!) and call fit_registered to train on other nodes, or give this node the resources of every worker"
            )));
        }
        let mut spec =
            SupervisorSpec::new("troupe-train", Strategy::OneForAll).unlimited_intensity();
        let mut workers = Vec::with_capacity(config.workers);
        for rank in 0..config.workers {
            let options = ActorOptions::new()
                .resources(config.resources.clone())
                .placement_group(&group, Some(rank))
                .max_restarts(Limit::Unlimited);
            let train_loop = train_loop.clone();
            let child = self.rt.actor_child(options, move || TrainWorker {
                rank,
                train_loop: train_loop.clone(),
            });
            let (child, handle) = match child {
                Ok(c) => c,
                Err(e) => {
                    self.rt.remove_placement_group(&group).await;
                    return Err(TrainError::Start(e.to_string()));
                }
            };
            spec = spec.child(child);
            workers.push(handle);
        }
        match self.rt.spawn_supervisor(spec).await {
            Ok(supervisor) => Ok(Started {
                group,
                supervisor,
                workers,
                current: Mutex::new(None),
            }),
            Err(e) => {
                self.rt.remove_placement_group(&group).await;
                Err(TrainError::Start(e.to_string()))
            }
        }
    }

    /// Runs attempts until one succeeds or the budget is spent; the
    /// failures recovered from.
    async fn attempts(
        &self,
        started: &Started,
        state: &Arc<RunState>,
        loop_config: Option<Arc<str>>,
    ) -> Result<Vec<String>, TrainError> {
        let config = &self.config;
        let mut failures = 0u32;
        let mut recovered = Vec::new();
        loop {
            let (iteration, checkpoint) = state.rollback();
            let group = Arc::new(Group::new(config.workers, config.collective_timeout));
            *lock(&started.current) = Some(group.clone());
            let before: Vec<u32> = started
                .workers
                .iter()
                .map(|w| w.as_ref().restarts())
                .collect();
            let calls = started.workers.iter().enumerate().map(|(rank, w)| {
                let ctx = WorkerContext {
                    rank,
                    device: Device::Cpu, // the worker picks its own
                    attempt: failures,
                    iteration,
                    group: Collectives::Local(group.clone()),
                    settings: config.settings(),
                    reporter: Reporter::Local(state.clone()),
                    unconfirmed: None,
                    checkpoint: checkpoint.clone().map(StartFrom::Dir),
                    loop_config: loop_config.clone(),
                    rt: self.rt.clone(),
                };
                w.run(ctx)
            });
            let span = tracing::info_span!(
                "train_attempt",
                attempt = failures,
                from_iteration = iteration
            );
            let results = futures::future::join_all(calls).instrument(span).await;
            let Some((rank, message, alive)) = primary_failure(&results) else {
                return Ok(recovered);
            };
            group.abort(&message);
            count_failure(config, &mut failures, &mut recovered, rank, message)?;
            if alive {
                // It returned an error: end its incarnation so that the
                // supervisor restarts the whole group.
                started.workers[rank].as_ref().kill(false).await;
            }
            self.await_restart(started, &before).await?;
        }
    }

    /// Waits until every worker runs a new incarnation.
    async fn await_restart(&self, started: &Started, before: &[u32]) -> Result<(), TrainError> {
        let deadline = Instant::now() + self.config.restart_timeout;
        loop {
            let restarted = started
                .workers
                .iter()
                .zip(before)
                .all(|(w, b)| w.as_ref().restarts() > *b);
            if restarted {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(TrainError::Start(format!(
                    "the supervisor did not restart the worker group within {:?}",
                    self.config.restart_timeout
                )));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// Counts a failure against the budget: the error that ends the run once
/// it is spent, else the failure noted as one recovered from.
pub(crate) fn count_failure(
    config: &TrainerConfig,
    failures: &mut u32,
    recovered: &mut Vec<String>,
    rank: usize,
    message: String,
) -> Result<(), TrainError> {
    *failures += 1;
    if *failures > config.max_failures {
        return Err(TrainError::Failed {
            failures: *failures,
            max_failures: config.max_failures,
            rank,
            message,
        });
    }
    crate::metrics::restart();
    tracing::warn!(rank, failures = *failures, %message, "a worker failed; restarting the group from its last checkpoint");
    recovered.push(format!("rank {rank}: {message}"));
    Ok(())
}

/// The failure that caused the others: a panic or an error that was not
/// an abort, else any; its rank, message and whether its actor survived.
pub(crate) fn primary_failure(
    results: &[Result<Result<(), Failure>, ActorError>],
) -> Option<(usize, String, bool)> {
    let mut fallback = None;
    for (rank, r) in results.iter().enumerate() {
        match r {
            Ok(Ok(())) => {}
            Err(ActorError::Panicked { message, .. }) => {
                return Some((rank, format!("panicked: {message}"), false));
            }
            Err(e) => {
                fallback.get_or_insert((rank, e.to_string(), false));
            }
            Ok(Err(f)) if !f.aborted => return Some((rank, f.message.clone(), true)),
            Ok(Err(f)) => {
                fallback.get_or_insert((rank, f.message.clone(), true));
            }
        }
    }
    fallback
}
