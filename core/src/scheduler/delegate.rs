//! Tasks this node does not run: where the placement hook sends them, how
//! they run on another node through the remote executor, and what a node
//! joining or dying means for them.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use troupe_objects::NodeId;

use super::state::{Actions, Outcome, Queued};
use super::{Failure, Scheduler, Task, TaskRef};
use crate::error::TaskError;
use crate::ids::TaskId;
use crate::remote::{PlacementDecision, PlacementRequest, RemoteOutcome};
use crate::spec::TaskArgs;

/// How long a retry that fits no node waits for one to join before it
/// fails as its last attempt did.
pub(crate) const RETRY_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

impl Scheduler {
    /// Asks the placement hook where a task this node cannot run goes.
    pub(super) fn place(self: &Arc<Self>, queued: Queued<TaskRef>) {
        let task = queued.task.0.clone();
        let (feasible_here, fits_now) = {
            let state = self.lock();
            (
                state.feasible(&task.needs),
                task.needs.fits_in(state.free()),
            )
        };
        let excluded = task
            .excluded
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        // A task delegated here by its owner is not sent on: the owner
        // decided, and a second hop could bring it back to a node that
        // already ran it.
        let owned_here = task.spec.owner == self.node;
        // Where a node it waited on saw room (spillback), tried first once.
        let preferred = task
            .spilled_to
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        let decision = match &self.placement {
            Some(hook) if owned_here => {
                let decision = hook.place(&PlacementRequest {
                    spec: &task.spec,
                    needs: &task.resources,
                    feasible_here,
                    fits_now,
                    excluded: &excluded,
                    preferred,
                });
                match (decision, task.spec.options.bundle()) {
                    // Pinned to its bundle's node, which died: the bundle
                    // goes where it is reserved again (its renamed
                    // resources are only there), or waits until it is.
                    (PlacementDecision::NodeGone(gone), Some((group, index))) => {
                        let now = self.bundles.get().and_then(|locate| locate(group, index));
                        match now {
                            Some(node) if node == self.node && feasible_here => {
                                PlacementDecision::Here
                            }
                            Some(node) if node != gone && node != self.node => {
                                PlacementDecision::Node(node)
                            }
                            _ => PlacementDecision::Wait,
                        }
                    }
                    (decision, _) => decision,
                }
            }
            _ if feasible_here => PlacementDecision::Here,
            _ => PlacementDecision::Infeasible,
        };
        let actions = match decision {
            PlacementDecision::Here if feasible_here => {
                let mut state = self.lock();
                let mut actions = Actions::default();
                if state.requeue(queued).is_err() {
                    drop(state);
                    let err = TaskError::ShutDown {
                        task: task.spec.function.clone(),
                        id: task.spec.id,
                    };
                    self.fail_unplaced(&task, err);
                    return;
                }
                state.step(&self.settled(), &mut actions);
                actions
            }
            PlacementDecision::Node(node) if node != self.node => {
                self.delegate(queued, node);
                return;
            }
            PlacementDecision::NodeGone(node) => {
                let err = TaskError::NodeGone {
                    task: task.spec.function.clone(),
                    id: task.spec.id,
                    node,
                };
                self.fail_unplaced(&task, err);
                return;
            }
            PlacementDecision::Wait => {
                if queued.attempt > 1 {
                    self.expire_unplaced(task.spec.id, queued.attempt);
                }
                self.lock().park_unplaced(queued)
            }
            _ => {
                tracing::debug!(task = %task.spec.id, "task infeasible");
                self.fail_unplaced(&task, self.infeasible(&task));
                return;
            }
        };
        self.perform(actions);
    }

    pub(super) fn infeasible(&self, task: &Task) -> TaskError {
        TaskError::Infeasible {
            task: task.spec.function.clone(),
            id: task.spec.id,
            needs: task.resources.clone(),
            node: self.capacity.clone(),
        }
    }

    /// Fails a task that is in no queue and runs nowhere (it could not be
    /// placed or sent), and lets what waits on its results go on.
    fn fail_unplaced(self: &Arc<Self>, task: &Task, err: TaskError) {
        self.fail(task, err);
        let actions = self.lock().settled(&task.spec.results, &self.settled());
        self.perform(actions);
    }

    /// Sends an attempt to another node through the remote executor.
    fn delegate(self: &Arc<Self>, queued: Queued<TaskRef>, node: NodeId) {
        let task = queued.task.0.clone();
        let Some(remote) = self.remote.clone() else {
            self.fail_unplaced(&task, self.infeasible(&task));
            return;
        };
        let mut spec = task.spec.clone();
        spec.attempt = queued.attempt;
        if let TaskArgs::Local = spec.args {
            match task.body.encode_args() {
                Ok(encoded) => spec.args = TaskArgs::Encoded(encoded),
                Err(cause) => {
                    let err = TaskError::BadArguments {
                        task: task.spec.function.clone(),
                        id: task.spec.id,
                        cause,
                    };
                    self.fail_unplaced(&task, err);
                    return;
                }
            }
        }
        let id = spec.id;
        if spec.owner == self.node {
            // Its results will live there: kept to make them again if lost.
            self.lineage.record(&spec, &self.store);
        }
        let _span = tracing::debug_span!(
            parent: &task.parent,
            "delegate",
            task = %id,
            trace = %spec.trace.root,
            attempt = queued.attempt,
            to = %node,
        )
        .entered();
        tracing::debug!("sent to another node");
        let queued_attempt = queued.attempt;
        task.attempt.store(queued.attempt, Ordering::Release);
        *task.elsewhere.lock().unwrap_or_else(|e| e.into_inner()) = Some(node);
        task.delegated.store(true, Ordering::Release);
        self.lock().delegated(queued, node);
        metrics::counter!("troupe_tasks_delegated_total").increment(1);
        let scheduler = Arc::downgrade(self);
        let attempt = queued_attempt;
        remote.run_task_then(
            node,
            spec,
            &self.tokio,
            Box::new(move |outcome| {
                if let Some(scheduler) = scheduler.upgrade() {
                    scheduler.delegated_ended(id, attempt, task, outcome);
                }
            }),
        );
    }

    fn delegated_ended(
        self: &Arc<Self>,
        id: TaskId,
        attempt: u32,
        task: Arc<Task>,
        outcome: RemoteOutcome,
    ) {
        if let RemoteOutcome::Refused(why) = &outcome {
            let node = *task.elsewhere.lock().unwrap_or_else(|e| e.into_inner());
            tracing::warn!(task = %id, ?node, %why, "a node refused a task; placing it elsewhere");
            metrics::counter!("troupe_tasks_refused_total").increment(1);
            if let Some(node) = node {
                task.excluded
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(node);
            }
            let actions = self.lock().delegated_refused(id, attempt);
            self.perform(actions);
            return;
        }
        if let RemoteOutcome::Spilled(to) = outcome {
            // It waited there while `to` had room: it goes there now (not
            // an attempt).
            tracing::debug!(task = %id, %to, "the node it waited on sends it on (spillback)");
            metrics::counter!("troupe_tasks_spilled_back_total").increment(1);
            *task.spilled_to.lock().unwrap_or_else(|e| e.into_inner()) = Some(to);
            let actions = self.lock().delegated_refused(id, attempt);
            self.perform(actions);
            return;
        }
        let outcome = match outcome {
            RemoteOutcome::Done(results) => match task.body.complete_remote(results) {
                Ok(()) => Outcome::Done,
                Err(err) => Outcome::Failed(Failure::Store(err)),
            },
            RemoteOutcome::Failed(failure) => Outcome::Failed(failure),
            RemoteOutcome::Refused(_) | RemoteOutcome::Spilled(_) => return,
        };
        let actions = self
            .lock()
            .delegated_ended(id, attempt, outcome, &self.settled());
        self.perform(actions);
    }

    /// A node died: tasks it ran are retried (or fail) as their attempts
    /// would.
    pub(crate) fn node_died(self: &Arc<Self>, node: NodeId) {
        let actions = self.lock().node_died(node, &self.settled());
        self.perform(actions);
    }

    /// A retry that fits no node now (the node it ran on died, say) waits
    /// [`RETRY_WAIT`] for one to join, then fails as its last attempt did:
    /// a `get` of it is retried or fails, never waits forever.
    fn expire_unplaced(self: &Arc<Self>, id: TaskId, attempt: u32) {
        let scheduler = Arc::downgrade(self);
        self.tokio.spawn(async move {
            tokio::time::sleep(RETRY_WAIT).await;
            let Some(scheduler) = scheduler.upgrade() else {
                return;
            };
            let failure = {
                let state = scheduler.lock();
                state.unplaced_task(id).and_then(|task| {
                    task.0
                        .last_failure
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .clone()
                })
            };
            let Some(failure) = failure else {
                return; // placed meanwhile
            };
            tracing::warn!(task = %id, attempt, %failure, "a retry found no node to run on; it fails");
            let actions =
                scheduler
                    .lock()
                    .unplaced_expired(id, attempt, failure, &scheduler.settled());
            scheduler.perform(actions);
        });
    }

    /// A node joined: tasks that fitted no node are placed again.
    pub(crate) fn node_up(self: &Arc<Self>) {
        let unplaced = self.lock().take_unplaced();
        for queued in unplaced {
            self.place(queued);
        }
    }
}
