//! The state machine's vocabulary: what it knows of a task ([`Payload`],
//! [`Queued`], [`Route`]), what it decides ([`Actions`]: launches, grants,
//! give-ups, waits), and what it reports ([`Counts`]).

use super::*;

/// What the state needs to know of a task. The driver's payload is the
/// task itself (its spec and body); the tests use a small struct.
pub(crate) trait Payload: Clone {
    fn id(&self) -> TaskId;
    fn deps(&self) -> &[ObjectId];
    fn results(&self) -> &[ObjectId];
    fn needs(&self) -> &Units;
    fn retry(&self) -> RetryPolicy;
    /// Whether a running attempt can be stopped (an async body can, at its
    /// next await; a sync body cannot).
    fn abortable(&self) -> bool;
    /// The attempt it starts at: 1, or for an attempt its owner sent
    /// here from another node, that attempt's number.
    fn first_attempt(&self) -> u32 {
        1
    }
}

/// When a failed attempt is tried again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct RetryPolicy {
    pub(crate) max_retries: u32,
    pub(crate) retry_exceptions: bool,
}

impl RetryPolicy {
    /// Whether a failure of attempt number `attempt` is retried.
    pub(crate) fn retries(&self, failure: &Failure, attempt: u32) -> bool {
        let retryable = match failure {
            Failure::Panicked(_) | Failure::NodeDied(_) | Failure::Lost(..) => true,
            Failure::Error(_) => self.retry_exceptions,
            Failure::Dependency(..) | Failure::Store(_) => false,
        };
        retryable && attempt <= self.max_retries
    }
}

/// A task with the attempt it is at, and where that attempt may run.
#[derive(Clone, Debug)]
pub(crate) struct Queued<P> {
    pub(crate) task: P,
    pub(crate) attempt: u32,
    pub(crate) route: Route,
}

/// Where a task's attempt may run, as its owner decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Route {
    /// Here only: there is no cluster, its owner on another node sent it
    /// here, or the placement hook chose here.
    Here,
    /// Here if it fits once its arguments are made, else the placement
    /// hook decides (spillback).
    HereFirst,
    /// The placement hook decides once its arguments are made (affinity
    /// to another node, spread, infeasible here).
    Placed,
}

/// What a waiter waits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Wait {
    /// The arguments to be made (wherever: the task may not run here).
    Made,
    /// The arguments to be readable here (fetched from where they were made).
    Here,
}

/// Why a task is given up (its results fail for good).
#[derive(Debug)]
pub(crate) enum GiveUp {
    /// Its last allowed attempt failed.
    Failed {
        attempts: u32,
        failure: Failure,
    },
    Cancelled,
    ShutDown,
}

/// One attempt to start.
#[derive(Debug)]
pub(crate) struct Launch<P> {
    pub(crate) task: P,
    pub(crate) attempt: u32,
    pub(crate) gpus: Vec<GpuShare>,
}

/// Resources granted to an actor for its life.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Grant {
    pub(crate) needs: Units,
    pub(crate) gpus: Vec<GpuShare>,
}

/// What the driver must do after an event, outside the lock.
#[must_use = "the scheduler's decisions are carried out by the driver"]
#[derive(Debug)]
pub(crate) struct Actions<P, W> {
    pub(crate) launch: Vec<Launch<P>>,
    pub(crate) give_up: Vec<(P, GiveUp)>,
    /// Wait for these arguments (made elsewhere, or to be fetched here),
    /// then call `deps_settled`.
    pub(crate) watch: Vec<(TaskId, Vec<ObjectId>, Wait)>,
    /// Stop waiting for a task's arguments (it was cancelled).
    pub(crate) unwatch: Vec<P>,
    /// Stop a running async attempt.
    pub(crate) abort: Vec<P>,
    /// Actors whose resources are granted now.
    pub(crate) grants: Vec<(W, Grant)>,
    /// Failed attempts that are tried again: (task, the attempt that
    /// failed, how).
    pub(crate) retried: Vec<(P, u32, Failure)>,
    /// Tasks whose results are stored, with the attempt that stored them.
    pub(crate) done: Vec<(P, u32)>,
    /// Tasks for the placement hook: infeasible here, or retried after
    /// running on another node.
    pub(crate) place: Vec<Queued<P>>,
}

impl<P, W> Default for Actions<P, W> {
    fn default() -> Self {
        Self {
            launch: Vec::new(),
            give_up: Vec::new(),
            watch: Vec::new(),
            unwatch: Vec::new(),
            abort: Vec::new(),
            grants: Vec::new(),
            retried: Vec::new(),
            done: Vec::new(),
            place: Vec::new(),
        }
    }
}

impl<P, W> Actions<P, W> {
    pub(crate) fn is_empty(&self) -> bool {
        self.launch.is_empty()
            && self.give_up.is_empty()
            && self.watch.is_empty()
            && self.unwatch.is_empty()
            && self.abort.is_empty()
            && self.grants.is_empty()
            && self.retried.is_empty()
            && self.done.is_empty()
            && self.place.is_empty()
    }
}

impl<P, W> Actions<P, W> {
    pub(crate) fn merge(&mut self, other: Actions<P, W>) {
        self.launch.extend(other.launch);
        self.give_up.extend(other.give_up);
        self.watch.extend(other.watch);
        self.unwatch.extend(other.unwatch);
        self.abort.extend(other.abort);
        self.grants.extend(other.grants);
        self.retried.extend(other.retried);
        self.done.extend(other.done);
        self.place.extend(other.place);
    }
}

/// Why resources could not be reserved for an actor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReserveError {
    /// The node can never fit them.
    Infeasible,
    /// The runtime is shutting down.
    ShutDown,
}

/// How many tasks are where (and how many actor spawns wait for resources).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub struct Counts {
    /// Arguments ready (or being sorted), waiting for resources.
    pub queued: usize,
    /// Waiting for arguments to be ready.
    pub waiting_for_args: usize,
    /// Running on this node.
    pub running: usize,
    /// Fitting no node known yet.
    pub unplaced: usize,
    /// Running on other nodes.
    pub delegated: usize,
    /// Actor spawns waiting for their lifelong resources, in order (not
    /// tasks: counted apart).
    #[serde(default)]
    pub actors_waiting: usize,
}

/// What the state reports (the state API's counts and listing).
impl<P: Payload, W> State<P, W> {
    /// Tasks queued (arguments ready or being sorted), waiting for
    /// arguments, and running here.
    pub(crate) fn counts(&self) -> Counts {
        Counts {
            queued: self.incoming.len() + self.ready.len(),
            waiting_for_args: self.parked + self.watched.len(),
            running: self.running.len(),
            unplaced: self.unplaced.len(),
            delegated: self.delegated.len(),
            actors_waiting: self.reservations.len(),
        }
    }

    /// Unfinished tasks for the state API, with where each is and its
    /// attempt: at most `limit` of those `keep` accepts, running ones first,
    /// then queued, waiting, unplaced and delegated ones.
    pub(crate) fn list(
        &self,
        limit: usize,
        keep: &dyn Fn(&P, Stage) -> bool,
    ) -> Vec<(P, Stage, u32)> {
        let running = self.running.values().map(|a| (&a.queued, Stage::Running));
        let queued = self
            .ready
            .iter()
            .chain(self.incoming.iter())
            .map(|q| (q, Stage::Queued));
        let waiting = self
            .dependents
            .values()
            .flatten()
            .chain(self.watched.values())
            .map(|q| (q, Stage::WaitingForArgs));
        let unplaced = self.unplaced.iter().map(|q| (q, Stage::Unplaced));
        let delegated = self
            .delegated
            .values()
            .map(|(q, node)| (q, Stage::Delegated(*node)));
        running
            .chain(queued)
            .chain(waiting)
            .chain(unplaced)
            .chain(delegated)
            .filter(|(q, stage)| keep(&q.task, *stage))
            .take(limit)
            .map(|(q, stage)| (q.task.clone(), stage, q.attempt))
            .collect()
    }
}
