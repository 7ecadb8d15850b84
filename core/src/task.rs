//! Remote functions (tasks): ids, options, arguments, errors, context.
//!
//! `#[troupe::remote]` on a function generates `f::remote(&rt, args..)` and
//! `f::options(TaskOptions)`; each call submits a task to the node's
//! scheduler and returns an [`ObjectRef`] to its result at once. Arguments
//! are values or refs ([`IntoArg`]); refs are resolved before the body runs,
//! so tasks chain into DAGs.

use std::collections::BTreeMap;
use std::fmt;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, Weak};

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use troupe_objects::{Completer, NodeId, Object, ObjectError, ObjectId, ObjectRef, ObjectStore};

use crate::error::panic_message;
use crate::Resources;

/// A task, unique across nodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct TaskId {
    /// The node that submitted it.
    pub node: NodeId,
    /// Its number there.
    pub seq: u64,
}

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "task-{}-{}", self.node, self.seq)
    }
}

/// How to run a task (Ray's `.options(...)`). Serializable, so that the
/// cluster can carry it unchanged.
///
/// ```
/// use troupe_core::task::TaskOptions;
/// let opts = TaskOptions::default().num_cpus(2.0).max_retries(0).retry_exceptions(true);
/// assert_eq!(opts.needs().num_cpus, 2.0);
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskOptions {
    num_cpus: f64,
    num_gpus: f64,
    memory: u64,
    resources: BTreeMap<String, f64>,
    max_retries: u32,
    retry_exceptions: bool,
}

impl Default for TaskOptions {
    /// One CPU, three retries for panics, none for errors (as Ray).
    fn default() -> Self {
        Self {
            num_cpus: 1.0,
            num_gpus: 0.0,
            memory: 0,
            resources: BTreeMap::new(),
            max_retries: 3,
            retry_exceptions: false,
        }
    }
}

impl TaskOptions {
    /// CPUs held while running (default 1; 0 runs outside the CPU limit).
    pub fn num_cpus(mut self, n: f64) -> Self {
        self.num_cpus = n;
        self
    }

    /// GPUs held while running (fractions share a device).
    pub fn num_gpus(mut self, n: f64) -> Self {
        self.num_gpus = n;
        self
    }

    /// Memory in bytes held while running.
    pub fn memory(mut self, bytes: u64) -> Self {
        self.memory = bytes;
        self
    }

    /// A custom resource held while running.
    pub fn resource(mut self, name: impl Into<String>, amount: f64) -> Self {
        self.resources.insert(name.into(), amount);
        self
    }

    /// Attempts after the first when the body panics (default 3), or also
    /// when it returns `Err` with `retry_exceptions`.
    pub fn max_retries(mut self, n: u32) -> Self {
        self.max_retries = n;
        self
    }

    /// Retry `Err` results too (default: only panics are retried).
    pub fn retry_exceptions(mut self, yes: bool) -> Self {
        self.retry_exceptions = yes;
        self
    }

    /// What the task needs from a node.
    pub fn needs(&self) -> Resources {
        Resources {
            num_cpus: self.num_cpus,
            num_gpus: self.num_gpus,
            memory: self.memory,
            custom: self.resources.clone(),
        }
    }
}

/// What made an attempt fail.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TaskCause {
    /// The body panicked; the panic message.
    Panicked(String),
    /// The body returned `Err`; its text.
    Error(String),
}

impl fmt::Display for TaskCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TaskCause::Panicked(m) => write!(f, "panicked: {m}"),
            TaskCause::Error(e) => write!(f, "returned an error: {e}"),
        }
    }
}

/// Why a task has no result. `get` on its ref returns
/// `ObjectError::Failed` whose cause is this; read it with
/// `err.failure::<TaskError>()`.
#[derive(Debug, thiserror::Error, Clone)]
pub enum TaskError {
    /// Every allowed attempt failed.
    #[error("task {task} ({id}) failed after {attempts} attempt(s); the last {cause}")]
    Failed {
        /// The function's name.
        task: &'static str,
        /// The task.
        id: TaskId,
        /// Attempts made.
        attempts: u32,
        /// The last attempt's failure.
        cause: TaskCause,
    },
    /// An argument's task failed, so this one never ran (never retried).
    #[error("task {task} ({id}) did not run: its argument {dependency} failed: {cause}")]
    DependencyFailed {
        /// The function's name.
        task: &'static str,
        /// The task.
        id: TaskId,
        /// The argument's object.
        dependency: ObjectId,
        /// Why that object has no value.
        #[source]
        cause: ObjectError,
    },
    /// The task needs more than this node has; it can never run here.
    #[error("task {task} ({id}) needs {needs:?} but this node has only {node:?}; lower the task's options or add a node that fits")]
    Infeasible {
        /// The function's name.
        task: &'static str,
        /// The task.
        id: TaskId,
        /// What it asked for.
        needs: Resources,
        /// What the node has in all.
        node: Resources,
    },
    /// The task's resource options make no sense (negative, or GPUs that
    /// mix whole and partial devices); it was not run.
    #[error("task {task} ({id}) has invalid resource options: {reason}")]
    InvalidResources {
        /// The function's name.
        task: &'static str,
        /// The task.
        id: TaskId,
        /// What is wrong and what to change.
        reason: String,
    },
    /// The task was cancelled (`Runtime::cancel`); it is never retried.
    #[error("task {task} ({id}) was cancelled")]
    Cancelled {
        /// The function's name.
        task: &'static str,
        /// The task.
        id: TaskId,
    },
    /// The runtime shut down before the task finished.
    #[error("task {task} ({id}) was abandoned: the runtime shut down")]
    ShutDown {
        /// The function's name.
        task: &'static str,
        /// The task.
        id: TaskId,
    },
    /// The result could not be stored (larger than the store's budget).
    #[error("task {task} ({id}) produced a result that could not be stored: {cause}")]
    ResultNotStored {
        /// The function's name.
        task: &'static str,
        /// The task.
        id: TaskId,
        /// The store's error.
        cause: ObjectError,
    },
}

impl TaskError {
    /// Follows failed arguments back to the task where the failure began.
    pub fn root_cause(&self) -> &TaskError {
        let mut current = self;
        while let TaskError::DependencyFailed { cause, .. } = current {
            match cause.failure::<TaskError>() {
                Some(inner) => current = inner,
                None => break,
            }
        }
        current
    }
}

/// How one attempt ended. Internal to the scheduler.
#[doc(hidden)]
pub enum Attempt {
    Done,
    Failed(Failure),
}

/// Why one attempt failed. Used by code `#[troupe::remote]` generates.
#[doc(hidden)]
#[derive(Debug, Clone)]
pub enum Failure {
    Panicked(String),
    Error(String),
    Dependency(ObjectId, ObjectError),
    Store(ObjectError),
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Panicked(m) => write!(f, "panicked: {m}"),
            Failure::Error(e) => write!(f, "returned an error: {e}"),
            Failure::Dependency(id, e) => write!(f, "argument {id} failed: {e}"),
            Failure::Store(e) => write!(f, "result not stored: {e}"),
        }
    }
}

/// Where a task runs, readable from its body with [`current`].
#[derive(Clone, Debug, PartialEq)]
pub struct TaskContext {
    /// The task.
    pub task_id: TaskId,
    /// Which attempt this is (1 for the first).
    pub attempt: u32,
    /// The node running it.
    pub node: NodeId,
    /// What it holds while it runs.
    pub resources: Resources,
    /// The GPUs it was given, by ordinal (Ray's `get_gpu_ids()`): empty
    /// unless it asked for `num_gpus`. A fraction shares one device.
    pub gpu_ids: Vec<u32>,
}

/// What a running attempt knows about itself: its context, and (weakly,
/// to avoid a cycle) the runtime that runs it.
#[derive(Clone)]
pub(crate) struct Current {
    pub(crate) context: TaskContext,
    pub(crate) runtime: Weak<crate::runtime::Inner>,
}

tokio::task_local! {
    pub(crate) static CONTEXT: Current;
}

thread_local! {
    static BLOCKING_CONTEXT: std::cell::RefCell<Option<Current>> = const { std::cell::RefCell::new(None) };
}

fn with_current<T>(f: impl Fn(&Current) -> T) -> Option<T> {
    CONTEXT
        .try_with(&f)
        .ok()
        .or_else(|| BLOCKING_CONTEXT.with(|c| c.borrow().as_ref().map(&f)))
}

/// The context of the task running this code, if any (async and sync
/// bodies alike).
pub fn current() -> Option<TaskContext> {
    with_current(|c| c.context.clone())
}

/// The runtime running this task, if this code runs in one: how a task
/// body submits further tasks and reads objects (Ray's implicit context).
pub fn runtime() -> Option<crate::Runtime> {
    with_current(|c| c.runtime.upgrade())
        .flatten()
        .map(crate::Runtime::from_inner)
}

/// Runs `f` with `current` as this thread's task.
fn with_blocking_context<T>(current: Current, f: impl FnOnce() -> T) -> T {
    BLOCKING_CONTEXT.with(|c| *c.borrow_mut() = Some(current));
    let out = f();
    BLOCKING_CONTEXT.with(|c| *c.borrow_mut() = None);
    out
}

/// A task argument: a value, or a ref resolved before the body runs.
#[derive(Debug)]
pub enum Arg<T> {
    /// Passed as is.
    Value(T),
    /// Resolved (waited for, then cloned out of the store) before the body
    /// runs. Refs nested inside values are not resolved.
    Ref(ObjectRef<T>),
}

impl<T: Clone> Clone for Arg<T> {
    fn clone(&self) -> Self {
        match self {
            Arg::Value(v) => Arg::Value(v.clone()),
            Arg::Ref(r) => Arg::Ref(r.clone()),
        }
    }
}

/// What a remote function's parameter of type `T` accepts: a `T`, an
/// `ObjectRef<T>`, or a `&ObjectRef<T>`.
pub trait IntoArg<T> {
    /// Converts.
    fn into_arg(self) -> Arg<T>;
}

impl<T> IntoArg<T> for T {
    fn into_arg(self) -> Arg<T> {
        Arg::Value(self)
    }
}

impl<T> IntoArg<T> for ObjectRef<T> {
    fn into_arg(self) -> Arg<T> {
        Arg::Ref(self)
    }
}

impl<T> IntoArg<T> for &ObjectRef<T> {
    fn into_arg(self) -> Arg<T> {
        Arg::Ref(self.clone())
    }
}

impl<T: Object + Clone> Arg<T> {
    /// The object this argument waits for, if it is a ref.
    pub fn dependency(&self) -> Option<ObjectId> {
        match self {
            Arg::Value(_) => None,
            Arg::Ref(r) => Some(r.id()),
        }
    }

    /// The value for one attempt of a sync body. The scheduler launches a
    /// task only once its arguments are settled, so this never waits.
    #[doc(hidden)]
    pub fn resolve_now(&self, store: &ObjectStore) -> Result<T, Failure> {
        match self {
            Arg::Value(v) => Ok(v.clone()),
            Arg::Ref(r) => match store.try_get(r) {
                Some(Ok(value)) => {
                    Ok(Arc::try_unwrap(value).unwrap_or_else(|shared| (*shared).clone()))
                }
                Some(Err(err)) => Err(Failure::Dependency(r.id(), err)),
                // Unreachable by the launch rule; a clear error all the same.
                None => Err(Failure::Dependency(
                    r.id(),
                    ObjectError::ProducerDropped(r.id()),
                )),
            },
        }
    }

    /// The value for one attempt (each attempt gets its own).
    #[doc(hidden)]
    pub async fn resolve(&self, store: &ObjectStore) -> Result<T, Failure> {
        match self {
            Arg::Value(v) => Ok(v.clone()),
            Arg::Ref(r) => match store.get(r).await {
                Ok(value) => Ok(Arc::try_unwrap(value).unwrap_or_else(|shared| (*shared).clone())),
                Err(err) => Err(Failure::Dependency(r.id(), err)),
            },
        }
    }
}

/// One attempt, ready to run: on the async workers, or on a CPU thread.
pub(crate) enum Launch {
    Async(BoxFuture<'static, Attempt>),
    Blocking(Box<dyn FnOnce() -> Attempt + Send>),
}

/// A submitted task with its types erased, as the scheduler holds it.
pub(crate) trait TaskRun: Send + Sync + 'static {
    fn name(&self) -> &'static str;
    fn needs(&self) -> &Resources;
    fn attempt(self: Arc<Self>, current: Current) -> Launch;
    /// Whether a failed attempt number `attempt` is retried.
    fn retries(&self, failure: &Failure, attempt: u32) -> bool;
    fn error(&self, id: TaskId, attempts: u32, failure: Failure) -> TaskError;
    /// Fails the task's result objects for good.
    fn give_up(&self, err: TaskError);
    /// The objects its value goes to (one per `num_returns`).
    fn results(&self) -> &[ObjectId];
}

/// Where a task's value goes: one object, or one per element of a tuple
/// (`num_returns`). Used by generated code.
#[doc(hidden)]
pub trait Outputs<R>: Send + 'static {
    /// Stores the value(s); the first store error, if any.
    fn complete(self, value: R) -> Result<(), ObjectError>;
    /// Fails every output with `err`.
    fn fail(self, err: Arc<TaskError>);
}

impl<R: Object> Outputs<R> for Completer<R> {
    fn complete(self, value: R) -> Result<(), ObjectError> {
        Completer::complete(self, value)
    }

    fn fail(self, err: Arc<TaskError>) {
        Completer::fail(self, err);
    }
}

/// A tuple returned as one object per element (`num_returns`). Used by
/// generated code.
#[doc(hidden)]
pub trait Returns: Sized + Send + 'static {
    /// One ref per element.
    type Refs;
    /// One completer per element.
    type Outputs: Outputs<Self>;
    /// Makes the pending objects.
    fn pending(store: &ObjectStore) -> (Self::Refs, Self::Outputs, Vec<ObjectId>);
}

macro_rules! tuple_returns {
    ($(($T:ident, $i:tt)),+) => {
        impl<$($T: Object),+> Outputs<($($T,)+)> for ($(Completer<$T>,)+) {
            fn complete(self, value: ($($T,)+)) -> Result<(), ObjectError> {
                let mut first = Ok(());
                $(
                    if let Err(err) = self.$i.complete(value.$i) {
                        if first.is_ok() {
                            first = Err(err);
                        }
                    }
                )+
                first
            }

            fn fail(self, err: Arc<TaskError>) {
                $( self.$i.fail(err.clone()); )+
            }
        }

        impl<$($T: Object),+> Returns for ($($T,)+) {
            type Refs = ($(ObjectRef<$T>,)+);
            type Outputs = ($(Completer<$T>,)+);

            fn pending(store: &ObjectStore) -> (Self::Refs, Self::Outputs, Vec<ObjectId>) {
                let made = ($(store.pending::<$T>(),)+);
                let ids = vec![$(made.$i.0.id()),+];
                (($(made.$i.0,)+), ($(made.$i.1,)+), ids)
            }
        }
    };
}

tuple_returns!((A, 0), (B, 1));
tuple_returns!((A, 0), (B, 1), (C, 2));
tuple_returns!((A, 0), (B, 1), (C, 2), (D, 3));

/// A task's body: async (runs on the workers) or sync (runs on a CPU
/// thread, where it may block).
pub(crate) enum Body<A, S> {
    Async(Arc<A>),
    Blocking(Arc<S>),
}

pub(crate) struct Task<R, O, A, S> {
    pub(crate) name: &'static str,
    pub(crate) options: TaskOptions,
    pub(crate) needs: Resources,
    pub(crate) body: Body<A, S>,
    pub(crate) outputs: Mutex<Option<O>>,
    pub(crate) results: Vec<ObjectId>,
    pub(crate) _value: std::marker::PhantomData<fn() -> R>,
}

impl<R, O: Outputs<R>, A, S> Task<R, O, A, S> {
    /// Stores a successful attempt's value.
    fn store(&self, outcome: Result<R, Failure>) -> Attempt {
        match outcome {
            Ok(value) => {
                let outputs = self
                    .outputs
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .take();
                match outputs.map(|o| o.complete(value)) {
                    Some(Err(err)) => Attempt::Failed(Failure::Store(err)),
                    _ => Attempt::Done,
                }
            }
            Err(failure) => Attempt::Failed(failure),
        }
    }
}

impl<R, O, A, S> TaskRun for Task<R, O, A, S>
where
    R: Send + 'static,
    O: Outputs<R>,
    A: Fn(TaskContext) -> BoxFuture<'static, Result<R, Failure>> + Send + Sync + 'static,
    S: Fn(&TaskContext) -> Result<R, Failure> + Send + Sync + 'static,
{
    fn name(&self) -> &'static str {
        self.name
    }

    fn needs(&self) -> &Resources {
        &self.needs
    }

    fn attempt(self: Arc<Self>, current: Current) -> Launch {
        match &self.body {
            Body::Async(body) => {
                let body = body.clone();
                let context = current.context;
                Launch::Async(Box::pin(async move {
                    let outcome = body(context).await;
                    self.store(outcome)
                }))
            }
            Body::Blocking(body) => {
                let body = body.clone();
                Launch::Blocking(Box::new(move || {
                    let context = current.context.clone();
                    let outcome = with_blocking_context(current, || {
                        std::panic::catch_unwind(AssertUnwindSafe(|| body(&context)))
                    });
                    match outcome {
                        Ok(outcome) => self.store(outcome),
                        Err(payload) => {
                            Attempt::Failed(Failure::Panicked(panic_message(payload.as_ref())))
                        }
                    }
                }))
            }
        }
    }

    fn retries(&self, failure: &Failure, attempt: u32) -> bool {
        let retryable = match failure {
            Failure::Panicked(_) => true,
            Failure::Error(_) => self.options.retry_exceptions,
            Failure::Dependency(..) | Failure::Store(_) => false,
        };
        retryable && attempt <= self.options.max_retries
    }

    fn error(&self, id: TaskId, attempts: u32, failure: Failure) -> TaskError {
        let task = self.name;
        match failure {
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
            Failure::Dependency(dependency, cause) => TaskError::DependencyFailed {
                task,
                id,
                dependency,
                cause,
            },
            Failure::Store(cause) => TaskError::ResultNotStored { task, id, cause },
        }
    }

    fn give_up(&self, err: TaskError) {
        let outputs = self
            .outputs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(outputs) = outputs {
            outputs.fail(Arc::new(err));
        }
    }

    fn results(&self) -> &[ObjectId] {
        &self.results
    }
}

/// The refs a generator task yields, in order, as it produces them (Ray's
/// `ObjectRefGenerator`). Made by `#[troupe::remote(generator)]`.
///
/// `next().await` gives `Some(Ok(ref))` per item, then `Some(Err(e))` once
/// if the task failed, then `None`.
pub struct ObjectStream<T> {
    items: tokio::sync::mpsc::UnboundedReceiver<ObjectRef<T>>,
    done: ObjectRef<()>,
    store: ObjectStore,
    ended: bool,
    failure: Option<ObjectError>,
}

impl<T> ObjectStream<T> {
    /// The task's completion: pass it to `Runtime::cancel` to stop the
    /// generator, or `get` it to wait for the end.
    pub fn completion(&self) -> &ObjectRef<()> {
        &self.done
    }

    /// The next item's ref, waiting for the generator to yield it.
    pub async fn next(&mut self) -> Option<Result<ObjectRef<T>, ObjectError>> {
        loop {
            // Items yielded before the end come first, always.
            if let Ok(item) = self.items.try_recv() {
                return Some(Ok(item));
            }
            if self.ended {
                return self.failure.take().map(Err);
            }
            let end = tokio::select! {
                biased;
                item = self.items.recv() => match item {
                    Some(item) => return Some(Ok(item)),
                    // The sink is gone: the task has ended.
                    None => self.store.get(&self.done).await,
                },
                end = self.store.get(&self.done) => end,
            };
            self.ended = true;
            self.failure = end.err();
        }
    }

    /// Collects every item's ref (until the end, or the first error).
    pub async fn collect(mut self) -> Result<Vec<ObjectRef<T>>, ObjectError> {
        let mut out = Vec::new();
        while let Some(item) = self.next().await {
            out.push(item?);
        }
        Ok(out)
    }
}

/// A remote function as registered under its stable name, so that a node
/// running the same binary can run it from its name and encoded arguments
/// (`Runtime::submit_by_name`). `#[troupe::remote]` registers every
/// single-result function; generators and `num_returns` functions are not
/// registered yet.
pub struct RemoteFunction {
    /// The stable name (`f::NAME`: the function's module path).
    pub name: &'static str,
    /// Decodes the arguments (a postcard-encoded tuple of the parameters'
    /// values, refs as ids) and submits the task on `rt`.
    #[doc(hidden)]
    pub submit: fn(
        &crate::Runtime,
        TaskOptions,
        &[u8],
    ) -> Result<troupe_objects::AnyObjectRef, ByNameError>,
}

inventory::collect!(RemoteFunction);

/// The registered remote function named `name`.
pub fn remote_function(name: &str) -> Option<&'static RemoteFunction> {
    inventory::iter::<RemoteFunction>
        .into_iter()
        .find(|f| f.name == name)
}

/// Submitting by name failed before the task ran.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum ByNameError {
    /// No remote function has that name in this binary.
    #[error("no remote function named {0:?} in this binary; is the node running the same build?")]
    Unknown(String),
    /// The arguments did not decode as the function's parameters.
    #[error("the arguments for {name} did not decode as its parameters: {cause}")]
    BadArguments {
        /// The function.
        name: &'static str,
        /// What the decoder said.
        cause: String,
    },
}

/// Where a generator task puts what it yields. Used by generated code.
#[doc(hidden)]
pub struct StreamSink<T> {
    store: ObjectStore,
    items: tokio::sync::mpsc::UnboundedSender<ObjectRef<T>>,
    /// Items handed out so far: a retried attempt skips them (Ray's rule:
    /// generators are assumed deterministic).
    yielded: std::sync::atomic::AtomicUsize,
}

impl<T: Object> StreamSink<T> {
    /// Runs one attempt's iterator, storing and sending each new item.
    pub fn run(&self, items: impl Iterator<Item = T>) -> Result<(), Failure> {
        use std::sync::atomic::Ordering;
        let already = self.yielded.load(Ordering::Acquire);
        for (n, item) in items.enumerate() {
            if n < already {
                continue;
            }
            let r = self.store.put(item).map_err(Failure::Store)?;
            self.yielded.store(n + 1, Ordering::Release);
            // A dropped stream only means nobody reads: keep the semantics
            // of a task (run to the end) regardless.
            let _ = self.items.send(r);
        }
        Ok(())
    }
}

impl<T: Object> StreamSink<T> {
    /// Runs one attempt's async stream, storing and sending each new item.
    pub async fn run_stream(&self, items: impl futures::Stream<Item = T>) -> Result<(), Failure> {
        use futures::StreamExt;
        use std::sync::atomic::Ordering;
        let already = self.yielded.load(Ordering::Acquire);
        let mut items = std::pin::pin!(items.enumerate());
        while let Some((n, item)) = items.next().await {
            if n < already {
                continue;
            }
            let r = self.store.put(item).map_err(Failure::Store)?;
            self.yielded.store(n + 1, Ordering::Release);
            let _ = self.items.send(r);
        }
        Ok(())
    }
}

/// A stream and its sink, for a generator task. Used by generated code.
#[doc(hidden)]
pub fn stream<T: Object>(
    store: &ObjectStore,
) -> (
    Arc<StreamSink<T>>,
    impl FnOnce(ObjectRef<()>) -> ObjectStream<T>,
) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let sink = Arc::new(StreamSink {
        store: store.clone(),
        items: tx,
        yielded: std::sync::atomic::AtomicUsize::new(0),
    });
    let store = store.clone();
    let finish = move |done: ObjectRef<()>| ObjectStream {
        items: rx,
        done,
        store,
        ended: false,
        failure: None,
    };
    (sink, finish)
}
