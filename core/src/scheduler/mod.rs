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

mod cpu_pool;
mod delegate;
mod placement;
mod reservation;
pub(crate) mod state;
mod timing;
mod units;

pub(crate) use reservation::Reservation;
pub use state::Counts;
pub(crate) use units::Units;

use std::any::Any;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};

use arc_swap::ArcSwapOption;
use ractor::{ActorProcessingErr, ActorRef};
use tokio::sync::oneshot;
use tokio::task::AbortHandle;
use troupe_objects::{NodeId, ObjectId, ObjectStore};

use crate::context::{Frame, TaskContext};
use crate::error::{TaskCause, TaskError};
use crate::function::{self, Failure, Outcome, TaskBody};
use crate::ids::TaskId;
use crate::remote::{Placement, RemoteExecutor};
use crate::spec::{SchedulingStrategy, TaskSpec};
use crate::Resources;
use cpu_pool::{CpuPool, Job};
use placement::{ordinals, GpuShare};
use state::{Actions, GiveUp, Grant, Launch, Payload, Queued, RetryPolicy, Stage, State};
pub(crate) use timing::Timing;

/// A submitted task: its spec (what it is, as data) and its body (how it
/// runs here).
pub(crate) struct Task {
    pub(crate) spec: TaskSpec,
    pub(crate) needs: Units,
    pub(crate) resources: Resources,
    pub(crate) body: Arc<dyn TaskBody>,
    /// Stops the running async attempt, or the waiter of its arguments.
    handle: Mutex<Option<AbortHandle>>,
    /// A sync attempt's job on the CPU pool, which a waiter may run itself.
    job: Mutex<Option<Arc<Job>>>,
    /// How long this function's bodies take.
    timing: Arc<Timing>,
    /// Set when it is cancelled or abandoned: a launch that races with it
    /// does not start.
    stopped: AtomicBool,
}

impl Task {
    pub(crate) fn new(spec: TaskSpec, body: Arc<dyn TaskBody>, timing: Arc<Timing>) -> Self {
        let resources = spec.options.needs();
        Self {
            needs: Units::of(&resources),
            resources,
            spec,
            body,
            handle: Mutex::new(None),
            job: Mutex::new(None),
            timing,
            stopped: AtomicBool::new(false),
        }
    }

    fn set_handle(&self, handle: AbortHandle) {
        *self.handle.lock().unwrap_or_else(|e| e.into_inner()) = Some(handle);
        // Stopped while it was being started: stop it now.
        if self.stopped.load(Ordering::Acquire) {
            self.abort();
        }
    }

    fn abort(&self) {
        self.stopped.store(true, Ordering::Release);
        if let Some(handle) = self.handle.lock().unwrap_or_else(|e| e.into_inner()).take() {
            handle.abort();
        }
    }

    fn error(&self, why: GiveUp) -> TaskError {
        let task = self.spec.function.clone();
        let id = self.spec.id;
        match why {
            GiveUp::Cancelled => TaskError::Cancelled { task, id },
            GiveUp::ShutDown => TaskError::ShutDown { task, id },
            GiveUp::Failed { attempts, failure } => match failure {
                Failure::Panicked(m) => TaskError::Failed {
                    task,
                    id,
                    attempts,
                    cause: TaskCause::Panicked(m),
                },
                Failure::Error(e) => TaskError::Failed {
                    task,
                    id,
                    attempts,
                    cause: TaskCause::Error(e),
                },
                Failure::NodeDied(node) => TaskError::Failed {
                    task,
                    id,
                    attempts,
                    cause: TaskCause::NodeDied(node),
                },
                Failure::Dependency(dependency, cause) => TaskError::DependencyFailed {
                    task,
                    id,
                    dependency,
                    cause,
                },
                Failure::Store(cause) => TaskError::ResultNotStored { task, id, cause },
            },
        }
    }
}

/// The scheduler's handle on a task.
#[derive(Clone)]
pub(crate) struct TaskRef(pub(crate) Arc<Task>);

impl std::fmt::Debug for TaskRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0.spec.id)
    }
}

impl Payload for TaskRef {
    fn id(&self) -> TaskId {
        self.0.spec.id
    }
    fn deps(&self) -> &[ObjectId] {
        &self.0.spec.deps
    }
    fn results(&self) -> &[ObjectId] {
        &self.0.spec.results
    }
    fn needs(&self) -> &Units {
        &self.0.needs
    }
    fn retry(&self) -> RetryPolicy {
        RetryPolicy {
            max_retries: self.0.spec.options.get_max_retries(),
            retry_exceptions: self.0.spec.options.get_retry_exceptions(),
        }
    }
    fn abortable(&self) -> bool {
        !self.0.body.blocking()
    }
}

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
    placement: Option<Arc<dyn Placement>>,
    remote: Option<Arc<dyn RemoteExecutor>>,
    /// How long each function's bodies take, by name.
    timings: dashmap::DashMap<crate::spec::FunctionName, Arc<Timing>>,
}

impl Scheduler {
    pub(crate) fn new(
        capacity: &Resources,
        store: ObjectStore,
        tokio: tokio::runtime::Handle,
        placement: Option<Arc<dyn Placement>>,
        remote: Option<Arc<dyn RemoteExecutor>>,
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
            placement,
            remote,
            timings: dashmap::DashMap::new(),
        }
    }

    /// The timing record of a function.
    pub(crate) fn timing_of(&self, function: &crate::spec::FunctionName) -> Arc<Timing> {
        if let Some(timing) = self.timings.get(function) {
            return timing.clone();
        }
        self.timings
            .entry(function.clone())
            .or_insert_with(|| Arc::new(Timing::default()))
            .clone()
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
        if !task.timing.known_short() || task.spec.returns == crate::spec::Returns::Stream {
            return false;
        }
        let job = task.job.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let ran = job.is_some_and(|job| job.run());
        if ran {
            metrics::counter!("troupe_tasks_run_by_waiter_total").increment(1);
        }
        ran
    }

    pub(crate) fn set_runtime(&self, runtime: Weak<dyn Any + Send + Sync>) {
        let _ = self.runtime.set(runtime);
    }

    fn lock(&self) -> MutexGuard<'_, State<TaskRef, Waiter>> {
        // The state's methods run no user code and do not panic on any
        // input; a poisoned lock (a bug) still holds a consistent state.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn settled(&self) -> impl Fn(ObjectId) -> bool + '_ {
        |id| self.store.is_settled(id)
    }

    /// What the node has in all.
    pub(crate) fn capacity(&self) -> &Resources {
        &self.capacity
    }

    /// Submits a task. One that cannot run here goes to the placement hook
    /// (none: it fails as infeasible); invalid options fail at once.
    pub(crate) fn submit(self: &Arc<Self>, task: Arc<Task>) {
        metrics::counter!("troupe_tasks_submitted_total").increment(1);
        if let Err(reason) = task.resources.validate() {
            let err = TaskError::InvalidResources {
                task: task.spec.function.clone(),
                id: task.spec.id,
                reason,
            };
            task.body.give_up(err);
            return;
        }
        let elsewhere = match task.spec.options.get_scheduling_strategy() {
            SchedulingStrategy::NodeAffinity { node, soft: false } => *node != self.node,
            _ => false,
        };
        let mut state = self.lock();
        if elsewhere || !state.feasible(&task.needs) {
            drop(state);
            self.place(Queued {
                task: TaskRef(task),
                attempt: 1,
            });
            return;
        }
        // Nothing queued ahead: decide now, on this thread (a task submitted
        // and awaited one at a time pays no hop through the actor). A burst
        // is queued and sorted once by the actor.
        let idle = state.counts().queued == 0;
        if idle {
            let actions = state.submit(TaskRef(task), &self.settled());
            drop(state);
            self.perform(actions);
            return;
        }
        let refused = state.enqueue(TaskRef(task));
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
            for (id, attempt) in retried {
                tracing::warn!(task = %id, attempt, "task failed; retrying");
                metrics::counter!("troupe_task_retries_total").increment(1);
            }
            for (task, why) in give_up {
                let task = task.0;
                task.stopped.store(true, Ordering::Release);
                let cancelled = matches!(why, GiveUp::Cancelled);
                let err = task.error(why);
                if !cancelled {
                    tracing::warn!(task = %task.spec.id, error = %err, "task failed for good");
                    metrics::counter!("troupe_tasks_failed_total").increment(1);
                }
                task.body.give_up(err);
                settled.extend_from_slice(&task.spec.results);
            }
            for task in place {
                self.place(task);
            }
            for (id, deps) in watch {
                self.watch(id, deps);
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

    /// Waits for arguments made elsewhere, then moves the task on.
    fn watch(self: &Arc<Self>, id: TaskId, deps: Vec<ObjectId>) {
        let scheduler = Arc::downgrade(self);
        let store = self.store.clone();
        let handle = self.tokio.spawn(async move {
            for dep in &deps {
                store.ready(*dep).await;
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

    /// Runs one attempt: a tokio task for an async body, a CPU-thread job
    /// for a sync one; either reports its end here.
    fn launch(self: &Arc<Self>, launch: Launch<TaskRef>) {
        let Launch {
            task,
            attempt,
            gpus,
        } = launch;
        let task = task.0;
        if task.stopped.load(Ordering::Acquire) {
            return; // cancelled between the decision and now
        }
        let id = task.spec.id;
        let frame = self.frame(&task, attempt, &gpus);
        let scheduler = self.clone();
        match task.body.clone().launch(frame) {
            function::Launch::Blocking(body) => {
                let timing = task.timing.clone();
                let job = Job::new(Box::new(move || {
                    let began = std::time::Instant::now();
                    let outcome = body();
                    timing.record(began.elapsed());
                    // What this completion launches may run next on this
                    // thread: the body has returned.
                    cpu_pool::as_job_ends(|| scheduler.finished(id, outcome));
                }));
                *task.job.lock().unwrap_or_else(|e| e.into_inner()) = Some(job.clone());
                self.cpus.execute(job);
            }
            function::Launch::Async(body) => {
                let handle = self.tokio.spawn(async move {
                    let outcome = body.await;
                    scheduler.finished(id, outcome);
                });
                task.set_handle(handle.abort_handle());
            }
        }
    }

    fn frame(&self, task: &Task, attempt: u32, gpus: &[GpuShare]) -> Frame {
        Frame {
            task: Some(Arc::new(TaskContext {
                task_id: task.spec.id,
                function: task.spec.function.clone(),
                attempt,
                node: self.node,
                resources: task.resources.clone(),
                gpu_ids: ordinals(gpus),
            })),
            actor: None,
            runtime: self.runtime.get().cloned(),
        }
    }

    /// A running task is about to wait in `get`: its CPUs go back to the
    /// node until the returned guard drops.
    pub(crate) fn lend(self: &Arc<Self>, id: TaskId) -> Option<Lent> {
        let (lent, actions) = self.lock().lend(id, &self.settled());
        if !lent {
            return None;
        }
        metrics::counter!("troupe_task_cpu_lends_total").increment(1);
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
            cancelled = task.body.give_up(task.error(why));
            tracing::debug!(task = %task.spec.id, ?stage, cancelled, "task cancelled");
            if cancelled {
                metrics::counter!("troupe_tasks_cancelled_total").increment(1);
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
        metrics::gauge!("troupe_cpu_threads").set(self.cpus.threads() as f64);
        counts
    }

    /// What is free now.
    pub(crate) fn available(&self) -> Resources {
        self.lock().free().to_resources()
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

/// Messages of the scheduler actor.
pub enum SchedulerMsg {
    /// Tasks were queued: sort and launch them.
    Pump,
}

#[cfg(feature = "cluster")]
impl ractor::Message for SchedulerMsg {}

/// The scheduler actor, supervised in the system subtree. It holds no
/// data: it drives bursts of submissions on the runtime's scheduler.
#[derive(Clone)]
pub struct SchedulerActor {
    pub(crate) scheduler: Arc<Scheduler>,
}

impl ractor::Actor for SchedulerActor {
    type Msg = SchedulerMsg;
    type State = ();
    type Arguments = ();

    async fn pre_start(
        &self,
        myself: ActorRef<SchedulerMsg>,
        _: (),
    ) -> Result<(), ActorProcessingErr> {
        self.scheduler.actor.store(Some(Arc::new(myself.clone())));
        // Pick up whatever arrived while no actor was listening.
        self.scheduler.nudged.store(false, Ordering::Release);
        let _ = myself.send_message(SchedulerMsg::Pump);
        Ok(())
    }

    async fn handle(
        &self,
        _myself: ActorRef<SchedulerMsg>,
        msg: SchedulerMsg,
        _: &mut (),
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            SchedulerMsg::Pump => {
                self.scheduler.nudged.store(false, Ordering::Release);
                self.scheduler.pump();
            }
        }
        Ok(())
    }
}
