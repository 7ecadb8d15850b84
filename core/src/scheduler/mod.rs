//! The scheduler: runs tasks when their arguments are ready and the node has
//! the resources they need, and hands what does not fit to the cluster.
//!
//! `state` decides (a pure state machine, tested on its own); this module
//! is its driver. Every event takes the lock, asks the state, releases the
//! lock, and then carries out the actions: launching attempts, failing
//! results, granting actors their resources, waiting for arguments made
//! elsewhere. Nothing runs user code or spawns under the lock.
//!
//! The data lives in the `Scheduler`, owned by the runtime; the
//! [`SchedulerActor`] in the system subtree drives bursts of submissions
//! (one message per burst, not per task). A restarted actor finds every
//! queued and running task where it was. Attempts finishing on any thread
//! move the state forward themselves (the thread that finishes one link of
//! a chain launches the next), with no round trip through the actor.
//!
//! Each attempt of a task runs as an ephemeral actor in the OTP sense (one
//! body, one exit reported to the one that restarts it): a tokio task for an
//! async body, a job on a CPU thread for a sync one. A ractor actor per
//! attempt would cost about 25 µs to spawn here (see ARCHITECTURE.md).

mod actor;
mod attempt;
mod cpu_pool;
mod delegate;
mod history;
mod placement;
mod reservation;
mod spillback;
pub(crate) mod state;
mod stats;
mod task;
mod timing;
mod units;

pub use actor::{SchedulerActor, SchedulerMsg};
pub(crate) use cpu_pool::Blocked;
pub use history::{TaskFilter, TaskInfo, TaskState};
pub(crate) use reservation::Reservation;
pub use state::Counts;
pub use stats::FunctionSummary;
pub(crate) use task::{Task, TaskRef};
pub(crate) use units::Units;

use std::any::Any;
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::time::Instant;

use arc_swap::ArcSwapOption;
use ractor::ActorRef;
use tokio::sync::oneshot;
use tokio::task::AbortHandle;
use troupe_objects::{Availability, NodeId, ObjectId, ObjectStore};

use crate::context::{Frame, TaskContext};
use crate::error::{TaskCause, TaskError};
use crate::function::{self, Failure, Outcome, TaskBody};
use crate::ids::TaskId;
use crate::lineage::Lineage;
use crate::remote::{Placement, RemoteExecutor};
use crate::spec::{FunctionName, SchedulingStrategy, TaskSpec};
use crate::timeline::{self, Clock, Timeline, TimelineEvent, Work};
use crate::Resources;
use cpu_pool::{CpuPool, Job};
use history::History;
use placement::{ordinals, GpuShare};
use state::{Actions, GiveUp, Grant, Launch, Payload, RetryPolicy, Route, Stage, State, Wait};
use stats::FunctionStats;
pub(crate) use timing::Timing;

type Waiter = oneshot::Sender<Grant>;

/// The scheduler's data and its driver, owned by the runtime so that it
/// survives restarts of the actor that drives bursts.
pub(crate) struct Scheduler {
    state: Mutex<State<TaskRef, Waiter>>,
    capacity: Resources,
    store: ObjectStore,
    node: NodeId,
    /// Where async attempts and argument waiters are spawned (from any
    /// thread, CPU threads included).
    tokio: tokio::runtime::Handle,
    cpus: Arc<CpuPool>,
    nudged: AtomicBool,
    actor: ArcSwapOption<ActorRef<SchedulerMsg>>,
    /// The runtime, for task contexts; weak: it owns us.
    runtime: OnceLock<Weak<dyn Any + Send + Sync>>,
    /// Where bundle `index` of a group created here is now, if reserved.
    bundles: OnceLock<BundleLocator>,
    placement: Option<Arc<dyn Placement>>,
    remote: Option<Arc<dyn RemoteExecutor>>,
    /// Each function's record, by name.
    functions: dashmap::DashMap<FunctionName, Arc<FunctionStats>>,
    /// The last finished tasks, for the state API.
    history: History,
    /// Task attempts on the timeline, when it records.
    timeline: Arc<Timeline>,
    clock: Arc<Clock>,
    /// What this node keeps to make lost results of its tasks again.
    lineage: Arc<Lineage>,
    /// Counters of hot paths, registered once.
    run_by_waiter: metrics::Counter,
    cpu_lends: metrics::Counter,
    /// Spillback checks so far (`spillback`).
    spillback_checks: AtomicU64,
}

/// Where bundle `index` of a placement group is now (`None`: being
/// reserved again, or gone).
pub(crate) type BundleLocator =
    Arc<dyn Fn(crate::placement_group::PlacementGroupId, usize) -> Option<NodeId> + Send + Sync>;

/// What the scheduler records besides scheduling: the runtime's clock and
/// timeline, and how many finished tasks the state API keeps.
pub(crate) struct Recording {
    pub(crate) clock: Arc<Clock>,
    pub(crate) timeline: Arc<Timeline>,
    pub(crate) task_history: usize,
    pub(crate) lineage: Arc<Lineage>,
}

impl Scheduler {
    pub(crate) fn new(
        capacity: &Resources,
        store: ObjectStore,
        tokio: tokio::runtime::Handle,
        placement: Option<Arc<dyn Placement>>,
        remote: Option<Arc<dyn RemoteExecutor>>,
        recording: Recording,
    ) -> Self {
        let units = Units::of(capacity);
        let cpus = CpuPool::new(capacity.num_cpus.ceil().max(1.0) as usize);
        let gpu_devices = capacity.num_gpus.floor() as usize;
        Self {
            state: Mutex::new(State::new(units, gpu_devices)),
            capacity: capacity.clone(),
            node: store.node(),
            store,
            tokio,
            cpus,
            nudged: AtomicBool::new(false),
            actor: ArcSwapOption::empty(),
            runtime: OnceLock::new(),
            bundles: OnceLock::new(),
            placement,
            remote,
            functions: dashmap::DashMap::new(),
            history: History::new(recording.task_history),
            timeline: recording.timeline,
            clock: recording.clock,
            lineage: recording.lineage,
            run_by_waiter: metrics::counter!("troupe_tasks_run_by_waiter_total"),
            cpu_lends: metrics::counter!("troupe_task_cpu_lends_total"),
            spillback_checks: AtomicU64::new(0),
        }
    }

    /// The lineage of this node's tasks that ran elsewhere.
    pub(crate) fn lineage(&self) -> &Arc<Lineage> {
        &self.lineage
    }

    /// The record of a function (made at its first submission, when its
    /// metrics register).
    pub(crate) fn stats_of(&self, function: &FunctionName) -> Arc<FunctionStats> {
        if let Some(stats) = self.functions.get(function) {
            return stats.clone();
        }
        self.functions
            .entry(function.clone())
            .or_insert_with(|| Arc::new(FunctionStats::new(function.clone())))
            .clone()
    }

    /// A task ended: its function's counts, and the history.
    fn ended(&self, task: &Task, state: TaskState, error: Option<&TaskError>) {
        match state {
            TaskState::Finished => task.stats.finished(),
            TaskState::Cancelled => task.stats.cancelled(),
            _ => task.stats.failed(),
        }
        let mut info = task.info(state, self.node, &self.clock);
        info.error = error.map(ToString::to_string);
        self.history.push(info);
    }

    /// Fails a task for good (outside the state machine: it never got
    /// there, or left it); false if its results were settled already.
    fn fail(&self, task: &Task, err: TaskError) -> bool {
        task.stopped.store(true, Ordering::Release);
        let state = if matches!(err, TaskError::Cancelled { .. }) {
            TaskState::Cancelled
        } else {
            TaskState::Failed
        };
        self.ended(task, state, Some(&err));
        task.body.give_up(err)
    }

    /// Runs the sync attempt that will produce `result` here and now, if it
    /// is queued on the CPU pool and its function is known to be short: a
    /// waiter that would sleep until a pool thread wakes up runs it instead
    /// (a wake-up across vCPUs costs more than a short body). True if it
    /// ran it.
    ///
    /// Not for generators (their body blocks on the reader, who may be this
    /// caller), nor on a current-thread tokio runtime (a body that waits
    /// there for anything would wait for its own thread).
    pub(crate) fn help(&self, result: ObjectId) -> bool {
        if tokio::runtime::Handle::try_current()
            .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::CurrentThread)
        {
            return false;
        }
        let task = self.lock().running_task_of(result).map(|t| t.0.clone());
        let Some(task) = task else {
            return false;
        };
        if !task.stats.timing.known_short() || task.spec.returns == crate::spec::Returns::Stream {
            return false;
        }
        let job = task.job.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let ran = job.is_some_and(|job| job.run());
        if ran {
            self.run_by_waiter.increment(1);
        }
        ran
    }

    /// Runs the sync attempt that will produce `result` here, as `help`
    /// does, or, if it cannot, makes sure a pool thread will: for a task
    /// submitted under [`SubmitterRuns`], whose short body was not queued.
    pub(crate) fn run_or_queue(&self, result: ObjectId) {
        if self.help(result) {
            return;
        }
        let task = self.lock().running_task_of(result).map(|t| t.0.clone());
        let job = task.and_then(|t| t.job.lock().unwrap_or_else(|e| e.into_inner()).clone());
        if let Some(job) = job.filter(|job| !job.is_claimed()) {
            self.cpus.execute(job);
        }
    }

    pub(crate) fn set_runtime(&self, runtime: Weak<dyn Any + Send + Sync>) {
        let _ = self.runtime.set(runtime);
    }

    /// How the scheduler finds where a placement group's bundle is now
    /// (the runtime's groups, which it cannot name: they are above it).
    pub(crate) fn set_bundle_locator(&self, locate: BundleLocator) {
        let _ = self.bundles.set(locate);
    }

    fn lock(&self) -> MutexGuard<'_, State<TaskRef, Waiter>> {
        // The state's methods run no user code and do not panic on any
        // input; a poisoned lock (a bug) still holds a consistent state.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn settled(&self) -> impl Fn(ObjectId) -> Availability + '_ {
        // A lost object of this node is not there yet while it may be
        // recovered: its dependents wait (here, as for a fetch).
        |id| match self.store.availability(id) {
            Availability::Here if self.lineage.awaits_recovery(id) => Availability::Elsewhere,
            other => other,
        }
    }

    /// What the node has in all.
    pub(crate) fn capacity(&self) -> &Resources {
        &self.capacity
    }

    /// Fails a task before it was submitted (its placement group cannot
    /// take it, say).
    pub(crate) fn reject(&self, task: Arc<Task>, err: TaskError) {
        task.stats.submitted();
        self.fail(&task, err);
    }

    /// Submits a task. One that cannot run here goes to the placement hook
    /// (none: it fails as infeasible); invalid options fail at once.
    pub(crate) fn submit(self: &Arc<Self>, task: Arc<Task>) {
        task.stats.submitted();
        if let Err(reason) = task.resources.validate() {
            let err = TaskError::InvalidResources {
                task: task.spec.function.clone(),
                id: task.spec.id,
                reason,
            };
            self.fail(&task, err);
            return;
        }
        // With a cluster (a placement hook), the hook decides spread tasks,
        // affinity to another node, tasks this node can never run, and
        // tasks that do not fit its free resources once their arguments are
        // made (spillback); always once their arguments are made. Alone, a
        // feasible task queues here. A task another node delegated here
        // runs here: its owner placed it.
        let clustered = self.placement.is_some() && task.spec.owner == self.node;
        let mut state = self.lock();
        let feasible = state.feasible(&task.needs);
        let route = if clustered {
            let elsewhere = match task.spec.options.get_scheduling_strategy() {
                SchedulingStrategy::NodeAffinity { node, .. } => *node != self.node,
                SchedulingStrategy::Spread => true,
                _ => false,
            };
            if elsewhere || !feasible {
                Route::Placed
            } else {
                Route::HereFirst
            }
        } else if feasible {
            Route::Here
        } else {
            drop(state);
            let err = self.infeasible(&task);
            self.fail(&task, err);
            return;
        };
        // Nothing queued ahead: decide now, on this thread (a task submitted
        // and awaited one at a time pays no hop through the actor). A burst
        // is queued and sorted once by the actor.
        let idle = state.counts().queued == 0;
        if idle {
            let actions = state.submit_routed(TaskRef(task), route, &self.settled());
            drop(state);
            self.perform(actions);
            return;
        }
        let refused = state.enqueue(TaskRef(task), route);
        drop(state);
        match refused {
            Ok(()) => self.nudge(),
            Err(task) => {
                let mut actions = Actions::default();
                actions.give_up.push((task, GiveUp::ShutDown));
                self.perform(actions);
            }
        }
    }

    /// Wakes the actor, once per burst.
    fn nudge(&self) {
        if !self.nudged.swap(true, Ordering::AcqRel) {
            if let Some(actor) = &*self.actor.load() {
                if actor.send_message(SchedulerMsg::Pump).is_ok() {
                    return;
                }
            }
            // No actor right now (restarting): its successor pumps on start.
            self.nudged.store(false, Ordering::Release);
        }
    }

    /// Moves everything forward (the actor's job after a burst).
    pub(crate) fn pump(self: &Arc<Self>) {
        let actions = {
            let mut state = self.lock();
            let mut actions = Actions::default();
            state.step(&self.settled(), &mut actions);
            actions
        };
        self.perform(actions);
    }

    /// An attempt ended on this node.
    fn finished(self: &Arc<Self>, id: TaskId, outcome: Outcome) {
        let actions = self.lock().finished(id, outcome, &self.settled());
        self.perform(actions);
    }

    /// The arguments a waiter watched are settled.
    fn deps_settled(self: &Arc<Self>, id: TaskId) {
        let actions = self.lock().deps_settled(id, &self.settled());
        self.perform(actions);
    }

    /// Carries out the state's decisions, and whatever they lead to.
    fn perform(self: &Arc<Self>, first: Actions<TaskRef, Waiter>) {
        let mut next = Some(first);
        while let Some(actions) = next.take() {
            if actions.is_empty() {
                break;
            }
            let Actions {
                launch,
                give_up,
                watch,
                unwatch,
                abort,
                grants,
                retried,
                done,
                place,
            } = actions;
            let mut settled = Vec::new();
            for (waiter, grant) in grants {
                if let Err(grant) = waiter.send(grant) {
                    // The actor stopped waiting: its resources come back.
                    let more = self.lock().release_grant(&grant, &self.settled());
                    next.get_or_insert_with(Actions::default).merge(more);
                }
            }
            for task in unwatch.iter().chain(abort.iter()) {
                task.0.abort();
            }
            for (task, attempt, failure) in retried {
                tracing::warn!(task = %task.0.spec.id, function = %task.0.spec.function, attempt, %failure, "task failed; retrying");
                task.0.stats.retried();
                *task
                    .0
                    .last_failure
                    .lock()
                    .unwrap_or_else(|e| e.into_inner()) = Some(failure);
            }
            for (task, _) in done {
                self.ended(&task.0, TaskState::Finished, None);
            }
            for (task, why) in give_up {
                let task = task.0;
                let cancelled = matches!(why, GiveUp::Cancelled);
                let err = task.error(why);
                if !cancelled {
                    tracing::warn!(task = %task.spec.id, function = %task.spec.function, error = %err, "task failed for good");
                }
                self.fail(&task, err);
                settled.extend_from_slice(&task.spec.results);
            }
            for task in place {
                self.place(task);
            }
            for (id, deps, wait) in watch {
                self.watch(id, deps, wait);
            }
            for launch in launch {
                self.launch(launch);
            }
            if !settled.is_empty() {
                // Tasks waiting on what just failed see it now.
                let more = self.lock().settled(&settled, &self.settled());
                next.get_or_insert_with(Actions::default).merge(more);
            }
        }
    }

    /// Waits for arguments to be made (or fetched here), then moves the
    /// task on.
    fn watch(self: &Arc<Self>, id: TaskId, deps: Vec<ObjectId>, wait: Wait) {
        let scheduler = Arc::downgrade(self);
        let store = self.store.clone();
        let lineage = self.lineage.clone();
        let handle = self.tokio.spawn(async move {
            for dep in &deps {
                match wait {
                    Wait::Made => store.made(*dep).await,
                    Wait::Here => {
                        // Lost: recovered first (its error, if not, is the
                        // dependent's).
                        let _ = lineage.recover(*dep).await;
                        store.ready(*dep).await
                    }
                }
            }
            if let Some(scheduler) = scheduler.upgrade() {
                scheduler.deps_settled(id);
            }
        });
        // Kept so that cancelling the task stops its waiter too. Under the
        // lock: if the waiter is done and the task moved on, its attempt's
        // handle is not overwritten.
        let state = self.lock();
        if let Some(task) = state.watched_task(id) {
            task.0.set_handle(handle.abort_handle());
        }
    }

    /// This thread, if it is a CPU-pool thread, is about to wait in `get`
    /// (see `CpuPool::blocking`).
    pub(crate) fn blocking(&self) -> Option<Blocked> {
        self.cpus.blocking()
    }

    /// A running task is about to wait in `get`: its CPUs go back to the
    /// node until the returned guard drops.
    pub(crate) fn lend(self: &Arc<Self>, id: TaskId) -> Option<Lent> {
        let (lent, actions) = self.lock().lend(id, &self.settled());
        if !lent {
            return None;
        }
        self.cpu_lends.increment(1);
        self.perform(actions);
        Some(Lent {
            scheduler: self.clone(),
            id,
        })
    }

    /// Cancels the task whose result is `result` (Ray's `cancel`). Returns
    /// whether that stopped it: false when no unfinished task has that
    /// result, or when its attempt stored its value first.
    pub(crate) fn cancel(self: &Arc<Self>, result: ObjectId) -> bool {
        let Some((stage, mut actions)) = self.lock().cancel(result, &self.settled()) else {
            return false;
        };
        let mine = actions.give_up.iter().position(|(t, why)| {
            matches!(why, GiveUp::Cancelled) && t.0.spec.results.contains(&result)
        });
        let mut cancelled = false;
        if let Some(at) = mine {
            let (task, why) = actions.give_up.remove(at);
            let task = task.0;
            if stage != Stage::Running || !task.body.blocking() {
                // Queued, waiting, or async (aborted): it will not run on.
                task.abort();
            }
            let err = task.error(why);
            task.stopped.store(true, Ordering::Release);
            cancelled = task.body.give_up(err.clone());
            tracing::debug!(task = %task.spec.id, ?stage, cancelled, "task cancelled");
            if cancelled {
                self.ended(&task, TaskState::Cancelled, Some(&err));
            } else {
                // Its attempt stored its value first: it finished.
                self.ended(&task, TaskState::Finished, None);
            }
            let more = self.lock().settled(&task.spec.results, &self.settled());
            actions.merge(more);
        }
        self.perform(actions);
        cancelled
    }

    /// At runtime shutdown: abort running attempts, fail every task.
    pub(crate) fn shut_down(self: &Arc<Self>) {
        let actions = self.lock().shut_down();
        self.perform(actions);
        self.cpus.close();
    }

    /// How many tasks are where.
    pub(crate) fn counts(&self) -> Counts {
        let counts = self.lock().counts();
        metrics::gauge!("troupe_scheduler_queued_tasks").set(counts.queued as f64);
        counts
    }

    /// Refreshes the scheduler's gauges that are not kept live: tasks by
    /// where they are, CPU threads.
    pub(crate) fn sample_metrics(&self) {
        let counts = self.counts();
        metrics::gauge!("troupe_scheduler_waiting_tasks").set(counts.waiting_for_args as f64);
        metrics::gauge!("troupe_scheduler_running_tasks").set(counts.running as f64);
        metrics::gauge!("troupe_scheduler_unplaced_tasks").set(counts.unplaced as f64);
        metrics::gauge!("troupe_scheduler_delegated_tasks").set(counts.delegated as f64);
        metrics::gauge!("troupe_cpu_threads").set(self.cpus.threads() as f64);
        metrics::gauge!("troupe_cpu_threads_waiting").set(self.cpus.blocked() as f64);
        for function in self.functions.iter() {
            function.sample_metrics();
        }
    }

    /// Tasks `filter` keeps: unfinished ones (running first), then the
    /// last finished ones, newest first; at most `filter.limit`.
    pub(crate) fn tasks(&self, filter: &TaskFilter) -> Vec<TaskInfo> {
        let keep =
            |task: &TaskRef, stage: Stage| filter.keeps(&task.0.spec.function, state_of(stage));
        let live = self.lock().list(filter.limit, &keep);
        let mut list: Vec<TaskInfo> = live
            .into_iter()
            .map(|(task, stage, attempt)| {
                let mut info = task.0.info(state_of(stage), self.node, &self.clock);
                info.attempt = attempt;
                if let Stage::Delegated(node) = stage {
                    info.node = Some(node);
                }
                info
            })
            .collect();
        let room = filter.limit.saturating_sub(list.len());
        if room > 0 && filter.state.is_none_or(TaskState::is_final) {
            list.extend(self.history.list(filter, room));
        }
        list
    }

    /// Each function's counts so far, by name.
    pub(crate) fn function_summaries(&self) -> Vec<FunctionSummary> {
        let mut list: Vec<FunctionSummary> = self.functions.iter().map(|f| f.summary()).collect();
        list.sort_by(|a, b| a.function.cmp(&b.function));
        list
    }

    /// What is free now.
    pub(crate) fn available(&self) -> Resources {
        self.lock().free().to_resources()
    }
}

/// The state API's name for where a task is.
fn state_of(stage: Stage) -> TaskState {
    match stage {
        Stage::Queued => TaskState::Queued,
        Stage::WaitingForArgs => TaskState::WaitingForArgs,
        Stage::Running => TaskState::Running,
        Stage::Unplaced => TaskState::Unplaced,
        Stage::Delegated(_) => TaskState::Delegated,
    }
}

/// CPUs lent back by a task waiting in `get`; dropping it takes them back.
pub(crate) struct Lent {
    scheduler: Arc<Scheduler>,
    id: TaskId,
}

impl Drop for Lent {
    fn drop(&mut self) {
        self.scheduler.lock().unlend(self.id);
    }
}

thread_local! {
    /// The task whose submitter, on this thread, runs its short sync body
    /// itself (see [`SubmitterRuns`]).
    static SUBMITTER_RUNS: Cell<Option<TaskId>> = const { Cell::new(None) };
}

/// While it lives, the task `id` submitted on this thread is launched
/// without queuing a short sync body on the pool: the submitter runs it
/// right after (`Scheduler::run_or_queue`). How a node runs a short task
/// another node sent with no thread hand-off.
pub(crate) struct SubmitterRuns(Option<TaskId>);

impl SubmitterRuns {
    pub(crate) fn enter(id: TaskId) -> Self {
        SubmitterRuns(SUBMITTER_RUNS.with(|s| s.replace(Some(id))))
    }
}

impl Drop for SubmitterRuns {
    fn drop(&mut self) {
        SUBMITTER_RUNS.with(|s| s.set(self.0));
    }
}
