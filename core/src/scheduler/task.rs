//! A task as the scheduler holds it: its spec and body, and what its
//! attempts leave behind (handles to stop them, their times, where they
//! went).

use super::*;

/// A submitted task: its spec (what it is, as data) and its body (how it
/// runs here).
pub(crate) struct Task {
    pub(crate) spec: TaskSpec,
    pub(crate) needs: Units,
    pub(crate) resources: Resources,
    pub(crate) body: Arc<dyn TaskBody>,
    /// Stops the running async attempt, or the waiter of its arguments.
    pub(super) handle: Mutex<Option<AbortHandle>>,
    /// A sync attempt's job on the CPU pool, which a waiter may run itself.
    pub(super) job: Mutex<Option<Arc<Job>>>,
    /// Its function's record: counts, metrics, how long its bodies take.
    pub(super) stats: Arc<FunctionStats>,
    /// Set when it is cancelled or abandoned: a launch that races with it
    /// does not start.
    pub(super) stopped: AtomicBool,
    /// The submitter's span: each attempt's span is its child, so that a
    /// task's story reads on from the code that submitted it.
    pub(super) parent: tracing::Span,
    pub(super) submitted: Instant,
    /// The attempt launched last (0: none yet).
    pub(super) attempt: AtomicU32,
    /// When the last attempt started and ended, in microseconds since the
    /// Unix epoch (0: not yet).
    pub(super) started_us: AtomicU64,
    pub(super) ended_us: AtomicU64,
    /// The node its last attempt went to, when that was another node.
    pub(super) elsewhere: Mutex<Option<NodeId>>,
    /// Nodes that refused it (they cannot run it): placed elsewhere.
    pub(super) excluded: Mutex<Vec<NodeId>>,
    /// How its last failed attempt failed (a retry that finds no node
    /// fails with it).
    pub(super) last_failure: Mutex<Option<Failure>>,
    pub(super) delegated: AtomicBool,
    /// The spillback check that first saw it waiting for resources here
    /// (0: none has; see `spillback`).
    pub(super) waiting_since: AtomicU64,
    /// Where the node it waited on saw room (spillback): placement tries
    /// that node first.
    pub(super) spilled_to: Mutex<Option<NodeId>>,
}

impl Task {
    pub(crate) fn new(spec: TaskSpec, body: Arc<dyn TaskBody>, stats: Arc<FunctionStats>) -> Self {
        let resources = spec.options.needs();
        Self {
            needs: Units::of(&resources),
            resources,
            spec,
            body,
            handle: Mutex::new(None),
            job: Mutex::new(None),
            stats,
            stopped: AtomicBool::new(false),
            parent: tracing::Span::current(),
            submitted: Instant::now(),
            attempt: AtomicU32::new(0),
            started_us: AtomicU64::new(0),
            ended_us: AtomicU64::new(0),
            elsewhere: Mutex::new(None),
            excluded: Mutex::new(Vec::new()),
            last_failure: Mutex::new(None),
            delegated: AtomicBool::new(false),
            waiting_since: AtomicU64::new(0),
            spilled_to: Mutex::new(None),
        }
    }

    /// The task as the state API shows it, in `state`.
    pub(super) fn info(&self, state: TaskState, here: NodeId, clock: &Clock) -> TaskInfo {
        let attempt = self.attempt.load(Ordering::Acquire);
        let at = |n: &AtomicU64| Some(n.load(Ordering::Acquire)).filter(|us| *us > 0);
        let elsewhere = if self.delegated.load(Ordering::Acquire) {
            *self.elsewhere.lock().unwrap_or_else(|e| e.into_inner())
        } else {
            None
        };
        TaskInfo {
            id: self.spec.id,
            function: self.spec.function.clone(),
            state,
            attempt: attempt.max(u32::from(!state.is_final())),
            node: elsewhere.or((attempt > 0).then_some(here)),
            error: None,
            submitted_at_us: clock.unix_us(self.submitted),
            started_at_us: at(&self.started_us),
            ended_at_us: state
                .is_final()
                .then(|| at(&self.ended_us).unwrap_or_else(|| clock.now_us())),
        }
    }

    pub(super) fn set_handle(&self, handle: AbortHandle) {
        *self.handle.lock().unwrap_or_else(|e| e.into_inner()) = Some(handle);
        // Stopped while it was being started: stop it now.
        if self.stopped.load(Ordering::Acquire) {
            self.abort();
        }
    }

    pub(super) fn abort(&self) {
        self.stopped.store(true, Ordering::Release);
        if let Some(handle) = self.handle.lock().unwrap_or_else(|e| e.into_inner()).take() {
            handle.abort();
        }
    }

    pub(super) fn error(&self, why: GiveUp) -> TaskError {
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
                Failure::Lost(node, reason) => TaskError::Failed {
                    task,
                    id,
                    attempts,
                    cause: TaskCause::Lost { node, reason },
                },
                Failure::Dependency(dependency, cause) => {
                    TaskError::dependency_failed(task, id, dependency, cause)
                }
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
    fn first_attempt(&self) -> u32 {
        self.0.spec.attempt.max(1)
    }
}
