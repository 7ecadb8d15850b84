//! The scheduler's state and every decision it makes, as a pure state
//! machine: no locks, no threads, no clocks, no metrics. Each event method
//! changes the state and returns the [`Actions`] to carry out; the driver
//! (`scheduler::mod`) holds the lock around the call and performs the
//! actions after releasing it.
//!
//! A task goes through:
//!
//! ```text
//! submit ─→ incoming ─ an arg is a result of ours, not made yet ─→ parked under it ─┐
//!              │       another arg not made yet ─→ watched until made (a waiter) ───┤
//!              │       every arg made: ←─────────────────────────────────────────────┘
//!              │         route Placed ─────────────────→ the placement hook
//!              │         an arg on another node ─→ watched until fetched here ─┐
//!              │         else ─→ ready ─ fits? ─→ running                      │
//!              │                   └ route HereFirst, does not fit ─→ the hook │
//!   running ─ done ─→ its dependents move on ; failed ─→ retried (ready, first)
//!                                                    or given up
//! ```
//!
//! A task that may leave this node (a cluster's route `HereFirst` or
//! `Placed`) is offered to the placement hook only once every argument is
//! made: a node never receives a task whose arguments its owner has not
//! produced yet, and the hook sees where they are.
//!
//! Invariants (checked by the tests): free plus held equals capacity once
//! nothing runs; a task launches at most once per attempt; every submitted
//! task is eventually launched, given up, or still listed in exactly one
//! place.

use std::collections::{HashMap, VecDeque};

use troupe_objects::{Availability, IdHashing};

/// A map keyed by ids, with the fast keyed id hasher.
type IdMap<K, V> = HashMap<K, V, IdHashing>;

/// Where an argument stands (the store's answer, through the driver).
pub(crate) type Avail<'a> = dyn Fn(ObjectId) -> Availability + 'a;

use crate::error::Failure;
pub(crate) use crate::function::Outcome;
use crate::ids::{NodeId, ObjectId, TaskId};

use super::placement::{GpuShare, Gpus};
use super::units::Units;

/// How many ready tasks that do not fit one step looks past: a long queue
/// must not make every step O(n).
const SKIP_LIMIT: usize = 64;

mod actions;
mod reservations;
mod spill;

pub use actions::Counts;
pub(crate) use actions::{
    Actions, GiveUp, Grant, Launch, Payload, Queued, ReserveError, RetryPolicy, Route, Wait,
};

/// A running attempt.
#[derive(Debug)]
struct Active<P> {
    queued: Queued<P>,
    gpus: Vec<GpuShare>,
    /// Nested gets lending its CPUs back.
    lending: u32,
    /// Cancelled while running a sync body: it runs to its end, and what it
    /// returns is dropped.
    cancelled: bool,
}

/// Where an unfinished task is, besides `live`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stage {
    Queued,
    WaitingForArgs,
    Running,
    Unplaced,
    Delegated(NodeId),
}

/// The scheduler's state for one node.
#[derive(Debug)]
pub(crate) struct State<P, W> {
    capacity: Units,
    free: Units,
    gpus: Gpus,
    /// Actors waiting for resources to hold for their life, in order.
    reservations: VecDeque<(Units, W)>,
    incoming: VecDeque<Queued<P>>,
    ready: VecDeque<Queued<P>>,
    running: IdMap<TaskId, Active<P>>,
    /// Every unfinished task by result object: what `cancel` is given.
    live: IdMap<ObjectId, TaskId>,
    /// Tasks waiting for an argument that a task of ours produces, by that
    /// argument: whoever settles it moves them on (what makes chains fast).
    dependents: IdMap<ObjectId, Vec<Queued<P>>>,
    parked: usize,
    /// Tasks waiting (through a waiter) for arguments made elsewhere.
    watched: IdMap<TaskId, Queued<P>>,
    /// Tasks that fit no node known yet.
    unplaced: Vec<Queued<P>>,
    /// Tasks running on other nodes.
    delegated: IdMap<TaskId, (Queued<P>, NodeId)>,
    shut_down: bool,
}

impl<P: Payload, W> State<P, W> {
    pub(crate) fn new(capacity: Units, gpu_devices: usize) -> Self {
        Self {
            free: capacity.clone(),
            capacity,
            gpus: Gpus::new(gpu_devices),
            reservations: VecDeque::new(),
            incoming: VecDeque::new(),
            ready: VecDeque::new(),
            running: IdMap::default(),
            live: IdMap::default(),
            dependents: IdMap::default(),
            parked: 0,
            watched: IdMap::default(),
            unplaced: Vec::new(),
            delegated: IdMap::default(),
            shut_down: false,
        }
    }

    /// Whether `needs` could ever run here (with nothing else running).
    pub(crate) fn feasible(&self, needs: &Units) -> bool {
        needs.fits_in(&self.capacity) && self.gpus.feasible(needs.gpus)
    }

    fn track(&mut self, task: &P) {
        for result in task.results() {
            self.live.insert(*result, task.id());
        }
    }

    fn untrack(&mut self, task: &P) {
        for result in task.results() {
            self.live.remove(result);
        }
    }

    /// A task to run here (the driver checked it is feasible here).
    #[cfg(test)]
    pub(crate) fn submit(&mut self, task: P, settled: &Avail<'_>) -> Actions<P, W> {
        self.submit_routed(task, Route::Here, settled)
    }

    /// A task whose attempts may run where `route` says.
    pub(crate) fn submit_routed(
        &mut self,
        task: P,
        route: Route,
        settled: &Avail<'_>,
    ) -> Actions<P, W> {
        let mut actions = Actions::default();
        if self.shut_down {
            actions.give_up.push((task, GiveUp::ShutDown));
            return actions;
        }
        self.track(&task);
        self.incoming.push_back(Queued {
            attempt: task.first_attempt(),
            task,
            route,
        });
        self.step(settled, &mut actions);
        actions
    }

    /// Queues a task without sorting it yet (a burst: the next step sorts
    /// them all).
    pub(crate) fn enqueue(&mut self, task: P, route: Route) -> Result<(), P> {
        if self.shut_down {
            return Err(task);
        }
        self.track(&task);
        self.incoming.push_back(Queued {
            attempt: task.first_attempt(),
            task,
            route,
        });
        Ok(())
    }

    /// A task the placement hook placed here, at the attempt it is at:
    /// it runs here (sorted by the next step).
    pub(crate) fn requeue(&mut self, mut queued: Queued<P>) -> Result<(), Queued<P>> {
        if self.shut_down {
            return Err(queued);
        }
        queued.route = Route::Here;
        self.track(&queued.task);
        self.incoming.push_back(queued);
        Ok(())
    }

    /// The task running here that produces `result`, if any.
    pub(crate) fn running_task_of(&self, result: ObjectId) -> Option<&P> {
        let id = self.live.get(&result)?;
        self.running.get(id).map(|active| &active.queued.task)
    }

    /// The unplaced task `id`, if it still waits for a node.
    pub(crate) fn unplaced_task(&self, id: TaskId) -> Option<&P> {
        self.unplaced
            .iter()
            .find(|q| q.task.id() == id)
            .map(|q| &q.task)
    }

    /// The task a waiter watches arguments for, if it still waits.
    pub(crate) fn watched_task(&self, id: TaskId) -> Option<&P> {
        self.watched.get(&id).map(|q| &q.task)
    }

    /// A task that fits no node known now: it waits for one.
    pub(crate) fn park_unplaced(&mut self, queued: Queued<P>) -> Actions<P, W> {
        let mut actions = Actions::default();
        if self.shut_down {
            actions.give_up.push((queued.task, GiveUp::ShutDown));
            return actions;
        }
        self.track(&queued.task);
        self.unplaced.push(queued);
        actions
    }

    /// The unplaced tasks, for the placement hook to try again (a node
    /// joined).
    pub(crate) fn take_unplaced(&mut self) -> Vec<Queued<P>> {
        std::mem::take(&mut self.unplaced)
    }

    /// A retry (attempt `attempt`) still fits no node after waiting its
    /// while: it fails as its last attempt did (`failure`), rather than
    /// wait forever for a node like the one that died. Nothing if it was
    /// placed meanwhile.
    pub(crate) fn unplaced_expired(
        &mut self,
        id: TaskId,
        attempt: u32,
        failure: Failure,
        settled: &Avail<'_>,
    ) -> Actions<P, W> {
        let mut actions = Actions::default();
        let Some(at) = self
            .unplaced
            .iter()
            .position(|q| q.task.id() == id && q.attempt == attempt)
        else {
            return actions;
        };
        let queued = self.unplaced.remove(at);
        self.untrack(&queued.task);
        actions.give_up.push((
            queued.task,
            GiveUp::Failed {
                attempts: attempt.saturating_sub(1),
                failure,
            },
        ));
        self.step(settled, &mut actions);
        actions
    }

    /// A task now runs on `node` (the remote executor took it).
    pub(crate) fn delegated(&mut self, queued: Queued<P>, node: NodeId) {
        self.track(&queued.task);
        self.delegated.insert(queued.task.id(), (queued, node));
    }

    /// Whether `id`'s attempt `attempt` is the one running on another node
    /// now (an earlier one may end after a retry replaced it: its node's
    /// death is told both by the transport and by the directory).
    fn is_delegated(&self, id: TaskId, attempt: u32) -> bool {
        self.delegated
            .get(&id)
            .is_some_and(|(queued, _)| queued.attempt == attempt)
    }

    /// Attempt `attempt` of a task that ran on another node ended (an
    /// attempt that is not the current one any more changes nothing).
    pub(crate) fn delegated_ended(
        &mut self,
        id: TaskId,
        attempt: u32,
        outcome: Outcome,
        settled: &Avail<'_>,
    ) -> Actions<P, W> {
        let mut actions = Actions::default();
        if !self.is_delegated(id, attempt) {
            return actions; // cancelled, or retried, meanwhile
        }
        let Some((queued, _)) = self.delegated.remove(&id) else {
            return actions;
        };
        // A retry is placed afresh: the node it ran on may be gone.
        if let Some(again) = self.attempt_ended(queued, outcome, &mut actions) {
            actions.place.push(again);
        }
        self.step(settled, &mut actions);
        actions
    }

    /// The node a task was sent to cannot run it (another build: no such
    /// function there): the same attempt goes back to the placement hook,
    /// which knows to avoid that node.
    pub(crate) fn delegated_refused(&mut self, id: TaskId, attempt: u32) -> Actions<P, W> {
        let mut actions = Actions::default();
        if !self.is_delegated(id, attempt) {
            return actions;
        }
        if let Some((queued, _)) = self.delegated.remove(&id) {
            actions.place.push(queued);
        }
        actions
    }

    /// Tasks running on a node that died: each fails as its attempt would.
    pub(crate) fn node_died(&mut self, node: NodeId, settled: &Avail<'_>) -> Actions<P, W> {
        let ids: Vec<(TaskId, u32)> = self
            .delegated
            .iter()
            .filter(|(_, (_, at))| *at == node)
            .map(|(id, (queued, _))| (*id, queued.attempt))
            .collect();
        let mut actions = Actions::default();
        for (id, attempt) in ids {
            let died = Outcome::Failed(Failure::NodeDied(node));
            let more = self.delegated_ended(id, attempt, died, settled);
            actions.merge(more);
        }
        actions
    }

    /// An attempt running here ended.
    pub(crate) fn finished(
        &mut self,
        id: TaskId,
        outcome: Outcome,
        settled: &Avail<'_>,
    ) -> Actions<P, W> {
        let mut actions = Actions::default();
        // Cancelled (async, aborted) or abandoned at shutdown: its
        // resources are back and its results have failed already.
        if let Some(active) = self.running.remove(&id) {
            self.release(&active);
            let Active {
                queued, cancelled, ..
            } = active;
            if cancelled {
                self.untrack(&queued.task);
            } else if let Some(again) = self.attempt_ended(queued, outcome, &mut actions) {
                // A retry goes first: it has waited its turn once already.
                self.ready.push_front(again);
            }
        }
        self.step(settled, &mut actions);
        actions
    }

    /// A task's results are stored: it is finished, and what waited for
    /// them moves on.
    /// One attempt's outcome: done, given up, or (returned) to run again
    /// with its attempt counted; the caller decides where it queues.
    fn attempt_ended(
        &mut self,
        mut queued: Queued<P>,
        outcome: Outcome,
        actions: &mut Actions<P, W>,
    ) -> Option<Queued<P>> {
        match outcome {
            Outcome::Done => {
                self.done(&queued.task);
                actions.done.push((queued.task, queued.attempt));
                None
            }
            Outcome::Failed(failure) => {
                if !self.shut_down && queued.task.retry().retries(&failure, queued.attempt) {
                    actions
                        .retried
                        .push((queued.task.clone(), queued.attempt, failure));
                    queued.attempt += 1;
                    Some(queued)
                } else {
                    self.untrack(&queued.task);
                    let attempts = queued.attempt;
                    actions
                        .give_up
                        .push((queued.task, GiveUp::Failed { attempts, failure }));
                    None
                }
            }
        }
    }

    fn done(&mut self, task: &P) {
        self.untrack(task);
        self.results_settled(task.results());
    }

    /// These objects are settled (a task's results failed for good, say):
    /// tasks parked under them are sorted again.
    pub(crate) fn results_settled(&mut self, results: &[ObjectId]) {
        for result in results {
            if let Some(waiting) = self.dependents.remove(result) {
                self.parked -= waiting.len();
                self.incoming.extend(waiting);
            }
        }
    }

    /// [`results_settled`](Self::results_settled), then a step.
    pub(crate) fn settled(&mut self, results: &[ObjectId], settled: &Avail<'_>) -> Actions<P, W> {
        self.results_settled(results);
        let mut actions = Actions::default();
        self.step(settled, &mut actions);
        actions
    }

    /// The arguments a waiter watched for `id` are settled.
    pub(crate) fn deps_settled(&mut self, id: TaskId, settled: &Avail<'_>) -> Actions<P, W> {
        let mut actions = Actions::default();
        if let Some(queued) = self.watched.remove(&id) {
            // Sorted again: an argument may still be pending after all.
            self.incoming.push_back(queued);
        }
        self.step(settled, &mut actions);
        actions
    }

    fn release(&mut self, active: &Active<P>) {
        active.queued.task.needs().give_back(&mut self.free);
        self.gpus.give_back(&active.gpus);
        if active.lending > 0 {
            // Its CPUs are back already while lent.
            self.free.cpus -= active.queued.task.needs().cpus;
        }
    }

    /// A running task is about to wait in `get`: its CPUs go back to the
    /// node until `unlend` (no deadlock when tasks wait on tasks; the CPU
    /// limit still bounds what runs). False if it is not running here.
    pub(crate) fn lend(&mut self, id: TaskId, settled: &Avail<'_>) -> (bool, Actions<P, W>) {
        let mut actions = Actions::default();
        let Some(active) = self.running.get_mut(&id) else {
            return (false, actions);
        };
        active.lending += 1;
        if active.lending == 1 {
            let cpus = active.queued.task.needs().cpus;
            self.free.cpus += cpus;
            self.step(settled, &mut actions);
        }
        (true, actions)
    }

    /// The wait ended: the task takes its CPUs back (even if that
    /// oversubscribes the node for a moment).
    pub(crate) fn unlend(&mut self, id: TaskId) {
        if let Some(active) = self.running.get_mut(&id) {
            active.lending = active.lending.saturating_sub(1);
            if active.lending == 0 {
                self.free.cpus -= active.queued.task.needs().cpus;
            }
        }
    }

    /// Cancels the task whose result is `result`: queued or waiting, it is
    /// given up; running async, it is aborted; running sync, it runs to its
    /// end and its value is dropped. `None` when no unfinished task has
    /// that result.
    pub(crate) fn cancel(
        &mut self,
        result: ObjectId,
        settled: &Avail<'_>,
    ) -> Option<(Stage, Actions<P, W>)> {
        let id = *self.live.get(&result)?;
        let mut actions = Actions::default();
        let mut task = None;
        let mut stage = Stage::Queued;
        if let Some(at) = self.incoming.iter().position(|q| q.task.id() == id) {
            task = self.incoming.remove(at).map(|q| q.task);
        } else if let Some(at) = self.ready.iter().position(|q| q.task.id() == id) {
            task = self.ready.remove(at).map(|q| q.task);
        } else if let Some(queued) = self.watched.remove(&id) {
            actions.unwatch.push(queued.task.clone());
            stage = Stage::WaitingForArgs;
            task = Some(queued.task);
        } else if let Some(at) = self.unplaced.iter().position(|q| q.task.id() == id) {
            stage = Stage::Unplaced;
            task = Some(self.unplaced.remove(at).task);
        } else if let Some((queued, node)) = self.delegated.remove(&id) {
            stage = Stage::Delegated(node);
            task = Some(queued.task);
        } else if self.running.contains_key(&id) {
            stage = Stage::Running;
            let abortable = self.running[&id].queued.task.abortable();
            if abortable {
                if let Some(active) = self.running.remove(&id) {
                    self.release(&active);
                    actions.abort.push(active.queued.task.clone());
                    task = Some(active.queued.task);
                }
            } else if let Some(active) = self.running.get_mut(&id) {
                active.cancelled = true;
                task = Some(active.queued.task.clone());
            }
        } else {
            for list in self.dependents.values_mut() {
                if let Some(at) = list.iter().position(|q| q.task.id() == id) {
                    stage = Stage::WaitingForArgs;
                    task = Some(list.remove(at).task);
                    self.parked -= 1;
                    break;
                }
            }
            self.dependents.retain(|_, list| !list.is_empty());
        }
        let task = task?;
        // Any of a task's refs cancels it, and all of them fail.
        self.untrack(&task);
        actions.give_up.push((task, GiveUp::Cancelled));
        self.step(settled, &mut actions);
        Some((stage, actions))
    }

    /// Moves everything forward: grants waiting actors (in order, before
    /// tasks: a large actor is not starved by small tasks), sorts incoming
    /// tasks by the state of their arguments, and launches ready tasks
    /// while resources last.
    pub(crate) fn step(&mut self, settled: &Avail<'_>, actions: &mut Actions<P, W>) {
        while let Some((needs, _)) = self.reservations.front() {
            let needs = needs.clone();
            match self.take_for_life(&needs) {
                Some(grant) => {
                    if let Some((_, waiter)) = self.reservations.pop_front() {
                        actions.grants.push((waiter, grant));
                    }
                }
                None => break,
            }
        }
        while let Some(queued) = self.incoming.pop_front() {
            let id = queued.task.id();
            let first_result = queued.task.results().first().copied();
            if first_result.is_some_and(|r| !self.live.contains_key(&r)) {
                continue; // cancelled while it waited
            }
            let mut unmade = Vec::new();
            let mut elsewhere = Vec::new();
            for dep in queued.task.deps() {
                match settled(*dep) {
                    Availability::Pending => unmade.push(*dep),
                    Availability::Elsewhere => elsewhere.push(*dep),
                    Availability::Here => {}
                }
            }
            if let Some(dep) = unmade.first() {
                if self.live.contains_key(dep) {
                    self.parked += 1;
                    self.dependents.entry(*dep).or_default().push(queued);
                } else {
                    actions.watch.push((id, unmade, Wait::Made));
                    self.watched.insert(id, queued);
                }
                continue;
            }
            let spill = queued.route == Route::HereFirst
                && !elsewhere.is_empty()
                && !queued.task.needs().fits_in(&self.free);
            if queued.route == Route::Placed || spill {
                // Every argument is made: the hook may send it anywhere.
                actions.place.push(queued);
            } else if !elsewhere.is_empty() {
                actions.watch.push((id, elsewhere, Wait::Here));
                self.watched.insert(id, queued);
            } else {
                self.ready.push_back(queued);
            }
        }
        let mut i = 0;
        let mut skipped = 0;
        while i < self.ready.len() && skipped < SKIP_LIMIT {
            let needs = self.ready[i].task.needs();
            let placed = if needs.fits_in(&self.free) {
                self.gpus.place(needs.gpus)
            } else {
                None
            };
            match placed {
                Some(gpus) => {
                    if let Some(queued) = self.ready.remove(i) {
                        queued.task.needs().take_from(&mut self.free);
                        self.gpus.take(&gpus);
                        actions.launch.push(Launch {
                            task: queued.task.clone(),
                            attempt: queued.attempt,
                            gpus: gpus.clone(),
                        });
                        self.running.insert(
                            queued.task.id(),
                            Active {
                                queued,
                                gpus,
                                lending: 0,
                                cancelled: false,
                            },
                        );
                    }
                }
                None if self.ready[i].route == Route::HereFirst => {
                    // It does not fit here now: another node may have room.
                    if let Some(queued) = self.ready.remove(i) {
                        actions.place.push(queued);
                    }
                }
                None => {
                    i += 1;
                    skipped += 1;
                }
            }
        }
    }

    /// At shutdown: every task not finished is given up, running async
    /// attempts are aborted, waiting actors are refused.
    pub(crate) fn shut_down(&mut self) -> Actions<P, W> {
        let mut actions = Actions::default();
        self.shut_down = true;
        self.live.clear();
        // Waiting actors learn of the shutdown when their waiter drops.
        self.reservations.clear();
        let queued = self
            .incoming
            .drain(..)
            .chain(self.ready.drain(..))
            .chain(self.dependents.drain().flat_map(|(_, list)| list))
            .chain(self.unplaced.drain(..))
            .chain(self.delegated.drain().map(|(_, (q, _))| q))
            .collect::<Vec<_>>();
        self.parked = 0;
        for (_, queued) in self.watched.drain() {
            actions.unwatch.push(queued.task.clone());
            actions.give_up.push((queued.task, GiveUp::ShutDown));
        }
        for queued in queued {
            actions.give_up.push((queued.task, GiveUp::ShutDown));
        }
        for (_, active) in self.running.drain() {
            if active.queued.task.abortable() {
                actions.abort.push(active.queued.task.clone());
            }
            actions.give_up.push((active.queued.task, GiveUp::ShutDown));
        }
        actions
    }

    /// What is free now.
    pub(crate) fn free(&self) -> &Units {
        &self.free
    }

    /// Thousandths of GPUs in use.
    pub(crate) fn gpus_in_use(&self) -> i64 {
        self.gpus.in_use()
    }

    /// What the node has in all.
    #[cfg(test)]
    pub(crate) fn capacity(&self) -> &Units {
        &self.capacity
    }
}

#[cfg(test)]
mod tests;
