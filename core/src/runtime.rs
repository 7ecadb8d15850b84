//! The runtime: a supervision tree with a system subtree and a user subtree.
//!
//! ```text
//! root (rest_for_one)
//! ├── system (one_for_one)
//! │   ├── object_store          keeps the store within its memory budget
//! │   └── scheduler             admits tasks; attempts report to its core
//! └── user   (dynamic, per-actor restart caps)
//!     ├── Host<Counter>#1       one per spawned actor
//!     └── your supervisor trees
//! ```
//!
//! Rest-for-one at the root: if the system subtree fails, the user subtree,
//! which depends on it, is restarted after it; a user failure never restarts
//! the system.

use std::any::Any;
use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use dashmap::DashMap;
use tokio::sync::broadcast;

use troupe_objects::{NodeId, Object, ObjectError, ObjectRef, ObjectStore, StoreConfig};

use crate::actor::{Actor, ActorHandle, ActorInfo, ActorOptions, Factory, Limit, Slot};
use crate::error::{LookupError, ShutdownError, SpawnError, SupervisorError};
use crate::object_store::ObjectStoreActor;
use crate::scheduler::{Queued, Reservation, ReserveError, SchedulerActor, SchedulerCore, Units};
use crate::supervisor::{
    ChildExit, ChildSpec, EventBus, Restart, Shutdown, StartContext, Strategy, SupervisionEvent,
    Supervisor, SupervisorRef, SupervisorSpec,
};
use crate::task::{Body, Failure, Outputs, Returns, Task, TaskContext, TaskId, TaskOptions};
use crate::{GpuDetector, GpuInfo, Resources};
use futures::future::BoxFuture;
use troupe_objects::ObjectId;

/// How to start a runtime.
///
/// ```
/// use std::time::Duration;
/// let config = troupe_core::Config::default()
///     .name("my-service")
///     .shutdown_timeout(Duration::from_secs(2));
/// assert!(config.resources.num_cpus >= 1.0);
/// ```
#[derive(Clone, Debug)]
pub struct Config {
    /// A label for logs and metrics.
    pub name: String,
    /// What this node offers to the scheduler. Default: every core, no GPU.
    pub resources: Resources,
    /// How long `shutdown` waits for the ordered stop before killing.
    pub shutdown_timeout: Duration,
    /// Supervision events kept for slow subscribers.
    pub event_capacity: usize,
    /// Worker threads of the tokio runtime that `Runtime::start` builds
    /// (default: one per core). Ignored by `init`, which uses yours.
    pub worker_threads: Option<usize>,
    /// The object store: memory budget, spill threshold and directory.
    pub objects: StoreConfig,
    /// Finds the node's GPUs at start (the `gpu` crate's libtorch detector,
    /// say); they replace `resources.num_gpus`. Without one, the node has
    /// `resources.num_gpus` GPUs as declared (ordinals `0..n`), which is how
    /// tests exercise GPU placement on machines without GPUs.
    pub gpu_detector: Option<Arc<dyn GpuDetector>>,
}

impl Default for Config {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Self {
            name: "troupe".to_owned(),
            resources: Resources::cpus(cores as f64),
            shutdown_timeout: Duration::from_secs(10),
            event_capacity: 1024,
            worker_threads: None,
            objects: StoreConfig::default(),
            gpu_detector: None,
        }
    }
}

impl Config {
    /// Sets the name.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Sets the node's resources.
    pub fn resources(mut self, resources: Resources) -> Self {
        self.resources = resources;
        self
    }

    /// Sets the shutdown deadline.
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.shutdown_timeout = timeout;
        self
    }

    /// Sets the object store's settings.
    pub fn objects(mut self, objects: StoreConfig) -> Self {
        self.objects = objects;
        self
    }

    /// Detects the node's GPUs with `detector` when the runtime starts.
    pub fn gpu_detector(mut self, detector: impl GpuDetector) -> Self {
        self.gpu_detector = Some(Arc::new(detector));
        self
    }

    /// Sets the worker threads of an owned tokio runtime.
    pub fn worker_threads(mut self, n: usize) -> Self {
        self.worker_threads = Some(n.max(1));
        self
    }
}

struct Named {
    type_name: &'static str,
    id: u64,
    slot: Arc<dyn Any + Send + Sync>,
}

type Names = DashMap<String, Named>;

/// A tokio runtime the Troupe runtime built for itself (`Runtime::start`).
struct OwnedTokio(Option<tokio::runtime::Runtime>);

impl Drop for OwnedTokio {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            // Dropping a runtime inside async code panics; this never blocks.
            rt.shutdown_background();
        }
    }
}

pub(crate) struct Inner {
    config: Config,
    gpus: Vec<GpuInfo>,
    root: SupervisorRef,
    system: Arc<ArcSwapOption<SupervisorRef>>,
    user: Arc<ArcSwapOption<SupervisorRef>>,
    names: Arc<Names>,
    events: EventBus,
    objects: ObjectStore,
    scheduler: Arc<SchedulerCore>,
    next_task: AtomicU64,
    next_actor_id: AtomicU64,
    shut_down: AtomicBool,
    started_in: Duration,
    handle: tokio::runtime::Handle,
    // Last field: dropped after everything that may still use it.
    _tokio: OwnedTokio,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if !self.shut_down.load(Ordering::Acquire) {
            // Dropped without `shutdown`: stop the tree in the background
            // rather than leave actors running with no way to reach them.
            self.root.cell().stop(Some("runtime dropped".into()));
        }
    }
}

/// A handle to a running Troupe runtime. Cheap to clone; all clones share it.
///
/// Several runtimes can live in one process: names, events and actors are
/// per runtime. ractor's process-wide state (its actor-id counter, pid
/// registry and the lock it links actors under) is shared; Troupe registers
/// nothing in ractor's global name registry.
#[derive(Clone)]
pub struct Runtime {
    inner: Arc<Inner>,
}

impl fmt::Debug for Runtime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Runtime")
            .field("name", &self.inner.config.name)
            .finish_non_exhaustive()
    }
}

/// Boots a runtime inside the current tokio runtime (embedding).
///
/// ```
/// # #[tokio::main] async fn main() {
/// let rt = troupe_core::init(troupe_core::Config::default()).await.unwrap();
/// rt.shutdown().await.unwrap();
/// # }
/// ```
pub async fn init(config: Config) -> Result<Runtime, SpawnError> {
    boot(config, OwnedTokio(None)).await
}

fn publishing(spec: SupervisorSpec, into: Arc<ArcSwapOption<SupervisorRef>>) -> ChildSpec {
    let id = spec.name.clone();
    ChildSpec::from_fn(id, move |ctx: StartContext| {
        let spec = spec.clone();
        let into = into.clone();
        async move {
            let sup = Supervisor::spawn_linked(spec, ctx.supervisor).await?;
            let cell = sup.cell();
            into.store(Some(Arc::new(sup)));
            Ok(cell)
        }
    })
    .shutdown(Shutdown::Infinity)
}

/// The node's GPUs: detected, or as declared by `resources.num_gpus`.
fn node_gpus(config: &mut Config) -> Result<Vec<GpuInfo>, SpawnError> {
    config
        .resources
        .validate()
        .map_err(SpawnError::InvalidResources)?;
    let gpus = match &config.gpu_detector {
        Some(detector) => detector.detect().map_err(SpawnError::GpuDetection)?,
        None => (0..config.resources.num_gpus as u32)
            .map(|ordinal| GpuInfo {
                ordinal,
                name: "declared".to_owned(),
                memory_bytes: None,
            })
            .collect(),
    };
    config.resources.num_gpus = gpus.len() as f64;
    for gpu in &gpus {
        tracing::info!(ordinal = gpu.ordinal, name = %gpu.name, memory_bytes = ?gpu.memory_bytes, "GPU");
    }
    metrics::gauge!("troupe_node_gpus").set(gpus.len() as f64);
    Ok(gpus)
}

async fn boot(mut config: Config, tokio: OwnedTokio) -> Result<Runtime, SpawnError> {
    let began = Instant::now();
    let gpus = node_gpus(&mut config)?;
    let events = EventBus::new(config.event_capacity);
    let system = Arc::new(ArcSwapOption::empty());
    let user = Arc::new(ArcSwapOption::empty());
    let objects = ObjectStore::with_node(NodeId::random(), config.objects.clone());
    let scheduler = Arc::new(SchedulerCore::new(
        &config.resources,
        objects.clone(),
        tokio::runtime::Handle::current(),
    ));
    let system_spec = SupervisorSpec::new("system", Strategy::OneForOne)
        .events(events.clone())
        .child(ChildSpec::new(
            "object_store",
            ObjectStoreActor {
                store: objects.clone(),
            },
            (),
        ))
        .child(ChildSpec::new(
            "scheduler",
            SchedulerActor {
                core: scheduler.clone(),
            },
            (),
        ));
    let root_spec = SupervisorSpec::new("root", Strategy::RestForOne)
        .events(events.clone())
        .child(publishing(system_spec, system.clone()))
        .child(publishing(
            // Each user actor carries its own restart cap (max_restarts), so
            // one crash-looping actor cannot take the others down with it.
            SupervisorSpec::dynamic("user")
                .unlimited_intensity()
                .events(events.clone()),
            user.clone(),
        ));
    let root = Supervisor::spawn(root_spec).await?;
    let started_in = began.elapsed();
    tracing::info!(runtime = %config.name, ?started_in, "runtime started");
    let runtime = Runtime {
        inner: Arc::new(Inner {
            config,
            gpus,
            root,
            system,
            user,
            names: Arc::new(DashMap::new()),
            events,
            objects,
            scheduler,
            next_task: AtomicU64::new(0),
            next_actor_id: AtomicU64::new(1),
            shut_down: AtomicBool::new(false),
            started_in,
            handle: tokio::runtime::Handle::current(),
            _tokio: tokio,
        }),
    };
    runtime
        .inner
        .scheduler
        .set_runtime(Arc::downgrade(&runtime.inner));
    Ok(runtime)
}

/// The unused body type of a sync task (a function type, so it names no
/// closure).
type NoAsync<R> = fn(TaskContext) -> futures::future::BoxFuture<'static, Result<R, Failure>>;
/// The unused body type of an async task.
type NoBlocking<R> = fn(&TaskContext) -> Result<R, Failure>;

/// A factory from a plain constructor. It runs inside the host's
/// `pre_start`, where ractor turns a panic into a failed start.
fn factory_of<A, F>(new: F) -> Factory<A>
where
    A: Actor,
    F: Fn() -> A + Send + Sync + 'static,
{
    Arc::new(move || {
        let actor = new();
        Box::pin(async move { Ok(actor) })
    })
}

fn describe(exit: &ChildExit, max_restarts: Limit) -> String {
    match exit {
        ChildExit::Stopped => "it stopped".to_owned(),
        ChildExit::Failed(reason) => format!("it failed and has no restarts (max_restarts = 0): {reason}"),
        ChildExit::RestartsExhausted { restarts, last_error } => format!(
            "it failed after {restarts} restarts and has none left (max_restarts = {:?}): {last_error}",
            max_restarts
        ),
        ChildExit::Terminated => "it was stopped by its supervisor".to_owned(),
    }
}

impl Runtime {
    /// Boots a runtime on a tokio runtime of its own, for plain `fn main`.
    /// Drive async code with [`Runtime::block_on`].
    pub fn start(config: Config) -> Result<Runtime, SpawnError> {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.enable_all().thread_name("troupe-worker");
        if let Some(n) = config.worker_threads {
            builder.worker_threads(n);
        }
        let tokio = builder
            .build()
            .map_err(|e| SpawnError::Tokio(e.to_string()))?;
        let handle = tokio.handle().clone();
        handle.block_on(boot(config, OwnedTokio(Some(tokio))))
    }

    /// Runs a future to completion on the runtime's tokio runtime. Call it
    /// from synchronous code only (it panics inside async code, as tokio's).
    pub fn block_on<F: Future>(&self, future: F) -> F::Output {
        self.inner.handle.block_on(future)
    }

    pub(crate) fn from_inner(inner: Arc<Inner>) -> Self {
        Self { inner }
    }

    /// Inside a task of this runtime that is about to wait: lend its CPUs.
    fn lend_while_waiting(&self) -> Option<crate::scheduler::Lent> {
        let context = crate::task::current()?;
        if context.task_id.node != self.node_id() {
            return None;
        }
        self.inner.scheduler.lend(context.task_id)
    }

    /// The node's GPUs (detected, or declared in the config).
    pub fn gpus(&self) -> &[GpuInfo] {
        &self.inner.gpus
    }

    /// This node's id (it prefixes every object id made here).
    pub fn node_id(&self) -> NodeId {
        self.inner.objects.node()
    }

    /// The node's object store.
    pub fn objects(&self) -> &ObjectStore {
        &self.inner.objects
    }

    /// Stores a value (moved in, not copied) and returns its ref; the object
    /// lives until the last clone of the ref is dropped (Ray's `put`).
    ///
    /// ```
    /// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let rt = troupe_core::init(troupe_core::Config::default()).await?;
    /// let r = rt.put(vec![1.5f32; 1000])?;
    /// assert_eq!(rt.get(&r).await?.len(), 1000);
    /// rt.shutdown().await?;
    /// # Ok(()) }
    /// ```
    pub fn put<T: Object>(&self, value: T) -> Result<ObjectRef<T>, ObjectError> {
        self.inner.objects.put(value)
    }

    /// Reads an object, shared not copied, waiting while it is pending.
    ///
    /// Inside a task, waiting lends the task's CPUs back to the node, so
    /// tasks can wait on tasks without deadlock.
    pub async fn get<T: Object>(&self, r: &ObjectRef<T>) -> Result<Arc<T>, ObjectError> {
        if let Some(ready) = self.inner.objects.try_get(r) {
            return ready;
        }
        let _lent = self.lend_while_waiting();
        self.inner.objects.get(r).await
    }

    /// Reads an object, waiting at most `timeout`.
    pub async fn get_timeout<T: Object>(
        &self,
        r: &ObjectRef<T>,
        timeout: Duration,
    ) -> Result<Arc<T>, ObjectError> {
        if let Some(ready) = self.inner.objects.try_get(r) {
            return ready;
        }
        let _lent = self.lend_while_waiting();
        self.inner.objects.get_timeout(r, Some(timeout)).await
    }

    /// Reads many objects in order, within one optional timeout.
    pub async fn get_many<T: Object>(
        &self,
        refs: &[ObjectRef<T>],
        timeout: Option<Duration>,
    ) -> Result<Vec<Arc<T>>, ObjectError> {
        let _lent = self.lend_while_waiting();
        self.inner.objects.get_many(refs, timeout).await
    }

    /// Ray's `wait`: `(ready, not_ready)` once `num_returns` are ready or
    /// `timeout` passes, each in the order given.
    pub async fn wait<T>(
        &self,
        refs: Vec<ObjectRef<T>>,
        num_returns: usize,
        timeout: Option<Duration>,
    ) -> (Vec<ObjectRef<T>>, Vec<ObjectRef<T>>) {
        let _lent = self.lend_while_waiting();
        self.inner.objects.wait(refs, num_returns, timeout).await
    }

    /// Reads an object from synchronous code that may block: a sync task
    /// body, or a plain thread. Not from async code (use `get`).
    pub fn get_blocking<T: Object>(&self, r: &ObjectRef<T>) -> Result<Arc<T>, ObjectError> {
        match self.inner.objects.try_get(r) {
            Some(result) => result,
            None => {
                let _lent = self.lend_while_waiting();
                self.inner.handle.block_on(self.inner.objects.get(r))
            }
        }
    }

    /// Submits a task with an async body; what `#[troupe::remote]` calls
    /// for an `async fn`. The body runs once per attempt, on the runtime's
    /// workers, after every `deps` object is settled.
    #[doc(hidden)]
    pub fn submit<R, F>(
        &self,
        name: &'static str,
        options: TaskOptions,
        deps: Vec<ObjectId>,
        body: F,
    ) -> ObjectRef<R>
    where
        R: Object,
        F: Fn(TaskContext) -> BoxFuture<'static, Result<R, Failure>> + Send + Sync + 'static,
    {
        let (result, completer) = self.inner.objects.pending::<R>();
        let ids = vec![result.id()];
        self.submit_task::<R, _, F, NoBlocking<R>>(
            name,
            options,
            deps,
            Body::Async(Arc::new(body)),
            completer,
            ids,
        );
        result
    }

    /// Submits a task with a sync body (it may block); what
    /// `#[troupe::remote]` calls for a plain `fn`. The body runs once per
    /// attempt on a CPU thread, never on an async worker.
    #[doc(hidden)]
    pub fn submit_blocking<R, F>(
        &self,
        name: &'static str,
        options: TaskOptions,
        deps: Vec<ObjectId>,
        body: F,
    ) -> ObjectRef<R>
    where
        R: Object,
        F: Fn(&TaskContext) -> Result<R, Failure> + Send + Sync + 'static,
    {
        let (result, completer) = self.inner.objects.pending::<R>();
        let ids = vec![result.id()];
        self.submit_task::<R, _, NoAsync<R>, F>(
            name,
            options,
            deps,
            Body::Blocking(Arc::new(body)),
            completer,
            ids,
        );
        result
    }

    /// [`submit`](Self::submit) for a tuple stored one object per element
    /// (`num_returns`).
    #[doc(hidden)]
    pub fn submit_n<R, F>(
        &self,
        name: &'static str,
        options: TaskOptions,
        deps: Vec<ObjectId>,
        body: F,
    ) -> R::Refs
    where
        R: Returns,
        F: Fn(TaskContext) -> BoxFuture<'static, Result<R, Failure>> + Send + Sync + 'static,
    {
        let (refs, outputs, ids) = R::pending(&self.inner.objects);
        self.submit_task::<R, _, F, NoBlocking<R>>(
            name,
            options,
            deps,
            Body::Async(Arc::new(body)),
            outputs,
            ids,
        );
        refs
    }

    /// [`submit_blocking`](Self::submit_blocking) for a tuple stored one
    /// object per element (`num_returns`).
    #[doc(hidden)]
    pub fn submit_blocking_n<R, F>(
        &self,
        name: &'static str,
        options: TaskOptions,
        deps: Vec<ObjectId>,
        body: F,
    ) -> R::Refs
    where
        R: Returns,
        F: Fn(&TaskContext) -> Result<R, Failure> + Send + Sync + 'static,
    {
        let (refs, outputs, ids) = R::pending(&self.inner.objects);
        self.submit_task::<R, _, NoAsync<R>, F>(
            name,
            options,
            deps,
            Body::Blocking(Arc::new(body)),
            outputs,
            ids,
        );
        refs
    }

    fn submit_task<R, O, A, S>(
        &self,
        name: &'static str,
        options: TaskOptions,
        deps: Vec<ObjectId>,
        body: Body<A, S>,
        outputs: O,
        results: Vec<ObjectId>,
    ) where
        R: Send + 'static,
        O: Outputs<R>,
        A: Fn(TaskContext) -> BoxFuture<'static, Result<R, Failure>> + Send + Sync + 'static,
        S: Fn(&TaskContext) -> Result<R, Failure> + Send + Sync + 'static,
    {
        let id = TaskId {
            node: self.node_id(),
            seq: self.inner.next_task.fetch_add(1, Ordering::Relaxed),
        };
        let needs = options.needs();
        let units = Units::of(&needs);
        let result = results[0];
        let run = Arc::new(Task {
            name,
            options,
            needs,
            body,
            outputs: Mutex::new(Some(outputs)),
            results,
            _value: std::marker::PhantomData,
        });
        self.inner.scheduler.submit(Queued {
            id,
            result,
            needs: units,
            deps,
            run,
            attempt: 1,
        });
    }

    /// Submits the remote function registered as `name` with arguments
    /// encoded (postcard) as a tuple of its parameters' values: how a node
    /// runs a task another node asked for. Refs in the arguments attach to
    /// this node's objects. The returned ref keeps the result alive; read it
    /// with `.typed::<R>()`.
    pub fn submit_by_name(
        &self,
        name: &str,
        options: TaskOptions,
        encoded_args: &[u8],
    ) -> Result<troupe_objects::AnyObjectRef, crate::task::ByNameError> {
        let function = crate::task::remote_function(name)
            .ok_or_else(|| crate::task::ByNameError::Unknown(name.to_owned()))?;
        (function.submit)(self, options, encoded_args)
    }

    /// Cancels the task that produces `result` (Ray's `ray.cancel`). A
    /// queued task, or one waiting for its arguments, is dropped; a running
    /// async body is stopped at its next await; a running sync body cannot
    /// be interrupted in-process, so it runs to its end and its result is
    /// dropped. `get` on the ref then fails with `TaskError::Cancelled`,
    /// and the task is not retried. `force` is accepted for Ray's API: in
    /// one process there is nothing stronger than stopping at the next
    /// await, so both values behave the same. Returns whether an unfinished
    /// task produced `result`.
    pub fn cancel<T>(&self, result: &ObjectRef<T>, force: bool) -> bool {
        let _ = force;
        self.inner.scheduler.cancel(result.id())
    }

    /// Tasks queued (arguments ready), waiting for arguments, and running.
    pub fn task_counts(&self) -> (usize, usize, usize) {
        self.inner.scheduler.counts()
    }

    /// Frees objects now, whatever refs remain.
    pub fn free<T>(&self, refs: &[ObjectRef<T>]) {
        self.inner.objects.free(refs)
    }

    /// The configuration it was started with.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// How long booting the supervision tree took.
    pub fn started_in(&self) -> Duration {
        self.inner.started_in
    }

    /// The root supervisor.
    pub fn root_supervisor(&self) -> &SupervisorRef {
        &self.inner.root
    }

    fn subtree(
        &self,
        which: &ArcSwapOption<SupervisorRef>,
        name: &str,
    ) -> Result<SupervisorRef, SpawnError> {
        if self.is_shut_down() {
            return Err(SpawnError::RuntimeShutDown);
        }
        which
            .load_full()
            .map(|sup| (*sup).clone())
            .filter(SupervisorRef::is_alive)
            .ok_or_else(|| SpawnError::SupervisorDown {
                supervisor: name.to_owned(),
            })
    }

    /// The system subtree (the scheduler and the object store live here).
    pub fn system_supervisor(&self) -> Result<SupervisorRef, SpawnError> {
        self.subtree(&self.inner.system, "system")
    }

    /// The user subtree, parent of spawned actors and trees.
    pub fn user_supervisor(&self) -> Result<SupervisorRef, SpawnError> {
        self.subtree(&self.inner.user, "user")
    }

    /// Whether `shutdown` has been called.
    pub fn is_shut_down(&self) -> bool {
        self.inner.shut_down.load(Ordering::Acquire)
    }

    /// Subscribes to the supervision events of the whole runtime.
    pub fn subscribe(&self) -> broadcast::Receiver<SupervisionEvent> {
        self.inner.events.subscribe()
    }

    /// The runtime's event bus, to give to trees you spawn yourself.
    pub fn events(&self) -> EventBus {
        self.inner.events.clone()
    }

    /// Spawns an actor under the user subtree. `new` builds the instance and
    /// is called again, with the same captured arguments, on each restart.
    /// A panic in `new` is a failed start: the error says so.
    pub async fn spawn_actor<A, F>(
        &self,
        options: ActorOptions,
        new: F,
    ) -> Result<A::Handle, SpawnError>
    where
        A: Actor,
        F: Fn() -> A + Send + Sync + 'static,
    {
        self.spawn_with_factory(options, factory_of(new)).await
    }

    /// Like [`spawn_actor`](Self::spawn_actor) with an async, fallible
    /// constructor; its error fails the start (or the restart).
    pub async fn spawn_actor_with<A, F, Fut, E>(
        &self,
        options: ActorOptions,
        new: F,
    ) -> Result<A::Handle, SpawnError>
    where
        A: Actor,
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<A, E>> + Send + 'static,
        E: fmt::Display,
    {
        let new = Arc::new(new);
        let factory: Factory<A> = Arc::new(move || {
            let fut = new();
            Box::pin(async move { fut.await.map_err(|e| e.to_string()) })
        });
        self.spawn_with_factory(options, factory).await
    }

    async fn spawn_with_factory<A: Actor>(
        &self,
        options: ActorOptions,
        factory: Factory<A>,
    ) -> Result<A::Handle, SpawnError> {
        let user = self.user_supervisor()?;
        // Unnamed actors are collected with their last handle; named ones
        // stay reachable through get_actor, so they live until killed.
        let collect = options.name.is_none();
        let reservation = match self.needs_of(&options)? {
            None => None,
            Some(needs) => {
                let reserved = self.inner.scheduler.reserve(needs).await;
                Some(self.reserved::<A>(&options, reserved)?)
            }
        };
        let (spec, handle) = self.actor_spec(options, factory, collect, reservation)?;
        if !handle.slot().info.gpu_ids.is_empty() {
            tracing::debug!(actor = %handle.slot().info, gpu_ids = ?handle.slot().info.gpu_ids, "actor placed on GPUs");
        }
        match user.start_child(spec).await {
            Ok(_) => Ok(A::Handle::from(handle)),
            Err(err) => {
                let err = match err {
                    SupervisorError::Spawn(e) => e,
                    _ => SpawnError::SupervisorDown {
                        supervisor: user.name().to_owned(),
                    },
                };
                handle.slot().mark_dead(err.to_string());
                Err(err)
            }
        }
    }

    /// A child spec running a typed actor, for your own supervision trees,
    /// and its handle (calls wait until the tree starts it). The name, if
    /// any, is taken now.
    pub fn actor_child<A, F>(
        &self,
        options: ActorOptions,
        new: F,
    ) -> Result<(ChildSpec, A::Handle), SpawnError>
    where
        A: Actor,
        F: Fn() -> A + Send + Sync + 'static,
    {
        let reservation = match self.needs_of(&options)? {
            None => None,
            Some(needs) => {
                let reserved = match self.inner.scheduler.try_reserve(&needs) {
                    Ok(Some(granted)) => Ok(granted),
                    Ok(None) => {
                        return Err(SpawnError::ResourcesBusy {
                            what: std::any::type_name::<A>().to_owned(),
                            needs: options.resources.clone(),
                        })
                    }
                    Err(err) => Err(err),
                };
                Some(self.reserved::<A>(&options, reserved)?)
            }
        };
        let (spec, handle) = self.actor_spec(options, factory_of(new), false, reservation)?;
        Ok((spec, A::Handle::from(handle)))
    }

    /// What an actor's options ask the node to hold, if anything.
    fn needs_of(&self, options: &ActorOptions) -> Result<Option<Units>, SpawnError> {
        options
            .resources
            .validate()
            .map_err(SpawnError::InvalidResources)?;
        let needs = Units::of(&options.resources);
        Ok((!needs.is_zero()).then_some(needs))
    }

    fn reserved<A>(
        &self,
        options: &ActorOptions,
        reserved: Result<Reservation, ReserveError>,
    ) -> Result<Reservation, SpawnError> {
        reserved.map_err(|err| match err {
            ReserveError::ShutDown => SpawnError::RuntimeShutDown,
            ReserveError::Infeasible => SpawnError::Infeasible {
                what: std::any::type_name::<A>().to_owned(),
                needs: options.resources.clone(),
                node: self.inner.scheduler.capacity().clone(),
            },
        })
    }

    fn actor_spec<A: Actor>(
        &self,
        options: ActorOptions,
        factory: Factory<A>,
        collect_on_drop: bool,
        reservation: Option<Reservation>,
    ) -> Result<(ChildSpec, ActorHandle<A>), SpawnError> {
        if self.is_shut_down() {
            return Err(SpawnError::RuntimeShutDown);
        }
        let id = self.inner.next_actor_id.fetch_add(1, Ordering::Relaxed);
        let info = Arc::new(ActorInfo {
            id,
            name: options.name.clone(),
            type_name: std::any::type_name::<A>(),
            node: self.node_id(),
            resources: options.resources.clone(),
            gpu_ids: reservation
                .as_ref()
                .map(Reservation::gpu_ids)
                .unwrap_or_default(),
        });
        let slot = Arc::new(Slot::<A>::new(info.clone(), options.clone()));
        if let Some(reservation) = reservation {
            // Held across restarts; given back once the actor is dead for good.
            slot.on_dead(Box::new(move || drop(reservation)));
        }
        if let Some(name) = &options.name {
            match self.inner.names.entry(name.clone()) {
                dashmap::Entry::Occupied(_) => return Err(SpawnError::NameTaken(name.clone())),
                dashmap::Entry::Vacant(entry) => {
                    entry.insert(Named {
                        type_name: info.type_name,
                        id,
                        slot: slot.clone(),
                    });
                }
            }
            // Weak: the registry holds the slot, so the slot must not hold it.
            let names: Weak<Names> = Arc::downgrade(&self.inner.names);
            let name = name.clone();
            slot.on_dead(Box::new(move || {
                if let Some(names) = names.upgrade() {
                    names.remove_if(&name, |_, named| named.id == id);
                }
            }));
        }

        let start_slot = slot.clone();
        let max_restarts = options.max_restarts;
        let spec = ChildSpec::from_fn(info.to_string(), move |ctx: StartContext| {
            let slot = start_slot.clone();
            let factory = factory.clone();
            async move {
                let host = crate::actor::host_for(slot.clone(), factory);
                let (actor, _) = ractor::Actor::spawn_linked(None, host, (), ctx.supervisor)
                    .await
                    .map_err(|err| crate::supervisor::spawn_failed(&slot.info.to_string(), err))?;
                slot.publish(actor.clone());
                Ok(actor.get_cell())
            }
        })
        .restart(if max_restarts == Limit::Finite(0) {
            Restart::Temporary
        } else {
            Restart::Transient
        })
        // Temporary already means "never restart"; a zero cap would also
        // block restarts the user asks for by overriding the restart type.
        .max_restarts(max_restarts.finite().filter(|max| *max > 0))
        .shutdown(options.shutdown)
        .restart_if({
            let slot = slot.clone();
            move || !slot.no_restart.load(Ordering::Acquire)
        })
        .on_exit({
            let slot = slot.clone();
            move |exit| slot.mark_dead(describe(&exit, max_restarts))
        });
        Ok((spec, ActorHandle::new(slot, collect_on_drop)))
    }

    /// Starts a supervision tree of your own under the user subtree. If it
    /// exceeds its restart intensity it stops (and reports it); nest trees in
    /// one spec to escalate through more levels.
    pub async fn spawn_supervisor(
        &self,
        spec: SupervisorSpec,
    ) -> Result<SupervisorRef, SpawnError> {
        let user = self.user_supervisor()?;
        let spec = if spec.events.is_none() {
            spec.events(self.inner.events.clone())
        } else {
            spec
        };
        let started: Arc<Mutex<Option<SupervisorRef>>> = Arc::new(Mutex::new(None));
        let out = started.clone();
        let child = ChildSpec::from_fn(spec.name.clone(), move |ctx: StartContext| {
            let spec = spec.clone();
            let out = out.clone();
            async move {
                let sup = Supervisor::spawn_linked(spec, ctx.supervisor).await?;
                let cell = sup.cell();
                *out.lock().unwrap_or_else(|e| e.into_inner()) = Some(sup);
                Ok(cell)
            }
        })
        .restart(Restart::Temporary);
        user.start_child(child).await.map_err(|err| match err {
            SupervisorError::Spawn(e) => e,
            _ => SpawnError::SupervisorDown {
                supervisor: user.name().to_owned(),
            },
        })?;
        let sup = started.lock().unwrap_or_else(|e| e.into_inner()).take();
        sup.ok_or(SpawnError::SupervisorDown {
            supervisor: "user".to_owned(),
        })
    }

    /// Looks up a named actor, typed (Ray's `get_actor`).
    pub fn get_actor<A: Actor>(&self, name: &str) -> Result<A::Handle, LookupError> {
        let named = self
            .inner
            .names
            .get(name)
            .ok_or_else(|| LookupError::NotFound(name.to_owned()))?;
        let expected = std::any::type_name::<A>();
        let slot =
            named
                .slot
                .clone()
                .downcast::<Slot<A>>()
                .map_err(|_| LookupError::WrongType {
                    name: name.to_owned(),
                    expected,
                    actual: named.type_name,
                })?;
        Ok(A::Handle::from(ActorHandle::new(slot, false)))
    }

    /// How many actors of this runtime are running now, supervisors
    /// included (0 once shut down).
    pub fn live_actors(&self) -> usize {
        fn count(cell: &ractor::ActorCell) -> usize {
            1 + cell.get_children().iter().map(count).sum::<usize>()
        }
        let root = self.inner.root.cell();
        if root.get_status() > ractor::ActorStatus::Running {
            return 0;
        }
        count(&root)
    }

    /// Stops everything in reverse start order (user actors, then the
    /// system), each child per its shutdown policy. What is still running at
    /// the config's `shutdown_timeout` is killed and reported as an error.
    /// Calling it again is a no-op.
    pub async fn shutdown(&self) -> Result<(), ShutdownError> {
        if self.inner.shut_down.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        let deadline = self.inner.config.shutdown_timeout;
        // Tasks first: queued ones fail with ShutDown, running ones stop.
        self.inner.scheduler.shut_down();
        let in_order = self.inner.root.stop(deadline).await;
        tracing::info!(runtime = %self.inner.config.name, in_order, "runtime shut down");
        if in_order {
            Ok(())
        } else {
            Err(ShutdownError::DeadlineExceeded(deadline))
        }
    }
}
