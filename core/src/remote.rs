//! The seams through which a cluster plugs into a node: where tasks that do
//! not fit here go, how they and actor calls run on other nodes, and what
//! happens to nodes. API boundary: `troupe-cluster` implements these; core
//! never opens a socket, and with none set (the embedded default) a node
//! runs alone. They are set in [`Config`](crate::Config), as the GPU
//! detector is; the object store's seam is
//! [`ObjectDirectory`](troupe_objects::ObjectDirectory).

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};

use crate::actor::ActorOptions;
pub use crate::actor::{Relocation, StopHow};
use crate::error::{ActorError, Failure, SpawnError};
pub use crate::ids::ActorOwner;

use crate::ids::{ActorId, ActorInfo, NodeId, ObjectId};
use crate::spec::TaskSpec;
use crate::Resources;
use troupe_objects::Encoded;

/// What the placement hook is asked about one task.
#[derive(Debug)]
pub struct PlacementRequest<'a> {
    /// The task (its function, options and strategy, its arguments' ids).
    pub spec: &'a TaskSpec,
    /// What it needs.
    pub needs: &'a Resources,
    /// Whether this node could ever run it.
    pub feasible_here: bool,
    /// Whether it fits this node's free resources now (with a cluster, a
    /// task that does not is offered to the hook: spillback).
    pub fits_now: bool,
    /// Nodes that refused it (they cannot run it: another build): never
    /// these again.
    pub excluded: &'a [NodeId],
    /// The node it should go to if that node is live and can run it: where
    /// the node it waited on saw room (spillback).
    pub preferred: Option<NodeId>,
}

/// Where a task goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PlacementDecision {
    /// Run it here (it fits this node).
    Here,
    /// Send it to this node.
    Node(NodeId),
    /// Keep it pending until a node that fits joins (reported as unplaced
    /// in the state API); asked again on every node-up event.
    Wait,
    /// No node can ever run it.
    Infeasible,
    /// It must run on this node (hard affinity), which has left or died:
    /// it can never run.
    NodeGone(NodeId),
}

/// Decides where tasks that this node cannot run go (a node joining a
/// cluster sets one; with none, such a task fails as infeasible).
///
/// Asked only for tasks this node cannot run now (never, or not with its
/// free resources), that ask for another node, or that ask to be spread
/// (`SchedulingStrategy`): a task that fits here now never pays for it.
pub trait Placement: Send + Sync + 'static {
    /// Where `request`'s task should run.
    fn place(&self, request: &PlacementRequest<'_>) -> PlacementDecision;

    /// The live nodes that can be given work, with what each has free as
    /// last heard: where placement groups' bundles may go. Default: none
    /// (a group is placed on this node alone).
    fn nodes(&self) -> Option<Vec<crate::placement_group::NodeRoom>> {
        None
    }

    /// Another node whose free resources, as last heard and less what
    /// `promised` sends it (tasks spilled to it since), fit `request`'s
    /// task now: where a task that has waited here for resources may go
    /// instead (spillback). Default: none (it waits here).
    fn spill_to(
        &self,
        request: &PlacementRequest<'_>,
        promised: &[(NodeId, Resources)],
    ) -> Option<NodeId> {
        let _ = (request, promised);
        None
    }
}

/// Where one result of a task run elsewhere is.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum RemoteResult {
    /// Small enough to come back with the reply: its encoding (and the
    /// refs it holds).
    Inline(Encoded),
    /// Kept on the node that made it (`node`) and, when the task asked
    /// for replicas, on `replicas` too; fetched through the object
    /// directory when read, from the next of them once one dies.
    At {
        /// The node that made it.
        node: NodeId,
        /// The nodes that keep a copy for the owner as well.
        replicas: Vec<NodeId>,
    },
}

impl RemoteResult {
    /// Kept only where it was made.
    pub fn at(node: NodeId) -> Self {
        RemoteResult::At {
            node,
            replicas: Vec::new(),
        }
    }
}

/// How an attempt that ran on another node ended.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum RemoteOutcome {
    /// It succeeded: one entry per result object, in order.
    Done(Vec<(ObjectId, RemoteResult)>),
    /// It failed (the owner decides whether to retry).
    Failed(Failure),
    /// The node cannot run it at all (no function of that name in its
    /// build): not an attempt; the owner places it on another node.
    Refused(String),
    /// It waited on the node for resources while this node had room as
    /// last heard (spillback): not an attempt; the owner sends it there,
    /// or places it again if that node is gone.
    Spilled(NodeId),
}

/// Runs tasks and actor calls on other nodes (the cluster's transport).
pub trait RemoteExecutor: Send + Sync + 'static {
    /// Runs one attempt of `spec` on `node`. A node that dies before
    /// answering resolves to `Failed(Failure::NodeDied(node))`.
    fn run_task(&self, node: NodeId, spec: TaskSpec) -> BoxFuture<'static, RemoteOutcome>;

    /// [`run_task`](Self::run_task), calling `done` with the outcome: on
    /// `runtime` (where this node's work runs), or on whichever of its
    /// threads the answer arrives. What the scheduler calls; the default
    /// waits for `run_task` in a task on `runtime`. An executor that can
    /// call back as the answer arrives saves that task's wake-up.
    fn run_task_then(
        &self,
        node: NodeId,
        spec: TaskSpec,
        runtime: &tokio::runtime::Handle,
        done: TaskDone,
    ) {
        let running = self.run_task(node, spec);
        runtime.spawn(async move { done(running.await) });
    }

    /// Calls `method` on the actor `actor` (living on `node`) with encoded
    /// arguments; resolves to its encoded result.
    fn call_actor(
        &self,
        node: NodeId,
        actor: ActorId,
        method: &str,
        args: Encoded,
    ) -> BoxFuture<'static, Result<Encoded, ActorError>>;

    /// Spawns an actor with a registered constructor on `node` (or, with
    /// `None`, on a node the cluster picks for `request.options`'s
    /// resources); resolves to who it is. An executor that cannot place
    /// actors refuses (the default).
    fn spawn_actor(
        &self,
        node: Option<NodeId>,
        request: RemoteSpawn,
    ) -> BoxFuture<'static, Result<ActorInfo, SpawnError>> {
        let _ = (node, request);
        Box::pin(async {
            Err(SpawnError::Remote {
                node: None,
                reason: "this cluster executor does not place actors on other nodes".to_owned(),
            })
        })
    }

    /// Stops or kills the actor `actor` on `node`; resolves once it has
    /// (or once its node is gone). Default: nothing to reach.
    fn stop_actor(&self, node: NodeId, actor: ActorId, how: StopHow) -> BoxFuture<'static, ()> {
        let _ = (node, actor, how);
        Box::pin(async {})
    }

    /// The live actor named `name` on another node, if any. Default: none.
    fn find_actor(&self, name: &str) -> BoxFuture<'static, Option<ActorInfo>> {
        let _ = name;
        Box::pin(async { None })
    }

    /// Asks `owner.owner` where the actor it placed as `owner.actor` lives
    /// now (`Runtime::placed_actor_location` on that node). Default: no
    /// owner is reachable.
    fn locate_actor(&self, owner: ActorOwner) -> BoxFuture<'static, Relocation> {
        let _ = owner;
        Box::pin(async { Relocation::Dead("this cluster executor cannot reach owners".into()) })
    }

    /// Tells `owner.owner` that its actor was stopped for good through a
    /// handle, so that it is not restarted when its node dies. Default:
    /// nothing to tell.
    fn actor_ended(&self, owner: ActorOwner) {
        let _ = owner;
    }

    /// Tells `owner` that the actor `actor`, which this node ran for it,
    /// is dead for good, and why (a supervisor there treats it as its
    /// child's exit). Default: nothing to tell.
    fn actor_exited(&self, owner: NodeId, actor: ActorId, reason: String) {
        let _ = (owner, actor, reason);
    }

    /// Reserves bundles of placement group `group` on `node`
    /// (`Runtime::reserve_bundles` there): all of them, or none and why.
    /// Default: no other node can be reached.
    fn reserve_bundles(
        &self,
        node: NodeId,
        group: crate::placement_group::PlacementGroupId,
        bundles: Vec<(usize, Resources)>,
    ) -> BoxFuture<'static, Result<(), String>> {
        let _ = (group, bundles);
        Box::pin(async move { Err(format!("node {node} cannot be reached")) })
    }

    /// Gives back what `node` holds of placement group `group`
    /// (`Runtime::release_bundles` there); resolves once it has, or once the
    /// node is gone. Default: nothing to reach.
    fn release_bundles(
        &self,
        node: NodeId,
        group: crate::placement_group::PlacementGroupId,
    ) -> BoxFuture<'static, ()> {
        let _ = (node, group);
        Box::pin(async {})
    }

    /// Has up to `copies` other nodes keep a replica of `id`, result
    /// `index` of a task of `function` that `owner` owns and this node
    /// made and keeps (`Runtime::keep_copy` on each): nodes of the same
    /// program, not this one, the owner last. Resolves to the nodes that
    /// keep one, once they do. Default: no other node to ask.
    fn replicate(&self, copy: ReplicaRequest) -> BoxFuture<'static, Vec<NodeId>> {
        let _ = copy;
        Box::pin(async { Vec::new() })
    }

    /// Whether `node` is a live member this node can reach. Default: yes.
    fn node_alive(&self, node: NodeId) -> bool {
        let _ = node;
        true
    }
}

/// A result to keep replicas of ([`RemoteExecutor::replicate`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReplicaRequest {
    /// The object.
    pub id: ObjectId,
    /// Its owner, for whom the replicas are kept.
    pub owner: NodeId,
    /// The remote function whose task made it (its result types are how a
    /// replica's node decodes it).
    pub function: String,
    /// Which of the task's results it is.
    pub index: u32,
    /// How many other nodes should keep one.
    pub copies: u8,
}

/// What is called with a remote attempt's outcome.
pub type TaskDone = Box<dyn FnOnce(RemoteOutcome) + Send + 'static>;

/// An actor to spawn on another node, by its registered type and
/// constructor.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RemoteSpawn {
    /// The actor type's registered name (`Actor::NAME`).
    pub type_name: String,
    /// The constructor's name (`new`, say).
    pub constructor: String,
    /// Its options (name, restarts, resources).
    pub options: ActorOptions,
    /// The constructor's encoded arguments (a tuple).
    pub args: Encoded,
    /// Whether the node waits for room for the actor's resources (true),
    /// or answers `SpawnError::ResourcesBusy` at once when they are taken
    /// (false): how the cluster places an actor again on another node
    /// rather than leave it queued on a full one, and never leaves an
    /// actor behind that starts after its spawner gave up.
    #[serde(default = "waits")]
    pub wait_for_room: bool,
}

fn waits() -> bool {
    true
}

/// Something that happened to a node of the cluster. The cluster publishes
/// them on each runtime (`Runtime::publish`); tasks, actors, supervisors and
/// users subscribe (`Runtime::cluster_events`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum ClusterEvent {
    /// A node joined (or came back as a new incarnation).
    NodeUp {
        /// The node.
        node: NodeId,
        /// What it offers.
        resources: Resources,
    },
    /// A node suspected (silent past the suspicion limit, so sent no new
    /// work) was heard from again, or this node's links to it came back
    /// after a cut: work that found no node goes again.
    NodeRecovered {
        /// The node.
        node: NodeId,
    },
    /// A node left or was declared dead.
    NodeDown {
        /// The node.
        node: NodeId,
        /// Why (a clean leave, or what the failure detector saw).
        reason: String,
    },
}
