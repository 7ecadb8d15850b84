//! The scheduler: runs tasks when their arguments are ready and the node has
//! the resources they need.
//!
//! What it guards (queues, free resources) lives in `SchedulerCore`, owned
//! by the runtime; the [`SchedulerActor`] in the system subtree only pumps
//! it. Submitting and finishing push into the core and nudge the actor (one
//! message per burst, not per task), so a restarted actor finds every queued
//! and running task where it was.
//!
//! Each attempt of a task runs as an ephemeral actor: a tokio task that runs
//! the body under `catch_unwind` and reports its exit to the core, which acts
//! as its supervisor (retry = restart). A ractor actor per task costs about
//! 25 µs to spawn here, ten times this; see ARCHITECTURE.md.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use arc_swap::ArcSwapOption;
use futures::FutureExt;
use ractor::{ActorProcessingErr, ActorRef};
use tokio::task::AbortHandle;
use troupe_objects::{ObjectId, ObjectStore};

use crate::cpu_pool::CpuPool;
use crate::error::panic_message;
use crate::task::{
    Attempt, Current, Failure, Launch, TaskContext, TaskError, TaskId, TaskRun, CONTEXT,
};
use crate::Resources;

/// Resources in fixed point (thousandths), so that fractions add up exactly.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Units {
    // Signed: a task that takes back the CPU it lent during a nested get
    // may oversubscribe the node for a moment (as in Ray).
    cpus: i64,
    gpus: i64,
    memory: i64,
    custom: BTreeMap<String, i64>,
}

fn milli(x: f64) -> i64 {
    (x.max(0.0) * 1000.0).round() as i64
}

impl Units {
    pub(crate) fn of(r: &Resources) -> Self {
        Units {
            cpus: milli(r.num_cpus),
            gpus: milli(r.num_gpus),
            memory: i64::try_from(r.memory).unwrap_or(i64::MAX),
            custom: r
                .custom
                .iter()
                .map(|(k, v)| (k.clone(), milli(*v)))
                .collect(),
        }
    }

    fn fits_in(&self, have: &Units) -> bool {
        self.cpus <= have.cpus
            && self.gpus <= have.gpus
            && self.memory <= have.memory
            && self
                .custom
                .iter()
                .all(|(k, v)| *v == 0 || have.custom.get(k).is_some_and(|h| v <= h))
    }

    fn take_from(&self, have: &mut Units) {
        have.cpus -= self.cpus;
        have.gpus -= self.gpus;
        have.memory -= self.memory;
        for (k, v) in &self.custom {
            if let Some(h) = have.custom.get_mut(k) {
                *h -= v;
            }
        }
    }

    fn give_back(&self, have: &mut Units) {
        have.cpus += self.cpus;
        have.gpus += self.gpus;
        have.memory += self.memory;
        for (k, v) in &self.custom {
            *have.custom.entry(k.clone()).or_default() += v;
        }
    }
}

impl Units {
    pub(crate) fn is_zero(&self) -> bool {
        self.cpus == 0
            && self.gpus == 0
            && self.memory == 0
            && self.custom.values().all(|v| *v == 0)
    }
}

/// A share of one GPU: its ordinal and the thousandths held.
pub(crate) type GpuShare = (u32, i64);

/// What is free on each GPU of the node, in thousandths of a device.
///
/// Placement follows Ray: a fraction (at most one device) goes to the
/// fullest device it still fits on, so fractions pack and whole devices stay
/// free; a whole number `n` takes `n` devices nobody uses.
#[derive(Debug)]
struct Gpus {
    free: Vec<i64>,
}

impl Gpus {
    fn new(devices: usize) -> Self {
        Gpus {
            free: vec![1000; devices],
        }
    }

    fn place(&self, need: i64) -> Option<Vec<GpuShare>> {
        if need == 0 {
            return Some(Vec::new());
        }
        if need <= 1000 {
            let (ordinal, _) = self
                .free
                .iter()
                .enumerate()
                .filter(|(_, free)| **free >= need)
                .min_by_key(|(i, free)| (**free, *i))?;
            return Some(vec![(ordinal as u32, need)]);
        }
        let whole = (need / 1000) as usize;
        let idle: Vec<GpuShare> = self
            .free
            .iter()
            .enumerate()
            .filter(|(_, free)| **free == 1000)
            .map(|(i, _)| (i as u32, 1000))
            .take(whole)
            .collect();
        (idle.len() == whole).then_some(idle)
    }

    fn take(&mut self, shares: &[GpuShare]) {
        self.adjust(shares, -1);
    }

    fn give_back(&mut self, shares: &[GpuShare]) {
        self.adjust(shares, 1);
    }

    fn adjust(&mut self, shares: &[GpuShare], sign: i64) {
        if shares.is_empty() {
            return; // the common case (no GPU asked): no gauge update either
        }
        for (ordinal, amount) in shares {
            if let Some(free) = self.free.get_mut(*ordinal as usize) {
                *free += sign * amount;
            }
        }
        let in_use: i64 = self.free.iter().map(|free| 1000 - free).sum();
        metrics::gauge!("troupe_scheduler_gpus_in_use").set(in_use as f64 / 1000.0);
    }
}

/// Whether `need` thousandths of GPUs could ever be placed on `devices`
/// idle GPUs: a fraction of one, or whole ones.
fn gpus_feasible(need: i64, devices: usize) -> bool {
    match need {
        0 => true,
        1..=1000 => devices > 0,
        _ => need % 1000 == 0 && (need / 1000) as usize <= devices,
    }
}

/// The ordinals of a set of GPU shares, in order.
pub(crate) fn ordinals(shares: &[GpuShare]) -> Vec<u32> {
    shares.iter().map(|(ordinal, _)| *ordinal).collect()
}

/// How many queued tasks that do not fit one pump looks past.
const SKIP_LIMIT: usize = 64;

/// A submitted task as the scheduler sees it.
pub(crate) struct Queued {
    pub(crate) id: TaskId,
    /// The object its result goes to (what `cancel` is given).
    pub(crate) result: ObjectId,
    pub(crate) needs: Units,
    pub(crate) deps: Vec<ObjectId>,
    pub(crate) run: Arc<dyn TaskRun>,
    pub(crate) attempt: u32,
}

struct Running {
    /// How to stop it (async bodies only).
    abort: Option<AbortHandle>,
    /// Whose result it owes.
    run: Arc<dyn TaskRun>,
    /// What it holds (and on which GPUs), and how many of its nested gets
    /// lend the CPUs back.
    needs: Units,
    gpus: Vec<GpuShare>,
    lending: u32,
    /// Cancelled while running a sync body: it runs to its end, and what
    /// it returns is dropped.
    cancelled: bool,
}

impl Running {
    /// Gives back what it holds (its CPUs are back already while lent).
    fn release(&self, free: &mut Units, gpus: &mut Gpus) {
        self.needs.give_back(free);
        gpus.give_back(&self.gpus);
        if self.lending > 0 {
            free.cpus -= self.needs.cpus;
        }
    }
}

struct State {
    free: Units,
    gpus: Gpus,
    /// Actors waiting for resources to hold for their life, in order.
    reservations: VecDeque<WaitingReservation>,
    submitted: VecDeque<Queued>,
    ready: VecDeque<Queued>,
    finished: Vec<(Queued, Attempt)>,
    /// Running attempts. A sync body cannot be interrupted; its result is
    /// dropped.
    running: HashMap<TaskId, Running>,
    /// Every task not finished yet, by result object: what `cancel` finds.
    live: HashMap<ObjectId, (TaskId, Arc<dyn TaskRun>)>,
    /// Tasks waiting for an argument that a task of ours produces, by that
    /// argument: the thread that settles it moves them on, with no wake-up
    /// of another thread (what makes chains fast).
    dependents: HashMap<ObjectId, Vec<Queued>>,
    waiting_on_deps: usize,
    shut_down: bool,
}

/// The scheduler's data, owned by the runtime so that it survives restarts
/// of the actor that drives it.
pub(crate) struct SchedulerCore {
    capacity: Units,
    gpu_devices: usize,
    capacity_resources: Resources,
    state: Mutex<State>,
    nudged: AtomicBool,
    actor: ArcSwapOption<ActorRef<SchedulerMsg>>,
    store: ObjectStore,
    node: troupe_objects::NodeId,
    /// Where async attempts and argument waits are spawned (from any
    /// thread, CPU threads included).
    tokio: tokio::runtime::Handle,
    cpus: Arc<CpuPool>,
    /// The runtime, for task bodies (`task::runtime()`); weak: it owns us.
    runtime: std::sync::OnceLock<std::sync::Weak<crate::runtime::Inner>>,
}

impl SchedulerCore {
    pub(crate) fn new(
        capacity: &Resources,
        store: ObjectStore,
        tokio: tokio::runtime::Handle,
    ) -> Self {
        let units = Units::of(capacity);
        let cpus = CpuPool::new(capacity.num_cpus.ceil().max(1.0) as usize);
        let gpu_devices = capacity.num_gpus.floor() as usize;
        Self {
            capacity: units.clone(),
            gpu_devices,
            capacity_resources: capacity.clone(),
            state: Mutex::new(State {
                free: units,
                gpus: Gpus::new(gpu_devices),
                reservations: VecDeque::new(),
                submitted: VecDeque::new(),
                ready: VecDeque::new(),
                finished: Vec::new(),
                running: HashMap::new(),
                live: HashMap::new(),
                dependents: HashMap::new(),
                waiting_on_deps: 0,
                shut_down: false,
            }),
            nudged: AtomicBool::new(false),
            actor: ArcSwapOption::empty(),
            node: store.node(),
            store,
            tokio,
            cpus,
            runtime: std::sync::OnceLock::new(),
        }
    }

    pub(crate) fn set_runtime(&self, runtime: std::sync::Weak<crate::runtime::Inner>) {
        let _ = self.runtime.set(runtime);
    }

    /// A running task is about to wait in `get`: give its CPUs back to the
    /// node until the returned guard drops (no deadlock when tasks wait on
    /// tasks, and no thread explosion: the CPU limit still holds).
    pub(crate) fn lend(self: &Arc<Self>, id: TaskId) -> Option<Lent> {
        {
            let mut state = self.lock();
            let running = state.running.get_mut(&id)?;
            running.lending += 1;
            if running.lending > 1 || running.needs.cpus == 0 {
                return Some(Lent {
                    core: self.clone(),
                    id,
                });
            }
            let cpus = running.needs.cpus;
            state.free.cpus += cpus;
        }
        metrics::counter!("troupe_task_cpu_lends_total").increment(1);
        self.pump();
        Some(Lent {
            core: self.clone(),
            id,
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every critical section is a few queue operations: a panic cannot
        // leave it half-done, so a poisoned lock is still consistent.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues a task. One that can never fit this node fails at once.
    pub(crate) fn submit(self: &Arc<Self>, task: Queued) {
        if let Err(reason) = task.run.needs().validate() {
            task.run.give_up(TaskError::InvalidResources {
                task: task.run.name(),
                id: task.id,
                reason,
            });
            return;
        }
        if !self.feasible(&task.needs) {
            let err = TaskError::Infeasible {
                task: task.run.name(),
                id: task.id,
                needs: task.run.needs().clone(),
                node: self.capacity_resources.clone(),
            };
            task.run.give_up(err);
            return;
        }
        {
            let mut state = self.lock();
            if state.shut_down {
                drop(state);
                task.run.give_up(TaskError::ShutDown {
                    task: task.run.name(),
                    id: task.id,
                });
                return;
            }
            for result in task.run.results() {
                state.live.insert(*result, (task.id, task.run.clone()));
            }
            state.submitted.push_back(task);
        }
        metrics::counter!("troupe_tasks_submitted_total").increment(1);
        self.nudge();
    }

    /// Whether `needs` fits this node when nothing else runs.
    fn feasible(&self, needs: &Units) -> bool {
        needs.fits_in(&self.capacity) && gpus_feasible(needs.gpus, self.gpu_devices)
    }

    /// What the node has in all.
    pub(crate) fn capacity(&self) -> &Resources {
        &self.capacity_resources
    }

    /// Reserves `needs` for an actor's whole life (Ray holds an actor's
    /// resources while it lives): at once if they are free, otherwise when
    /// they are given back, in the order asked. Fails at once when the node
    /// can never fit them.
    pub(crate) async fn reserve(
        self: &Arc<Self>,
        needs: Units,
    ) -> Result<Reservation, ReserveError> {
        match self.try_reserve(&needs)? {
            Some(granted) => Ok(granted),
            None => {
                let (tx, rx) = tokio::sync::oneshot::channel();
                {
                    let mut state = self.lock();
                    if state.shut_down {
                        return Err(ReserveError::ShutDown);
                    }
                    state
                        .reservations
                        .push_back(WaitingReservation { needs, grant: tx });
                }
                metrics::counter!("troupe_actor_reservations_waited_total").increment(1);
                // Granted by a pump once resources come back. Something may
                // have come back between try_reserve and the push: pump now.
                self.pump();
                rx.await.map_err(|_| ReserveError::ShutDown)
            }
        }
    }

    /// Reserves `needs` if they are free now (`None` if not).
    pub(crate) fn try_reserve(
        self: &Arc<Self>,
        needs: &Units,
    ) -> Result<Option<Reservation>, ReserveError> {
        if !self.feasible(needs) {
            return Err(ReserveError::Infeasible);
        }
        let mut state = self.lock();
        if state.shut_down {
            return Err(ReserveError::ShutDown);
        }
        // Earlier waiters go first.
        if !state.reservations.is_empty() {
            return Ok(None);
        }
        Ok(Self::grant(self, &mut state, needs))
    }

    fn grant(core: &Arc<Self>, state: &mut State, needs: &Units) -> Option<Reservation> {
        if !needs.fits_in(&state.free) {
            return None;
        }
        let gpus = state.gpus.place(needs.gpus)?;
        needs.take_from(&mut state.free);
        state.gpus.take(&gpus);
        Some(Reservation {
            core: core.clone(),
            needs: needs.clone(),
            gpus,
        })
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

    /// An attempt ended. The thread it ended on schedules what its
    /// resources now allow, at once: no round trip through the actor.
    fn finished(self: &Arc<Self>, task: Queued, attempt: Attempt) {
        // Recorded under the pump's own lock: one lock per completion.
        self.pump_with(Some(move |state: &mut State| {
            let State {
                running,
                free,
                gpus,
                live,
                finished,
                ..
            } = state;
            match running.remove(&task.id) {
                // Cancelled (async, aborted) or abandoned at shutdown: its
                // resources are back and its result has failed already.
                None => {}
                Some(was) => {
                    was.release(free, gpus);
                    if was.cancelled {
                        for result in task.run.results() {
                            live.remove(result);
                        }
                    } else {
                        finished.push((task, attempt));
                    }
                }
            }
        }));
    }

    fn deps_ready(self: &Arc<Self>, task: Queued) {
        {
            let mut state = self.lock();
            state.waiting_on_deps -= 1;
            // Not live any more: cancelled while it waited.
            if state.live.contains_key(&task.result) {
                state.ready.push_back(task);
            }
        }
        self.pump();
    }

    /// Moves everything forward: settles finished attempts (retrying or
    /// failing them), sorts submitted tasks by readiness of their
    /// arguments, and launches ready tasks while resources last. Runs on
    /// the actor for submissions, inline where attempts finish.
    pub(crate) fn pump(self: &Arc<Self>) {
        self.pump_with(None::<fn(&mut State)>);
    }

    /// [`pump`](Self::pump), applying `first` to the state under the same
    /// lock before anything else (how a finished attempt is recorded).
    fn pump_with<F: FnOnce(&mut State)>(self: &Arc<Self>, first: Option<F>) {
        let mut settled = Vec::new();
        let mut first = first;
        loop {
            self.pump_once(&mut settled, first.take());
            if settled.is_empty() {
                return;
            }
            // Results that failed this round: their dependents go back to
            // be sorted (and failed) by the next round.
            let mut state = self.lock();
            let mut moved = false;
            for result in settled.drain(..) {
                if let Some(waiting) = state.dependents.remove(&result) {
                    state.waiting_on_deps -= waiting.len();
                    state.submitted.extend(waiting);
                    moved = true;
                }
            }
            if !moved {
                return;
            }
        }
    }

    fn pump_once<F: FnOnce(&mut State)>(
        self: &Arc<Self>,
        settled: &mut Vec<ObjectId>,
        first: Option<F>,
    ) {
        let mut give_ups = Vec::new();
        let mut launches = Vec::new();
        let mut waits = Vec::new();
        let mut grants = Vec::new();
        {
            let mut state = self.lock();
            if let Some(first) = first {
                first(&mut state);
            }
            // Actors waiting to be placed go before tasks, in order; one
            // that does not fit yet holds back those behind it (no
            // starvation of a large actor by small ones).
            while let Some(waiting) = state.reservations.front() {
                let needs = waiting.needs.clone();
                match Self::grant(self, &mut state, &needs) {
                    Some(granted) => {
                        if let Some(waiting) = state.reservations.pop_front() {
                            grants.push((waiting.grant, granted));
                        }
                    }
                    None => break,
                }
            }
            for (mut task, attempt) in std::mem::take(&mut state.finished) {
                match attempt {
                    Attempt::Done => {
                        // Its results are stored already (the attempt
                        // completed them before reporting): dependents
                        // parked under them are sorted below, under this
                        // same lock.
                        for result in task.run.results() {
                            state.live.remove(result);
                            if let Some(waiting) = state.dependents.remove(result) {
                                state.waiting_on_deps -= waiting.len();
                                state.submitted.extend(waiting);
                            }
                        }
                    }
                    Attempt::Failed(failure) => {
                        if task.run.retries(&failure, task.attempt) && !state.shut_down {
                            tracing::warn!(task = %task.id, attempt = task.attempt, %failure, "task failed; retrying");
                            metrics::counter!("troupe_task_retries_total").increment(1);
                            task.attempt += 1;
                            state.ready.push_front(task);
                        } else {
                            for result in task.run.results() {
                                state.live.remove(result);
                            }
                            give_ups.push((task, failure));
                        }
                    }
                }
            }
            while let Some(task) = state.submitted.pop_front() {
                if !state.live.contains_key(&task.result) {
                    continue; // cancelled while it waited
                }
                match task.deps.iter().find(|d| !self.store.is_settled(**d)) {
                    None => state.ready.push_back(task),
                    Some(dep) => {
                        state.waiting_on_deps += 1;
                        if state.live.contains_key(dep) {
                            state.dependents.entry(*dep).or_default().push(task);
                        } else {
                            // Produced elsewhere (a Completer, another
                            // runtime): wait for it on the object itself.
                            waits.push(task);
                        }
                    }
                }
            }
            // Launch what fits, in order. A task that does not fit now lets
            // smaller ones behind it go, but the scan passes at most
            // SKIP_LIMIT of them: a long queue must not make each pump O(n).
            let mut i = 0;
            let mut skipped = 0;
            while i < state.ready.len() && skipped < SKIP_LIMIT {
                let placed = if state.ready[i].needs.fits_in(&state.free) {
                    state.gpus.place(state.ready[i].needs.gpus)
                } else {
                    None
                };
                if let Some(gpus) = placed {
                    if let Some(task) = state.ready.remove(i) {
                        task.needs.take_from(&mut state.free);
                        state.gpus.take(&gpus);
                        launches.push((task, gpus));
                    }
                } else {
                    i += 1;
                    skipped += 1;
                }
            }
            metrics::gauge!("troupe_scheduler_queued_tasks").set(state.ready.len() as f64);
        }
        // Outside the lock: a waiter that has gone drops its grant, which
        // gives the resources back (and takes the lock).
        for (grant, granted) in grants {
            let _ = grant.send(granted);
        }
        for (task, failure) in give_ups {
            let err = task.run.error(task.id, task.attempt, failure);
            tracing::warn!(task = %task.id, error = %err, "task failed for good");
            metrics::counter!("troupe_tasks_failed_total").increment(1);
            task.run.give_up(err);
            settled.extend_from_slice(task.run.results());
        }
        for task in waits {
            let core = self.clone();
            self.tokio.spawn(async move {
                for dep in &task.deps {
                    core.store.ready(*dep).await;
                }
                core.deps_ready(task);
            });
        }
        for (task, gpus) in launches {
            self.launch(task, gpus);
        }
    }

    /// Runs one attempt as an ephemeral actor: a tokio task for an async
    /// body, a CPU-thread job for a sync one; either reports its exit here.
    fn launch(self: &Arc<Self>, task: Queued, gpus: Vec<GpuShare>) {
        let core = self.clone();
        let id = task.id;
        let run = task.run.clone();
        let current = Current {
            context: TaskContext {
                task_id: id,
                attempt: task.attempt,
                node: self.node,
                resources: task.run.needs().clone(),
                gpu_ids: ordinals(&gpus),
            },
            runtime: self.runtime.get().cloned().unwrap_or_default(),
        };
        let needs = task.needs.clone();
        // Started under the lock: its exit (which takes the lock) cannot be
        // recorded before it is.
        let mut state = self.lock();
        match task.run.clone().attempt(current.clone()) {
            Launch::Async(body) => {
                let handle = self.tokio.spawn(async move {
                    let attempt = match CONTEXT
                        .scope(current, AssertUnwindSafe(body).catch_unwind())
                        .await
                    {
                        Ok(attempt) => attempt,
                        Err(payload) => {
                            Attempt::Failed(Failure::Panicked(panic_message(payload.as_ref())))
                        }
                    };
                    core.finished(task, attempt);
                });
                state.running.insert(
                    id,
                    Running {
                        abort: Some(handle.abort_handle()),
                        run,
                        needs,
                        gpus,
                        lending: 0,
                        cancelled: false,
                    },
                );
            }
            Launch::Blocking(body) => {
                state.running.insert(
                    id,
                    Running {
                        abort: None,
                        run,
                        needs,
                        gpus,
                        lending: 0,
                        cancelled: false,
                    },
                );
                // The job catches the body's panics itself.
                self.cpus.execute(Box::new(move || {
                    let attempt = body();
                    core.finished(task, attempt);
                }));
            }
        }
    }

    /// Cancels the task whose result is `result` (Ray's `cancel`): queued
    /// or waiting, it is dropped; running an async body, it is aborted at
    /// its next await; running a sync body, it cannot be interrupted, so it
    /// runs to its end and its result is dropped. Either way its ref fails
    /// at once with `TaskError::Cancelled`, and it is never retried.
    /// Returns false when no unfinished task has that result.
    pub(crate) fn cancel(self: &Arc<Self>, result: ObjectId) -> bool {
        let (id, run) = {
            let mut state = self.lock();
            let Some((id, run)) = state.live.remove(&result) else {
                return false;
            };
            // Any of a task's refs cancels it, and all of them fail.
            for other in run.results() {
                state.live.remove(other);
            }
            let State {
                submitted,
                ready,
                running,
                free,
                gpus,
                ..
            } = &mut *state;
            if let Some(at) = submitted.iter().position(|t| t.id == id) {
                submitted.remove(at);
            } else if let Some(at) = ready.iter().position(|t| t.id == id) {
                ready.remove(at);
            } else if let Some(attempt) = running.get_mut(&id) {
                match attempt.abort.take() {
                    Some(abort) => {
                        abort.abort();
                        if let Some(was) = running.remove(&id) {
                            was.release(free, gpus);
                        }
                    }
                    None => attempt.cancelled = true,
                }
            }
            // Otherwise it waits for its arguments; deps_ready drops it.
            (id, run)
        };
        tracing::debug!(task = %id, "task cancelled");
        metrics::counter!("troupe_tasks_cancelled_total").increment(1);
        run.give_up(TaskError::Cancelled {
            task: run.name(),
            id,
        });
        {
            // Its dependents now see a failed argument.
            let mut state = self.lock();
            for result in run.results() {
                if let Some(waiting) = state.dependents.remove(result) {
                    state.waiting_on_deps -= waiting.len();
                    state.submitted.extend(waiting);
                }
            }
        }
        self.pump();
        true
    }

    /// At runtime shutdown: abort running attempts, fail queued tasks.
    pub(crate) fn shut_down(&self) {
        let (queued, running) = {
            let mut state = self.lock();
            state.shut_down = true;
            state.live.clear();
            // Waiting actors learn of the shutdown when their sender drops.
            state.reservations.clear();
            let mut queued: Vec<Queued> = state.submitted.drain(..).collect();
            queued.extend(state.ready.drain(..));
            let dependents: Vec<Queued> = state.dependents.drain().flat_map(|(_, w)| w).collect();
            state.waiting_on_deps -= dependents.len();
            queued.extend(dependents);
            (queued, std::mem::take(&mut state.running))
        };
        for (id, Running { abort, run, .. }) in running {
            // Fail the result first: an aborted attempt would only drop it.
            run.give_up(TaskError::ShutDown {
                task: run.name(),
                id,
            });
            if let Some(abort) = abort {
                abort.abort();
            }
        }
        self.cpus.close();
        for task in queued {
            task.run.give_up(TaskError::ShutDown {
                task: task.run.name(),
                id: task.id,
            });
        }
    }

    /// Tasks queued, waiting on arguments, and running.
    pub(crate) fn counts(&self) -> (usize, usize, usize) {
        let state = self.lock();
        (
            state.submitted.len() + state.ready.len(),
            state.waiting_on_deps,
            state.running.len(),
        )
    }
}

/// An actor waiting for resources.
struct WaitingReservation {
    needs: Units,
    grant: tokio::sync::oneshot::Sender<Reservation>,
}

/// Why resources could not be reserved for an actor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReserveError {
    /// The node can never fit them.
    Infeasible,
    /// The runtime is shutting down.
    ShutDown,
}

/// Resources an actor holds for its life; dropping it gives them back and
/// lets waiting actors and tasks use them.
pub(crate) struct Reservation {
    core: Arc<SchedulerCore>,
    needs: Units,
    gpus: Vec<GpuShare>,
}

impl Reservation {
    /// The GPUs it holds, by ordinal.
    pub(crate) fn gpu_ids(&self) -> Vec<u32> {
        ordinals(&self.gpus)
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        {
            let mut state = self.core.lock();
            self.needs.give_back(&mut state.free);
            state.gpus.give_back(&self.gpus);
        }
        self.core.pump();
    }
}

/// CPUs lent back by a task waiting in `get`; dropping it takes them back.
pub(crate) struct Lent {
    core: Arc<SchedulerCore>,
    id: TaskId,
}

impl Drop for Lent {
    fn drop(&mut self) {
        let mut state = self.core.lock();
        let State { running, free, .. } = &mut *state;
        if let Some(running) = running.get_mut(&self.id) {
            running.lending -= 1;
            if running.lending == 0 {
                free.cpus -= running.needs.cpus;
            }
        }
    }
}

/// Messages of the scheduler actor.
pub enum SchedulerMsg {
    /// Something changed in the core: move it forward.
    Pump,
}

impl ractor::Message for SchedulerMsg {}

/// The scheduler actor, supervised in the system subtree.
#[derive(Clone)]
pub struct SchedulerActor {
    pub(crate) core: Arc<SchedulerCore>,
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
        self.core.actor.store(Some(Arc::new(myself.clone())));
        // Pick up whatever arrived while no actor was listening.
        self.core.nudged.store(false, Ordering::Release);
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
                self.core.nudged.store(false, Ordering::Release);
                self.core.pump();
            }
        }
        Ok(())
    }
}
