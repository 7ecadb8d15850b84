//! The runtime: a supervision tree with a system subtree and a user subtree.
//!
//! ```text
//! root (rest_for_one)
//! ├── system (one_for_one)
//! │   ├── object_store          keeps the store within its memory budget
//! │   └── scheduler             drives bursts of submitted tasks
//! └── user   (dynamic; each actor has its own restart cap)
//!     ├── Counter#1             actors spawned with spawn_actor: supervised
//!     │                         in place by their drivers (see `actor`)
//!     └── your supervisor trees
//! ```
//!
//! Rest-for-one at the root: if the system subtree fails, the user subtree,
//! which depends on it, is restarted after it; a user failure never restarts
//! the system.
//!
//! [`Runtime`] is a cheap handle; its methods are split by concern:
//! `boot.rs` (start), `objects.rs` (put/get/wait), `tasks.rs` (submit,
//! cancel), `actors.rs` (spawn, names, trees), `cluster.rs` (events from
//! other nodes), `state.rs` (the state API), `inspect.rs` (every node's,
//! through the cluster's seam), `recording.rs` (the timeline and metrics),
//! `service.rs` (services beside the runtime: the seam a dashboard plugs
//! into), and this file (the tree, shutdown).

mod actors;
mod boot;
mod cluster;
mod config;
mod inspect;
mod lineage;
mod objects;
mod placed_actors;
mod placement_groups;
mod recording;
mod remote_actors;
mod remote_child;
mod service;
mod state;
mod tasks;

pub use boot::init;
pub use config::{ClusterSeams, Config};
pub use inspect::{
    ClusterInspector, ClusterView, InspectError, JobLogPage, JobView, MetricsTarget, NodeHealth,
    NodeLoad, NodeReply, NodeView,
};
pub use service::{
    RunningService, RuntimeService, ServiceError, ServiceInfo, WeakRuntime, METRICS_SERVICE,
};
pub use state::{
    ActorCounts, ChildKind, ChildView, NodeInfo, ObjectSummary, State, StateQuery, Summary,
    SupervisorView,
};

use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use tokio::sync::broadcast;
use troupe_objects::{NodeId, ObjectStore};

use crate::actor::{Directory, Env};
use crate::error::{ShutdownError, SpawnError};
use crate::ids::Minter;
use crate::remote::ClusterEvent;
use crate::scheduler::Scheduler;
use crate::supervisor::{EventBus, SupervisionEvent, SupervisorRef};
use crate::timeline::{Clock, Timeline};
use crate::GpuInfo;

/// How long shutdown waits for killed actors after its deadline passed.
const KILL_GRACE: Duration = Duration::from_secs(1);

/// A tokio runtime the Troupe runtime built for itself (`Runtime::start`).
pub(crate) struct OwnedTokio(pub(crate) Option<tokio::runtime::Runtime>);

impl Drop for OwnedTokio {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            // Dropping a runtime inside async code panics; this never blocks.
            rt.shutdown_background();
        }
    }
}

pub(crate) struct Inner {
    pub(crate) config: Config,
    pub(crate) gpus: Vec<GpuInfo>,
    pub(crate) ids: Minter,
    pub(crate) root: SupervisorRef,
    pub(crate) system: Arc<ArcSwapOption<SupervisorRef>>,
    pub(crate) user: Arc<ArcSwapOption<SupervisorRef>>,
    pub(crate) events: EventBus,
    pub(crate) cluster_events: broadcast::Sender<ClusterEvent>,
    /// Actors this runtime spawned on other nodes and restarts.
    pub(crate) placed: placed_actors::PlacedActors,
    /// Actors this runtime runs for owners on other nodes.
    pub(crate) hosted: remote_actors::HostedActors,
    /// Placement groups this runtime created, and bundles it holds.
    pub(crate) groups: placement_groups::PlacementGroups,
    /// Who waits for actors placed elsewhere to die (remote children).
    pub(crate) exits: remote_child::Exits,
    pub(crate) objects: ObjectStore,
    pub(crate) scheduler: Arc<Scheduler>,
    pub(crate) actors: Arc<Directory>,
    pub(crate) env: Arc<Env>,
    pub(crate) shut_down: AtomicBool,
    pub(crate) started_in: Duration,
    pub(crate) clock: Arc<Clock>,
    pub(crate) timeline: Arc<Timeline>,
    /// The path of the supervisor of in-place actors (`root/user`).
    pub(crate) user_path: Arc<str>,
    /// Running services, in start order.
    pub(crate) services: service::Services,
    pub(crate) handle: tokio::runtime::Handle,
    // Last field: dropped after everything that may still use it.
    pub(crate) _tokio: OwnedTokio,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if !self.shut_down.load(Ordering::Acquire) {
            // Dropped without `shutdown`: stop the tree in the background
            // rather than leave actors running with no way to reach them.
            self.root.cell().stop(Some("runtime dropped".into()));
            self.scheduler.shut_down();
            self.actors.request_stop_all();
        }
    }
}

/// A handle to a running Troupe runtime. Cheap to clone; all clones share it.
///
/// Several runtimes can live in one process: names, events and actors are
/// per runtime. ractor's process-wide state (its actor-id counter, and with
/// its `cluster` feature its pid registry) is shared; Troupe registers
/// nothing in ractor's global name registry.
#[derive(Clone)]
pub struct Runtime {
    pub(crate) inner: Arc<Inner>,
}

impl fmt::Debug for Runtime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Runtime")
            .field("name", &self.inner.config.name)
            .field("node", &self.node_id())
            .finish_non_exhaustive()
    }
}

impl Runtime {
    /// The runtime running this code (a task body or an actor method of
    /// it), if any: how a body submits further tasks and reads objects
    /// (Ray's implicit context).
    pub fn current() -> Option<Runtime> {
        let any = crate::context::runtime()?;
        any.downcast::<Inner>().ok().map(|inner| Runtime { inner })
    }

    /// Makes this runtime the current one while decoding what another node
    /// sent (unless code of this runtime runs here already).
    pub(crate) fn decode_frame(&self) -> Option<crate::context::FrameGuard> {
        if Self::current().is_some() {
            return None;
        }
        Some(crate::context::enter(crate::context::Frame {
            runtime: self.inner.env.runtime.clone(),
            ..Default::default()
        }))
    }

    /// Runs a future to completion on the runtime's tokio runtime. Call it
    /// from synchronous code only (it panics inside async code, as tokio's).
    pub fn block_on<F: Future>(&self, future: F) -> F::Output {
        self.inner.handle.block_on(future)
    }

    /// The tokio runtime this runtime's work runs on (async task bodies,
    /// actors): where a service runs what it does on this runtime's behalf
    /// (a cluster keeps its own I/O apart, so that user code cannot starve
    /// it).
    pub fn tokio_handle(&self) -> &tokio::runtime::Handle {
        &self.inner.handle
    }

    /// The node's GPUs (detected, or declared in the config).
    pub fn gpus(&self) -> &[GpuInfo] {
        &self.inner.gpus
    }

    /// This node's id: random per runtime, it prefixes every id made here.
    pub fn node_id(&self) -> NodeId {
        self.inner.objects.node()
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

    /// The user subtree, parent of the trees you spawn.
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

    /// How many actors of this runtime are running now: supervisors,
    /// system actors and every live actor (0 once shut down).
    pub fn live_actors(&self) -> usize {
        fn count(cell: &ractor::ActorCell) -> usize {
            1 + cell.get_children().iter().map(count).sum::<usize>()
        }
        let root = self.inner.root.cell();
        let tree = if root.get_status() > ractor::ActorStatus::Running {
            0
        } else {
            count(&root)
        };
        tree + self.inner.actors.len()
    }

    /// Stops everything in reverse start order: tasks first (queued and
    /// running ones fail with `TaskError::ShutDown`), then actors (newest
    /// first, each per its shutdown: asked to stop, killed past its
    /// timeout), then the user trees and the system. What is still running
    /// at the config's `shutdown_timeout` is killed and reported as an
    /// error. Calling it again is a no-op.
    pub async fn shutdown(&self) -> Result<(), ShutdownError> {
        if self.inner.shut_down.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        let deadline = self.inner.config.shutdown_timeout;
        let began = tokio::time::Instant::now();
        // Services first: a dashboard must not watch the rest come apart.
        if tokio::time::timeout(deadline, self.stop_services())
            .await
            .is_err()
        {
            tracing::warn!(?deadline, "services did not stop in time");
        }
        self.inner.scheduler.shut_down();
        let actors = self.inner.actors.clone();
        let mut in_order = tokio::time::timeout(deadline, actors.stop_in_place())
            .await
            .is_ok();
        if !in_order {
            // Bounded too: an actor stuck in sync code never reaches the
            // await that a kill stops it at.
            let _ = tokio::time::timeout(KILL_GRACE, actors.kill_all()).await;
        }
        let left = deadline.saturating_sub(began.elapsed());
        in_order &= self.inner.root.stop(left).await;
        tracing::info!(runtime = %self.inner.config.name, in_order, "runtime shut down");
        if in_order {
            Ok(())
        } else {
            Err(ShutdownError::DeadlineExceeded(deadline))
        }
    }
}
