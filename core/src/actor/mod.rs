//! Ray-style typed actors.
//!
//! A user writes a plain struct and an `impl` block; `#[troupe::actor]` (in
//! the facade) implements [`Actor`] for it and generates a typed handle whose
//! methods mirror the `pub` methods of the block. Each call sends a message
//! at once and returns a [`Pending`] reply, so calls pipeline without awaiting
//! each other, and `&mut self` methods run one at a time.
//!
//! Each actor runs in a `Host` ractor actor supervised by the
//! runtime. A restart creates a new ractor actor; the handle survives it
//! because it points at the actor's slot, which outlives incarnations.

mod handle;
mod host;
mod slot;

pub use handle::{ActorHandle, Pending};

pub(crate) use host::Factory;
pub(crate) use slot::Slot;

use std::fmt;
use std::sync::Arc;

use crate::supervisor::{Shutdown, DEFAULT_SHUTDOWN};
use crate::Resources;

/// A type that can run as a Troupe actor. Implemented by `#[troupe::actor]`;
/// implement it by hand only to write your own handle type.
pub trait Actor: Send + Sized + 'static {
    /// The typed handle, a thin wrapper around [`ActorHandle<Self>`].
    type Handle: From<ActorHandle<Self>> + Clone + Send + Sync + 'static;
}

/// Who an actor is, for errors, logs and metrics.
#[derive(Debug, Clone, PartialEq)]
pub struct ActorInfo {
    /// Unique within its runtime, stable across restarts.
    pub id: u64,
    /// The name it was spawned with, if any.
    pub name: Option<String>,
    /// The Rust type of the actor.
    pub type_name: &'static str,
    /// The node (runtime) it lives on.
    pub node: troupe_objects::NodeId,
    /// What it holds from its node for its whole life, restarts included.
    pub resources: Resources,
    /// The GPUs it holds, by ordinal: empty unless it asked for `num_gpus`.
    /// A restarted incarnation keeps them.
    pub gpu_ids: Vec<u32>,
}

impl fmt::Display for ActorInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let short = self.type_name.rsplit("::").next().unwrap_or(self.type_name);
        match &self.name {
            Some(name) => write!(f, "{short}#{} {name:?}", self.id),
            None => write!(f, "{short}#{}", self.id),
        }
    }
}

/// A count that may be unbounded (Ray's `-1`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
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
#[derive(Clone, Debug)]
pub struct ActorOptions {
    pub(crate) name: Option<String>,
    pub(crate) max_restarts: Limit,
    pub(crate) max_task_retries: Limit,
    pub(crate) resources: Resources,
    pub(crate) shutdown: Shutdown,
}

impl Default for ActorOptions {
    fn default() -> Self {
        Self {
            name: None,
            max_restarts: Limit::Finite(0),
            max_task_retries: Limit::Finite(0),
            resources: Resources::default(),
            shutdown: DEFAULT_SHUTDOWN,
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

    /// The name, if any.
    pub fn get_name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    /// The resource needs.
    pub fn get_resources(&self) -> &Resources {
        &self.resources
    }
}

pub(crate) type InfoRef = Arc<ActorInfo>;

tokio::task_local! {
    pub(crate) static CURRENT_ASYNC: InfoRef;
}

thread_local! {
    static CURRENT_SYNC: std::cell::RefCell<Option<InfoRef>> = const { std::cell::RefCell::new(None) };
}

/// Runs `f` as the actor `info` on this thread (for sync methods).
pub(crate) fn with_current<T>(info: &InfoRef, f: impl FnOnce() -> T) -> T {
    let previous = CURRENT_SYNC.with(|c| c.replace(Some(info.clone())));
    let out = f();
    CURRENT_SYNC.with(|c| *c.borrow_mut() = previous);
    out
}

/// The actor whose method is running this code, if any: its id, name and
/// type (the runtime context of actors, as `task::current` is of tasks).
pub fn current() -> Option<Arc<ActorInfo>> {
    CURRENT_ASYNC
        .try_with(Clone::clone)
        .ok()
        .or_else(|| CURRENT_SYNC.with(|c| c.borrow().clone()))
}

pub(crate) fn host_for<A: Actor>(slot: Arc<Slot<A>>, factory: Factory<A>) -> host::Host<A> {
    host::Host { slot, factory }
}
