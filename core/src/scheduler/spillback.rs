//! Spillback: a task waiting here for resources goes where another node
//! has room.
//!
//! An owner sends a task to a node whose free resources fit it as last
//! heard or, when none does, to one whose total does, where it queues.
//! Once there it would wait for that node alone: for ever, behind actors
//! that hold the node's CPUs for life, while other nodes free up. So with
//! a cluster, every [`SPILLBACK_CHECK`], the tasks that were already
//! waiting for resources at the previous check are offered to the
//! placement hook's `spill_to`. One that another node has room for goes
//! there: a task of this node's through placement again, that node
//! preferred; a task another node sent here back to its owner as
//! `RemoteOutcome::Spilled(node)`, which sends it on (as a raylet answers
//! a lease request with the node to retry at). Neither is an attempt.
//!
//! Only tasks placed by the default strategy move: node affinity, soft
//! included, waits for its node while that node is live (as Ray's does
//! unless told to spill), spreading chose this node, and a placement
//! group's bundle is here.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use troupe_objects::NodeId;

use super::{Scheduler, Task};
use crate::error::TaskError;
use crate::remote::PlacementRequest;
use crate::spec::{SchedulingStrategy, TaskSpec};

/// How often tasks waiting for resources are offered to other nodes. A
/// task waits at least this long (at most twice) before it moves.
pub(crate) const SPILLBACK_CHECK: Duration = Duration::from_millis(200);

/// How many waiting tasks, from the head of the queue, one check looks at:
/// a long queue must not make every check O(n).
const CHECK_LIMIT: usize = 64;

impl Scheduler {
    /// Offers the tasks that have waited here since the last check to
    /// nodes with room (the scheduler actor's periodic job).
    pub(crate) fn check_spillback(self: &Arc<Self>) {
        let Some(hook) = self.placement.clone() else {
            return;
        };
        let check = self.spillback_checks.fetch_add(1, Ordering::Relaxed) + 1;
        let waiting = self.lock().waiting_for_resources(CHECK_LIMIT);
        // What this check sent where: a node with room for one task is
        // not sent the whole queue.
        let mut promised = Vec::new();
        for task in waiting {
            let task = task.0;
            let first_seen = match task.waiting_since.compare_exchange(
                0,
                check,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => check,
                Err(seen) => seen,
            };
            if first_seen == check || !movable(&task.spec) {
                continue;
            }
            let excluded = task
                .excluded
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            let request = PlacementRequest {
                spec: &task.spec,
                needs: &task.resources,
                feasible_here: true,
                fits_now: false,
                excluded: &excluded,
                preferred: None,
            };
            match hook.spill_to(&request, &promised) {
                Some(to) if to != self.node => {
                    promised.push((to, task.resources.clone()));
                    self.spill(task, to);
                }
                _ => {}
            }
        }
    }

    /// Moves a waiting task towards `to`, if it still waits.
    fn spill(self: &Arc<Self>, task: Arc<Task>, to: NodeId) {
        let id = task.spec.id;
        let ours = task.spec.owner == self.node;
        let Some(queued) = self.lock().withdraw_waiting(id, !ours) else {
            return; // it started meanwhile
        };
        task.waiting_since.store(0, Ordering::Release);
        metrics::counter!("troupe_tasks_spilled_total").increment(1);
        let _span = tracing::debug_span!(parent: &task.parent, "spillback", task = %id, %to, ours)
            .entered();
        tracing::debug!("waited for resources here; goes to a node with room");
        if ours {
            *task.spilled_to.lock().unwrap_or_else(|e| e.into_inner()) = Some(to);
            self.place(queued);
            return;
        }
        // Back to its owner: its results here end with where it went,
        // which `run_spec` answers the owner.
        task.stopped.store(true, Ordering::Release);
        task.stats.spilled();
        let err = TaskError::Spilled {
            task: task.spec.function.clone(),
            id,
            to,
        };
        task.body.give_up(err);
        let actions = self.lock().settled(&task.spec.results, &self.settled());
        self.perform(actions);
    }
}

/// Whether a task may run elsewhere than where it waits.
fn movable(spec: &TaskSpec) -> bool {
    spec.options.bundle().is_none()
        && !matches!(
            spec.options.get_scheduling_strategy(),
            SchedulingStrategy::NodeAffinity { .. } | SchedulingStrategy::Spread
        )
}
