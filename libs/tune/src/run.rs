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
use troupe::{ActorError, ActorOptions, Limit, Runtime};

use crate::actor::{TrialActor, TrialActorHandle};
use crate::error::TuneError;
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
    let cell = Arc::new(Mutex::new(params));
    let options = ActorOptions::new()
        .resources(sh.options.resources.clone())
        .max_restarts(Limit::Unlimited);
    let (factory, current) = (sh.factory.clone(), cell.clone());
    let actor = sh
        .rt
        .spawn_actor(options, move || TrialActor::new(&factory, &current))
        .await
        .map_err(|source| TuneError::Spawn {
            trial: id,
            source: Box::new(source),
        })?;
    let outcome = match checkpoint {
        Some(c) => match restore(&actor, &c).await {
            Ok(()) => iterate(&sh, id, &actor, &cell).await,
            Err(e) => Ok(Outcome::Errored(e)),
        },
        None => iterate(&sh, id, &actor, &cell).await,
    };
    actor.stop().await;
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

/// Restores `checkpoint` on the actor; the error is the trial's.
async fn restore(actor: &TrialActorHandle, checkpoint: &Checkpoint) -> Result<(), String> {
    match actor.restore(checkpoint.bytes.clone()).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(format!(
            "restoring the checkpoint of iteration {}: {e}",
            checkpoint.iteration
        )),
        Err(e) => Err(format!(
            "restoring the checkpoint of iteration {}: {}",
            checkpoint.iteration,
            panic_message(&e)
        )),
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
    actor: &TrialActorHandle,
    cell: &Arc<Mutex<Params>>,
) -> Result<Outcome, TuneError> {
    let opts = &sh.options;
    loop {
        if sh.stop.is_stopped() {
            return Ok(Outcome::Interrupted);
        }
        let metrics = match actor.step().await {
            Ok(Ok(m)) => m,
            Ok(Err(e)) => return Ok(Outcome::Errored(e.to_string())),
            Err(e) => {
                let message = panic_message(&e);
                match recover(sh, id, actor, &message).await? {
                    Some(outcome) => return Ok(outcome),
                    None => continue,
                }
            }
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
                        bytes: Arc::new(bytes),
                        reports,
                    };
                    keep_checkpoint(sh, id, c)?;
                }
                Ok(Err(e)) => return Ok(Outcome::Errored(format!("saving a checkpoint: {e}"))),
                Err(e) => match recover(sh, id, actor, &panic_message(&e)).await? {
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
                if let Err(e) = exploit(sh, id, actor, cell, donor, params).await? {
                    return Ok(Outcome::Errored(e));
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
/// goes back to the last checkpoint (`None`: go on).
async fn recover(
    sh: &Shared,
    id: usize,
    actor: &TrialActorHandle,
    message: &str,
) -> Result<Option<Outcome>, TuneError> {
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
    if let Some(c) = checkpoint {
        if let Err(e) = restore(actor, &c).await {
            return Ok(Some(Outcome::Errored(e)));
        }
    }
    Ok(None)
}

/// PBT's exploit: the donor's last checkpoint and `params` (its config,
/// perturbed) replace the trial's. The inner error fails the trial.
async fn exploit(
    sh: &Shared,
    id: usize,
    actor: &TrialActorHandle,
    cell: &Arc<Mutex<Params>>,
    donor: usize,
    params: Params,
) -> Result<Result<(), String>, TuneError> {
    let (donor_checkpoint, reports) = {
        let ex = lock(&sh.experiment);
        (
            ex.trials[donor].checkpoint.clone(),
            ex.trials[id].history.len(),
        )
    };
    let Some(from) = donor_checkpoint else {
        return Ok(Ok(())); // the donor has no checkpoint yet: nothing to copy
    };
    tracing::debug!(donor, iteration = from.iteration, %params, "exploiting");
    *lock(cell) = params.clone();
    if let Err(e) = actor.reset(params.clone()).await {
        return Ok(Err(format!(
            "rebuilding with the donor's config: {}",
            panic_message(&e)
        )));
    }
    if let Err(e) = restore(actor, &from).await {
        return Ok(Err(e));
    }
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
        params,
        bytes: from.bytes.clone(),
        reports,
    };
    keep_checkpoint(sh, id, c)?;
    Ok(Ok(()))
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
