//! What a task is, as data: its options, its arguments, and the
//! serializable [`TaskSpec`] that the scheduler queues and that another node
//! can receive and run by name.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use troupe_objects::{Encoded, Object, ObjectError, ObjectId, ObjectRef, ObjectStore};

use crate::context::TraceContext;
use crate::ids::{NodeId, TaskId};
use crate::Resources;

/// A registered function's stable name (its module path).
pub type FunctionName = Cow<'static, str>;

/// Where a task or actor may run, when a cluster offers a choice (Ray's
/// `scheduling_strategy`). A single node runs everything that fits it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum SchedulingStrategy {
    /// Here when it fits, else a node that fits (the placement hook's choice).
    #[default]
    Default,
    /// Spread over the nodes that fit.
    Spread,
    /// On `node`; with `soft`, elsewhere when that node cannot run it.
    NodeAffinity {
        /// The node.
        node: NodeId,
        /// Whether another node may run it when this one cannot.
        soft: bool,
    },
    /// In bundle `bundle` of a placement group (with `None`, its bundles in
    /// turn), out of what the bundle holds: on the bundle's node, once the
    /// group is ready (work submitted before waits for it). See
    /// [`TaskOptions::placement_group`].
    PlacementGroup {
        /// The group.
        group: crate::placement_group::PlacementGroupId,
        /// The bundle's index, or any.
        bundle: Option<usize>,
    },
}

/// The most copies [`TaskOptions::replicas`] keeps of a result.
pub const MAX_REPLICAS: u8 = 8;

/// How to run a task (Ray's `.options(...)`). Serializable, so that a task
/// travels to another node unchanged.
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
    strategy: SchedulingStrategy,
    generator_backpressure: u32,
    /// Copies of each large result, on distinct nodes (1: only where made).
    replicas: u8,
    /// Where it was placed from, once renamed into a placement group's
    /// bundle (see [`GroupPlacement`]).
    in_group: Option<Box<GroupPlacement>>,
}

/// A task in a placement group, once its options were renamed into its
/// bundle and pinned to the bundle's node: the group, the bundle asked
/// for and its own needs. Running it again for its lost results places it
/// in the bundle wherever the bundle is by then.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct GroupPlacement {
    group: crate::placement_group::PlacementGroupId,
    /// The bundle asked for (`None`: any).
    bundle: Option<usize>,
    /// The bundle it was renamed into.
    index: usize,
    needs: Resources,
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
            strategy: SchedulingStrategy::Default,
            generator_backpressure: 64,
            replicas: 1,
            in_group: None,
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

    /// Attempts after the first when the body panics or its node dies
    /// (default 3), or also when it returns `Err` with `retry_exceptions`.
    pub fn max_retries(mut self, n: u32) -> Self {
        self.max_retries = n;
        self
    }

    /// Retry `Err` results too (default: only panics are retried).
    pub fn retry_exceptions(mut self, yes: bool) -> Self {
        self.retry_exceptions = yes;
        self
    }

    /// Where it may run, in a cluster.
    pub fn scheduling_strategy(mut self, strategy: SchedulingStrategy) -> Self {
        self.strategy = strategy;
        self
    }

    /// Runs in bundle `bundle` of `group` (`None`: its bundles in turn),
    /// out of what the bundle holds (Ray's
    /// `PlacementGroupSchedulingStrategy`): what it asks for must fit the
    /// bundle.
    ///
    /// ```
    /// # use troupe_core::{Config, Resources};
    /// # use troupe_core::placement_group::PlacementGroupOptions;
    /// # use troupe_core::task::TaskOptions;
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// # let rt = troupe_core::init(Config::default().resources(Resources::cpus(2.0))).await.unwrap();
    /// let group = rt.placement_group(PlacementGroupOptions::new(vec![Resources::cpus(1.0)])).unwrap();
    /// let in_bundle = TaskOptions::default().placement_group(&group, Some(0));
    /// // `f::options(in_bundle).remote(&rt, ..)` runs `f` in bundle 0.
    /// # let _ = in_bundle;
    /// # rt.shutdown().await.unwrap();
    /// # }
    /// ```
    pub fn placement_group(
        self,
        group: &crate::placement_group::PlacementGroup,
        bundle: Option<usize>,
    ) -> Self {
        self.scheduling_strategy(SchedulingStrategy::PlacementGroup {
            group: group.id(),
            bundle,
        })
    }

    /// Renames these options into a bundle of `group` on `node` (`renamed`:
    /// its needs in the bundle's resources), remembering where they came from.
    pub(crate) fn into_bundle(
        mut self,
        group: crate::placement_group::PlacementGroupId,
        (bundle, index): (Option<usize>, usize),
        node: crate::ids::NodeId,
        renamed: Resources,
    ) -> Self {
        self.in_group = Some(Box::new(GroupPlacement {
            group,
            bundle,
            index,
            needs: self.needs(),
        }));
        self.set_needs(renamed);
        self.strategy = SchedulingStrategy::NodeAffinity { node, soft: false };
        self
    }

    /// Options renamed into a bundle ([`into_bundle`](Self::into_bundle))
    /// as they were asked for: in the group, for the bundle wherever it is
    /// now. Others unchanged.
    pub(crate) fn out_of_bundle(mut self) -> Self {
        if let Some(placed) = self.in_group.take() {
            self.set_needs(placed.needs);
            self.strategy = SchedulingStrategy::PlacementGroup {
                group: placed.group,
                bundle: placed.bundle,
            };
        }
        self
    }

    /// The group and bundle these options were renamed into, if any.
    pub(crate) fn bundle(&self) -> Option<(crate::placement_group::PlacementGroupId, usize)> {
        self.in_group.as_ref().map(|p| (p.group, p.index))
    }

    /// The task's needs, renamed into its bundle's resources.
    pub(crate) fn set_needs(&mut self, needs: Resources) {
        self.num_cpus = needs.num_cpus;
        self.num_gpus = needs.num_gpus;
        self.memory = needs.memory;
        self.resources = needs.custom;
    }

    /// For generators: how many yielded items may wait unread before the
    /// generator pauses (default 64; Ray's
    /// `_generator_backpressure_num_objects`). At least 1.
    pub fn generator_backpressure(mut self, items: u32) -> Self {
        self.generator_backpressure = items.max(1);
        self
    }

    /// Copies of each result kept on distinct nodes when it runs on
    /// another node than its owner's (default 1, at most
    /// [`MAX_REPLICAS`]): the node that made it pushes `n - 1` more to
    /// other nodes of the same program before it answers, and the owner
    /// reads from the next copy when a node keeping one dies, so that a
    /// result survives `n - 1` nodes' loss without running again: for a
    /// task with `max_retries = 0`, one that is not deterministic, or one
    /// too costly to run twice. Each copy takes memory on its node until
    /// the last ref is dropped. Small results (up to 100 KiB) travel back
    /// to the owner and need none; a result made on the owner's node gets
    /// none (it lives as long as its owner). A cluster with too few nodes
    /// keeps fewer copies, and says so in its logs.
    ///
    /// ```
    /// use troupe_core::task::TaskOptions;
    /// let kept_twice = TaskOptions::default().max_retries(0).replicas(2);
    /// assert_eq!(kept_twice.get_replicas(), 2);
    /// assert_eq!(TaskOptions::default().replicas(0).get_replicas(), 1);
    /// ```
    pub fn replicas(mut self, n: u8) -> Self {
        self.replicas = n.clamp(1, MAX_REPLICAS);
        self
    }

    /// How many copies of each result to keep.
    pub fn get_replicas(&self) -> u8 {
        self.replicas.clamp(1, MAX_REPLICAS)
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

    /// The retry limit.
    pub fn get_max_retries(&self) -> u32 {
        self.max_retries
    }

    /// Whether `Err` results are retried.
    pub fn get_retry_exceptions(&self) -> bool {
        self.retry_exceptions
    }

    /// Where it may run.
    pub fn get_scheduling_strategy(&self) -> &SchedulingStrategy {
        &self.strategy
    }

    /// The generator's backpressure.
    pub fn get_generator_backpressure(&self) -> u32 {
        self.generator_backpressure.max(1)
    }
}

/// What kind of results a task has.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Returns {
    /// One object (also a tuple stored as one).
    One,
    /// One object per element of an N-tuple (`num_returns = N`).
    Many(u8),
    /// A stream of objects, then a completion object (`generator`).
    Stream,
}

/// A task's arguments: encoded, or still the typed values the submitter
/// passed (encoded only if the task leaves this process).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum TaskArgs {
    /// A postcard-encoded tuple of the parameters, each a value or a ref
    /// (as its object id), and the refs it holds.
    Encoded(Encoded),
    /// Held by the local body, which encodes them if the task leaves this
    /// node.
    #[serde(skip)]
    Local,
}

/// A task as data: everything a node needs to run it by name. The
/// scheduler queues these; a node receiving one from another node runs it
/// with `Runtime::submit_spec`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TaskSpec {
    /// The task (minted by its owner).
    pub id: TaskId,
    /// The registered function.
    pub function: FunctionName,
    /// Its arguments.
    pub args: TaskArgs,
    /// The objects its top-level ref arguments name: settled before it runs.
    pub deps: Vec<ObjectId>,
    /// Its options.
    pub options: TaskOptions,
    /// The node that submitted it: it owns the results.
    pub owner: NodeId,
    /// The attempt this spec is for (1 for the first).
    pub attempt: u32,
    /// The result objects, minted by the owner before anyone runs it.
    pub results: Vec<ObjectId>,
    /// What kind of results.
    pub returns: Returns,
    /// Its place in its tree of tasks (for spans on every node).
    pub trace: TraceContext,
}

/// A task argument: a value, or a ref resolved before the body runs.
/// Encodes as either (a ref as its object id).
#[derive(Debug, Serialize, Deserialize)]
#[serde(bound(serialize = "T: Serialize", deserialize = "T: Object"))]
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

/// Why an argument could not be read.
#[derive(Debug, Clone)]
pub struct ArgError(pub ObjectId, pub ObjectError);

impl<T: Object + Clone> Arg<T> {
    /// The object this argument waits for, if it is a ref.
    pub fn dependency(&self) -> Option<ObjectId> {
        match self {
            Arg::Value(_) => None,
            Arg::Ref(r) => Some(r.id()),
        }
    }

    /// The value for one attempt of a sync body. The scheduler launches a
    /// task only once its arguments are settled, so this never waits (it
    /// may read a spilled object back from disk: sync bodies run on CPU
    /// threads).
    pub fn resolve_now(&self, store: &ObjectStore) -> Result<T, ArgError> {
        match self {
            Arg::Value(v) => Ok(v.clone()),
            Arg::Ref(r) => match store.try_get(r) {
                Some(Ok(value)) => {
                    Ok(Arc::try_unwrap(value).unwrap_or_else(|shared| (*shared).clone()))
                }
                Some(Err(err)) => Err(ArgError(r.id(), err)),
                // Unreachable by the launch rule; a clear error all the same.
                None => Err(ArgError(r.id(), ObjectError::ProducerDropped(r.id()))),
            },
        }
    }

    /// The value for one attempt, from the attempt's own copy of the
    /// arguments (a value is moved out, not cloned again).
    pub async fn resolve(self, store: &ObjectStore) -> Result<T, ArgError> {
        match self {
            Arg::Value(v) => Ok(v),
            Arg::Ref(r) => match store.get(&r).await {
                Ok(value) => Ok(Arc::try_unwrap(value).unwrap_or_else(|shared| (*shared).clone())),
                Err(err) => Err(ArgError(r.id(), err)),
            },
        }
    }
}
