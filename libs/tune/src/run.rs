//! One trial's driver: spawns its actor, runs iterations, records each
//! result, checkpoints, asks the scheduler, retries panics from the last
//! checkpoint, and exploits under PBT. Runs in a `trial` span.
//!
//! Failure protocol: a panic in the trainable is the actor's failure; its
//! supervisor restarts it (building the trainable again from the trial's
//! current config), the call answers `Panicked`, and the driver counts the
//! failure, rewinds the history to the last checkpoint and restores it on
//! the new incarnation (calls wait for it). Past `max_failures`, the trial
//! is errored with the panic message.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use tracing::Instrument;
use troupe::{ActorError, ActorOptions, Blob, Limit, Runtime};

use crate::actor::{TrialActor, TrialActorHandle};
use crate::error::{TrainableError, TuneError};
use crate::experiment::{Experiment, StateWriter};
use crate::lock::lock;
use crate::metrics;
use crate::options::TuneOptions;
use crate::params::Params;
use crate::progress::Progress;
use crate::results::TrialStatus;
use crate::scheduler::Decision;
use crate::store::{self, Checkpoint, Report};
use crate::trainable::{Factory, Metrics};
use crate::tuner::StopHandle;

/// What every trial's driver shares.
pub(crate) struct Shared {
    pub(crate) rt: Runtime,
    pub(crate) factory: Factory,
    /// The trainable's registered name: trials on the cluster build it.
    pub(crate) registered: Option<String>,
    pub(crate) options: TuneOptions,
    pub(crate) dir: PathBuf,
    pub(crate) experiment: Mutex<Experiment>,
    pub(crate) writer: StateWriter,
    pub(crate) stop: StopHandle,
    pub(crate) progress: Progress,
}

/// How a trial's run ended.
enum Outcome {
    Terminated,
    Stopped,
    Errored(String),
    /// The experiment was stopped: the trial stays unfinished.
    Interrupted,
}

/// Runs trial `id` until it ends or the experiment stops.
pub(crate) async fn run_trial(shared: Arc<Shared>, id: usize) -> Result<(), TuneError> {
    let span = tracing::info_span!("trial", trial = id);
    drive(shared, id).instrument(span).await
}

async fn drive(sh: Arc<Shared>, id: usize) -> Result<(), TuneError> {
    let (params, checkpoint) = {
        let mut ex = lock(&sh.experiment);
        let t = &mut ex.trials[id];
        t.state.status = TrialStatus::Running;
        (t.state.params.clone(), t.checkpoint.clone())
    };
    metrics::started();
    tracing::debug!(%params, "trial started");
    let cell = Arc::new(Mutex::new(params.clone()));
    let options = ActorOptions::new()
        .resources(sh.options.resources.clone())
        .max_restarts(Limit::Unlimited);
    let spawned = match (&sh.registered, sh.options.on_cluster) {
        (Some(name), true) => {
            TrialActor::remote(&sh.rt, options)
                .on_node(name.clone(), params)
                .await
        }
        _ => {
            let (factory, current) = (sh.factory.clone(), cell.clone());
            sh.rt
                .spawn_actor(options, move || TrialActor::new(&factory, &current))
                .await
        }
    };
    let actor = Trial {
        handle: spawned.map_err(|source| TuneError::Spawn {
            trial: id,
            source: Box::new(source),
        })?,
        rt: sh.rt.clone(),
        remote: sh.options.on_cluster,
    };
    tracing::debug!(node = %actor.handle.info().node, "trial placed");
    let outcome = match checkpoint {
        Some(c) => match restore(&actor, &c).await {
            Ok(Ok(())) => iterate(&sh, id, &actor, &cell).await,
            Ok(Err(e)) => Ok(Outcome::Errored(e)),
            Err(failure) => match recover(&sh, id, &actor, &cell, &failure).await {
                Ok(None) => iterate(&sh, id, &actor, &cell).await,
                ended => ended.map(|o| o.unwrap_or(Outcome::Interrupted)),
            },
        },
        None => iterate(&sh, id, &actor, &cell).await,
    };
    actor.handle.stop().await;
    let outcome = outcome?;
    {
        let mut ex = lock(&sh.experiment);
        let t = &mut ex.trials[id].state;
        match &outcome {
            Outcome::Terminated => t.status = TrialStatus::Terminated,
            Outcome::Stopped => t.status = TrialStatus::Stopped,
            Outcome::Errored(e) => {
                t.status = TrialStatus::Errored;
                t.error = Some(e.clone());
            }
            Outcome::Interrupted => t.status = TrialStatus::Pending,
        }
    }
    match &outcome {
        Outcome::Terminated => metrics::finished(),
        Outcome::Stopped => metrics::stopped(),
        Outcome::Errored(error) => {
            metrics::errored();
            tracing::warn!(%error, "trial errored");
        }
        Outcome::Interrupted => {}
    }
    if sh.options.plots && !matches!(outcome, Outcome::Interrupted) {
        plot_trial(&sh, id)?;
    }
    sh.writer.mark();
    refresh(&sh);
    Ok(())
}

/// A trial's actor, here or on another node.
struct Trial {
    handle: TrialActorHandle,
    rt: Runtime,
    /// On the cluster: checkpoints travel as objects, and a restart builds
    /// the trainable from the config the trial was spawned with.
    remote: bool,
}

/// A call's outcome: the outer error is the actor's failure (a panic, its
/// node's death), retried from the last checkpoint; the inner one the
/// trainable's, which fails the trial.
type Called<T> = Result<Result<T, TrainableError>, String>;

impl Trial {
    async fn step(&self) -> Called<Metrics> {
        self.handle.step().await.map_err(|e| panic_message(&e))
    }

    async fn save(&self) -> Called<Arc<Vec<u8>>> {
        if !self.remote {
            let saved = self.handle.save().await.map_err(|e| panic_message(&e))?;
            return Ok(saved.map(Arc::new));
        }
        let saved = match self.handle.save_object().await {
            Ok(Ok(saved)) => saved,
            Ok(Err(e)) => return Ok(Err(e)),
            Err(e) => return Err(panic_message(&e)),
        };
        // Not read: the node that holds it died, most likely (a failure of
        // the trial's, as its actor's).
        let blob = self
            .rt
            .get(&saved)
            .await
            .map_err(|e| format!("reading the checkpoint from the trial's node: {e}"))?;
        metrics::checkpoint_transferred(blob.len());
        Ok(Ok(Arc::new(blob.to_vec())))
    }

    async fn restore(&self, bytes: &Arc<Vec<u8>>) -> Called<()> {
        if !self.remote {
            return self
                .handle
                .restore(bytes.clone())
                .await
                .map_err(|e| panic_message(&e));
        }
        let object = self
            .rt
            .put(Blob::from(bytes.as_ref().clone()))
            .await
            .map_err(|e| format!("putting the checkpoint in this node's store: {e}"))?;
        metrics::checkpoint_transferred(bytes.len());
        self.handle
            .restore_object(object)
            .await
            .map_err(|e| panic_message(&e))
    }

    async fn reset(&self, params: Params) -> Result<(), String> {
        self.handle
            .reset(params)
            .await
            .map_err(|e| panic_message(&e))
    }
}

/// Restores `checkpoint` on the actor: the outer error is the actor's
/// failure (retried), the inner one the trial's.
async fn restore(actor: &Trial, checkpoint: &Checkpoint) -> Result<Result<(), String>, String> {
    let context = |e: &dyn std::fmt::Display| {
        format!(
            "restoring the checkpoint of iteration {}: {e}",
            checkpoint.iteration
        )
    };
    match actor.restore(&checkpoint.bytes).await {
        Ok(Ok(())) => Ok(Ok(())),
        Ok(Err(e)) => Ok(Err(context(&e))),
        Err(e) => Err(context(&e)),
    }
}

fn panic_message(e: &ActorError) -> String {
    match e {
        ActorError::Panicked { message, .. } => message.clone(),
        other => other.to_string(),
    }
}

async fn iterate(
    sh: &Shared,
    id: usize,
    actor: &Trial,
    cell: &Arc<Mutex<Params>>,
) -> Result<Outcome, TuneError> {
    let opts = &sh.options;
    loop {
        if sh.stop.is_stopped() {
            return Ok(Outcome::Interrupted);
        }
        let metrics = match actor.step().await {
            Ok(Ok(m)) => {
                // Where it ran: for a trial on the cluster, its node now.
                let node = actor.handle.location().node;
                lock(&sh.experiment).trials[id].state.node = Some(node);
                m
            }
            Ok(Err(e)) => return Ok(Outcome::Errored(e.to_string())),
            Err(message) => match recover(sh, id, actor, cell, &message).await? {
                Some(outcome) => return Ok(outcome),
                None => continue,
            },
        };
        let (iteration, reports) = record(sh, id, &metrics)?;
        let at_end = metrics.is_done() || opts.max_iterations.is_some_and(|n| iteration >= n);
        let due = opts.checkpoint_every > 0 && iteration % opts.checkpoint_every == 0;
        if due || (at_end && opts.checkpoint_at_end) {
            let params = lock(cell).clone();
            match actor.save().await {
                Ok(Ok(bytes)) => {
                    let c = Checkpoint {
                        iteration,
                        params,
                        bytes,
                        reports,
                    };
                    keep_checkpoint(sh, id, c)?;
                }
                Ok(Err(e)) => return Ok(Outcome::Errored(format!("saving a checkpoint: {e}"))),
                Err(message) => match recover(sh, id, actor, cell, &message).await? {
                    Some(outcome) => return Ok(outcome),
                    None => continue,
                },
            }
        }
        if at_end {
            return Ok(Outcome::Terminated);
        }
        let Some(value) = metrics.get(&opts.metric) else {
            return Ok(Outcome::Errored(format!(
                "iteration {iteration} reported no metric `{}` (it reported: {}); report it every iteration",
                opts.metric,
                metrics.iter().map(|(k, _)| k).collect::<Vec<_>>().join(", ")
            )));
        };
        let decision = {
            let mut ex = lock(&sh.experiment);
            let score = ex.mode.score(value);
            let params = ex.trials[id].state.params.clone();
            ex.scheduler.on_result(id, iteration, score, &params)
        };
        match decision {
            Decision::Continue => {}
            Decision::Complete => return Ok(Outcome::Terminated),
            Decision::Stop => {
                tracing::debug!(iteration, value, "stopped early by the scheduler");
                return Ok(Outcome::Stopped);
            }
            Decision::Exploit { donor, params } => {
                if let Some(outcome) = exploit(sh, id, actor, cell, donor, params).await? {
                    return Ok(outcome);
                }
            }
        }
        sh.writer.mark();
        refresh(sh);
    }
}

/// Appends a result to the trial's history and files; its iteration and
/// the history's length.
fn record(sh: &Shared, id: usize, metrics: &Metrics) -> Result<(u64, usize), TuneError> {
    let (report, first) = {
        let mut ex = lock(&sh.experiment);
        let t = &mut ex.trials[id];
        t.iteration += 1;
        let iteration = t.iteration;
        let report = Report {
            iteration,
            metrics: metrics.clone(),
        };
        t.history.push(report.clone());
        (report, t.history.len() == 1)
    };
    let dir = store::trial_dir(&sh.dir, id);
    if first {
        store::create_dir(&dir)?;
    }
    store::append_result(&dir, &report, first)?;
    let reports = lock(&sh.experiment).trials[id].history.len();
    Ok((report.iteration, reports))
}

fn keep_checkpoint(sh: &Shared, id: usize, c: Checkpoint) -> Result<(), TuneError> {
    let dir = store::trial_dir(&sh.dir, id);
    store::create_dir(&dir)?;
    store::write_checkpoint(&dir, &c)?;
    metrics::checkpoint_bytes(c.bytes.len());
    lock(&sh.experiment).trials[id].checkpoint = Some(c);
    Ok(())
}

/// After a failure of the actor: errors the trial past its budget, or
/// goes back to the last checkpoint (`None`: go on). A failure while
/// going back (its node died too) is counted, and tried again.
async fn recover(
    sh: &Shared,
    id: usize,
    actor: &Trial,
    cell: &Arc<Mutex<Params>>,
    message: &str,
) -> Result<Option<Outcome>, TuneError> {
    let mut message = message.to_owned();
    loop {
        let (failures, checkpoint) = {
            let mut ex = lock(&sh.experiment);
            let t = &mut ex.trials[id];
            t.state.failures += 1;
            (t.state.failures, t.checkpoint.clone())
        };
        if failures > sh.options.max_failures {
            return Ok(Some(Outcome::Errored(format!(
                "failed {failures} times (max_failures {}); last: {message}",
                sh.options.max_failures
            ))));
        }
        metrics::failure();
        let keep = checkpoint.as_ref().map_or(0, |c| c.reports);
        tracing::warn!(
            failures,
            error = message,
            from_iteration = checkpoint.as_ref().map_or(0, |c| c.iteration),
            "trial failed; retrying from its last checkpoint"
        );
        let history = {
            let mut ex = lock(&sh.experiment);
            let t = &mut ex.trials[id];
            t.history.truncate(keep);
            t.iteration = checkpoint.as_ref().map_or(0, |c| c.iteration);
            t.history.clone()
        };
        store::rewrite_history(&store::trial_dir(&sh.dir, id), &history)?;
        // A trial restarted on the cluster was built from the config it was
        // spawned with; PBT may have changed it since.
        if actor.remote {
            let params = lock(cell).clone();
            if let Err(e) = actor.reset(params).await {
                message = format!("rebuilding the trainable: {e}");
                continue;
            }
        }
        if let Some(c) = checkpoint {
            match restore(actor, &c).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Ok(Some(Outcome::Errored(e))),
                Err(e) => {
                    message = e;
                    continue;
                }
            }
        }
        return Ok(None);
    }
}

/// PBT's exploit: the donor's last checkpoint and `params` (its config,
/// perturbed) replace the trial's (recorded first, so that a failure while
/// copying them goes back to the donor's checkpoint). `Some`: the trial
/// ended.
async fn exploit(
    sh: &Shared,
    id: usize,
    actor: &Trial,
    cell: &Arc<Mutex<Params>>,
    donor: usize,
    params: Params,
) -> Result<Option<Outcome>, TuneError> {
    let (donor_checkpoint, reports) = {
        let ex = lock(&sh.experiment);
        (
            ex.trials[donor].checkpoint.clone(),
            ex.trials[id].history.len(),
        )
    };
    let Some(from) = donor_checkpoint else {
        return Ok(None); // the donor has no checkpoint yet: nothing to copy
    };
    tracing::debug!(donor, iteration = from.iteration, %params, "exploiting");
    *lock(cell) = params.clone();
    {
        let mut ex = lock(&sh.experiment);
        let t = &mut ex.trials[id];
        t.state.params = params.clone();
        // The next report goes on from the donor's iteration.
        t.iteration = from.iteration;
    }
    metrics::exploit();
    let c = Checkpoint {
        iteration: from.iteration,
        params: params.clone(),
        bytes: from.bytes.clone(),
        reports,
    };
    keep_checkpoint(sh, id, c)?;
    let failure = match actor.reset(params).await {
        Err(e) => format!("rebuilding with the donor's config: {e}"),
        Ok(()) => match restore(actor, &from).await {
            Ok(Ok(())) => return Ok(None),
            Ok(Err(e)) => return Ok(Some(Outcome::Errored(e))),
            Err(e) => e,
        },
    };
    recover(sh, id, actor, cell, &failure).await
}

fn refresh(sh: &Shared) {
    if sh.progress.shown() {
        let ex = lock(&sh.experiment);
        sh.progress.update(ex.finished(), ex.table());
    }
}

fn plot_trial(sh: &Shared, id: usize) -> Result<(), TuneError> {
    let (points, metric) = {
        let ex = lock(&sh.experiment);
        let points: Vec<(f64, f64)> = ex.trials[id]
            .history
            .iter()
            .filter_map(|r| r.metrics.get(&ex.metric).map(|v| (r.iteration as f64, v)))
            .collect();
        (points, ex.metric.clone())
    };
    if points.is_empty() {
        return Ok(());
    }
    let path = store::trial_dir(&sh.dir, id).join("curve.png");
    crate::plot::plot_curves(&path, &format!("trial {id}"), &metric, &[(id, points)])
}
