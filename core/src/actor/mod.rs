//! Ray-style typed actors.
//!
//! A user writes a plain struct and an `impl` block; `#[troupe::actor]` (in
//! the facade) implements [`Actor`] for it and generates a typed handle whose
//! methods mirror the non-private methods of the block. Each call sends a
//! message at once and returns a [`Pending`] reply, so calls pipeline without
//! awaiting each other, and `&mut self` methods run one at a time.
//!
//! An actor is one tokio task (its driver) and one mailbox, owned by its
//! slot, which outlives incarnations: a restart builds a new instance in the
//! same driver (or, in a user's tree, a new driver the supervisor starts)
//! and the handle, which points at the slot, stays valid. See `driver` for
//! how each is supervised.

mod call;
mod directory;
mod driver;
mod handle;
mod slot;

pub use call::Pending;
pub use handle::{ActorHandle, ActorLink, Relocation, RemoteActor};

pub use directory::ActorSummary;
pub(crate) use directory::{Directory, DirectoryLink};
pub(crate) use driver::{
    construct, describe, rules_of, run_in_place, start_as_child, Env, Factory,
};
pub(crate) use slot::Slot;

use std::any::Any;
use std::sync::Arc;

use futures::future::BoxFuture;

pub use crate::ids::ActorInfo;
use crate::supervisor::{Shutdown, DEFAULT_SHUTDOWN};
use crate::Resources;

/// A type that can run as a Troupe actor. Implemented by `#[troupe::actor]`;
/// implement it by hand only to write your own handle type.
pub trait Actor: Send + Sized + 'static {
    /// The typed handle, a thin wrapper around [`ActorHandle<Self>`].
    type Handle: From<ActorHandle<Self>> + Clone + Send + Sync + 'static;
    /// The name the type is registered under (its module path and name):
    /// the same in every process running this binary.
    const NAME: &'static str;
}

/// A count that may be unbounded (Ray's `-1`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Limit {
    /// At most this many.
    Finite(u32),
    /// No bound.
    Unlimited,
}

impl Limit {
    pub(crate) fn allows(self, n: u32) -> bool {
        match self {
            Limit::Finite(max) => n <= max,
            Limit::Unlimited => true,
        }
    }

    pub(crate) fn finite(self) -> Option<u32> {
        match self {
            Limit::Finite(max) => Some(max),
            Limit::Unlimited => None,
        }
    }
}

impl From<u32> for Limit {
    fn from(n: u32) -> Self {
        Limit::Finite(n)
    }
}

/// `None` means unlimited, as Ray's `-1`.
impl From<Option<u32>> for Limit {
    fn from(n: Option<u32>) -> Self {
        n.map_or(Limit::Unlimited, Limit::Finite)
    }
}

/// How to spawn an actor (Ray's `.options(...)`).
///
/// ```
/// use troupe_core::{ActorOptions, Resources};
/// let opts = ActorOptions::new()
///     .name("counter")
///     .max_restarts(3)           // or None: forever
///     .max_task_retries(1)       // replay queued calls after a restart
///     .resources(Resources::cpus(1.0));
/// assert_eq!(opts.get_name(), Some("counter"));
/// ```
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct ActorOptions {
    pub(crate) name: Option<String>,
    pub(crate) max_restarts: Limit,
    pub(crate) max_task_retries: Limit,
    pub(crate) resources: Resources,
    pub(crate) shutdown: Shutdown,
    pub(crate) strategy: crate::spec::SchedulingStrategy,
    #[serde(default)]
    pub(crate) detached: bool,
    /// Whether a spawn waits for the node's resources (the default), or
    /// fails at once with `SpawnError::ResourcesBusy` when they are taken:
    /// what a spawn placed by the cluster asks, so that it is placed again
    /// elsewhere instead of waiting on a full node ([`RemoteSpawn`]'s
    /// `wait_for_room`). Never sent: set by the node that spawns.
    ///
    /// [`RemoteSpawn`]: crate::remote::RemoteSpawn
    #[serde(skip, default = "waits_for_room")]
    pub(crate) wait_for_room: bool,
}

fn waits_for_room() -> bool {
    true
}

impl Default for ActorOptions {
    fn default() -> Self {
        Self {
            name: None,
            max_restarts: Limit::Finite(0),
            max_task_retries: Limit::Finite(0),
            resources: Resources::default(),
            shutdown: DEFAULT_SHUTDOWN,
            strategy: crate::spec::SchedulingStrategy::Default,
            detached: false,
            wait_for_room: true,
        }
    }
}

impl ActorOptions {
    /// No name, no restarts, at-most-once calls, no resources, 5 s shutdown.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers the actor under `name` in its runtime, for `get_actor`.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// How often the actor may be restarted after a failure over its life
    /// (default 0; `None` = forever). A restart re-runs the constructor.
    pub fn max_restarts(mut self, max: impl Into<Limit>) -> Self {
        self.max_restarts = max.into();
        self
    }

    /// How often a call delivered to an incarnation that died before running
    /// it is delivered again (default 0: at-most-once, such calls fail with
    /// `ActorDied`). Calls sent while the actor is restarting are never lost:
    /// they wait for the new incarnation. The call that was running when the
    /// actor died is not replayed: its arguments were moved into the method.
    pub fn max_task_retries(mut self, max: impl Into<Limit>) -> Self {
        self.max_task_retries = max.into();
        self
    }

    /// What the actor holds from its node for its whole life, restarts
    /// included (default: nothing; like Ray, an actor holds no CPU unless it
    /// asks). Spawning waits until they are free, and fails at once if the
    /// node can never fit them. GPUs it is given are in
    /// [`ActorInfo::gpu_ids`] (see [`current`]).
    pub fn resources(mut self, resources: Resources) -> Self {
        self.resources = resources;
        self
    }

    /// How the actor is stopped at shutdown (default: ask, kill after 5 s).
    pub fn shutdown(mut self, shutdown: Shutdown) -> Self {
        self.shutdown = shutdown;
        self
    }

    /// Where it may run, in a cluster (a single node runs every actor
    /// that fits it).
    pub fn scheduling_strategy(mut self, strategy: crate::spec::SchedulingStrategy) -> Self {
        self.strategy = strategy;
        self
    }

    /// Lives in bundle `bundle` of `group` (`None`: its bundles in turn),
    /// holding its resources out of the bundle's, on the bundle's node
    /// (spawn it with `spawn_remote` when that is another node).
    pub fn placement_group(
        self,
        group: &crate::placement_group::PlacementGroup,
        bundle: Option<usize>,
    ) -> Self {
        self.scheduling_strategy(crate::spec::SchedulingStrategy::PlacementGroup {
            group: group.id(),
            bundle,
        })
    }

    /// An actor spawned on another node lives while its owner (the
    /// process that spawned it) does, as Ray's actors do: when the owner
    /// leaves or dies, the node hosting it kills it and frees what it
    /// holds. A detached actor outlives its owner (Ray's
    /// `lifetime="detached"`): name it, so that it can be found again, and
    /// stop it yourself. Default: not detached.
    pub fn detached(mut self, detached: bool) -> Self {
        self.detached = detached;
        self
    }

    /// Whether it outlives its owner.
    pub fn is_detached(&self) -> bool {
        self.detached
    }

    /// The name, if any.
    pub fn get_name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    /// The resource needs.
    pub fn get_resources(&self) -> &Resources {
        &self.resources
    }

    /// Where it may run.
    pub fn get_strategy(&self) -> &crate::spec::SchedulingStrategy {
        &self.strategy
    }
}

/// A handle to the actor whose slot the registry gives (not collecting).
pub(crate) fn handle_from_slot<A: Actor>(
    slot: Arc<dyn Any + Send + Sync>,
) -> Option<ActorHandle<A>> {
    slot.downcast::<Slot<A>>()
        .ok()
        .map(|slot| ActorHandle::new(slot, false))
}

/// The actor whose method (or constructor) is running this code, if any:
/// its id, name, type, node and GPUs (the runtime context of actors, as
/// `task::current` is of tasks).
pub fn current() -> Option<Arc<ActorInfo>> {
    crate::context::actor()
}

/// The state of an actor, as the state API shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ActorState {
    /// An incarnation is running.
    Alive,
    /// Between incarnations (restarting, or being built).
    Restarting,
    /// Dead for good.
    Dead,
}

/// What the runtime knows of each of its actors, whatever their type.
/// How to end an actor on another node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum StopHow {
    /// Gracefully: it answers what it was sent, then stops for good.
    Stop,
    /// At once (Ray's `ray.kill`); with `no_restart`, for good.
    Kill {
        /// Whether it may restart.
        no_restart: bool,
    },
}

pub(crate) trait Control: Send + Sync + 'static {
    fn info(&self) -> &Arc<ActorInfo>;
    fn state(&self) -> ActorState;
    fn restarts(&self) -> u32;
    /// Why it failed last, if it ever did.
    fn last_failure(&self) -> Option<crate::supervisor::LastFailure>;
    /// The path of its supervisor.
    fn supervisor_path(&self) -> Arc<str>;
    /// How its options say to stop it.
    fn shutdown(&self) -> Shutdown;
    /// The typed slot, for a typed lookup by name.
    fn slot_any(self: Arc<Self>) -> Arc<dyn Any + Send + Sync>;
    /// Asks it to stop for good after its current call, without waiting.
    fn request_stop(&self);
    /// Stops it for good per `shutdown` (at runtime shutdown) and waits
    /// until it is dead.
    fn shut_down(self: Arc<Self>, shutdown: Shutdown) -> BoxFuture<'static, ()>;
    /// Stops or kills it as its handle's `stop`/`kill` would (asked by
    /// another node).
    fn end(self: Arc<Self>, how: StopHow) -> BoxFuture<'static, ()>;
    /// Calls `hook` with why once it is dead for good (at once if it is).
    fn when_dead(&self, hook: Box<dyn FnOnce(String) + Send>);
}

impl<A: Actor> Control for Slot<A> {
    fn info(&self) -> &Arc<ActorInfo> {
        &self.info
    }

    fn state(&self) -> ActorState {
        if self.dead_reason().is_some() {
            ActorState::Dead
        } else if self.is_alive() {
            ActorState::Alive
        } else {
            ActorState::Restarting
        }
    }

    fn restarts(&self) -> u32 {
        self.restarts.load(std::sync::atomic::Ordering::Acquire)
    }

    fn last_failure(&self) -> Option<crate::supervisor::LastFailure> {
        Slot::last_failure(self)
    }

    fn supervisor_path(&self) -> Arc<str> {
        Slot::supervisor_path(self)
    }

    fn shutdown(&self) -> Shutdown {
        self.options.shutdown
    }

    fn slot_any(self: Arc<Self>) -> Arc<dyn Any + Send + Sync> {
        self
    }

    fn request_stop(&self) {
        self.forbid_restart(slot::Forbid::ShutDown);
        self.signals.raise(slot::Signal::Stop);
    }

    fn shut_down(self: Arc<Self>, shutdown: Shutdown) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            self.forbid_restart(slot::Forbid::ShutDown);
            self.stop_incarnation(shutdown).await;
            self.wait_dead().await;
        })
    }

    fn end(self: Arc<Self>, how: StopHow) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            let handle = ActorHandle::new(self, false);
            match how {
                StopHow::Stop => handle.stop().await,
                StopHow::Kill { no_restart } => handle.kill(no_restart).await,
            }
        })
    }

    fn when_dead(&self, hook: Box<dyn FnOnce(String) + Send>) {
        self.when_dead(hook);
    }
}
